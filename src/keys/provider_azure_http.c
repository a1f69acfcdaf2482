/*-------------------------------------------------------------------------
 *
 * provider_azure_http.c
 *		libcurl transport of the Azure Key Vault provider: one logical
 *		request with timeouts, retries, backoff and bounded total time.
 *
 * What this file guarantees:
 *	- TLS is always verified (peer and host name), TLS 1.2 or later.  The
 *	  only knob is an extra trust anchor (cmk_storage.ca_file); there is,
 *	  on purpose, no way to turn verification off.
 *	- The vault is reached over HTTPS only; plain HTTP is allowed for the
 *	  managed-identity endpoint alone (IMDS is HTTP by design), which is
 *	  also never sent through a proxy.
 *	- Redirects are never followed: they would carry the bearer token to
 *	  wherever the Location header points.
 *	- Retries (429, 5xx, timeouts, connection failures, and whatever else
 *	  the caller's retryable() accepts) use exponential backoff with
 *	  jitter, or Retry-After, and stop at the caller's deadline, so the key
 *	  worker is never held for long.  A shutdown request cuts them short.
 *
 * What it must never do: log, ereport, print or keep a header or a body.
 * Request headers may carry the bearer token or X-IDENTITY-HEADER and
 * response bodies may carry a token or a DEK, so both are wiped before
 * their memory is released.  libcurl's verbose mode is never enabled.
 *
 *-------------------------------------------------------------------------
 */
#ifdef FRONTEND
#include "postgres_fe.h"
#else
#include "postgres.h"
#endif

#include <time.h>
#include <unistd.h>

#include <curl/curl.h>
#include <openssl/crypto.h>

#include "keys/provider_azure_int.h"

#define MAX_RESPONSE		(256 * 1024)	/* far above any Key Vault body */
#define MIN_ATTEMPT_MS		200 /* don't start an attempt with less left */
#define BACKOFF_BASE_MS		1000	/* Key Vault guidance: 1, 2, 4, 8, 16 s */
#define BACKOFF_MAX_MS		16000
#define RETRY_AFTER_MAX_S	3600
#define SLEEP_SLICE_MS		50
#define MIN_RETRY_DELAY_MS	250

static CURL *curl = NULL;
static pid_t curl_pid = 0;
static bool curl_global_done = false;
static uint64_t jitter_state = 0;

/* Per-attempt state shared with libcurl's callbacks. */
typedef struct Exchange
{
	AzureHttpResponse *resp;
	const AzureSettings *settings;
	bool		too_large;
	bool		interrupted;
} Exchange;

int64_t
azure_now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/*
 * One easy handle per process, so that connections (and TLS sessions) to
 * the vault are reused between checks.  A handle inherited through fork()
 * shares its sockets with the parent: it is abandoned, never cleaned up
 * (cleanup would shut down the parent's TLS sessions) nor reused.
 */
static CURL *
get_handle(void)
{
	if (curl != NULL && curl_pid != getpid())
		curl = NULL;
	if (curl == NULL)
	{
		if (!curl_global_done)
		{
			if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
				return NULL;
			curl_global_done = true;
		}
		curl = curl_easy_init();
		curl_pid = getpid();
	}
	else
		curl_easy_reset(curl);
	return curl;
}

/* Grow the body buffer by hand: realloc would leave unwiped copies. */
static size_t
write_cb(char *data, size_t size, size_t nmemb, void *arg)
{
	Exchange   *ex = (Exchange *) arg;
	AzureHttpResponse *resp = ex->resp;
	size_t		n = size * nmemb;

	if (resp->body_len + n + 1 > MAX_RESPONSE)
	{
		ex->too_large = true;
		return 0;
	}
	if (resp->body_len + n + 1 > resp->body_cap)
	{
		size_t		cap = resp->body_cap ? resp->body_cap : 4096;
		char	   *nb;

		while (cap < resp->body_len + n + 1)
			cap *= 2;
		nb = malloc(cap);
		if (nb == NULL)
			return 0;
		if (resp->body)
		{
			memcpy(nb, resp->body, resp->body_len);
			OPENSSL_cleanse(resp->body, resp->body_cap);
			free(resp->body);
		}
		resp->body = nb;
		resp->body_cap = cap;
	}
	memcpy(resp->body + resp->body_len, data, n);
	resp->body_len += n;
	resp->body[resp->body_len] = '\0';
	return n;
}

