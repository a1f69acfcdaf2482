/*-------------------------------------------------------------------------
 *
 * provider_azure_identity.c
 *		Access tokens for Azure Key Vault from a managed identity: the VM
 *		Instance Metadata Service (IMDS), or the App Service / Container
 *		Apps endpoint when IDENTITY_ENDPOINT and IDENTITY_HEADER are in the
 *		server's environment.  One token, cached in process memory.
 *
 * The token is a secret.  It lives in one page-aligned block that is
 * locked in memory where allowed and excluded from core dumps, is wiped
 * when it is replaced, forgotten or the process exits, and leaves that
 * block only as the Authorization header handed to the transport (which
 * wipes its copies).  This file must never put the token, the
 * X-IDENTITY-HEADER secret or a token response body into a CmkError, a
 * log line or any other buffer it does not wipe.
 *
 * Refresh policy (Microsoft's guidance for managed identities): at half
 * the token's lifetime, and no later than 5 minutes before it expires; a
 * failed refresh keeps using a token that has not yet expired.  A 401 from
 * the vault makes the caller ask for a fresh token once.
 *
 *-------------------------------------------------------------------------
 */
#ifdef FRONTEND
#include "postgres_fe.h"
#else
#include "postgres.h"
#endif

#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include <openssl/crypto.h>

#include "keys/provider_azure_int.h"

#define REFRESH_MARGIN_S	300		/* refresh 5 minutes before expiry ... */
#define EXPIRY_SLACK_S		30		/* ... and never use one this close */
#define AUTH_PREFIX			"Authorization: Bearer "
#define MAX_KEY				1024

typedef struct TokenCache
{
	bool		valid;
	char		key[MAX_KEY];	/* which identity and endpoint it is for */
	int64_t		refresh_at;		/* unix seconds */
	int64_t		expires_on;
	char		header[sizeof(AUTH_PREFIX) + AZJ_MAX_TOKEN];
	char		scratch[AZJ_MAX_TOKEN]; /* parser output, wiped at once */
} TokenCache;

static TokenCache *cache = NULL;
static size_t cache_size = 0;

static void
wipe_cache(void)
{
	if (cache != NULL)
		OPENSSL_cleanse(cache, cache_size);
}

/*
 * Map the cache once: page-aligned so that mlock() and MADV_DONTDUMP
 * cover exactly it.  Both are best effort (RLIMIT_MEMLOCK may be small);
 * the wiping does not depend on them.
 */
static bool
get_cache(void)
{
	void	   *p;
	long		page;

	if (cache != NULL)
		return true;
	page = sysconf(_SC_PAGESIZE);
	if (page <= 0)
		page = 4096;
	cache_size = ((sizeof(TokenCache) + page - 1) / page) * page;
	p = mmap(NULL, cache_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED)
		return false;
	(void) mlock(p, cache_size);
#ifdef MADV_DONTDUMP
	(void) madvise(p, cache_size, MADV_DONTDUMP);
#endif
	cache = (TokenCache *) p;
	memset(cache, 0, cache_size);
	atexit(wipe_cache);
	return true;
}

void
azure_token_forget(void)
{
	if (cache != NULL)
	{
		OPENSSL_cleanse(cache->header, sizeof(cache->header));
		cache->valid = false;
	}
}

static bool
retryable_identity(long status)
{
	/* IMDS: 404 (not ready), 410 (updating, back within 70 s), 429, 5xx */
	return status == 404 || status == 408 || status == 410 || status == 429 || status >= 500;
}

typedef struct IdentitySource
{
	bool		app_service;
	const char *endpoint;
	const char *selector_param; /* client_id, object_id, msi_res_id/mi_res_id */
	const char *selector_value;
} IdentitySource;

