/*-------------------------------------------------------------------------
 *
 * cmk_crypto.h
 *		Cryptographic primitives of cmk_storage, all on top of OpenSSL 3.
 *
 * Everything here is free of server dependencies (no ereport, no palloc) so
 * that frontend tools can link the same code.  Functions report failure by
 * return value; callers turn that into errors.
 *
 *-------------------------------------------------------------------------
 */
#ifndef CMK_CRYPTO_H
#define CMK_CRYPTO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define CMK_DEK_LEN			32	/* AES-256 */
#define CMK_SUBKEY_LEN		32
#define CMK_DEK_ID_LEN		16	/* stored in the control file */
#define CMK_AES_BLOCK		16

/* One derived key per purpose; the label is the HKDF "info". */
typedef enum CmkKeyPurpose
{
	CMK_PURPOSE_TUPLE = 0,		/* tuple and TOAST chunk contents */
	CMK_PURPOSE_ARCHIVE,		/* archived WAL segments */
	CMK_PURPOSE_BACKUP,			/* base-backup streams */
	CMK_PURPOSE_CHECK,			/* key-check values */
	CMK_PURPOSE_EPOCHS,			/* MAC of the nonce-epoch file */
	CMK_NUM_PURPOSES
} CmkKeyPurpose;

/*
 * A keystream generator: AES-256 in ECB mode over counter blocks that the
 * caller lays out.  CTR mode is exactly that, and building the counter blocks
 * ourselves lets one cipher call serve many (tuple, column) pairs.
 */
typedef struct CmkKeystream
{
	void	   *evp;			/* EVP_CIPHER_CTX *, opaque here */
} CmkKeystream;

extern bool cmk_keystream_init(CmkKeystream *ks, const uint8_t *key);
extern void cmk_keystream_free(CmkKeystream *ks);
/* Encrypt nblocks counter blocks (16 bytes each) in place into keystream. */
extern bool cmk_keystream_blocks(CmkKeystream *ks, uint8_t *blocks, int nblocks);

/*
 * CTR over a 16-byte initial counter block whose last two bytes are a
 * big-endian block counter: out = in XOR keystream.  len must stay below
 * 2^16 blocks (callers never encrypt more than a page at once).
 */
extern bool cmk_ctr_xor(CmkKeystream *ks, const uint8_t *iv,
						const uint8_t *in, uint8_t *out, size_t len);

/*
 * AES-256-XTS (IEEE 1619) for the I/O layer's pages: a length-preserving
 * mode with a 16-byte tweak per data unit, fit for blocks that are
 * overwritten in place.  One context per direction, created once (the key
 * schedule is expanded then); a call only sets the tweak and runs the
 * cipher, which allocates nothing, so it may run where allocation is
 * forbidden.  len must be at least 16 (OpenSSL does the ciphertext stealing
 * for a length that is not a multiple of 16).
 */
#define CMK_XTS_KEY_LEN		64	/* two AES-256 keys */
#define CMK_XTS_TWEAK_LEN	16

typedef struct CmkXts
{
	void	   *enc;			/* EVP_CIPHER_CTX *, opaque here */
	void	   *dec;
} CmkXts;

extern bool cmk_xts_init(CmkXts *xts, const uint8_t *key);
extern void cmk_xts_free(CmkXts *xts);
extern bool cmk_xts_crypt(CmkXts *xts, bool encrypt, const uint8_t *tweak,
						  const uint8_t *in, uint8_t *out, size_t len);

/* HKDF-SHA256 (RFC 5869). */
extern bool cmk_hkdf_sha256(const uint8_t *ikm, size_t ikm_len,
							const uint8_t *salt, size_t salt_len,
							const uint8_t *info, size_t info_len,
							uint8_t *out, size_t out_len);
extern bool cmk_derive_subkey(const uint8_t *dek, CmkKeyPurpose purpose,
							  uint8_t *out);
extern const char *cmk_purpose_label(CmkKeyPurpose purpose);

#define CMK_HMAC_LEN		32	/* HMAC-SHA256 */

/* HMAC-SHA256 (RFC 2104, FIPS 198-1); out receives CMK_HMAC_LEN bytes. */
extern bool cmk_hmac_sha256(const uint8_t *key, size_t key_len,
							const uint8_t *data, size_t len, uint8_t *out);

/* HKDF-SHA256(DEK, no salt, info = label) of any length: keys outside the
 * purpose table (the I/O layer's XTS keys are 64 bytes). */
extern bool cmk_derive_labelled(const uint8_t *dek, const char *label,
								uint8_t *out, size_t out_len);

/* DEK identifier: HMAC-SHA256(DEK, label), truncated.  Reveals nothing. */
extern bool cmk_dek_identifier(const uint8_t *dek, uint8_t *out);

extern bool cmk_sha256(const void *data, size_t len, uint8_t *out);
extern bool cmk_random_bytes(uint8_t *out, size_t len);
extern bool cmk_ct_equal(const void *a, const void *b, size_t len);

/* base64url (RFC 4648 §5); decoding accepts both alphabets and padding. */
extern size_t cmk_base64url_encode(const uint8_t *in, size_t len, char *out,
								   size_t outsize);
extern bool cmk_base64url_decode(const char *in, size_t inlen, uint8_t *out,
								 size_t outsize, size_t *outlen);

extern void cmk_hex(const uint8_t *in, size_t len, char *out);

/* Known-answer self-tests; name/ok pairs are reported through the callback. */
typedef void (*cmk_selftest_report) (void *arg, const char *name, bool ok);
extern bool cmk_crypto_selftest(cmk_selftest_report report, void *arg);

#endif							/* CMK_CRYPTO_H */