static bool
header_is(const char *line, size_t len, const char *name, const char **value, size_t *vlen)
{
	size_t		nlen = strlen(name);

	if (len <= nlen || pg_strncasecmp(line, name, nlen) != 0 || line[nlen] != ':')
		return false;
	*value = line + nlen + 1;
	*vlen = len - nlen - 1;
	while (*vlen > 0 && (**value == ' ' || **value == '\t'))
		(*value)++, (*vlen)--;
	while (*vlen > 0 && ((*value)[*vlen - 1] == '\r' || (*value)[*vlen - 1] == '\n' ||
						 (*value)[*vlen - 1] == ' '))
		(*vlen)--;
	return true;
}

/* Only two response headers matter: Retry-After and x-ms-request-id. */
static size_t
header_cb(char *line, size_t size, size_t nmemb, void *arg)
{
	Exchange   *ex = (Exchange *) arg;
	size_t		len = size * nmemb;
	const char *v;
	size_t		vlen;

	if (header_is(line, len, "Retry-After", &v, &vlen) && vlen > 0 && vlen < 64)
	{
		char		buf[64];
		char	   *end;
		long		secs;

		memcpy(buf, v, vlen);
		buf[vlen] = '\0';
		secs = strtol(buf, &end, 10);
		if (end != buf && *end == '\0')
			ex->resp->retry_after_s = (int) Max(0, Min(secs, RETRY_AFTER_MAX_S));
		else
		{
			/* HTTP-date form */
			time_t		when = curl_getdate(buf, NULL);

			if (when > 0)
				ex->resp->retry_after_s = (int) Max(0, Min(when - time(NULL), RETRY_AFTER_MAX_S));
		}
	}
	else if (header_is(line, len, "x-ms-request-id", &v, &vlen))
		azj_sanitize_code(v, vlen, ex->resp->request_id, sizeof(ex->resp->request_id));
	return len;
}

static int
progress_cb(void *arg, curl_off_t dltotal, curl_off_t dlnow,
			curl_off_t ultotal, curl_off_t ulnow)
{
	Exchange   *ex = (Exchange *) arg;

	if (ex->settings->interrupted && ex->settings->interrupted())
	{
		ex->interrupted = true;
		return 1;
	}
	return 0;
}

static AzureNetClass
classify(CURLcode rc, const Exchange *ex)
{
	switch (rc)
	{
		case CURLE_OK:
			return AZURE_NET_OK;
		case CURLE_PEER_FAILED_VERIFICATION:
		case CURLE_SSL_ISSUER_ERROR:
		case CURLE_SSL_PINNEDPUBKEYNOTMATCH:
		case CURLE_SSL_INVALIDCERTSTATUS:
			return AZURE_NET_TLS_UNTRUSTED;
		case CURLE_SSL_CACERT_BADFILE:
		case CURLE_SSL_CRL_BADFILE:
		case CURLE_UNSUPPORTED_PROTOCOL:
		case CURLE_URL_MALFORMAT:
		case CURLE_NOT_BUILT_IN:
			return AZURE_NET_CONFIG;
		case CURLE_OUT_OF_MEMORY:
		case CURLE_FAILED_INIT:
		case CURLE_BAD_FUNCTION_ARGUMENT:
			return AZURE_NET_INTERNAL;
		case CURLE_ABORTED_BY_CALLBACK:
			return ex->interrupted ? AZURE_NET_INTERRUPTED : AZURE_NET_INTERNAL;
		case CURLE_WRITE_ERROR:
			return ex->too_large ? AZURE_NET_TOO_LARGE : AZURE_NET_INTERNAL;
		default:
			/* resolve, connect, timeout, reset, TLS handshake, HTTP/2 ... */
			return AZURE_NET_TRANSIENT;
	}
}

