/*-------------------------------------------------------------------------
 *
 * cmk_stream.c
 *		Incremental encryption and authenticated decryption of the
 *		cmk_storage stream container (docs/stream-format.md).
 *
 * A stream is a header followed by chunks.  Every chunk but the last holds
 * exactly chunk_size plaintext bytes; the final chunk holds fewer (possibly
 * none), so a reader can tell a full chunk from the final one by length
 * alone and never has to look ahead.  Each chunk is sealed with AES-256-GCM
 * under a key unique to the stream (HKDF of the purpose subkey and the
 * header's random salt), with a nonce made of a chunk-type byte (data, final
 * data, header) and the chunk index.  So a flipped bit, a dropped, repeated
 * or reordered chunk, a chunk from another file, a truncation at any byte
 * and appended bytes all fail authentication; the header is authenticated by
 * its own tag.
 *
 * Plaintext reaches the caller's write callback only after its chunk has
 * been authenticated, but a stream is only known to be complete when
 * cmk_stream_finish() returns OK: callers must not trust (rename into place,
 * report success for) output before that.
 *
 * Pure C on OpenSSL: no ereport, palloc, logging or file access here, so the
 * same object code serves the server and cmk_restore.  Buffers come from
 * malloc; one EVP context serves every chunk and every stream of a context.
 *
 *-------------------------------------------------------------------------
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "cmk_bigendian.h"
#include "crypto/cmk_crypto.h"
#include "stream/cmk_stream.h"

static const uint8_t stream_magic[8] = {'C', 'M', 'K', 'S', 'T', 'R', 'M', '\0'};

#define SUITE_AES256GCM_HKDF	1
#define FILE_KEY_INFO			"cmk_storage/v1/stream-file-key"

/* Nonce byte 0: what the GCM invocation seals. */
#define NONCE_DATA				0x00
#define NONCE_FINAL				0x01
#define NONCE_HEADER			0x02

/* Header field offsets (docs/stream-format.md). */
#define OFF_MAGIC		0
#define OFF_VERSION		8
#define OFF_HEADER_LEN	10
#define OFF_PURPOSE		12
#define OFF_SUITE		13
#define OFF_RESERVED	14
#define OFF_CHUNK_SIZE	16
#define OFF_SYSID		20
#define OFF_DEK_ID		28
#define OFF_SALT		44
#define OFF_SET_ID		76
#define OFF_WRAP_ALG	92
#define OFF_WRAPPED_LEN 94
#define OFF_KID_LEN		96
#define OFF_NAME_LEN	98
#define OFF_VARIABLE	CMK_STREAM_FIXED_LEN

#if defined(__GNUC__)
#define STREAM_PRINTF(f, a) __attribute__((format(gnu_printf, f, a)))
#else
#define STREAM_PRINTF(f, a)
#endif

/* Output is handed to the write callback in batches of about this size. */
#define OUT_BATCH		(1024 * 1024)

typedef enum StreamMode
{
	MODE_IDLE,
	MODE_ENCRYPT,
	MODE_DECRYPT_HEADER,
	MODE_DECRYPT_CHUNKS,
	MODE_DONE,
	MODE_FAILED,
} StreamMode;

struct CmkStream
{
	EVP_CIPHER_CTX *ctx;
	StreamMode	mode;
	CmkStreamStatus status;		/* sticky once failed */
	CmkStreamHeader hdr;
	uint8_t		key[CMK_STREAM_KEY_LEN];	/* file key while a stream runs */

	CmkStreamWriteFn wfn;
	void	   *warg;
	CmkStreamKeyFn kfn;
	void	   *karg;

	size_t		chunk;			/* plaintext bytes in a full chunk */
	size_t		record;			/* chunk + tag */
	uint64_t	index;			/* next chunk index */
	uint64_t	plain_bytes;
	uint64_t	stream_offset;	/* bytes consumed (decrypting) */

	uint8_t    *in;				/* partial chunk (encrypt) or record (decrypt) */
	size_t		in_len;
	size_t		in_cap;
	uint8_t    *out;			/* batched output */
	size_t		out_len;
	size_t		out_cap;

