/*-------------------------------------------------------------------------
 *
 * provider_azure.c
 *		KEK provider backed by an RSA key in Azure Key Vault:
 *		cmk_storage.key_uri = 'https://<vault-host>[:port]/keys/<name>[/<version>]'.
 *
 * describe = GET key; wrap = wrapkey on the current version (the versioned
 * kid it names is what the control file records); unwrap = unwrapkey on
 * exactly the recorded kid.  The private key never leaves the vault.
 *
 * This file owns the Key Vault protocol: URLs, request bodies, the 401 ->
 * fresh token -> one retry rule, and the mapping of every outcome to a
 * CmkError (kind, the vault's error code, a bounded sanitised message and
 * a hint).  Transport is in provider_azure_http.c, tokens in
 * provider_azure_identity.c, response parsing in provider_azure_json.c.
 *
 * Rules it must keep: never ereport or log (key_provider.h); never send the
 * bearer token anywhere but the vault host named by cmk_storage.key_uri (a
 * kid read from the control file or a response only ever selects a key
 * name and version on that host); never put a token, a DEK or a response
 * body into a CmkError; wipe every buffer that held the DEK.
 *
 *-------------------------------------------------------------------------
 */
#ifdef FRONTEND
#include "postgres_fe.h"
#else
#include "postgres.h"
#endif

#include <time.h>

#include <openssl/crypto.h>

#ifndef FRONTEND
#include "miscadmin.h"
#include "postmaster/interrupt.h"
#include "utils/guc.h"
#endif

#include "crypto/cmk_crypto.h"
#include "keys/provider_azure.h"
#include "keys/provider_azure_int.h"

#define DEFAULT_CONNECT_TIMEOUT_MS	5000
#define DEFAULT_REQUEST_TIMEOUT_MS	10000
#define DEFAULT_RETRY_TIMEOUT_MS	20000
#define B64_WRAPPED_MAX		(CMK_MAX_WRAPPED * 4 / 3 + 4)

#define HINT_MALFORMED \
	"The vault, or something between it and " AZ_WHERE " (a TLS-inspecting proxy), " \
	"sent a response that is not what Azure Key Vault sends. " AZ_HINT_RETRYING

#define HINT_PERMISSIONS \
	"Grant " AZ_WHO " the key permissions Get, Wrap Key and Unwrap Key " \
	"(access policy), or the role \"Key Vault Crypto Service Encryption User\" on the key or vault (Azure RBAC). " \
	AZ_HINT_HEALS

/* ------------------------------------------------------------------------
 * Settings
 * ------------------------------------------------------------------------
 */

#ifndef FRONTEND
/* The key worker's SIGTERM handler sets ShutdownRequestPending. */
static bool
azure_interrupted(void)
{
	return ShutdownRequestPending || ProcDiePending;
}

static const char *
setting(const char *guc, const char *env)
{
	const char *v = GetConfigOption(guc, true, false);

	return v ? v : "";
}
#else
static const char *
setting(const char *guc, const char *env)
{
	const char *v = getenv(env);

	return v ? v : "";
}
#endif

static int
setting_int(const char *guc, const char *env, int dflt, int min)
{
	const char *v = setting(guc, env);
	char	   *end;
	long		n;

	if (v[0] == '\0')
		return dflt;
	n = strtol(v, &end, 10);
	if (*end != '\0' || n < min || n > INT_MAX)
		return dflt;
	return (int) n;
}

/*
 * Read the settings for one operation: GUCs in the server (by name, so
 * that this file needs no variables from the module's entry point), the
 * environment in frontend tools.
 */
