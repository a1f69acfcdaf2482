/*-------------------------------------------------------------------------
 *
 * cmk_crypto.c
 *		AES keystream, HKDF, identifiers and encodings used by cmk_storage.
 *
 * This file never sees where keys come from or go to; it must never log,
 * allocate with palloc or keep key bytes beyond the EVP contexts it is given
 * (OpenSSL wipes those when they are freed).
 *
 *-------------------------------------------------------------------------
 */
#include <string.h>

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/kdf.h>
#include <openssl/params.h>
#include <openssl/rand.h>

#include "crypto/cmk_crypto.h"

static const char *const purpose_labels[CMK_NUM_PURPOSES] = {
	"cmk_storage/v1/tuple",
	"cmk_storage/v1/wal-archive",
	"cmk_storage/v1/base-backup",
	"cmk_storage/v1/key-check",
	"cmk_storage/v1/nonce-epochs",
};

#define DEK_ID_LABEL "cmk_storage/v1/dek-identifier"

bool
cmk_keystream_init(CmkKeystream *ks, const uint8_t *key)
{
	EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();

	ks->evp = NULL;
	if (ctx == NULL)
		return false;
	if (EVP_EncryptInit_ex(ctx, EVP_aes_256_ecb(), NULL, key, NULL) != 1 ||
		EVP_CIPHER_CTX_set_padding(ctx, 0) != 1)
	{
		EVP_CIPHER_CTX_free(ctx);
		return false;
	}
	ks->evp = ctx;
	return true;
}

void
cmk_keystream_free(CmkKeystream *ks)
{
	/* EVP_CIPHER_CTX_free cleanses the expanded key schedule. */
	if (ks->evp)
		EVP_CIPHER_CTX_free((EVP_CIPHER_CTX *) ks->evp);
	ks->evp = NULL;
}

bool
cmk_keystream_blocks(CmkKeystream *ks, uint8_t *blocks, int nblocks)
{
	int			outl = 0;

	if (ks->evp == NULL || nblocks <= 0)
		return nblocks == 0;
	if (EVP_EncryptUpdate((EVP_CIPHER_CTX *) ks->evp, blocks, &outl,
						  blocks, nblocks * CMK_AES_BLOCK) != 1)
		return false;
	return outl == nblocks * CMK_AES_BLOCK;
}

bool
cmk_ctr_xor(CmkKeystream *ks, const uint8_t *iv, const uint8_t *in,
			uint8_t *out, size_t len)
{
	uint8_t		blocks[64 * CMK_AES_BLOCK];
	size_t		done = 0;
	uint32_t	counter = ((uint32_t) iv[14] << 8) | iv[15];

	while (done < len)
	{
		size_t		chunk = len - done;
		int			nblocks;

		if (chunk > sizeof(blocks))
			chunk = sizeof(blocks);
		nblocks = (int) ((chunk + CMK_AES_BLOCK - 1) / CMK_AES_BLOCK);
		for (int i = 0; i < nblocks; i++)
		{
			memcpy(blocks + i * CMK_AES_BLOCK, iv, 14);
			blocks[i * CMK_AES_BLOCK + 14] = (uint8_t) (counter >> 8);
			blocks[i * CMK_AES_BLOCK + 15] = (uint8_t) counter;
			counter++;
		}
		if (!cmk_keystream_blocks(ks, blocks, nblocks))
		{
			OPENSSL_cleanse(blocks, sizeof(blocks));
			return false;
		}
		for (size_t i = 0; i < chunk; i++)
			out[done + i] = in[done + i] ^ blocks[i];
		done += chunk;
	}
	OPENSSL_cleanse(blocks, sizeof(blocks));
	return true;
}