	uint8_t		hbuf[CMK_STREAM_MAX_HEADER];
	size_t		hlen;
	size_t		hneed;

	char		errmsg[256];
};

/* ---------------------------------------------------------------------- */

static CmkStreamStatus fail(CmkStream *s, CmkStreamStatus st, const char *fmt,...) STREAM_PRINTF(3, 4);
static void set_err(char *errbuf, size_t errlen, const char *fmt,...) STREAM_PRINTF(3, 4);

static CmkStreamStatus
fail(CmkStream *s, CmkStreamStatus st, const char *fmt,...)
{
	va_list		ap;

	if (s->mode == MODE_FAILED)
		return s->status;		/* keep the first reason */
	va_start(ap, fmt);
	vsnprintf(s->errmsg, sizeof(s->errmsg), fmt, ap);
	va_end(ap);
	s->status = st;
	s->mode = MODE_FAILED;
	OPENSSL_cleanse(s->key, sizeof(s->key));
	return st;
}

static void
set_err(char *errbuf, size_t errlen, const char *fmt,...)
{
	va_list		ap;

	if (errbuf == NULL || errlen == 0)
		return;
	va_start(ap, fmt);
	vsnprintf(errbuf, errlen, fmt, ap);
	va_end(ap);
}

const char *
cmk_stream_status_name(CmkStreamStatus st)
{
	switch (st)
	{
		case CMK_STREAM_OK:
			return "ok";
		case CMK_STREAM_ERR_FORMAT:
			return "not a valid cmk_storage stream";
		case CMK_STREAM_ERR_MISMATCH:
			return "not the expected file";
		case CMK_STREAM_ERR_KEY:
			return "key unavailable";
		case CMK_STREAM_ERR_AUTH:
			return "authentication failed";
		case CMK_STREAM_ERR_TRUNCATED:
			return "truncated";
		case CMK_STREAM_ERR_WRITE:
			return "write failed";
		case CMK_STREAM_ERR_CRYPTO:
			return "cryptographic library failure";
		case CMK_STREAM_ERR_USAGE:
			return "invalid use";
	}
	return "unknown";
}

const char *
cmk_stream_purpose_name(int purpose)
{
	switch (purpose)
	{
		case CMK_STREAM_WAL:
			return "wal-archive";
		case CMK_STREAM_BACKUP:
			return "base-backup";
	}
	return "unknown";
}

/* ---------------------------------------------------------------------- */

CmkStream *
cmk_stream_create(void)
{
	CmkStream  *s = calloc(1, sizeof(CmkStream));

	if (s == NULL)
		return NULL;
	s->ctx = EVP_CIPHER_CTX_new();
	if (s->ctx == NULL)
	{
		free(s);
		return NULL;
	}
	s->mode = MODE_IDLE;
	return s;
}

static void
wipe_buffers(CmkStream *s)
{
	if (s->in)
		OPENSSL_cleanse(s->in, s->in_cap);
	if (s->out)
		OPENSSL_cleanse(s->out, s->out_cap);
	s->in_len = s->out_len = 0;
}

void
cmk_stream_destroy(CmkStream *s)
{
	if (s == NULL)
		return;
	OPENSSL_cleanse(s->key, sizeof(s->key));
	wipe_buffers(s);
	free(s->in);
	free(s->out);
	/* EVP_CIPHER_CTX_free cleanses the key schedule and GHASH state. */
	EVP_CIPHER_CTX_free(s->ctx);
	OPENSSL_cleanse(s, sizeof(*s));
	free(s);
}

void
cmk_stream_abort(CmkStream *s)
{
	OPENSSL_cleanse(s->key, sizeof(s->key));
	wipe_buffers(s);
	s->mode = MODE_IDLE;
	s->status = CMK_STREAM_OK;
}

const CmkStreamHeader *
cmk_stream_header(const CmkStream *s)
{
	return &s->hdr;
}

uint64_t
cmk_stream_plain_bytes(const CmkStream *s)
{
	return s->plain_bytes;
}

uint64_t
cmk_stream_chunks(const CmkStream *s)
{
	return s->index;
}

const char *
cmk_stream_errmsg(const CmkStream *s)
{
	return s->status == CMK_STREAM_OK ? "" : s->errmsg;
}