static bool
choose_source(const AzureSettings *s, IdentitySource *src, CmkError *err)
{
	const char *ie = getenv("IDENTITY_ENDPOINT");
	const char *ih = getenv("IDENTITY_HEADER");
	int			nsel = (s->client_id[0] != '\0') + (s->object_id[0] != '\0') +
		(s->msi_res_id[0] != '\0');

	memset(src, 0, sizeof(*src));
	if (nsel > 1)
	{
		cmk_error_set(err, CMK_ERR_CONFIG, "AmbiguousIdentity",
					  "Set only one of cmk_storage.azure_client_id, cmk_storage.azure_object_id and cmk_storage.azure_msi_res_id.",
					  "more than one managed identity selector is set");
		return false;
	}
	src->app_service = ie != NULL && ie[0] != '\0' && ih != NULL && ih[0] != '\0';
	src->endpoint = s->token_endpoint[0] ? s->token_endpoint :
		src->app_service ? ie : AZURE_IMDS_URL;
	if (s->client_id[0])
	{
		src->selector_param = "client_id";
		src->selector_value = s->client_id;
	}
	else if (s->object_id[0])
	{
		src->selector_param = "object_id";
		src->selector_value = s->object_id;
	}
	else if (s->msi_res_id[0])
	{
		/* IMDS calls it msi_res_id, App Service mi_res_id */
		src->selector_param = src->app_service ? "mi_res_id" : "msi_res_id";
		src->selector_value = s->msi_res_id;
	}
	if (pg_strncasecmp(src->endpoint, "http://", 7) != 0 &&
		pg_strncasecmp(src->endpoint, "https://", 8) != 0)
	{
		cmk_error_set(err, CMK_ERR_CONFIG, "BadTokenEndpoint",
					  "Set cmk_storage.azure_token_endpoint to an http:// or https:// URL, or leave it empty for IMDS.",
					  "managed identity token endpoint \"%.200s\" is not an HTTP URL",
					  src->endpoint);
		return false;
	}
	return true;
}

static const char *
source_name(const IdentitySource *src)
{
	return src->app_service ? "App Service managed identity endpoint" :
		"Instance Metadata Service (IMDS)";
}

static void
identity_detail(CmkError *err, const IdentitySource *src, const AzureHttpResponse *resp)
{
	/* The endpoint URL without its query (nothing secret is in either). */
	int			elen = (int) strcspn(src->endpoint, "?");

	cmk_error_detail(err, "Token endpoint %.*s; identity %s%s%s; %d attempt%s in %ld ms%s%s.",
					 Min(elen, 200), src->endpoint,
					 src->selector_param ? src->selector_param : "(none given: the only or system-assigned identity)",
					 src->selector_param ? "=" : "",
					 src->selector_value ? src->selector_value : "",
					 resp->attempts, resp->attempts == 1 ? "" : "s", resp->elapsed_ms,
					 resp->net_detail[0] ? "; libcurl: " : "", resp->net_detail);
}

