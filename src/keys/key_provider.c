/*-------------------------------------------------------------------------
 *
 * key_provider.c
 *		Provider registry, structured errors and the RSA-OAEP operations
 *		shared by providers that hold an RSA key locally.
 *
 * Callers pick a provider by the URI in cmk_storage.key_uri and never
 * depend on which one they got.  Nothing here logs.
 *
 *-------------------------------------------------------------------------
 */
#ifdef FRONTEND
#include "postgres_fe.h"
#else
#include "postgres.h"
#endif

#include <openssl/evp.h>
#include <openssl/rsa.h>

#include "keys/key_provider.h"
#include "keys/provider_azure.h"

static const CmkKeyProvider *const providers[] = {
	&cmk_file_provider,
	&cmk_azure_provider,
};

void
cmk_error_set(CmkError *err, CmkErrorKind kind, const char *code,
			  const char *hint, const char *fmt,...)
{
	va_list		ap;

	memset(err, 0, sizeof(*err));
	err->kind = kind;
	if (code)
		strlcpy(err->code, code, sizeof(err->code));
	if (hint)
		strlcpy(err->hint, hint, sizeof(err->hint));
	va_start(ap, fmt);
	vsnprintf(err->message, sizeof(err->message), fmt, ap);
	va_end(ap);
}

void
cmk_error_detail(CmkError *err, const char *fmt,...)
{
	va_list		ap;

	va_start(ap, fmt);
	vsnprintf(err->detail, sizeof(err->detail), fmt, ap);
	va_end(ap);
}

const char *
cmk_error_kind_name(CmkErrorKind kind)
{
	switch (kind)
	{
		case CMK_ERR_NONE:
			return "none";
		case CMK_ERR_CONFIG:
			return "configuration";
		case CMK_ERR_DENIED:
			return "denied";
		case CMK_ERR_WRONG_KEY:
			return "wrong key";
		case CMK_ERR_TRANSIENT:
			return "transient";
		case CMK_ERR_INTERNAL:
			return "internal";
	}
	return "unknown";
}

const CmkKeyProvider *
cmk_find_provider(const char *uri, CmkError *err)
{
	for (size_t i = 0; i < lengthof(providers); i++)
	{
		if (providers[i]->handles(uri))
			return providers[i];
	}
	cmk_error_set(err, CMK_ERR_CONFIG, NULL,
				  "Use file:///absolute/path/to/kek.pem or https://<vault>.vault.azure.net/keys/<name>[/<version>].",
				  "cmk_storage.key_uri \"%s\" names no supported key provider", uri);
	return NULL;
}

const char *
cmk_wrap_alg_name(CmkWrapAlg alg)
{
	switch (alg)
	{
		case CMK_WRAP_RSA_OAEP_256:
			return "RSA-OAEP-256";
		case CMK_WRAP_RSA_OAEP:
			return "RSA-OAEP";
	}
	return "unknown";
}

bool
cmk_wrap_alg_from_name(const char *name, CmkWrapAlg *alg)
{
	if (strcmp(name, "RSA-OAEP-256") == 0)
		*alg = CMK_WRAP_RSA_OAEP_256;
	else if (strcmp(name, "RSA-OAEP") == 0)
		*alg = CMK_WRAP_RSA_OAEP;
	else
		return false;
	return true;
}

/* Set OAEP padding and digests on an encrypt/decrypt context. */
static bool
set_oaep(EVP_PKEY_CTX *ctx, CmkWrapAlg alg)
{
	const EVP_MD *md = (alg == CMK_WRAP_RSA_OAEP) ? EVP_sha1() : EVP_sha256();

	return EVP_PKEY_CTX_set_rsa_padding(ctx, RSA_PKCS1_OAEP_PADDING) > 0 &&
		EVP_PKEY_CTX_set_rsa_oaep_md(ctx, md) > 0 &&
		EVP_PKEY_CTX_set_rsa_mgf1_md(ctx, md) > 0;
}

bool
cmk_rsa_oaep_wrap(EVP_PKEY *pkey, CmkWrapAlg alg,
				  const uint8_t *in, size_t in_len,
				  uint8_t *out, size_t *out_len, CmkError *err)
{
	EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new(pkey, NULL);
	size_t		len = CMK_MAX_WRAPPED;
	bool		ok;

	ok = ctx != NULL &&
		EVP_PKEY_encrypt_init(ctx) > 0 &&
		set_oaep(ctx, alg) &&
		EVP_PKEY_encrypt(ctx, out, &len, in, in_len) > 0;
	EVP_PKEY_CTX_free(ctx);
	if (!ok)
	{
		cmk_error_set(err, CMK_ERR_INTERNAL, NULL, NULL,
					  "RSA %s encryption failed", cmk_wrap_alg_name(alg));
		return false;
	}
	*out_len = len;
	return true;
}

bool
cmk_rsa_oaep_unwrap(EVP_PKEY *pkey, CmkWrapAlg alg,
					const uint8_t *in, size_t in_len,
					uint8_t *out, size_t out_size, size_t *out_len,
					CmkError *err)
{
	EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new(pkey, NULL);
	uint8_t		buf[CMK_MAX_WRAPPED];
	size_t		len = sizeof(buf);
	bool		ok;

	ok = ctx != NULL &&
		EVP_PKEY_decrypt_init(ctx) > 0 &&
		set_oaep(ctx, alg) &&
		EVP_PKEY_decrypt(ctx, buf, &len, in, in_len) > 0;
	EVP_PKEY_CTX_free(ctx);
	if (!ok || len > out_size)
	{
		OPENSSL_cleanse(buf, sizeof(buf));
		cmk_error_set(err, CMK_ERR_WRONG_KEY, NULL,
					  "The key encryption key differs from the one that wrapped the data encryption key; configure the original key.",
					  "RSA %s decryption of the wrapped data encryption key failed",
					  cmk_wrap_alg_name(alg));
		return false;
	}
	memcpy(out, buf, len);
	OPENSSL_cleanse(buf, sizeof(buf));
	*out_len = len;
	return true;
}