bool
cmk_xts_init(CmkXts *xts, const uint8_t *key)
{
	EVP_CIPHER *cipher = EVP_CIPHER_fetch(NULL, "AES-256-XTS", NULL);
	EVP_CIPHER_CTX *enc = EVP_CIPHER_CTX_new();
	EVP_CIPHER_CTX *dec = EVP_CIPHER_CTX_new();
	bool		ok;

	xts->enc = xts->dec = NULL;
	ok = cipher != NULL && enc != NULL && dec != NULL &&
		EVP_CipherInit_ex2(enc, cipher, key, NULL, 1, NULL) == 1 &&
		EVP_CipherInit_ex2(dec, cipher, key, NULL, 0, NULL) == 1;
	/* The contexts keep their own reference to the cipher. */
	EVP_CIPHER_free(cipher);
	if (!ok)
	{
		EVP_CIPHER_CTX_free(enc);
		EVP_CIPHER_CTX_free(dec);
		return false;
	}
	xts->enc = enc;
	xts->dec = dec;
	return true;
}

void
cmk_xts_free(CmkXts *xts)
{
	/* EVP_CIPHER_CTX_free cleanses the expanded key schedules. */
	EVP_CIPHER_CTX_free((EVP_CIPHER_CTX *) xts->enc);
	EVP_CIPHER_CTX_free((EVP_CIPHER_CTX *) xts->dec);
	xts->enc = xts->dec = NULL;
}

/*
 * Re-initialising a context with only a new IV (the tweak) keeps its key
 * schedule and allocates nothing (checked with counting allocators on
 * OpenSSL 3.0); one EVP_CipherUpdate is one XTS data unit.
 */
bool
cmk_xts_crypt(CmkXts *xts, bool encrypt, const uint8_t *tweak,
			  const uint8_t *in, uint8_t *out, size_t len)
{
	EVP_CIPHER_CTX *ctx = (EVP_CIPHER_CTX *) (encrypt ? xts->enc : xts->dec);
	int			outl = 0;

	if (ctx == NULL || len < CMK_AES_BLOCK || len > (size_t) INT32_MAX)
		return false;
	if (EVP_CipherInit_ex2(ctx, NULL, NULL, tweak, encrypt ? 1 : 0, NULL) != 1 ||
		EVP_CipherUpdate(ctx, out, &outl, in, (int) len) != 1)
		return false;
	return outl == (int) len;
}

bool
cmk_hkdf_sha256(const uint8_t *ikm, size_t ikm_len,
				const uint8_t *salt, size_t salt_len,
				const uint8_t *info, size_t info_len,
				uint8_t *out, size_t out_len)
{
	EVP_KDF    *kdf = EVP_KDF_fetch(NULL, "HKDF", NULL);
	EVP_KDF_CTX *kctx;
	OSSL_PARAM	params[5];
	int			n = 0;
	bool		ok;

	if (kdf == NULL)
		return false;
	kctx = EVP_KDF_CTX_new(kdf);
	EVP_KDF_free(kdf);
	if (kctx == NULL)
		return false;

	params[n++] = OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST,
												   (char *) "SHA256", 0);
	params[n++] = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_KEY,
													(void *) ikm, ikm_len);
	if (salt_len > 0)
		params[n++] = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SALT,
														(void *) salt, salt_len);
	params[n++] = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_INFO,
													(void *) info, info_len);
	params[n] = OSSL_PARAM_construct_end();

	ok = EVP_KDF_derive(kctx, out, out_len, params) == 1;
	EVP_KDF_CTX_free(kctx);
	return ok;
}

const char *
cmk_purpose_label(CmkKeyPurpose purpose)
{
	return purpose_labels[purpose];
}

bool
cmk_derive_subkey(const uint8_t *dek, CmkKeyPurpose purpose, uint8_t *out)
{
	const char *label = purpose_labels[purpose];

	return cmk_hkdf_sha256(dek, CMK_DEK_LEN, NULL, 0,
						   (const uint8_t *) label, strlen(label),
						   out, CMK_SUBKEY_LEN);
}

bool
cmk_hmac_sha256(const uint8_t *key, size_t key_len, const uint8_t *data,
				size_t len, uint8_t *out)
{
	size_t		outlen = 0;

	return EVP_Q_mac(NULL, "HMAC", NULL, "SHA256", NULL, key, key_len,
					 data, len, out, CMK_HMAC_LEN, &outlen) != NULL &&
		outlen == CMK_HMAC_LEN;
}