/* Turn a failed token request into an error. */
static void
identity_error(const IdentitySource *src, const AzureHttpResponse *resp, CmkError *err)
{
	AzureServiceError se;
	const char *what = source_name(src);

	switch (resp->net)
	{
		case AZURE_NET_OK:
			break;
		case AZURE_NET_TLS_UNTRUSTED:
			cmk_error_set(err, CMK_ERR_CONFIG, "TlsVerificationFailed",
						  "The token endpoint's certificate is not trusted. For a private CA set cmk_storage.ca_file to its PEM file; verification cannot be disabled.",
						  "TLS verification of the %s failed: %s", what, resp->net_error);
			identity_detail(err, src, resp);
			return;
		case AZURE_NET_CONFIG:
			cmk_error_set(err, CMK_ERR_CONFIG, "BadTokenEndpoint",
						  "Check cmk_storage.azure_token_endpoint, IDENTITY_ENDPOINT and cmk_storage.ca_file.",
						  "could not reach the %s: %s", what, resp->net_error);
			identity_detail(err, src, resp);
			return;
		case AZURE_NET_TRANSIENT:
		case AZURE_NET_INTERRUPTED:
			cmk_error_set(err, CMK_ERR_TRANSIENT, "IdentityEndpointUnreachable",
						  src->app_service ?
						  "Check that the app has the managed identity assigned. " AZ_HINT_RETRYING :
						  "On an Azure VM, IMDS (169.254.169.254) must be reachable without a proxy and the user-assigned identity attached to the VM; elsewhere set cmk_storage.azure_token_endpoint. " AZ_HINT_RETRYING,
						  "could not reach the %s: %s", what, resp->net_error);
			identity_detail(err, src, resp);
			return;
		case AZURE_NET_TOO_LARGE:
		case AZURE_NET_INTERNAL:
			cmk_error_set(err, CMK_ERR_INTERNAL, "IdentityRequestFailed", NULL,
						  "token request to the %s failed: %s", what,
						  resp->net == AZURE_NET_TOO_LARGE ? "response too large" : resp->net_error);
			identity_detail(err, src, resp);
			return;
	}

	if (!azj_parse_error(resp->body, resp->body_len, &se))
		memset(&se, 0, sizeof(se));
	if (se.code[0] == '\0')
		snprintf(se.code, sizeof(se.code), "HTTP%ld", resp->status);

	if (retryable_identity(resp->status))
		cmk_error_set(err, CMK_ERR_TRANSIENT, se.code,
					  "The managed identity endpoint is busy or not ready (IMDS answers 404 or 410 while it starts or updates). " AZ_HINT_RETRYING,
					  "the %s did not issue a token (HTTP %ld %s)%s%s",
					  what, resp->status, se.code, se.message[0] ? ": " : "", se.message);
	else if (resp->status == 400)
		cmk_error_set(err, CMK_ERR_CONFIG, se.code,
					  "The managed identity was not found or the request was refused. Check cmk_storage.azure_client_id (or azure_object_id / azure_msi_res_id) against the user-assigned identity attached to this VM or app (az vm identity show; az identity show).",
					  "the %s refused to issue a token for Azure Key Vault (HTTP 400 %s)%s%s",
					  what, se.code, se.message[0] ? ": " : "", se.message);
	else if (resp->status == 401 || resp->status == 403)
		cmk_error_set(err, CMK_ERR_CONFIG, se.code,
					  src->app_service ?
					  "IDENTITY_HEADER in the server's environment does not match the platform's; restart the server from the app's own environment." :
					  "IMDS refused the request; it only answers requests from inside the VM, without a proxy.",
					  "the %s refused the token request (HTTP %ld %s)%s%s",
					  what, resp->status, se.code, se.message[0] ? ": " : "", se.message);
	else
		cmk_error_set(err, CMK_ERR_CONFIG, se.code,
					  "Check cmk_storage.azure_token_endpoint.",
					  "unexpected answer from the %s (HTTP %ld %s)%s%s",
					  what, resp->status, se.code, se.message[0] ? ": " : "", se.message);
	identity_detail(err, src, resp);
}

