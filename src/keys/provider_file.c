/*-------------------------------------------------------------------------
 *
 * provider_file.c
 *		KEK provider backed by a local RSA private key in PEM:
 *		cmk_storage.key_uri = 'file:///absolute/path/kek.pem'.
 *
 * For development, tests and the quick start; production keys belong in a
 * vault.  The key id recorded in the control file is the SHA-256 of the
 * public key, so a moved file still works and a different key is named as
 * such.  The file's bytes and the parsed key are wiped after every use;
 * nothing is cached.
 *
 *-------------------------------------------------------------------------
 */
#ifdef FRONTEND
#include "postgres_fe.h"
#else
#include "postgres.h"
#endif

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/bio.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include "crypto/cmk_crypto.h"
#include "keys/key_provider.h"

#define FILE_URI_PREFIX "file://"
#define FILE_KID_PREFIX "file:sha256:"
#define MAX_KEY_FILE	65536

static bool
file_handles(const char *uri)
{
	return strncmp(uri, FILE_URI_PREFIX, strlen(FILE_URI_PREFIX)) == 0;
}

/* Passphrase callback that refuses: encrypted PEM files are not supported. */
static int
no_passphrase(char *buf, int size, int rwflag, void *u)
{
	return -1;
}

static const char *
path_of(const char *uri, CmkError *err)
{
	const char *path = uri + strlen(FILE_URI_PREFIX);

	if (path[0] != '/')
	{
		cmk_error_set(err, CMK_ERR_CONFIG, NULL,
					  "Write the URI as file:///absolute/path/kek.pem (three slashes).",
					  "key file URI \"%s\" does not name an absolute path", uri);
		return NULL;
	}
	return path;
}

/*
 * Read and parse the key, with the permission rules PostgreSQL applies to
 * its TLS private key (be-secure-common.c): owned by us and not accessible
 * to group or others, or owned by root and at most group-readable.
 */
static EVP_PKEY *
load_key(const char *uri, CmkError *err)
{
	const char *path = path_of(uri, err);
	struct stat st;
	uint8_t    *buf;
	ssize_t		len;
	int			fd;
	BIO		   *bio;
	EVP_PKEY   *pkey;
	int			bits;

	if (path == NULL)
		return NULL;
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
	{
		cmk_error_set(err, CMK_ERR_CONFIG, NULL,
					  "Check cmk_storage.key_uri and that the server's operating system user can read the file.",
					  "could not open key file \"%s\": %m", path);
		return NULL;
	}
	if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode))
	{
		close(fd);
		cmk_error_set(err, CMK_ERR_CONFIG, NULL, NULL,
					  "key file \"%s\" is not a regular file", path);
		return NULL;
	}
	if ((st.st_uid == geteuid() && (st.st_mode & (S_IRWXG | S_IRWXO))) ||
		(st.st_uid == 0 && (st.st_mode & (S_IWGRP | S_IXGRP | S_IRWXO))) ||
		(st.st_uid != geteuid() && st.st_uid != 0))
	{
		close(fd);
		cmk_error_set(err, CMK_ERR_CONFIG, NULL,
					  "The file must be owned by the database user with permissions u=rw (0600) or less, or owned by root with permissions u=rw,g=r (0640) or less.",
					  "key file \"%s\" has group or world access or a wrong owner", path);
		return NULL;
	}

	buf = OPENSSL_secure_malloc(MAX_KEY_FILE);
	if (buf == NULL)
		buf = OPENSSL_malloc(MAX_KEY_FILE);
	if (buf == NULL)
	{
		close(fd);
		cmk_error_set(err, CMK_ERR_INTERNAL, NULL, NULL, "out of memory reading key file");
		return NULL;
	}
	len = read(fd, buf, MAX_KEY_FILE);
	close(fd);
	if (len <= 0 || len >= MAX_KEY_FILE)
	{
		OPENSSL_cleanse(buf, MAX_KEY_FILE);
		OPENSSL_free(buf);
		cmk_error_set(err, CMK_ERR_CONFIG, NULL, NULL,
					  "key file \"%s\" is empty or too large", path);
		return NULL;
	}

	bio = BIO_new_mem_buf(buf, (int) len);
	pkey = bio ? PEM_read_bio_PrivateKey(bio, NULL, no_passphrase, NULL) : NULL;
	BIO_free(bio);
	OPENSSL_cleanse(buf, MAX_KEY_FILE);
	OPENSSL_free(buf);

	if (pkey == NULL)
	{
		cmk_error_set(err, CMK_ERR_CONFIG, NULL,
					  "Generate one with: openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:3072 -out kek.pem",
					  "key file \"%s\" does not hold an unencrypted PEM private key", path);
		return NULL;
	}
	bits = EVP_PKEY_get_bits(pkey);
	if (!EVP_PKEY_is_a(pkey, "RSA") || (bits != 2048 && bits != 3072 && bits != 4096))
	{
		cmk_error_set(err, CMK_ERR_CONFIG, NULL,
					  "Use an RSA key of 2048, 3072 or 4096 bits, as Azure Key Vault does.",
					  "key file \"%s\" holds a %s key of %d bits, which is not supported",
					  path, EVP_PKEY_is_a(pkey, "RSA") ? "RSA" : "non-RSA", bits);
		EVP_PKEY_free(pkey);
		return NULL;
	}
	return pkey;
}