/* Size the buffers for a chunk size; keeps larger buffers from earlier use. */
static bool
size_buffers(CmkStream *s, size_t chunk)
{
	size_t		record = chunk + CMK_STREAM_TAG_LEN;
	size_t		out_cap = record * (OUT_BATCH / record > 0 ? OUT_BATCH / record : 1);

	if (s->in_cap < record)
	{
		if (s->in)
			OPENSSL_cleanse(s->in, s->in_cap);
		free(s->in);
		s->in = malloc(record);
		s->in_cap = s->in ? record : 0;
	}
	if (s->out_cap < out_cap)
	{
		if (s->out)
			OPENSSL_cleanse(s->out, s->out_cap);
		free(s->out);
		s->out = malloc(out_cap);
		s->out_cap = s->out ? out_cap : 0;
	}
	s->chunk = chunk;
	s->record = record;
	s->in_len = s->out_len = 0;
	return s->in != NULL && s->out != NULL;
}

static void
make_nonce(uint8_t *nonce, uint8_t type, uint64_t index)
{
	nonce[0] = type;
	nonce[1] = nonce[2] = nonce[3] = 0;
	cmk_put64(nonce + 4, index);
}

static bool
derive_file_key(CmkStream *s, const uint8_t *subkey)
{
	return cmk_hkdf_sha256(subkey, CMK_STREAM_KEY_LEN,
						   s->hdr.salt, CMK_STREAM_SALT_LEN,
						   (const uint8_t *) FILE_KEY_INFO, strlen(FILE_KEY_INFO),
						   s->key, CMK_STREAM_KEY_LEN) &&
		EVP_CipherInit_ex(s->ctx, EVP_aes_256_gcm(), NULL, s->key, NULL, 1) == 1;
}

/*
 * One GCM invocation.  enc: out = E(in), tag written.  !enc: out = D(in)
 * and the tag checked; returns false on any failure, including a tag
 * mismatch (the caller tells the two apart with *auth_failed).
 */
static bool
gcm(CmkStream *s, bool enc, uint8_t type, uint64_t index,
	const uint8_t *aad, size_t aad_len,
	const uint8_t *in, size_t len, uint8_t *out, uint8_t *tag,
	bool *auth_failed)
{
	uint8_t		nonce[12];
	uint8_t		none[CMK_STREAM_TAG_LEN];	/* GMAC: nothing to write */
	int			outl = 0;

	*auth_failed = false;
	if (out == NULL)
		out = none;
	make_nonce(nonce, type, index);
	if (EVP_CipherInit_ex(s->ctx, NULL, NULL, NULL, nonce, enc ? 1 : 0) != 1)
		return false;
	if (aad_len > 0 &&
		EVP_CipherUpdate(s->ctx, NULL, &outl, aad, (int) aad_len) != 1)
		return false;
	if (len > 0 &&
		(EVP_CipherUpdate(s->ctx, out, &outl, in, (int) len) != 1 ||
		 (size_t) outl != len))
		return false;
	if (enc)
	{
		if (EVP_CipherFinal_ex(s->ctx, out + len, &outl) != 1)
			return false;
		return EVP_CIPHER_CTX_ctrl(s->ctx, EVP_CTRL_GCM_GET_TAG,
								   CMK_STREAM_TAG_LEN, tag) == 1;
	}
	if (EVP_CIPHER_CTX_ctrl(s->ctx, EVP_CTRL_GCM_SET_TAG,
							CMK_STREAM_TAG_LEN, (void *) tag) != 1)
		return false;
	if (EVP_CipherFinal_ex(s->ctx, out + len, &outl) != 1)
	{
		*auth_failed = true;
		return false;
	}
	return true;
}

static CmkStreamStatus
flush_out(CmkStream *s)
{
	if (s->out_len > 0)
	{
		if (!s->wfn(s->warg, s->out, s->out_len))
			return fail(s, CMK_STREAM_ERR_WRITE, "could not write stream output");
		s->out_len = 0;
	}
	return CMK_STREAM_OK;
}

/* ---------------------------------------------------------------------- */
/* Header codec                                                           */