static void
load_settings(AzureSettings *s)
{
	memset(s, 0, sizeof(*s));
	s->client_id = setting("cmk_storage.azure_client_id", "CMK_AZURE_CLIENT_ID");
	s->object_id = setting("cmk_storage.azure_object_id", "CMK_AZURE_OBJECT_ID");
	s->msi_res_id = setting("cmk_storage.azure_msi_res_id", "CMK_AZURE_MSI_RES_ID");
	s->token_endpoint = setting("cmk_storage.azure_token_endpoint", "CMK_AZURE_TOKEN_ENDPOINT");
	s->ca_file = setting("cmk_storage.ca_file", "CMK_CA_FILE");
	s->api_version = setting("cmk_storage.azure_api_version", "CMK_AZURE_API_VERSION");
	if (s->api_version[0] == '\0')
		s->api_version = AZURE_DEFAULT_API;
	s->resource = AZURE_VAULT_RESOURCE;
	s->connect_timeout_ms = setting_int("cmk_storage.azure_connect_timeout",
										"CMK_AZURE_CONNECT_TIMEOUT_MS",
										DEFAULT_CONNECT_TIMEOUT_MS, 100);
	s->request_timeout_ms = setting_int("cmk_storage.azure_request_timeout",
										"CMK_AZURE_REQUEST_TIMEOUT_MS",
										DEFAULT_REQUEST_TIMEOUT_MS, 100);
	s->retry_timeout_ms = setting_int("cmk_storage.azure_retry_timeout",
									  "CMK_AZURE_RETRY_TIMEOUT_MS",
									  DEFAULT_RETRY_TIMEOUT_MS, 1000);
#ifndef FRONTEND
	s->interrupted = azure_interrupted;
#endif
}

/* ------------------------------------------------------------------------
 * Key URIs
 * ------------------------------------------------------------------------
 */

static bool
azure_handles(const char *uri)
{
	return (pg_strncasecmp(uri, "https://", 8) == 0 ||
			pg_strncasecmp(uri, "http://", 7) == 0) &&
		strstr(uri, "/keys/") != NULL;
}

static bool
host_in(const char *host, const char *domain)
{
	size_t		h = strlen(host);
	size_t		d = strlen(domain);

	return h > d && host[h - d - 1] == '.' && strcmp(host + h - d, domain) == 0;
}

/*
 * The token's audience follows the vault's cloud: Azure China and Azure
 * Government vaults, and Managed HSM pools, take tokens for their own
 * resource.  Anything else (public cloud, private endpoints, emulators)
 * uses https://vault.azure.net.
 */
static const char *
vault_resource(const AzureKeyRef *ref)
{
	if (host_in(ref->host, "vault.azure.cn"))
		return "https://vault.azure.cn";
	if (host_in(ref->host, "vault.usgovcloudapi.net"))
		return "https://vault.usgovcloudapi.net";
	if (host_in(ref->host, "managedhsm.azure.net"))
		return "https://managedhsm.azure.net";
	return AZURE_VAULT_RESOURCE;
}

static bool
parse_uri(const char *uri, AzureKeyRef *ref, CmkError *err)
{
	switch (azj_parse_key_url(uri, strlen(uri), ref))
	{
		case AZURE_URL_OK:
			return true;
		case AZURE_URL_PLAIN_HTTP:
			cmk_error_set(err, CMK_ERR_CONFIG, "InsecureVaultUrl",
						  "Use https://: the bearer token is never sent over plain HTTP.",
						  "key URI \"%.200s\" uses plain HTTP", uri);
			return false;
		case AZURE_URL_BAD:
			break;
	}
	cmk_error_set(err, CMK_ERR_CONFIG, "BadKeyUri",
				  "Write it as https://<vault>.vault.azure.net/keys/<name> (versionless: follows rotation) or .../keys/<name>/<version>, with no query string.",
				  "key URI \"%.200s\" is not an Azure Key Vault key URL", uri);
	return false;
}

/* https://host[:port] for a reference (port only if it is not 443) */
static void
vault_base(const AzureKeyRef *ref, char *out, size_t size)
{
	if (ref->port != 443)
		snprintf(out, size, "https://%s:%d", ref->host, ref->port);
	else
		snprintf(out, size, "https://%s", ref->host);
}

/* ------------------------------------------------------------------------
 * Errors
 * ------------------------------------------------------------------------
 */

static void
vault_detail(CmkError *err, const AzureKeyRef *vault, const char *version,
			 const AzureHttpResponse *resp)
{
	char		base[AZJ_MAX_HOST + 16];

	vault_base(vault, base, sizeof(base));
	cmk_error_detail(err, "Vault %s, key version %s%s%s; %d attempt%s in %ld ms%s%s.",
					 base, version && version[0] ? version : "(latest)",
					 resp->request_id[0] ? "; x-ms-request-id " : "", resp->request_id,
					 resp->attempts, resp->attempts == 1 ? "" : "s", resp->elapsed_ms,
					 resp->net_detail[0] ? "; libcurl: " : "", resp->net_detail);
}