/* kid = "file:sha256:" + hex SHA-256 of the DER SubjectPublicKeyInfo */
static bool
key_id(EVP_PKEY *pkey, char *kid, size_t kid_size, CmkError *err)
{
	unsigned char *der = NULL;
	int			der_len = i2d_PUBKEY(pkey, &der);
	uint8_t		digest[32];
	char		hex[65];

	if (der_len <= 0 || !cmk_sha256(der, der_len, digest))
	{
		OPENSSL_free(der);
		cmk_error_set(err, CMK_ERR_INTERNAL, NULL, NULL, "could not fingerprint the key");
		return false;
	}
	OPENSSL_free(der);
	cmk_hex(digest, sizeof(digest), hex);
	snprintf(kid, kid_size, "%s%s", FILE_KID_PREFIX, hex);
	return true;
}

static bool
file_describe(const char *uri, CmkKekInfo *info, CmkError *err)
{
	EVP_PKEY   *pkey = load_key(uri, err);
	bool		ok;

	if (pkey == NULL)
		return false;
	ok = key_id(pkey, info->kid, sizeof(info->kid), err);
	info->bits = EVP_PKEY_get_bits(pkey);
	info->enabled = true;
	EVP_PKEY_free(pkey);
	return ok;
}

static bool
file_wrap(const char *uri, CmkWrapAlg alg, const uint8_t *dek, size_t dek_len,
		  uint8_t *wrapped, size_t *wrapped_len, char *kid, size_t kid_size,
		  CmkError *err)
{
	EVP_PKEY   *pkey = load_key(uri, err);
	bool		ok;

	if (pkey == NULL)
		return false;
	ok = key_id(pkey, kid, kid_size, err) &&
		cmk_rsa_oaep_wrap(pkey, alg, dek, dek_len, wrapped, wrapped_len, err);
	EVP_PKEY_free(pkey);
	return ok;
}

static bool
file_unwrap(const char *uri, const char *kid, CmkWrapAlg alg,
			const uint8_t *wrapped, size_t wrapped_len,
			uint8_t *dek, size_t *dek_len, CmkError *err)
{
	EVP_PKEY   *pkey = load_key(uri, err);
	char		have[CMK_MAX_KID];
	bool		ok;

	if (pkey == NULL)
		return false;
	if (!key_id(pkey, have, sizeof(have), err))
	{
		EVP_PKEY_free(pkey);
		return false;
	}
	if (strcmp(have, kid) != 0)
	{
		EVP_PKEY_free(pkey);
		cmk_error_set(err, CMK_ERR_WRONG_KEY, NULL,
					  "Point cmk_storage.key_uri at the key that wrapped the data encryption key, or restore that key file.",
					  "the configured key file holds a different key than the one that wrapped the data encryption key");
		cmk_error_detail(err, "The control file names key %s; \"%s\" holds key %s.",
						 kid, uri + strlen(FILE_URI_PREFIX), have);
		return false;
	}
	ok = cmk_rsa_oaep_unwrap(pkey, alg, wrapped, wrapped_len,
							 dek, CMK_DEK_LEN, dek_len, err);
	EVP_PKEY_free(pkey);
	return ok;
}

const CmkKeyProvider cmk_file_provider = {
	.name = "file",
	.handles = file_handles,
	.describe = file_describe,
	.wrap = file_wrap,
	.unwrap = file_unwrap,
};