static bool
fetch_token(const AzureSettings *s, const IdentitySource *src, const char *key,
			int64_t deadline_ms, CmkError *err)
{
	char		url[2048];
	char		secret_header[512];
	const char *headers[3];
	AzureHttpRequest req;
	AzureHttpResponse resp;
	int64_t		now;
	int64_t		expires_on;
	const char *why;
	bool		ok;

	snprintf(url, sizeof(url), "%s%capi-version=%s&resource=",
			 src->endpoint, strchr(src->endpoint, '?') ? '&' : '?',
			 src->app_service ? AZURE_APPSERVICE_API : AZURE_IMDS_API);
	ok = azure_url_append_encoded(url, sizeof(url), s->resource);
	if (ok && src->selector_param)
	{
		strlcat(url, "&", sizeof(url));
		strlcat(url, src->selector_param, sizeof(url));
		strlcat(url, "=", sizeof(url));
		ok = azure_url_append_encoded(url, sizeof(url), src->selector_value);
	}
	if (!ok)
	{
		cmk_error_set(err, CMK_ERR_CONFIG, "BadTokenEndpoint", NULL,
					  "the managed identity token URL is too long");
		return false;
	}

	if (src->app_service)
	{
		const char *ih = getenv("IDENTITY_HEADER");

		if (strlen(ih) > sizeof(secret_header) - 32)
		{
			cmk_error_set(err, CMK_ERR_CONFIG, "BadIdentityHeader", NULL,
						  "IDENTITY_HEADER in the server's environment is too long");
			return false;
		}
		snprintf(secret_header, sizeof(secret_header), "X-IDENTITY-HEADER: %s", ih);
	}
	else
		strlcpy(secret_header, "Metadata: true", sizeof(secret_header));
	headers[0] = secret_header;
	headers[1] = "Accept: application/json";
	headers[2] = NULL;

	memset(&req, 0, sizeof(req));
	req.kind = AZURE_EP_IDENTITY;
	req.method = "GET";
	req.url = url;
	req.headers = headers;
	req.retryable = retryable_identity;
	azure_http_request(s, &req, deadline_ms, &resp);
	OPENSSL_cleanse(secret_header, sizeof(secret_header));

	if (resp.net != AZURE_NET_OK || resp.status != 200)
	{
		identity_error(src, &resp, err);
		azure_http_free(&resp);
		return false;
	}

	now = (int64_t) time(NULL);
	ok = azj_parse_token(resp.body, resp.body_len, now, cache->scratch,
						 sizeof(cache->scratch), &expires_on, &why);
	azure_http_free(&resp);
	if (!ok)
	{
		OPENSSL_cleanse(cache->scratch, sizeof(cache->scratch));
		cmk_error_set(err, CMK_ERR_INTERNAL, "MalformedTokenResponse", NULL,
					  "malformed response from the %s: %s", source_name(src), why);
		identity_detail(err, src, &resp);
		return false;
	}

	/* Replace the old token; the new one goes straight into the header. */
	OPENSSL_cleanse(cache->header, sizeof(cache->header));
	snprintf(cache->header, sizeof(cache->header), "%s%s", AUTH_PREFIX, cache->scratch);
	OPENSSL_cleanse(cache->scratch, sizeof(cache->scratch));
	strlcpy(cache->key, key, sizeof(cache->key));
	cache->expires_on = expires_on;
	cache->refresh_at = Min(now + (expires_on - now) / 2, expires_on - REFRESH_MARGIN_S);
	cache->valid = true;
	return true;
}

const char *
azure_token_header(const AzureSettings *s, bool force_refresh,
				   int64_t deadline_ms, CmkError *err)
{
	IdentitySource src;
	char		key[MAX_KEY];
	int64_t		now = (int64_t) time(NULL);
	bool		usable;

	if (!choose_source(s, &src, err))
		return NULL;
	if (!get_cache())
	{
		cmk_error_set(err, CMK_ERR_INTERNAL, NULL, NULL,
					  "could not allocate memory for the access token");
		return NULL;
	}
	snprintf(key, sizeof(key), "%d|%s|%s|%s=%s", src.app_service, src.endpoint, s->resource,
			 src.selector_param ? src.selector_param : "",
			 src.selector_value ? src.selector_value : "");

	/* Another identity or endpoint than the cached token's: start over. */
	if (cache->valid && strcmp(cache->key, key) != 0)
		azure_token_forget();
	if (force_refresh)
		azure_token_forget();

	usable = cache->valid && now < cache->expires_on - EXPIRY_SLACK_S;
	if (usable && now < cache->refresh_at)
		return cache->header;

	if (!fetch_token(s, &src, key, deadline_ms, err))
	{
		/* A refresh that failed early leaves a still-valid token usable. */
		if (usable && cache->valid)
		{
			memset(err, 0, sizeof(*err));
			return cache->header;
		}
		azure_token_forget();
		return NULL;
	}
	return cache->header;
}