/* Serialise hdr into buf (checksum included, tag left zero); returns length. */
static size_t
serialize_header(const CmkStreamHeader *hdr, uint8_t *buf)
{
	size_t		kid_len = strlen(hdr->kid);
	size_t		name_len = strlen(hdr->name);
	size_t		len = CMK_STREAM_FIXED_LEN + hdr->wrapped_len + kid_len + name_len +
		CMK_STREAM_TRAILER_LEN;
	uint8_t    *p;

	memset(buf, 0, len);
	memcpy(buf + OFF_MAGIC, stream_magic, sizeof(stream_magic));
	cmk_put16(buf + OFF_VERSION, CMK_STREAM_VERSION);
	cmk_put16(buf + OFF_HEADER_LEN, (uint16_t) len);
	buf[OFF_PURPOSE] = hdr->purpose;
	buf[OFF_SUITE] = SUITE_AES256GCM_HKDF;
	cmk_put32(buf + OFF_CHUNK_SIZE, hdr->chunk_size);
	cmk_put64(buf + OFF_SYSID, hdr->system_identifier);
	memcpy(buf + OFF_DEK_ID, hdr->dek_id, CMK_STREAM_DEK_ID_LEN);
	memcpy(buf + OFF_SALT, hdr->salt, CMK_STREAM_SALT_LEN);
	memcpy(buf + OFF_SET_ID, hdr->set_id, CMK_STREAM_SET_ID_LEN);
	cmk_put16(buf + OFF_WRAP_ALG, hdr->wrap_alg);
	cmk_put16(buf + OFF_WRAPPED_LEN, hdr->wrapped_len);
	cmk_put16(buf + OFF_KID_LEN, (uint16_t) kid_len);
	cmk_put16(buf + OFF_NAME_LEN, (uint16_t) name_len);
	p = buf + OFF_VARIABLE;
	memcpy(p, hdr->wrapped, hdr->wrapped_len);
	p += hdr->wrapped_len;
	memcpy(p, hdr->kid, kid_len);
	p += kid_len;
	memcpy(p, hdr->name, name_len);
	cmk_sha256(buf, len - CMK_STREAM_TRAILER_LEN, buf + len - CMK_STREAM_TRAILER_LEN);
	return len;
}