static void
vault_net_error(const AzureKeyRef *vault, const char *version,
				const AzureHttpResponse *resp, CmkError *err)
{
	char		base[AZJ_MAX_HOST + 16];

	vault_base(vault, base, sizeof(base));
	switch (resp->net)
	{
		case AZURE_NET_TLS_UNTRUSTED:
			cmk_error_set(err, CMK_ERR_CONFIG, "TlsVerificationFailed",
						  "The vault's TLS certificate is not trusted by " AZ_WHERE ". For a private CA (such as the emulator's ca_file) set cmk_storage.ca_file to its PEM file; verification cannot be turned off.",
						  "TLS verification of Azure Key Vault %s failed: %s", base, resp->net_error);
			break;
		case AZURE_NET_CONFIG:
			cmk_error_set(err, CMK_ERR_CONFIG, "VaultRequestRefused",
						  "Check cmk_storage.key_uri and cmk_storage.ca_file (it must be a readable PEM file).",
						  "could not send a request to Azure Key Vault %s: %s", base, resp->net_error);
			break;
		case AZURE_NET_TRANSIENT:
		case AZURE_NET_INTERRUPTED:
			cmk_error_set(err, CMK_ERR_TRANSIENT, "VaultUnreachable",
						  "Check the network path to the vault (DNS, firewall, private endpoint, the vault's network rules). " AZ_HINT_RETRYING,
						  "could not reach Azure Key Vault %s: %s", base, resp->net_error);
			break;
		case AZURE_NET_TOO_LARGE:
			cmk_error_set(err, CMK_ERR_INTERNAL, "MalformedResponse", HINT_MALFORMED,
						  "Azure Key Vault %s sent an oversized response", base);
			break;
		case AZURE_NET_INTERNAL:
		case AZURE_NET_OK:
			cmk_error_set(err, CMK_ERR_INTERNAL, "VaultRequestFailed", NULL,
						  "request to Azure Key Vault %s failed: %s", base, resp->net_error);
			break;
	}
	vault_detail(err, vault, version, resp);
}

static bool
code_is(const AzureServiceError *se, const char *code)
{
	return strcmp(se->inner, code) == 0 || strcmp(se->code, code) == 0;
}

