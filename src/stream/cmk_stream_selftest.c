/*-------------------------------------------------------------------------
 *
 * cmk_stream_selftest.c
 *		Known-answer and tamper tests of the stream container.
 *
 * The archive module and the base-backup target run these once per process
 * before they encrypt anything (a broken build must never write archives it
 * cannot read back), and `cmk_restore selftest` prints them.  The stream
 * vector is the one in docs/stream-format.md; it was cross-checked with an
 * independent implementation written from that document
 * (scripts/cmk_stream_ref.py).  The tamper part flips every byte of a small
 * stream, truncates it at every length, appends to it, reorders, drops,
 * repeats and splices chunks and headers, and checks that decryption never
 * succeeds and never releases a byte of unauthenticated plaintext.
 *
 * Pure C, no server dependencies; memory from malloc.
 *
 *-------------------------------------------------------------------------
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

#include "crypto/cmk_crypto.h"
#include "stream/cmk_stream.h"

#define KAT_CHUNK		256
#define KAT_PLAIN		600
#define KAT_NAME		"000000010000000000000001"
#define KAT_KID			"file:sha256:kat"
#define KAT_LEN			867
#define KAT_SHA256		"faaa41d9a396d8f074d9ef5d55b21bc309fc9169c63e382f644be196a0de7ae8"

typedef struct Buf
{
	uint8_t    *data;
	size_t		len;
	size_t		cap;
} Buf;

static bool
buf_write(void *arg, const uint8_t *data, size_t len)
{
	Buf		   *b = arg;

	if (b->len + len > b->cap)
	{
		size_t		cap = (b->cap ? b->cap * 2 : 4096);
		uint8_t    *p;

		while (cap < b->len + len)
			cap *= 2;
		p = realloc(b->data, cap);
		if (p == NULL)
			return false;
		b->data = p;
		b->cap = cap;
	}
	memcpy(b->data + b->len, data, len);
	b->len += len;
	return true;
}

typedef struct KeyArg
{
	const uint8_t *subkey;
	const char *expect_name;
} KeyArg;

static CmkStreamStatus
kat_key(void *arg, const CmkStreamHeader *hdr, uint8_t *subkey)
{
	KeyArg	   *k = arg;

	if (k->expect_name && strcmp(hdr->name, k->expect_name) != 0)
		return CMK_STREAM_ERR_MISMATCH;
	memcpy(subkey, k->subkey, CMK_STREAM_KEY_LEN);
	return CMK_STREAM_OK;
}

static void
kat_header(CmkStreamHeader *hdr, uint8_t salt_base)
{
	memset(hdr, 0, sizeof(*hdr));
	hdr->purpose = CMK_STREAM_WAL;
	hdr->chunk_size = KAT_CHUNK;
	hdr->system_identifier = UINT64_C(0x0102030405060708);
	for (int i = 0; i < CMK_STREAM_DEK_ID_LEN; i++)
		hdr->dek_id[i] = (uint8_t) (0x70 + i);
	for (int i = 0; i < CMK_STREAM_SALT_LEN; i++)
		hdr->salt[i] = (uint8_t) (salt_base + i);
	for (int i = 0; i < CMK_STREAM_SET_ID_LEN; i++)
		hdr->set_id[i] = (uint8_t) (0x60 + i);
	hdr->wrap_alg = 1;
	hdr->wrapped_len = 32;
	memset(hdr->wrapped, 0xa5, 32);
	strcpy(hdr->kid, KAT_KID);
	strcpy(hdr->name, KAT_NAME);
}

static void
kat_subkey(uint8_t *key)
{
	for (int i = 0; i < CMK_STREAM_KEY_LEN; i++)
		key[i] = (uint8_t) i;
}

static void
kat_plain(uint8_t *p, size_t len)
{
	for (size_t i = 0; i < len; i++)
		p[i] = (uint8_t) (i * 7 + 3);
}

/* Encrypt plain with the KAT parameters, feeding it in pieces of step. */
static bool
encrypt_kat(CmkStream *s, uint8_t salt_base, const uint8_t *plain, size_t len,
			size_t step, size_t chunk, Buf *out)
{
	CmkStreamHeader hdr;
	uint8_t		key[CMK_STREAM_KEY_LEN];
	bool		ok;

	kat_header(&hdr, salt_base);
	hdr.chunk_size = (uint32_t) chunk;
	kat_subkey(key);
	out->len = 0;
	ok = cmk_stream_encrypt_begin_with_salt(s, &hdr, key, buf_write, out) == CMK_STREAM_OK;
	for (size_t off = 0; ok && off < len; off += step)
		ok = cmk_stream_update(s, plain + off, off + step > len ? len - off : step) == CMK_STREAM_OK;
	ok = ok && cmk_stream_finish(s) == CMK_STREAM_OK;
	return ok;
}