CmkStreamStatus
cmk_stream_parse_header(const uint8_t *buf, size_t len, CmkStreamHeader *hdr,
						char *errbuf, size_t errlen)
{
	uint16_t	header_len,
				kid_len,
				name_len;
	uint8_t		digest[32];
	const uint8_t *p;

	memset(hdr, 0, sizeof(*hdr));
	if (len < 12 || memcmp(buf + OFF_MAGIC, stream_magic, sizeof(stream_magic)) != 0)
	{
		set_err(errbuf, errlen, "the file does not start with the cmk_storage stream signature");
		return len < 12 && memcmp(buf, stream_magic, len < 8 ? len : 8) == 0 ?
			CMK_STREAM_ERR_TRUNCATED : CMK_STREAM_ERR_FORMAT;
	}
	hdr->version = cmk_get16(buf + OFF_VERSION);
	if (hdr->version != CMK_STREAM_VERSION)
	{
		set_err(errbuf, errlen, "stream format version %u is not supported (this build reads version %d)",
				hdr->version, CMK_STREAM_VERSION);
		return CMK_STREAM_ERR_FORMAT;
	}
	header_len = cmk_get16(buf + OFF_HEADER_LEN);
	if (header_len < CMK_STREAM_FIXED_LEN + CMK_STREAM_TRAILER_LEN ||
		header_len > CMK_STREAM_MAX_HEADER)
	{
		set_err(errbuf, errlen, "stream header length %u is out of range", header_len);
		return CMK_STREAM_ERR_FORMAT;
	}
	if (len < header_len)
	{
		set_err(errbuf, errlen, "the file ends inside its %u-byte header", header_len);
		return CMK_STREAM_ERR_TRUNCATED;
	}
	/* Check the checksum before trusting any other field. */
	if (!cmk_sha256(buf, header_len - CMK_STREAM_TRAILER_LEN, digest) ||
		memcmp(digest, buf + header_len - CMK_STREAM_TRAILER_LEN, sizeof(digest)) != 0)
	{
		set_err(errbuf, errlen, "stream header checksum mismatch (the header is damaged)");
		return CMK_STREAM_ERR_FORMAT;
	}
	hdr->header_len = header_len;
	hdr->purpose = buf[OFF_PURPOSE];
	hdr->chunk_size = cmk_get32(buf + OFF_CHUNK_SIZE);
	hdr->system_identifier = cmk_get64(buf + OFF_SYSID);
	memcpy(hdr->dek_id, buf + OFF_DEK_ID, CMK_STREAM_DEK_ID_LEN);
	memcpy(hdr->salt, buf + OFF_SALT, CMK_STREAM_SALT_LEN);
	memcpy(hdr->set_id, buf + OFF_SET_ID, CMK_STREAM_SET_ID_LEN);
	hdr->wrap_alg = cmk_get16(buf + OFF_WRAP_ALG);
	hdr->wrapped_len = cmk_get16(buf + OFF_WRAPPED_LEN);
	kid_len = cmk_get16(buf + OFF_KID_LEN);
	name_len = cmk_get16(buf + OFF_NAME_LEN);
	if (buf[OFF_SUITE] != SUITE_AES256GCM_HKDF ||
		cmk_get16(buf + OFF_RESERVED) != 0 ||
		(hdr->purpose != CMK_STREAM_WAL && hdr->purpose != CMK_STREAM_BACKUP) ||
		hdr->chunk_size < CMK_STREAM_MIN_CHUNK || hdr->chunk_size > CMK_STREAM_MAX_CHUNK ||
		hdr->wrapped_len == 0 || hdr->wrapped_len > CMK_STREAM_MAX_WRAPPED ||
		kid_len == 0 || kid_len > CMK_STREAM_MAX_KID ||
		name_len == 0 || name_len > CMK_STREAM_MAX_NAME ||
		(size_t) CMK_STREAM_FIXED_LEN + hdr->wrapped_len + kid_len + name_len +
		CMK_STREAM_TRAILER_LEN != header_len)
	{
		set_err(errbuf, errlen, "stream header has an invalid field");
		return CMK_STREAM_ERR_FORMAT;
	}
	p = buf + OFF_VARIABLE;
	memcpy(hdr->wrapped, p, hdr->wrapped_len);
	p += hdr->wrapped_len;
	memcpy(hdr->kid, p, kid_len);
	p += kid_len;
	memcpy(hdr->name, p, name_len);
	if (strlen(hdr->kid) != kid_len || strlen(hdr->name) != name_len)
	{
		set_err(errbuf, errlen, "stream header has a NUL byte inside a text field");
		return CMK_STREAM_ERR_FORMAT;
	}
	return CMK_STREAM_OK;
}

/* ---------------------------------------------------------------------- */
/* Encryption                                                             */

CmkStreamStatus
cmk_stream_encrypt_begin_with_salt(CmkStream *s, CmkStreamHeader *hdr,
								   const uint8_t *subkey,
								   CmkStreamWriteFn wfn, void *warg)
{
	uint8_t		buf[CMK_STREAM_MAX_HEADER];
	size_t		len;
	bool		auth_failed;

	cmk_stream_abort(s);
	s->status = CMK_STREAM_OK;
	s->index = s->plain_bytes = s->stream_offset = 0;
	s->wfn = wfn;
	s->warg = warg;
	s->kfn = NULL;
	if (hdr->chunk_size < CMK_STREAM_MIN_CHUNK || hdr->chunk_size > CMK_STREAM_MAX_CHUNK ||
		(hdr->purpose != CMK_STREAM_WAL && hdr->purpose != CMK_STREAM_BACKUP) ||
		hdr->wrapped_len == 0 || hdr->wrapped_len > CMK_STREAM_MAX_WRAPPED ||
		strlen(hdr->kid) == 0 || strlen(hdr->kid) > CMK_STREAM_MAX_KID ||
		strlen(hdr->name) == 0 || strlen(hdr->name) > CMK_STREAM_MAX_NAME)
		return fail(s, CMK_STREAM_ERR_USAGE, "invalid stream header parameters");
	hdr->version = CMK_STREAM_VERSION;
	s->hdr = *hdr;
	if (!size_buffers(s, hdr->chunk_size))
		return fail(s, CMK_STREAM_ERR_CRYPTO, "out of memory");
	if (!derive_file_key(s, subkey))
		return fail(s, CMK_STREAM_ERR_CRYPTO, "could not derive the stream key");

	len = serialize_header(hdr, buf);
	hdr->header_len = s->hdr.header_len = (uint32_t) len;
	if (!gcm(s, true, NONCE_HEADER, 0, buf, len - CMK_STREAM_TAG_LEN,
			 NULL, 0, NULL, buf + len - CMK_STREAM_TAG_LEN, &auth_failed))
		return fail(s, CMK_STREAM_ERR_CRYPTO, "could not authenticate the stream header");
	memcpy(s->out, buf, len);
	s->out_len = len;
	s->mode = MODE_ENCRYPT;
	return CMK_STREAM_OK;
}

