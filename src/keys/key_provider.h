/*-------------------------------------------------------------------------
 *
 * key_provider.h
 *		The interface every KEK provider implements (key file, Azure Key
 *		Vault, ...), and the structured error they report.
 *
 * Providers never ereport: they may run in the key worker (where an ERROR
 * would kill the only process that talks to the vault) and in frontend
 * tools.  They fill a CmkError instead; callers decide the log level.
 * Providers never put key material (DEK, private keys, tokens) into a
 * CmkError, a log line or anything they return besides the DEK buffer.
 *
 *-------------------------------------------------------------------------
 */
#ifndef CMK_KEY_PROVIDER_H
#define CMK_KEY_PROVIDER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define CMK_MAX_KID			512		/* versioned key id, e.g. an Azure kid */
#define CMK_MAX_WRAPPED		512		/* RSA-4096 ciphertext */
#define CMK_ERR_MSG			512

typedef enum CmkWrapAlg
{
	CMK_WRAP_RSA_OAEP_256 = 1,	/* OAEP + MGF1, both SHA-256 (default) */
	CMK_WRAP_RSA_OAEP = 2,		/* OAEP + MGF1, both SHA-1 */
} CmkWrapAlg;

/* How lasting a failure is: the key worker retries transient ones. */
typedef enum CmkErrorKind
{
	CMK_ERR_NONE = 0,
	CMK_ERR_CONFIG,				/* bad URI, bad key file, unsupported key */
	CMK_ERR_DENIED,				/* definitive: disabled, deleted, no permission */
	CMK_ERR_WRONG_KEY,			/* the KEK cannot unwrap this DEK */
	CMK_ERR_TRANSIENT,			/* network, throttling, 5xx: retry later */
	CMK_ERR_INTERNAL,			/* OpenSSL or malformed response */
} CmkErrorKind;

typedef struct CmkError
{
	CmkErrorKind kind;
	char		code[64];		/* provider's own code, e.g. KeyDisabled */
	char		message[CMK_ERR_MSG];
	char		detail[CMK_ERR_MSG];
	char		hint[CMK_ERR_MSG];
} CmkError;

extern void cmk_error_set(CmkError *err, CmkErrorKind kind, const char *code,
						  const char *hint, const char *fmt,...)
			pg_attribute_printf(5, 6);
extern void cmk_error_detail(CmkError *err, const char *fmt,...)
			pg_attribute_printf(2, 3);
extern const char *cmk_error_kind_name(CmkErrorKind kind);

/* What a provider knows about the KEK behind a URI. */
typedef struct CmkKekInfo
{
	char		kid[CMK_MAX_KID];	/* versioned, stable identifier */
	int			bits;			/* RSA modulus size */
	bool		enabled;
} CmkKekInfo;

typedef struct CmkKeyProvider
{
	const char *name;			/* "file", "azure" */

	/* Does this provider serve the URI?  Must not do I/O. */
	bool		(*handles) (const char *uri);

	/*
	 * Look the KEK up and check it is usable for wrapping (enabled, RSA of
	 * 2048/3072/4096 bits, operation permitted).
	 */
	bool		(*describe) (const char *uri, CmkKekInfo *info, CmkError *err);

	/* Wrap a DEK with the current KEK named by uri; reports the kid used. */
	bool		(*wrap) (const char *uri, CmkWrapAlg alg,
						 const uint8_t *dek, size_t dek_len,
						 uint8_t *wrapped, size_t *wrapped_len,
						 char *kid, size_t kid_size, CmkError *err);

	/*
	 * Unwrap with exactly the KEK version recorded as kid (uri selects the
	 * provider configuration).  dek must have room for CMK_DEK_LEN bytes.
	 */
	bool		(*unwrap) (const char *uri, const char *kid, CmkWrapAlg alg,
						   const uint8_t *wrapped, size_t wrapped_len,
						   uint8_t *dek, size_t *dek_len, CmkError *err);
} CmkKeyProvider;

extern const CmkKeyProvider *cmk_find_provider(const char *uri, CmkError *err);
extern const char *cmk_wrap_alg_name(CmkWrapAlg alg);
extern bool cmk_wrap_alg_from_name(const char *name, CmkWrapAlg *alg);

/* Providers */
extern const CmkKeyProvider cmk_file_provider;

/* RSA-OAEP with an OpenSSL key; shared by the file provider and tests. */
struct evp_pkey_st;
extern bool cmk_rsa_oaep_wrap(struct evp_pkey_st *pkey, CmkWrapAlg alg,
							  const uint8_t *in, size_t in_len,
							  uint8_t *out, size_t *out_len, CmkError *err);
extern bool cmk_rsa_oaep_unwrap(struct evp_pkey_st *pkey, CmkWrapAlg alg,
								const uint8_t *in, size_t in_len,
								uint8_t *out, size_t out_size, size_t *out_len,
								CmkError *err);

#endif							/* CMK_KEY_PROVIDER_H */