/* One HTTP exchange. */
static void
perform_once(const AzureSettings *s, const AzureHttpRequest *req,
			 long timeout_ms, AzureHttpResponse *resp)
{
	CURL	   *h = get_handle();
	struct curl_slist *hdrs = NULL;
	char		errbuf[CURL_ERROR_SIZE];
	Exchange	ex;
	CURLcode	rc;
	bool		setup_ok = true;

	memset(&ex, 0, sizeof(ex));
	ex.resp = resp;
	ex.settings = s;
	errbuf[0] = '\0';
	resp->status = 0;
	resp->retry_after_s = -1;
	resp->request_id[0] = '\0';
	resp->net_error[0] = '\0';
	resp->net_detail[0] = '\0';

	if (h == NULL)
	{
		resp->net = AZURE_NET_INTERNAL;
		strlcpy(resp->net_error, "could not initialise libcurl", sizeof(resp->net_error));
		return;
	}
	for (const char *const *p = req->headers; p && *p; p++)
	{
		struct curl_slist *n = curl_slist_append(hdrs, *p);

		if (n == NULL)
		{
			setup_ok = false;
			break;
		}
		hdrs = n;
	}
	/* No 100-continue round trip for our small bodies. */
	if (setup_ok && req->body != NULL)
	{
		struct curl_slist *n = curl_slist_append(hdrs, "Expect:");

		setup_ok = n != NULL;
		if (n)
			hdrs = n;
	}

#define SETOPT(opt, val) (setup_ok = setup_ok && curl_easy_setopt(h, opt, val) == CURLE_OK)
	SETOPT(CURLOPT_URL, req->url);
#if LIBCURL_VERSION_NUM >= 0x075500
	SETOPT(CURLOPT_PROTOCOLS_STR, req->kind == AZURE_EP_VAULT ? "https" : "http,https");
#else
	SETOPT(CURLOPT_PROTOCOLS, req->kind == AZURE_EP_VAULT ? CURLPROTO_HTTPS :
		   (CURLPROTO_HTTP | CURLPROTO_HTTPS));
#endif
	SETOPT(CURLOPT_FOLLOWLOCATION, 0L);
	SETOPT(CURLOPT_NOSIGNAL, 1L);
	SETOPT(CURLOPT_SSL_VERIFYPEER, 1L);
	SETOPT(CURLOPT_SSL_VERIFYHOST, 2L);
	SETOPT(CURLOPT_SSLVERSION, (long) CURL_SSLVERSION_TLSv1_2);
	if (s->ca_file && s->ca_file[0])
		SETOPT(CURLOPT_CAINFO, s->ca_file);
	if (req->kind == AZURE_EP_IDENTITY)
	{
		/* IMDS must be reached directly (and is link-local anyway). */
		SETOPT(CURLOPT_PROXY, "");
		SETOPT(CURLOPT_NOPROXY, "*");
	}
	SETOPT(CURLOPT_CONNECTTIMEOUT_MS, (long) Min(s->connect_timeout_ms, timeout_ms));
	SETOPT(CURLOPT_TIMEOUT_MS, timeout_ms);
	SETOPT(CURLOPT_USERAGENT, "cmk_storage/0.1");
	SETOPT(CURLOPT_HTTPHEADER, hdrs);
	SETOPT(CURLOPT_ERRORBUFFER, errbuf);
	SETOPT(CURLOPT_WRITEFUNCTION, write_cb);
	SETOPT(CURLOPT_WRITEDATA, &ex);
	SETOPT(CURLOPT_HEADERFUNCTION, header_cb);
	SETOPT(CURLOPT_HEADERDATA, &ex);
	SETOPT(CURLOPT_XFERINFOFUNCTION, progress_cb);
	SETOPT(CURLOPT_XFERINFODATA, &ex);
	SETOPT(CURLOPT_NOPROGRESS, 0L);
	if (strcmp(req->method, "POST") == 0)
	{
		SETOPT(CURLOPT_POST, 1L);
		SETOPT(CURLOPT_POSTFIELDS, req->body ? req->body : "");
		SETOPT(CURLOPT_POSTFIELDSIZE, (long) (req->body ? req->body_len : 0));
	}
	else
		SETOPT(CURLOPT_HTTPGET, 1L);
#undef SETOPT

	if (!setup_ok)
	{
		resp->net = AZURE_NET_INTERNAL;
		strlcpy(resp->net_error, "could not set up the HTTP request", sizeof(resp->net_error));
	}
	else
	{
		rc = curl_easy_perform(h);
		resp->net = classify(rc, &ex);
		if (rc == CURLE_OK)
			curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &resp->status);
		else
		{
			const char *msg = errbuf[0] ? errbuf : curl_easy_strerror(rc);

			/*
			 * libcurl's own text names timings ("after 1003 ms"), which would
			 * make every retry look like a new reason; the status shows the
			 * stable description, the detail the full text.  Certificate
			 * problems keep the full text: it says what is wrong.
			 */
			azj_sanitize_message(msg, strlen(msg), resp->net_detail, sizeof(resp->net_detail));
			if (resp->net == AZURE_NET_TRANSIENT)
				msg = curl_easy_strerror(rc);
			azj_sanitize_message(msg, strlen(msg), resp->net_error, sizeof(resp->net_error));
		}
	}

	/* Forget the headers (they may hold a token) before freeing them. */
	for (struct curl_slist *n = hdrs; n; n = n->next)
		OPENSSL_cleanse(n->data, strlen(n->data));
	curl_slist_free_all(hdrs);
	/* The handle keeps pointers to our stack; drop them. */
	curl_easy_setopt(h, CURLOPT_HTTPHEADER, NULL);
	curl_easy_setopt(h, CURLOPT_ERRORBUFFER, NULL);
	curl_easy_setopt(h, CURLOPT_POSTFIELDS, NULL);
}