CmkStreamStatus
cmk_stream_encrypt_begin(CmkStream *s, CmkStreamHeader *hdr,
						 const uint8_t *subkey,
						 CmkStreamWriteFn wfn, void *warg)
{
	if (!cmk_random_bytes(hdr->salt, CMK_STREAM_SALT_LEN))
	{
		cmk_stream_abort(s);
		return fail(s, CMK_STREAM_ERR_CRYPTO, "could not draw a random salt");
	}
	return cmk_stream_encrypt_begin_with_salt(s, hdr, subkey, wfn, warg);
}

/* Seal one chunk of plaintext into the output batch. */
static CmkStreamStatus
seal_chunk(CmkStream *s, const uint8_t *pt, size_t len, bool final)
{
	bool		auth_failed;

	if (s->out_cap - s->out_len < len + CMK_STREAM_TAG_LEN &&
		flush_out(s) != CMK_STREAM_OK)
		return s->status;
	if (!gcm(s, true, final ? NONCE_FINAL : NONCE_DATA, s->index, NULL, 0,
			 pt, len, s->out + s->out_len, s->out + s->out_len + len, &auth_failed))
		return fail(s, CMK_STREAM_ERR_CRYPTO, "AES-GCM encryption failed");
	s->out_len += len + CMK_STREAM_TAG_LEN;
	s->index++;
	s->plain_bytes += len;
	return CMK_STREAM_OK;
}

typedef CmkStreamStatus (*chunk_fn) (CmkStream *s, const uint8_t *data,
									 size_t len, bool final);

/*
 * Cut the input into units of size bytes (plaintext chunks when sealing,
 * records when opening) and hand each full one to fn.  A full unit is never
 * the final one (the final chunk is always shorter), so it can be processed
 * at once; a partial one waits in s->in for more input or for finish.
 */
static CmkStreamStatus
feed_chunks(CmkStream *s, const uint8_t *data, size_t len, size_t size,
			chunk_fn fn)
{
	while (len > 0)
	{
		size_t		n;

		if (s->in_len == 0 && len >= size)
		{
			if (fn(s, data, size, false) != CMK_STREAM_OK)
				return s->status;
			data += size;
			len -= size;
			continue;
		}
		n = size - s->in_len;
		if (n > len)
			n = len;
		memcpy(s->in + s->in_len, data, n);
		s->in_len += n;
		data += n;
		len -= n;
		if (s->in_len == size)
		{
			if (fn(s, s->in, size, false) != CMK_STREAM_OK)
				return s->status;
			s->in_len = 0;
		}
	}
	return CMK_STREAM_OK;
}

static CmkStreamStatus
encrypt_update(CmkStream *s, const uint8_t *data, size_t len)
{
	return feed_chunks(s, data, len, s->chunk, seal_chunk);
}

/* ---------------------------------------------------------------------- */
/* Decryption                                                             */

CmkStreamStatus
cmk_stream_decrypt_begin(CmkStream *s, CmkStreamKeyFn kfn, void *karg,
						 CmkStreamWriteFn wfn, void *warg)
{
	cmk_stream_abort(s);
	memset(&s->hdr, 0, sizeof(s->hdr));
	s->index = s->plain_bytes = s->stream_offset = 0;
	s->kfn = kfn;
	s->karg = karg;
	s->wfn = wfn;
	s->warg = warg;
	s->hlen = 0;
	s->hneed = 12;				/* enough to read the header length */
	s->mode = MODE_DECRYPT_HEADER;
	return CMK_STREAM_OK;
}