bool
cmk_derive_labelled(const uint8_t *dek, const char *label, uint8_t *out,
					size_t out_len)
{
	return cmk_hkdf_sha256(dek, CMK_DEK_LEN, NULL, 0,
						   (const uint8_t *) label, strlen(label),
						   out, out_len);
}

bool
cmk_dek_identifier(const uint8_t *dek, uint8_t *out)
{
	uint8_t		mac[EVP_MAX_MD_SIZE];
	unsigned int maclen = 0;

	if (HMAC(EVP_sha256(), dek, CMK_DEK_LEN,
			 (const unsigned char *) DEK_ID_LABEL, strlen(DEK_ID_LABEL),
			 mac, &maclen) == NULL || maclen < CMK_DEK_ID_LEN)
		return false;
	memcpy(out, mac, CMK_DEK_ID_LEN);
	OPENSSL_cleanse(mac, sizeof(mac));
	return true;
}

bool
cmk_sha256(const void *data, size_t len, uint8_t *out)
{
	unsigned int outlen = 0;

	return EVP_Digest(data, len, out, &outlen, EVP_sha256(), NULL) == 1 &&
		outlen == 32;
}

bool
cmk_random_bytes(uint8_t *out, size_t len)
{
	/* RAND_priv_bytes draws from the DRBG reserved for private values. */
	return RAND_priv_bytes(out, (int) len) == 1;
}

bool
cmk_ct_equal(const void *a, const void *b, size_t len)
{
	return CRYPTO_memcmp(a, b, len) == 0;
}

static const char b64url_alphabet[] =
"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

size_t
cmk_base64url_encode(const uint8_t *in, size_t len, char *out, size_t outsize)
{
	size_t		o = 0;
	size_t		need = (len / 3) * 4 + ((len % 3) ? (len % 3) + 1 : 0);

	if (outsize < need + 1)
		return 0;
	for (size_t i = 0; i < len; i += 3)
	{
		uint32_t	v = (uint32_t) in[i] << 16;
		size_t		rem = len - i;

		if (rem > 1)
			v |= (uint32_t) in[i + 1] << 8;
		if (rem > 2)
			v |= in[i + 2];
		out[o++] = b64url_alphabet[(v >> 18) & 63];
		out[o++] = b64url_alphabet[(v >> 12) & 63];
		if (rem > 1)
			out[o++] = b64url_alphabet[(v >> 6) & 63];
		if (rem > 2)
			out[o++] = b64url_alphabet[v & 63];
	}
	out[o] = '\0';
	return o;
}

static int
b64_value(char c)
{
	if (c >= 'A' && c <= 'Z')
		return c - 'A';
	if (c >= 'a' && c <= 'z')
		return c - 'a' + 26;
	if (c >= '0' && c <= '9')
		return c - '0' + 52;
	if (c == '-' || c == '+')
		return 62;
	if (c == '_' || c == '/')
		return 63;
	return -1;
}

bool
cmk_base64url_decode(const char *in, size_t inlen, uint8_t *out,
					 size_t outsize, size_t *outlen)
{
	uint32_t	acc = 0;
	int			bits = 0;
	size_t		o = 0;
	size_t		pad = 0;

	while (inlen > 0 && in[inlen - 1] == '=' && pad < 2)
	{
		inlen--;
		pad++;
	}
	if (inlen % 4 == 1)
		return false;
	for (size_t i = 0; i < inlen; i++)
	{
		int			v = b64_value(in[i]);

		if (v < 0)
			return false;
		acc = (acc << 6) | (uint32_t) v;
		bits += 6;
		if (bits >= 8)
		{
			bits -= 8;
			if (o >= outsize)
				return false;
			out[o++] = (uint8_t) (acc >> bits);
		}
	}
	/* leftover bits must be zero, as RFC 4648 canonical encoding requires */
	if (bits > 0 && (acc & ((1u << bits) - 1)) != 0)
		return false;
	*outlen = o;
	return true;
}

void
cmk_hex(const uint8_t *in, size_t len, char *out)
{
	static const char digits[] = "0123456789abcdef";

	for (size_t i = 0; i < len; i++)
	{
		out[2 * i] = digits[in[i] >> 4];
		out[2 * i + 1] = digits[in[i] & 15];
	}
	out[2 * len] = '\0';
}