/* Map an HTTP error status from the vault to a CmkError. */
static void
vault_status_error(const char *op, const AzureKeyRef *vault, const char *name,
				   const char *version, const AzureHttpResponse *resp, CmkError *err)
{
	AzureServiceError se;
	char		codes[2 * AZJ_MAX_CODE + 2];
	const char *code;
	long		status = resp->status;
	CmkErrorKind kind;
	const char *hint;

	if (!azj_parse_error(resp->body, resp->body_len, &se))
		memset(&se, 0, sizeof(se));
	if (se.code[0] == '\0')
		snprintf(se.code, sizeof(se.code), "HTTP%ld", status);
	/* The most specific code is the one to act on and to report. */
	code = se.inner[0] ? se.inner : se.code;
	snprintf(codes, sizeof(codes), "%s%s%s", se.code, se.inner[0] ? "/" : "", se.inner);

	if (status == 401)
	{
		kind = CMK_ERR_DENIED;
		hint = "The vault rejected a freshly issued managed-identity token. The identity must belong to the vault's Microsoft Entra tenant; check cmk_storage.azure_client_id (or azure_object_id / azure_msi_res_id).";
	}
	else if (status == 403)
	{
		kind = CMK_ERR_DENIED;
		if (code_is(&se, "KeyDisabled"))
			hint = "The key version is disabled. Enable it (az keyvault key set-attributes --vault-name <vault> --name <key> --version <version> --enabled true). " AZ_HINT_HEALS;
		else if (code_is(&se, "KeyExpired") || code_is(&se, "KeyNotYetValid"))
			hint = "The key version is outside its activation (nbf) / expiry (exp) dates. Wrapping needs a valid version: extend the expiry date or rotate to a new version. Unwrapping keeps working with an expired version.";
		else if (code_is(&se, "KeyOperationForbidden"))
			hint = "The key does not permit this operation: add wrapKey and unwrapKey to its permitted operations (key_ops).";
		else if (code_is(&se, "ForbiddenByRbac"))
			hint = "Assign the role \"Key Vault Crypto Service Encryption User\" (keys/read, keys/wrap/action, keys/unwrap/action) to " AZ_WHO " on the key or the vault. Role assignments can take a few minutes to apply.";
		else if (code_is(&se, "ForbiddenByFirewall") || code_is(&se, "ForbiddenByConnection"))
			hint = "The vault's network rules refuse " AZ_WHERE ". Allow its network (virtual network rule, private endpoint or IP rule) in the vault's networking settings.";
		else
			hint = HINT_PERMISSIONS;
	}
	else if (status == 404 && code_is(&se, "KeyNotFound"))
	{
		kind = CMK_ERR_DENIED;
		hint = "The key or this version does not exist, or it was deleted. A deleted key can be recovered while soft-delete retention lasts (az keyvault key recover --vault-name <vault> --name <key>); a purged key is gone for good, and so is the data it protects. Enable purge protection on the vault.";
	}
	else if (status == 404)
	{
		kind = CMK_ERR_CONFIG;
		hint = "Check the vault host in cmk_storage.key_uri and cmk_storage.azure_api_version.";
	}
	else if (status == 409 && code_is(&se, "ObjectIsBeingRecovered"))
	{
		kind = CMK_ERR_TRANSIENT;
		hint = "The key is being recovered from soft delete; cmk_storage retries.";
	}
	else if (status == 409)
	{
		kind = CMK_ERR_DENIED;
		hint = "The key is deleted but recoverable: recover it (az keyvault key recover).";
	}
	else if (status == 400 && strcmp(op, "unwrapKey") == 0)
	{
		kind = CMK_ERR_WRONG_KEY;
		hint = "The vault could not unwrap the data encryption key with the recorded key version: it was wrapped by another key, or the wrapped key is damaged. Check also cmk_storage.azure_api_version.";
	}
	else if (status == 429)
	{
		kind = CMK_ERR_TRANSIENT;
		hint = "The vault is throttling requests (per-vault limits are per 10 seconds); cmk_storage retries with backoff.";
	}
	else if (status >= 500)
	{
		kind = CMK_ERR_TRANSIENT;
		hint = "The vault reported a server error; cmk_storage retries.";
	}
	else if (status >= 300 && status < 400)
	{
		kind = CMK_ERR_CONFIG;
		hint = "Redirects are never followed (they would carry the access token elsewhere). Use the vault's own URL in cmk_storage.key_uri.";
	}
	else
	{
		kind = CMK_ERR_CONFIG;
		hint = "Check cmk_storage.key_uri and cmk_storage.azure_api_version.";
	}

	if (status == 404 && kind == CMK_ERR_DENIED)
		cmk_error_set(err, kind, code, hint,
					  "Azure Key Vault has no key \"%s\"%s%s (HTTP 404 %s)%s%s",
					  name, version && version[0] ? " version " : "", version ? version : "",
					  codes, se.message[0] ? ": " : "", se.message);
	else if (status == 401 || status == 403)
		cmk_error_set(err, kind, code, hint,
					  "Azure Key Vault denied operation %s on key \"%s\" (HTTP %ld %s)%s%s",
					  op, name, status, codes, se.message[0] ? ": " : "", se.message);
	else
		cmk_error_set(err, kind, code, hint,
					  "Azure Key Vault operation %s on key \"%s\" failed (HTTP %ld %s)%s%s",
					  op, name, status, codes, se.message[0] ? ": " : "", se.message);
	vault_detail(err, vault, version, resp);
}

/* ------------------------------------------------------------------------
 * Requests
 * ------------------------------------------------------------------------
 */

static bool
retryable_vault(long status)
{
	return status == 408 || status == 429 || status >= 500;
}