/* Decrypt; returns the status, plaintext in out. */
static CmkStreamStatus
decrypt_with(CmkStream *s, const uint8_t *data, size_t len, size_t step,
			 const uint8_t *subkey, const char *expect_name, Buf *out)
{
	KeyArg		k = {subkey, expect_name};
	CmkStreamStatus st;

	out->len = 0;
	cmk_stream_decrypt_begin(s, kat_key, &k, buf_write, out);
	for (size_t off = 0; off < len; off += step)
	{
		st = cmk_stream_update(s, data + off, off + step > len ? len - off : step);
		if (st != CMK_STREAM_OK)
			return st;
	}
	return cmk_stream_finish(s);
}

/* A tampered stream must fail and release only a prefix of the plaintext. */
static bool
rejected(CmkStream *s, const uint8_t *data, size_t len, const uint8_t *plain,
		 size_t plain_len, Buf *out)
{
	uint8_t		key[CMK_STREAM_KEY_LEN];
	CmkStreamStatus st;

	kat_subkey(key);
	st = decrypt_with(s, data, len, 97, key, NULL, out);
	if (st == CMK_STREAM_OK)
		return false;
	return out->len <= plain_len && memcmp(out->data, plain, out->len) == 0;
}

static bool
hex_equal(const uint8_t *bytes, size_t len, const char *hex)
{
	char		buf[2 * 64 + 1];

	if (len > 64)
		return false;
	cmk_hex(bytes, len, buf);
	return strcmp(buf, hex) == 0;
}

static bool
unhex(const char *hex, uint8_t *out, size_t len)
{
	if (strlen(hex) != 2 * len)
		return false;
	for (size_t i = 0; i < len; i++)
	{
		unsigned int b;

		if (sscanf(hex + 2 * i, "%2x", &b) != 1)
			return false;
		out[i] = (uint8_t) b;
	}
	return true;
}

/* NIST GCM test case 16 (McGrew & Viega): AES-256, 60-byte text, 20-byte AAD. */
static bool
kat_gcm(void)
{
	uint8_t		key[32],
				pt[60],
				aad[20],
				iv[12],
				want_ct[60],
				want_tag[16],
				ct[60],
				tag[16];
	int			outl;
	bool		ok;
	EVP_CIPHER_CTX *ctx;

	if (!unhex("feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308", key, 32) ||
		!unhex("d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72"
			   "1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39", pt, 60) ||
		!unhex("feedfacedeadbeeffeedfacedeadbeefabaddad2", aad, 20) ||
		!unhex("cafebabefacedbaddecaf888", iv, 12) ||
		!unhex("522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa"
			   "8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662", want_ct, 60) ||
		!unhex("76fc6ece0f4e1768cddf8853bb2d551b", want_tag, 16))
		return false;

	ctx = EVP_CIPHER_CTX_new();
	if (ctx == NULL)
		return false;
	ok = EVP_EncryptInit_ex(ctx, EVP_aes_256_gcm(), NULL, key, iv) == 1 &&
		EVP_EncryptUpdate(ctx, NULL, &outl, aad, sizeof(aad)) == 1 &&
		EVP_EncryptUpdate(ctx, ct, &outl, pt, sizeof(pt)) == 1 && outl == 60 &&
		EVP_EncryptFinal_ex(ctx, ct + 60, &outl) == 1 &&
		EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, 16, tag) == 1;
	EVP_CIPHER_CTX_free(ctx);
	return ok && memcmp(ct, want_ct, 60) == 0 && memcmp(tag, want_tag, 16) == 0;
}

