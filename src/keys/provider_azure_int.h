/*-------------------------------------------------------------------------
 *
 * provider_azure_int.h
 *		Interfaces between the parts of the Azure Key Vault provider:
 *		settings, the libcurl transport (provider_azure_http.c) and token
 *		acquisition (provider_azure_identity.c).  Not for other callers:
 *		they use cmk_azure_provider through key_provider.h.
 *
 * Like every provider, none of these parts ereports, logs or allocates
 * with palloc: the same code runs in the key worker and in frontend tools,
 * and an ERROR in the key worker would kill the only process that talks to
 * the vault.  Memory is malloc'd and released explicitly, and every buffer
 * that held a secret (token, X-IDENTITY-HEADER, DEK) is wiped first.
 *
 *-------------------------------------------------------------------------
 */
#ifndef CMK_PROVIDER_AZURE_INT_H
#define CMK_PROVIDER_AZURE_INT_H

#include "keys/key_provider.h"
#include "keys/provider_azure_json.h"

#define AZURE_VAULT_RESOURCE	"https://vault.azure.net"
#define AZURE_IMDS_URL			"http://169.254.169.254/metadata/identity/oauth2/token"
#define AZURE_IMDS_API			"2018-02-01"
#define AZURE_APPSERVICE_API	"2019-08-01"
#define AZURE_DEFAULT_API		"7.4"

/*
 * How a hint ends, after a failure the customer can fix: the server's key
 * worker checks again and heals by itself; a frontend tool (cmk_restore)
 * has already retried for its retry timeout and exits, so it has to be run
 * again.
 */
#ifdef FRONTEND
#define AZ_HINT_RETRYING	"Run the command again once that is fixed (it retries for CMK_AZURE_RETRY_TIMEOUT_MS)."
#define AZ_HINT_HEALS		"Then run the command again."
#else
#define AZ_HINT_RETRYING	"cmk_storage keeps retrying."
#define AZ_HINT_HEALS		"Encrypted data becomes available again at the next check, without a restart."
#endif

/*
 * Who asks the vault, and from where, as hints name them: the server's
 * identity, or the one a frontend tool was told to use.
 */
#ifdef FRONTEND
#define AZ_WHO		"the managed identity this command runs as (CMK_AZURE_CLIENT_ID)"
#define AZ_WHERE	"this machine"
#else
#define AZ_WHO		"the server's managed identity"
#define AZ_WHERE	"this server"
#endif

/*
 * Settings, read afresh for every operation: from the cmk_storage.azure_*
 * GUCs in the server, from CMK_AZURE_* environment variables in frontend
 * tools.  Strings point into storage owned by the GUC machinery or the
 * environment and are valid for one operation; "" means unset.
 */
typedef struct AzureSettings
{
	const char *client_id;
	const char *object_id;
	const char *msi_res_id;
	const char *token_endpoint;
	const char *ca_file;
	const char *api_version;
	const char *resource;		/* token audience, from the vault's cloud */
	int			connect_timeout_ms;
	int			request_timeout_ms; /* one HTTP exchange */
	int			retry_timeout_ms;	/* one operation, retries included */
	bool		(*interrupted) (void);	/* shutdown requested? may be NULL */
} AzureSettings;

/* ------------------------------------------------------------------------
 * Transport (provider_azure_http.c)
 * ------------------------------------------------------------------------
 */

typedef enum AzureEndpointKind
{
	AZURE_EP_VAULT,				/* HTTPS only, proxy allowed */
	AZURE_EP_IDENTITY,			/* HTTP allowed (IMDS is HTTP), never proxied */
} AzureEndpointKind;

typedef struct AzureHttpRequest
{
	AzureEndpointKind kind;
	const char *method;			/* GET or POST */
	const char *url;
	const char *const *headers; /* NULL-terminated; may carry secrets */
	const char *body;			/* POST body, or NULL */
	size_t		body_len;
	bool		(*retryable) (long status); /* statuses worth another try */
} AzureHttpRequest;

typedef enum AzureNetClass
{
	AZURE_NET_OK = 0,			/* got an HTTP response (any status) */
	AZURE_NET_TRANSIENT,		/* timeout, refused, reset, DNS, ... */
	AZURE_NET_TLS_UNTRUSTED,	/* certificate verification failed */
	AZURE_NET_CONFIG,			/* bad URL, protocol, CA file */
	AZURE_NET_INTERRUPTED,		/* shutdown requested */
	AZURE_NET_TOO_LARGE,		/* response body above the limit */
	AZURE_NET_INTERNAL,			/* out of memory, libcurl setup */
} AzureNetClass;

typedef struct AzureHttpResponse
{
	AzureNetClass net;
	char		net_error[256]; /* stable, sanitised: fit for a status reason */
	char		net_detail[256];	/* libcurl's full message (varies) */
	long		status;			/* HTTP status, 0 if none */
	char	   *body;			/* malloc'd, NUL-terminated; wiped on free */
	size_t		body_len;
	size_t		body_cap;
	int			retry_after_s;	/* Retry-After in seconds, -1 if none */
	char		request_id[64]; /* x-ms-request-id, sanitised */
	int			attempts;
	long		elapsed_ms;
} AzureHttpResponse;

/* Milliseconds on a monotonic clock. */
extern int64_t azure_now_ms(void);

/*
 * One logical request: retried with exponential backoff and jitter (or
 * Retry-After) on transient network errors and retryable statuses until
 * deadline_ms (azure_now_ms() time).  Always fills resp; release it with
 * azure_http_free().
 */
extern void azure_http_request(const AzureSettings *s, const AzureHttpRequest *req,
							   int64_t deadline_ms, AzureHttpResponse *resp);
extern void azure_http_free(AzureHttpResponse *resp);

/* Append src to dst percent-encoded (RFC 3986 unreserved kept). */
extern bool azure_url_append_encoded(char *dst, size_t dstsize, const char *src);

/* ------------------------------------------------------------------------
 * Managed-identity tokens (provider_azure_identity.c)
 * ------------------------------------------------------------------------
 */

/*
 * The "Authorization: Bearer ..." header line for the vault, from the
 * cache or freshly fetched.  The pointer stays valid until the next call
 * of azure_token_header() or azure_token_forget(); never copy it.
 */
extern const char *azure_token_header(const AzureSettings *s, bool force_refresh,
									  int64_t deadline_ms, CmkError *err);
extern void azure_token_forget(void);

#endif							/* CMK_PROVIDER_AZURE_INT_H */