/*
 * One Key Vault operation on vault's host: /keys/<name>[/<version>]<suffix>.
 * A 401 gets one fresh token and one more try.  On success (2xx) the
 * caller owns resp and must azure_http_free() it; on failure err is set.
 */
static bool
vault_call(const AzureSettings *s, const char *op, const char *method,
		   const AzureKeyRef *vault, const char *name, const char *version,
		   const char *suffix, const char *body, AzureHttpResponse *resp,
		   CmkError *err)
{
	int64_t		deadline = azure_now_ms() + s->retry_timeout_ms;
	char		url[1024];
	AzureHttpRequest req;
	bool		ok = true;

	vault_base(vault, url, sizeof(url));
	strlcat(url, "/keys/", sizeof(url));
	strlcat(url, name, sizeof(url));
	if (version && version[0])
	{
		strlcat(url, "/", sizeof(url));
		strlcat(url, version, sizeof(url));
	}
	strlcat(url, suffix, sizeof(url));
	strlcat(url, "?api-version=", sizeof(url));
	ok = azure_url_append_encoded(url, sizeof(url), s->api_version);
	if (!ok)
	{
		cmk_error_set(err, CMK_ERR_CONFIG, "BadKeyUri", NULL, "the Key Vault request URL is too long");
		return false;
	}

	memset(&req, 0, sizeof(req));
	req.kind = AZURE_EP_VAULT;
	req.method = method;
	req.url = url;
	req.body = body;
	req.body_len = body ? strlen(body) : 0;
	req.retryable = retryable_vault;

	for (int attempt = 0; attempt < 2; attempt++)
	{
		const char *auth = azure_token_header(s, attempt > 0, deadline, err);
		const char *headers[4];

		if (auth == NULL)
		{
			memset(resp, 0, sizeof(*resp));
			return false;
		}
		headers[0] = auth;
		headers[1] = "Accept: application/json";
		headers[2] = body ? "Content-Type: application/json" : NULL;
		headers[3] = NULL;
		req.headers = headers;
		azure_http_request(s, &req, deadline, resp);

		/* Expired or revoked token: forget it, fetch a new one, once. */
		if (resp->net == AZURE_NET_OK && resp->status == 401 && attempt == 0)
		{
			azure_http_free(resp);
			azure_token_forget();
			continue;
		}
		break;
	}

	if (resp->net != AZURE_NET_OK)
		vault_net_error(vault, version, resp, err);
	else if (resp->status < 200 || resp->status > 299)
		vault_status_error(op, vault, name, version, resp, err);
	else
		return true;
	azure_http_free(resp);
	return false;
}

/* The kid must name a version of the same key on the same vault. */
static bool
same_key(const AzureKeyRef *a, const AzureKeyRef *b)
{
	return azj_same_vault(a, b) && pg_strcasecmp(a->name, b->name) == 0;
}