/* The header is complete in hbuf: parse, get the key, check the tag. */
static CmkStreamStatus
accept_header(CmkStream *s)
{
	char		msg[200];
	uint8_t		subkey[CMK_STREAM_KEY_LEN];
	uint8_t		tag[CMK_STREAM_TAG_LEN];
	CmkStreamStatus st;
	bool		auth_failed;
	size_t		hl;

	st = cmk_stream_parse_header(s->hbuf, s->hlen, &s->hdr, msg, sizeof(msg));
	if (st != CMK_STREAM_OK)
		return fail(s, st, "%s", msg);
	hl = s->hdr.header_len;

	st = s->kfn(s->karg, &s->hdr, subkey);
	if (st != CMK_STREAM_OK)
	{
		OPENSSL_cleanse(subkey, sizeof(subkey));
		return fail(s, st, "%s", st == CMK_STREAM_ERR_MISMATCH ?
					"the stream is not the expected file" :
					"the key for the stream is unavailable");
	}
	if (!derive_file_key(s, subkey))
	{
		OPENSSL_cleanse(subkey, sizeof(subkey));
		return fail(s, CMK_STREAM_ERR_CRYPTO, "could not derive the stream key");
	}
	OPENSSL_cleanse(subkey, sizeof(subkey));

	if (!gcm(s, true, NONCE_HEADER, 0, s->hbuf, hl - CMK_STREAM_TAG_LEN,
			 NULL, 0, NULL, tag, &auth_failed))
		return fail(s, CMK_STREAM_ERR_CRYPTO, "could not authenticate the stream header");
	if (!cmk_ct_equal(tag, s->hbuf + hl - CMK_STREAM_TAG_LEN, CMK_STREAM_TAG_LEN))
		return fail(s, CMK_STREAM_ERR_AUTH,
					"stream header failed authentication (tampered header, or a key other than the one that wrote the file)");
	if (!size_buffers(s, s->hdr.chunk_size))
		return fail(s, CMK_STREAM_ERR_CRYPTO, "out of memory");
	s->mode = MODE_DECRYPT_CHUNKS;
	return CMK_STREAM_OK;
}

/* Open one sealed chunk (record = ciphertext + tag) into the output batch. */
static CmkStreamStatus
open_chunk(CmkStream *s, const uint8_t *rec, size_t reclen, bool final)
{
	size_t		len = reclen - CMK_STREAM_TAG_LEN;
	uint8_t    *dst;
	bool		auth_failed;

	if (s->out_cap - s->out_len < len && flush_out(s) != CMK_STREAM_OK)
		return s->status;
	dst = s->out + s->out_len;
	if (!gcm(s, false, final ? NONCE_FINAL : NONCE_DATA, s->index, NULL, 0,
			 rec, len, dst, (uint8_t *) rec + len, &auth_failed))
	{
		OPENSSL_cleanse(dst, len);	/* never release unauthenticated bytes */
		if (!auth_failed)
			return fail(s, CMK_STREAM_ERR_CRYPTO, "AES-GCM decryption failed");
		if (final)
			return fail(s, CMK_STREAM_ERR_AUTH,
						"the last %zu bytes at offset %llu do not authenticate as final chunk %llu (the file is truncated, extended or damaged)",
						reclen, (unsigned long long) s->stream_offset,
						(unsigned long long) s->index);
		return fail(s, CMK_STREAM_ERR_AUTH,
					"chunk %llu at offset %llu failed authentication (damaged, reordered or spliced data)",
					(unsigned long long) s->index,
					(unsigned long long) s->stream_offset);
	}
	s->out_len += len;
	s->index++;
	s->plain_bytes += len;
	s->stream_offset += reclen;
	return CMK_STREAM_OK;
}