bool
cmk_stream_selftest(cmk_stream_selftest_report report, void *arg)
{
	CmkStream  *s = cmk_stream_create();
	uint8_t		plain[4096];
	uint8_t		key[CMK_STREAM_KEY_LEN];
	uint8_t		digest[32];
	Buf			a = {0},
				b = {0},
				t = {0},
				out = {0};
	bool		all = true;
	bool		ok;
	size_t		hl;
	size_t		rec = KAT_CHUNK + CMK_STREAM_TAG_LEN;

#define REPORT(name, cond) \
	do { bool r_ = (cond); if (report) report(arg, (name), r_); all = all && r_; } while (0)

	if (s == NULL)
	{
		REPORT("stream context", false);
		return false;
	}
	kat_plain(plain, sizeof(plain));
	kat_subkey(key);

	REPORT("AES-256-GCM (NIST GCM test case 16)", kat_gcm());

	/* The documented vector, fed in uneven pieces. */
	ok = encrypt_kat(s, 0x40, plain, KAT_PLAIN, 37, KAT_CHUNK, &a) &&
		a.len == KAT_LEN && cmk_sha256(a.data, a.len, digest) &&
		hex_equal(digest, 32, KAT_SHA256);
	REPORT("stream known answer (docs/stream-format.md)", ok);
	if (!ok)
	{
		/* Without the vector the tamper tests below mean nothing. */
		cmk_stream_destroy(s);
		free(a.data);
		return false;
	}
	hl = a.len - 2 * rec - (KAT_PLAIN - 2 * KAT_CHUNK + CMK_STREAM_TAG_LEN);

	ok = decrypt_with(s, a.data, a.len, 1, key, KAT_NAME, &out) == CMK_STREAM_OK &&
		out.len == KAT_PLAIN && memcmp(out.data, plain, KAT_PLAIN) == 0 &&
		cmk_stream_header(s)->header_len == hl;
	REPORT("decrypt, byte by byte", ok);

	/* Round trips at the chunk boundaries, with varied feeding. */
	ok = true;
	{
		size_t		sizes[] = {0, 1, 255, 256, 257, 512, 513, 1000, 4096};

		for (size_t i = 0; ok && i < sizeof(sizes) / sizeof(sizes[0]); i++)
			for (size_t step = 1; ok && step <= 4096; step *= 7)
				ok = encrypt_kat(s, 0x40, plain, sizes[i], step, KAT_CHUNK, &b) &&
					b.len == hl + (sizes[i] / KAT_CHUNK + 1) * CMK_STREAM_TAG_LEN + sizes[i] &&
					decrypt_with(s, b.data, b.len, step + 3, key, NULL, &out) == CMK_STREAM_OK &&
					out.len == sizes[i] && memcmp(out.data, plain, sizes[i]) == 0;
	}
	REPORT("round trip at chunk boundaries", ok);

	/* Every single-byte change anywhere: header, chunks, tags. */
	ok = true;
	for (size_t i = 0; ok && i < a.len; i++)
	{
		a.data[i] ^= 0x01;
		ok = rejected(s, a.data, a.len, plain, KAT_PLAIN, &out);
		a.data[i] ^= 0x01;
	}
	REPORT("every flipped byte rejected", ok);

	/* Truncation at every length. */
	ok = true;
	for (size_t len = 0; ok && len < a.len; len++)
		ok = rejected(s, a.data, len, plain, KAT_PLAIN, &out);
	REPORT("every truncation rejected", ok);

	/* Appended bytes: one byte, a tag's worth, a copy of the final chunk. */
	t.len = 0;
	ok = buf_write(&t, a.data, a.len) && buf_write(&t, (const uint8_t *) "x", 1) &&
		rejected(s, t.data, t.len, plain, KAT_PLAIN, &out);
	t.len = 0;
	ok = ok && buf_write(&t, a.data, a.len) && buf_write(&t, a.data + hl, 16) &&
		rejected(s, t.data, t.len, plain, KAT_PLAIN, &out);
	t.len = 0;
	ok = ok && buf_write(&t, a.data, a.len) && buf_write(&t, a.data + hl + 2 * rec, a.len - hl - 2 * rec) &&
		rejected(s, t.data, t.len, plain, KAT_PLAIN, &out);
	REPORT("appended data rejected", ok);

	/* Chunk 0 and 1 swapped; chunk 1 dropped; chunk 0 repeated. */
	t.len = 0;
	ok = buf_write(&t, a.data, hl) && buf_write(&t, a.data + hl + rec, rec) &&
		buf_write(&t, a.data + hl, rec) && buf_write(&t, a.data + hl + 2 * rec, a.len - hl - 2 * rec) &&
		rejected(s, t.data, t.len, plain, KAT_PLAIN, &out);
	REPORT("reordered chunks rejected", ok);
	t.len = 0;
	ok = buf_write(&t, a.data, hl + rec) && buf_write(&t, a.data + hl + 2 * rec, a.len - hl - 2 * rec) &&
		rejected(s, t.data, t.len, plain, KAT_PLAIN, &out);
	t.len = 0;
	ok = ok && buf_write(&t, a.data, hl + rec) && buf_write(&t, a.data + hl, a.len - hl) &&
		rejected(s, t.data, t.len, plain, KAT_PLAIN, &out);
	REPORT("dropped or repeated chunks rejected", ok);

	/* A last full chunk presented as final (truncation at a boundary). */
	ok = rejected(s, a.data, hl + rec, plain, KAT_PLAIN, &out) &&
		rejected(s, a.data, hl + 2 * rec, plain, KAT_PLAIN, &out);
	REPORT("truncation at chunk boundaries rejected", ok);

	/* Splices with another stream of the same key, name and plaintext. */
	ok = encrypt_kat(s, 0x41, plain, KAT_PLAIN, 4096, KAT_CHUNK, &b) && b.len == a.len;
	t.len = 0;
	ok = ok && buf_write(&t, b.data, hl) && buf_write(&t, a.data + hl, a.len - hl) &&
		rejected(s, t.data, t.len, plain, KAT_PLAIN, &out);
	t.len = 0;
	ok = ok && buf_write(&t, a.data, hl + rec) && buf_write(&t, b.data + hl + rec, rec) &&
		buf_write(&t, a.data + hl + 2 * rec, a.len - hl - 2 * rec) &&
		rejected(s, t.data, t.len, plain, KAT_PLAIN, &out);
	t.len = 0;
	ok = ok && buf_write(&t, a.data, hl + 2 * rec) && buf_write(&t, b.data + hl + 2 * rec, b.len - hl - 2 * rec) &&
		rejected(s, t.data, t.len, plain, KAT_PLAIN, &out);
	REPORT("headers and chunks spliced between files rejected", ok);

	/* Wrong key; right key but another file's name. */
	{
		uint8_t		wrong[CMK_STREAM_KEY_LEN];

		memcpy(wrong, key, sizeof(wrong));
		wrong[31] ^= 0x80;
		ok = decrypt_with(s, a.data, a.len, 4096, wrong, NULL, &out) == CMK_STREAM_ERR_AUTH &&
			out.len == 0;
		REPORT("wrong key rejected at the header", ok);
		ok = decrypt_with(s, a.data, a.len, 4096, key, "000000010000000000000002", &out) ==
			CMK_STREAM_ERR_MISMATCH && out.len == 0;
		REPORT("file under another name rejected", ok);
	}

	/* Something that is not a stream at all. */
	ok = decrypt_with(s, plain, 600, 600, key, NULL, &out) == CMK_STREAM_ERR_FORMAT &&
		decrypt_with(s, plain, 0, 1, key, NULL, &out) == CMK_STREAM_ERR_TRUNCATED;
	REPORT("plain data and empty files rejected", ok);

	cmk_stream_destroy(s);
	free(a.data);
	free(b.data);
	free(t.data);
	free(out.data);
	return all;
#undef REPORT
}