/* GET the key (the version in ref, or the latest) and check it is usable. */
static bool
get_key(const AzureSettings *s, const AzureKeyRef *ref, AzureKeyBundle *kb,
		CmkError *err)
{
	AzureHttpResponse resp;
	const char *why;
	bool		ok;

	if (!vault_call(s, "get", "GET", ref, ref->name, ref->version, "", NULL, &resp, err))
		return false;
	ok = azj_parse_key_bundle(resp.body, resp.body_len, kb, &why);
	if (!ok)
	{
		cmk_error_set(err, CMK_ERR_INTERNAL, "MalformedResponse", HINT_MALFORMED,
					  "malformed key from Azure Key Vault for key \"%s\": %s", ref->name, why);
		vault_detail(err, ref, ref->version, &resp);
	}
	else if (!same_key(&kb->ref, ref) ||
			 (ref->version[0] && strcmp(kb->ref.version, ref->version) != 0))
	{
		ok = false;
		cmk_error_set(err, CMK_ERR_INTERNAL, "UnexpectedKid", NULL,
					  "Azure Key Vault answered a request for key \"%s\" with another key's id \"%.200s\"",
					  ref->name, kb->kid);
	}
	azure_http_free(&resp);
	if (!ok)
		return false;

	if (strcmp(kb->kty, "RSA") != 0 && strcmp(kb->kty, "RSA-HSM") != 0)
	{
		cmk_error_set(err, CMK_ERR_CONFIG, "UnsupportedKeyType",
					  "Use an RSA or RSA-HSM key of 2048, 3072 or 4096 bits.",
					  "Azure Key Vault key \"%s\" is of type %s; only RSA and RSA-HSM keys can wrap the data encryption key",
					  ref->name, kb->kty[0] ? kb->kty : "(unknown)");
		return false;
	}
	if (kb->bits != 2048 && kb->bits != 3072 && kb->bits != 4096)
	{
		cmk_error_set(err, CMK_ERR_CONFIG, "UnsupportedKeySize",
					  "Use an RSA key of 2048, 3072 or 4096 bits (4096 recommended).",
					  "Azure Key Vault key \"%s\" has a %d-bit modulus, which is not supported",
					  ref->name, kb->bits);
		return false;
	}
	if (kb->ops_listed && (!kb->can_wrap || !kb->can_unwrap))
	{
		cmk_error_set(err, CMK_ERR_CONFIG, "KeyOperationForbidden",
					  "Add wrapKey and unwrapKey to the key's permitted operations (az keyvault key set-attributes --ops wrapKey unwrapKey ...).",
					  "Azure Key Vault key \"%s\" does not permit %s",
					  ref->name, !kb->can_wrap && !kb->can_unwrap ? "wrapKey and unwrapKey" :
					  !kb->can_wrap ? "wrapKey" : "unwrapKey");
		return false;
	}
	return true;
}

/* Is the version inside its nbf/exp window now? (Needed for wrap only.) */
static bool
in_date_window(const AzureKeyBundle *kb, CmkError *err)
{
	int64_t		now = (int64_t) time(NULL);
	struct tm	tm;
	char		when[32];
	time_t		t;

	if (kb->has_nbf && now < kb->nbf)
	{
		t = (time_t) kb->nbf;
		strftime(when, sizeof(when), "%Y-%m-%d %H:%M:%S UTC", gmtime_r(&t, &tm));
		cmk_error_set(err, CMK_ERR_DENIED, "KeyNotYetValid",
					  "Wait for the activation date or change it (az keyvault key set-attributes --not-before ...).",
					  "Azure Key Vault key \"%s\" version %s is not valid before %s; it cannot wrap yet",
					  kb->ref.name, kb->ref.version, when);
		return false;
	}
	if (kb->has_exp && now >= kb->exp)
	{
		t = (time_t) kb->exp;
		strftime(when, sizeof(when), "%Y-%m-%d %H:%M:%S UTC", gmtime_r(&t, &tm));
		cmk_error_set(err, CMK_ERR_DENIED, "KeyExpired",
					  "Extend the key's expiry date (az keyvault key set-attributes --expires ...) or rotate to a new version. An expired version still unwraps, so data already wrapped stays readable.",
					  "Azure Key Vault key \"%s\" version %s expired at %s; it can no longer wrap",
					  kb->ref.name, kb->ref.version, when);
		return false;
	}
	return true;
}

/* {"alg":"...","value":"<base64url>"} in a malloc'd buffer; wipe it after. */
static char *
key_op_body(CmkWrapAlg alg, const uint8_t *in, size_t in_len, CmkError *err)
{
	const char *alg_name = cmk_wrap_alg_name(alg);
	size_t		size = in_len * 4 / 3 + 64;
	char	   *body;
	char	   *b64;

	if (strcmp(alg_name, "unknown") == 0)
	{
		cmk_error_set(err, CMK_ERR_CONFIG, "UnsupportedAlgorithm",
					  "Use RSA-OAEP-256 or RSA-OAEP (cmk_storage.wrap_algorithm).",
					  "key wrap algorithm %d is not supported by Azure Key Vault", (int) alg);
		return NULL;
	}
	body = malloc(size);
	b64 = malloc(size);
	if (body == NULL || b64 == NULL || cmk_base64url_encode(in, in_len, b64, size) == 0)
	{
		if (b64)
		{
			OPENSSL_cleanse(b64, size);
			free(b64);
		}
		free(body);
		cmk_error_set(err, CMK_ERR_INTERNAL, NULL, NULL, "out of memory building a Key Vault request");
		return NULL;
	}
	snprintf(body, size, "{\"alg\":\"%s\",\"value\":\"%s\"}", alg_name, b64);
	OPENSSL_cleanse(b64, size);
	free(b64);
	return body;
}