static void
discard_body(AzureHttpResponse *resp)
{
	if (resp->body)
	{
		OPENSSL_cleanse(resp->body, resp->body_cap);
		free(resp->body);
	}
	resp->body = NULL;
	resp->body_len = resp->body_cap = 0;
}

void
azure_http_free(AzureHttpResponse *resp)
{
	discard_body(resp);
}

static uint32_t
jitter(void)
{
	/* xorshift64*: enough to spread retries of many servers apart */
	if (jitter_state == 0)
		jitter_state = ((uint64_t) azure_now_ms() << 20) ^ (uint64_t) getpid() ^ 0x9E3779B97F4A7C15ULL;
	jitter_state ^= jitter_state >> 12;
	jitter_state ^= jitter_state << 25;
	jitter_state ^= jitter_state >> 27;
	return (uint32_t) ((jitter_state * 0x2545F4914F6CDD1DULL) >> 32);
}

/* Sleep, waking early (false) on a shutdown request. */
static bool
sleep_ms(const AzureSettings *s, long ms)
{
	int64_t		until = azure_now_ms() + ms;

	for (;;)
	{
		int64_t		left = until - azure_now_ms();

		if (s->interrupted && s->interrupted())
			return false;
		if (left <= 0)
			return true;
		pg_usleep(Min(left, SLEEP_SLICE_MS) * 1000L);
	}
}

void
azure_http_request(const AzureSettings *s, const AzureHttpRequest *req,
				   int64_t deadline_ms, AzureHttpResponse *resp)
{
	int64_t		start = azure_now_ms();

	memset(resp, 0, sizeof(*resp));
	resp->retry_after_s = -1;
	for (int attempt = 0;; attempt++)
	{
		int64_t		left = deadline_ms - azure_now_ms();
		long		delay;

		discard_body(resp);
		perform_once(s, req, (long) Max(Min(left, s->request_timeout_ms), MIN_ATTEMPT_MS), resp);
		resp->attempts++;

		if (resp->net == AZURE_NET_OK &&
			!(req->retryable && req->retryable(resp->status)))
			break;
		if (resp->net != AZURE_NET_OK && resp->net != AZURE_NET_TRANSIENT)
			break;

		/* Full backoff doubled each time, then a random half of it off. */
		delay = Min((long) BACKOFF_BASE_MS << Min(attempt, 8), BACKOFF_MAX_MS);
		delay = delay / 2 + (long) (jitter() % (uint32_t) (delay / 2 + 1));
		/* Retry-After wins, but "0" must not turn this into a busy loop. */
		if (resp->net == AZURE_NET_OK && resp->retry_after_s >= 0)
			delay = Max((long) resp->retry_after_s * 1000, MIN_RETRY_DELAY_MS);

		/* Out of time: report the last outcome rather than sleep past it. */
		if (azure_now_ms() + delay + MIN_ATTEMPT_MS > deadline_ms)
			break;
		if (!sleep_ms(s, delay))
		{
			discard_body(resp);
			resp->net = AZURE_NET_INTERRUPTED;
			strlcpy(resp->net_error, "interrupted by a shutdown request", sizeof(resp->net_error));
			break;
		}
	}
	resp->elapsed_ms = (long) (azure_now_ms() - start);
}

bool
azure_url_append_encoded(char *dst, size_t dstsize, const char *src)
{
	static const char hex[] = "0123456789ABCDEF";
	size_t		o = strlen(dst);

	for (const unsigned char *p = (const unsigned char *) src; *p; p++)
	{
		if ((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
			*p == '-' || *p == '.' || *p == '_' || *p == '~')
		{
			if (o + 1 >= dstsize)
			{
				dst[o] = '\0';
				return false;
			}
			dst[o++] = (char) *p;
		}
		else
		{
			if (o + 3 >= dstsize)
			{
				dst[o] = '\0';
				return false;
			}
			dst[o++] = '%';
			dst[o++] = hex[*p >> 4];
			dst[o++] = hex[*p & 15];
		}
	}
	dst[o] = '\0';
	return true;
}