static CmkStreamStatus
decrypt_update(CmkStream *s, const uint8_t *data, size_t len)
{
	while (len > 0 && s->mode == MODE_DECRYPT_HEADER)
	{
		size_t		n = s->hneed - s->hlen;

		if (n > len)
			n = len;
		memcpy(s->hbuf + s->hlen, data, n);
		s->hlen += n;
		data += n;
		len -= n;
		if (s->hlen < s->hneed)
			return CMK_STREAM_OK;
		if (s->hneed == 12)
		{
			size_t		hl = cmk_get16(s->hbuf + OFF_HEADER_LEN);

			if (memcmp(s->hbuf, stream_magic, sizeof(stream_magic)) != 0)
				return fail(s, CMK_STREAM_ERR_FORMAT,
							"the file does not start with the cmk_storage stream signature");
			if (cmk_get16(s->hbuf + OFF_VERSION) != CMK_STREAM_VERSION)
				return fail(s, CMK_STREAM_ERR_FORMAT,
							"stream format version %u is not supported (this build reads version %d)",
							cmk_get16(s->hbuf + OFF_VERSION), CMK_STREAM_VERSION);
			if (hl < CMK_STREAM_FIXED_LEN + CMK_STREAM_TRAILER_LEN ||
				hl > CMK_STREAM_MAX_HEADER)
				return fail(s, CMK_STREAM_ERR_FORMAT,
							"stream header length %zu is out of range", hl);
			s->hneed = hl;
			continue;
		}
		s->stream_offset = s->hlen;
		if (accept_header(s) != CMK_STREAM_OK)
			return s->status;
	}

	if (feed_chunks(s, data, len, s->record, open_chunk) != CMK_STREAM_OK)
		return s->status;
	/* Hand over what is authenticated so far: keeps memory flat. */
	return flush_out(s);
}

/* ---------------------------------------------------------------------- */

CmkStreamStatus
cmk_stream_update(CmkStream *s, const void *data, size_t len)
{
	switch (s->mode)
	{
		case MODE_ENCRYPT:
			return encrypt_update(s, data, len);
		case MODE_DECRYPT_HEADER:
		case MODE_DECRYPT_CHUNKS:
			return decrypt_update(s, data, len);
		case MODE_FAILED:
			return s->status;
		default:
			return fail(s, CMK_STREAM_ERR_USAGE, "no stream is in progress");
	}
}

CmkStreamStatus
cmk_stream_finish(CmkStream *s)
{
	CmkStreamStatus st = CMK_STREAM_OK;

	switch (s->mode)
	{
		case MODE_ENCRYPT:
			/* in_len < chunk always: the final chunk is short (maybe empty) */
			if (seal_chunk(s, s->in, s->in_len, true) != CMK_STREAM_OK ||
				flush_out(s) != CMK_STREAM_OK)
				return s->status;
			break;
		case MODE_DECRYPT_HEADER:
			if (s->hlen > 0 &&
				memcmp(s->hbuf, stream_magic, s->hlen < 8 ? s->hlen : 8) != 0)
				return fail(s, CMK_STREAM_ERR_FORMAT,
							"the file does not start with the cmk_storage stream signature");
			return fail(s, CMK_STREAM_ERR_TRUNCATED, s->hlen == 0 ?
						"the file is empty" : "the file ends inside its header");
		case MODE_DECRYPT_CHUNKS:
			if (s->in_len == 0)
				return fail(s, CMK_STREAM_ERR_TRUNCATED,
							"the file ends after chunk %llu without its final chunk (truncated)",
							(unsigned long long) s->index);
			if (s->in_len < CMK_STREAM_TAG_LEN)
				return fail(s, CMK_STREAM_ERR_TRUNCATED,
							"the file ends inside chunk %llu (truncated)",
							(unsigned long long) s->index);
			if (open_chunk(s, s->in, s->in_len, true) != CMK_STREAM_OK ||
				flush_out(s) != CMK_STREAM_OK)
				return s->status;
			s->in_len = 0;
			break;
		case MODE_FAILED:
			return s->status;
		default:
			return fail(s, CMK_STREAM_ERR_USAGE, "no stream is in progress");
	}
	OPENSSL_cleanse(s->key, sizeof(s->key));
	s->mode = MODE_DONE;
	return st;
}