static void
free_body(char *body)
{
	if (body)
	{
		OPENSSL_cleanse(body, strlen(body));
		free(body);
	}
}

/* Settings and the key reference of a key URI: what every operation starts with. */
static bool
open_key(const char *uri, AzureSettings *s, AzureKeyRef *ref, CmkError *err)
{
	load_settings(s);
	if (!parse_uri(uri, ref, err))
		return false;
	s->resource = vault_resource(ref);
	return true;
}

/*
 * One wrapkey (wrap) or unwrapkey call on exactly key version ver of the
 * vault ref names, whose full key id is ver_kid: the request (its body, holding key material, is
 * wiped), the decoded result in out[out_size], and the check that the vault
 * answered with that very version.  On success *resp is the caller's to
 * check further and free; on failure it is freed and err says why, with the
 * vault's response attached.
 */
static bool
key_op(const AzureSettings *s, bool wrap,
	   const AzureKeyRef *ref, const AzureKeyRef *ver, const char *ver_kid,
	   CmkWrapAlg alg, const uint8_t *in, size_t in_len,
	   uint8_t *out, size_t out_size, size_t *out_len,
	   AzureHttpResponse *resp, CmkError *err)
{
	const char *path = wrap ? "/wrapkey" : "/unwrapkey";
	AzureKeyRef got;
	char		rkid[CMK_MAX_KID];
	char	   *body;
	const char *why;
	bool		ok;

	body = key_op_body(alg, in, in_len, err);
	if (body == NULL)
		return false;
	ok = vault_call(s, wrap ? "wrapKey" : "unwrapKey", "POST", ref, ver->name, ver->version, path, body, resp, err);
	free_body(body);
	if (!ok)
		return false;

	*out_len = 0;
	ok = azj_parse_key_result(resp->body, resp->body_len, rkid, sizeof(rkid),
							  out, out_size, out_len, &why);
	if (!ok)
		cmk_error_set(err, CMK_ERR_INTERNAL, "MalformedResponse", HINT_MALFORMED,
					  "malformed %s response from Azure Key Vault for key \"%s\": %s",
					  path + 1, ver->name, why);
	else if (azj_parse_key_url(rkid, strlen(rkid), &got) != AZURE_URL_OK ||
			 !same_key(&got, ver) || strcmp(got.version, ver->version) != 0)
	{
		ok = false;
		cmk_error_set(err, CMK_ERR_INTERNAL, "UnexpectedKid", NULL,
					  "Azure Key Vault %s with key id \"%.200s\", not with the requested \"%.200s\"",
					  wrap ? "wrapped" : "unwrapped", rkid, ver_kid);
	}
	if (!ok)
	{
		vault_detail(err, ref, ver->version, resp);
		azure_http_free(resp);
	}
	return ok;
}

/* ------------------------------------------------------------------------
 * The provider
 * ------------------------------------------------------------------------
 */

static bool
azure_describe(const char *uri, CmkKekInfo *info, CmkError *err)
{
	AzureSettings s;
	AzureKeyRef ref;
	AzureKeyBundle kb;
	CmkError	dates;

	if (!open_key(uri, &s, &ref, err) || !get_key(&s, &ref, &kb, err))
		return false;
	memset(info, 0, sizeof(*info));
	strlcpy(info->kid, kb.kid, sizeof(info->kid));
	info->bits = kb.bits;
	/* "Usable for wrapping": an expired version still exists, but is not. */
	info->enabled = kb.enabled && in_date_window(&kb, &dates);
	return true;
}

