/*-------------------------------------------------------------------------
 *
 * provider_azure_json.h
 *		Parsers for what Azure Key Vault and the managed-identity token
 *		endpoints send back: key bundles, wrap/unwrap results, error bodies,
 *		token responses, and the key identifiers inside them.
 *
 * Everything here is free of server dependencies (plain C, jansson and
 * cmk_crypto's base64url) so that the fuzz harness in fuzz/ can link the
 * very same code.  All input is untrusted; every output is a fixed-size,
 * NUL-terminated field.  No parser ever copies raw input into a message:
 * error strings are either our own constants or sanitised (printable
 * ASCII, bounded) service messages.
 *
 *-------------------------------------------------------------------------
 */
#ifndef CMK_PROVIDER_AZURE_JSON_H
#define CMK_PROVIDER_AZURE_JSON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define AZJ_MAX_HOST		256
#define AZJ_MAX_NAME		128		/* Key Vault allows 127 characters */
#define AZJ_MAX_VERSION		64		/* versions are 32 hex digits */
#define AZJ_MAX_CODE		64
#define AZJ_MAX_MSG			256		/* sanitised service message */
#define AZJ_MAX_RSA_BYTES	512		/* RSA-4096 */
#define AZJ_MAX_TOKEN		16384	/* Entra tokens are a few KiB */

/* A key URL or kid: https://host[:port]/keys/name[/version] */
typedef struct AzureKeyRef
{
	char		host[AZJ_MAX_HOST]; /* lower-cased */
	int			port;			/* 443 when not given */
	bool		explicit_port;
	char		name[AZJ_MAX_NAME];
	char		version[AZJ_MAX_VERSION];	/* "" = versionless */
} AzureKeyRef;

typedef enum AzureUrlStatus
{
	AZURE_URL_OK = 0,
	AZURE_URL_PLAIN_HTTP,		/* http:// - never used for a vault */
	AZURE_URL_BAD,				/* anything else that is not a key URL */
} AzureUrlStatus;

/* What a GET key returned (KeyBundle). */
typedef struct AzureKeyBundle
{
	char		kid[512];
	AzureKeyRef ref;			/* kid, parsed */
	char		kty[16];		/* "RSA", "RSA-HSM", or sanitised other */
	int			bits;			/* RSA modulus size from n; 0 if no n */
	bool		ops_listed;		/* key_ops was present */
	bool		can_wrap;
	bool		can_unwrap;
	bool		enabled;		/* attributes.enabled (true when absent) */
	bool		has_nbf;
	bool		has_exp;
	int64_t		nbf;
	int64_t		exp;
	char		recovery_level[64];
} AzureKeyBundle;

/* Error body: {"error":{"code","message","innererror":{"code",...}}} */
typedef struct AzureServiceError
{
	char		code[AZJ_MAX_CODE]; /* error.code, or the IMDS "error" */
	char		inner[AZJ_MAX_CODE];	/* innermost innererror.code, or "" */
	char		message[AZJ_MAX_MSG];	/* sanitised */
} AzureServiceError;

/* Set the allocator once: jansson's buffers are wiped before release. */
extern void azj_init(void);

extern AzureUrlStatus azj_parse_key_url(const char *url, size_t len,
										AzureKeyRef *ref);
extern bool azj_same_vault(const AzureKeyRef *a, const AzureKeyRef *b);

/* The parsers return false on anything malformed, with a constant why. */
extern bool azj_parse_key_bundle(const char *body, size_t len,
								 AzureKeyBundle *out, const char **why);
extern bool azj_parse_key_result(const char *body, size_t len,
								 char *kid, size_t kid_size,
								 uint8_t *value, size_t value_size,
								 size_t *value_len, const char **why);
extern bool azj_parse_error(const char *body, size_t len,
							AzureServiceError *out);

/*
 * Token responses (IMDS and App Service): access_token plus its expiry as
 * unix seconds, from expires_on (number, digit string) or else
 * now + expires_in.  The token's bytes in jansson's tree are wiped.
 */
extern bool azj_parse_token(const char *body, size_t len, int64_t now,
							char *token, size_t token_size,
							int64_t *expires_on, const char **why);

/* Printable-ASCII, bounded copies of untrusted text. */
extern void azj_sanitize_message(const char *in, size_t inlen,
								 char *out, size_t outsize);
extern void azj_sanitize_code(const char *in, size_t inlen,
							  char *out, size_t outsize);

/* Significant bits of a big-endian unsigned integer. */
extern int	azj_bits_of(const uint8_t *n, size_t len);

#endif							/* CMK_PROVIDER_AZURE_JSON_H */