static bool
azure_wrap(const char *uri, CmkWrapAlg alg, const uint8_t *dek, size_t dek_len,
		   uint8_t *wrapped, size_t *wrapped_len, char *kid, size_t kid_size,
		   CmkError *err)
{
	AzureSettings s;
	AzureKeyRef ref;
	AzureKeyBundle kb;
	AzureHttpResponse resp;
	size_t		len;

	if (!open_key(uri, &s, &ref, err))
		return false;

	/*
	 * Look the key up first and wrap with exactly that version: we check
	 * type, size, operations and dates before sending the DEK anywhere, and
	 * the kid we record is the version that really wrapped it.
	 */
	if (!get_key(&s, &ref, &kb, err))
		return false;
	if (!kb.enabled)
	{
		cmk_error_set(err, CMK_ERR_DENIED, "KeyDisabled",
					  "Enable the key version in the vault.",
					  "Azure Key Vault key \"%s\" version %s is disabled", ref.name, kb.ref.version);
		return false;
	}
	if (!in_date_window(&kb, err))
		return false;
	if (strlen(kb.kid) >= kid_size)
	{
		cmk_error_set(err, CMK_ERR_CONFIG, "KidTooLong", NULL,
					  "Azure Key Vault key id is longer than %zu bytes", kid_size - 1);
		return false;
	}

	if (!key_op(&s, true, &ref, &kb.ref, kb.kid, alg, dek, dek_len,
				wrapped, CMK_MAX_WRAPPED, &len, &resp, err))
		return false;
	if (len * 8 != (size_t) kb.bits)
	{
		cmk_error_set(err, CMK_ERR_INTERNAL, "MalformedResponse", HINT_MALFORMED,
					  "Azure Key Vault returned a wrapped key of %zu bytes for a %d-bit key", len, kb.bits);
		vault_detail(err, &ref, kb.ref.version, &resp);
		azure_http_free(&resp);
		return false;
	}
	azure_http_free(&resp);
	*wrapped_len = len;
	strlcpy(kid, kb.kid, kid_size);
	return true;
}

static bool
azure_unwrap(const char *uri, const char *kid, CmkWrapAlg alg,
			 const uint8_t *wrapped, size_t wrapped_len,
			 uint8_t *dek, size_t *dek_len, CmkError *err)
{
	AzureSettings s;
	AzureKeyRef ref;
	AzureKeyRef want;
	AzureHttpResponse resp;
	uint8_t		out[AZJ_MAX_RSA_BYTES];
	size_t		len = 0;
	bool		ok;

	if (!open_key(uri, &s, &ref, err))
		return false;

	/*
	 * The recorded kid picks the key version, never the host: the token only
	 * goes to the vault the configuration names.  A kid of another vault or
	 * key means the DEK was wrapped by a key this URI does not reach.
	 */
	if (azj_parse_key_url(kid, strlen(kid), &want) != AZURE_URL_OK ||
		want.version[0] == '\0' || !same_key(&want, &ref))
	{
		cmk_error_set(err, CMK_ERR_WRONG_KEY, "OtherKey",
					  "Point cmk_storage.key_uri at the key (and vault) that wrapped the data encryption key.",
					  "the data encryption key was wrapped by a key that cmk_storage.key_uri does not name");
		cmk_error_detail(err, "The control file names key %.200s; the configured URI is %.200s.", kid, uri);
		return false;
	}
	/* A versioned URI naming another version is fine: the record decides. */

	if (!key_op(&s, false, &ref, &want, kid, alg, wrapped, wrapped_len,
				out, sizeof(out), &len, &resp, err))
	{
		OPENSSL_cleanse(out, sizeof(out));
		return false;
	}
	ok = len == CMK_DEK_LEN;
	if (!ok)
	{
		cmk_error_set(err, CMK_ERR_WRONG_KEY, "DekLengthMismatch",
					  "The wrapped key in the control file was not made by cmk_storage with this key.",
					  "Azure Key Vault unwrapped %zu bytes, not a %d-byte data encryption key",
					  len, CMK_DEK_LEN);
		vault_detail(err, &ref, want.version, &resp);
	}
	azure_http_free(&resp);
	if (ok)
	{
		memcpy(dek, out, CMK_DEK_LEN);
		*dek_len = CMK_DEK_LEN;
	}
	OPENSSL_cleanse(out, sizeof(out));
	return ok;
}

const CmkKeyProvider cmk_azure_provider = {
	.name = "azure",
	.handles = azure_handles,
	.describe = azure_describe,
	.wrap = azure_wrap,
	.unwrap = azure_unwrap,
};
