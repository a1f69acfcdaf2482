/*-------------------------------------------------------------------------
 *
 * cmk_stream.h
 *		The cmk_storage stream container: archived WAL files and base-backup
 *		archives encrypted with AES-256-GCM in fixed-size chunks.  The byte
 *		layout is specified in docs/stream-format.md.
 *
 * This code is shared by the server (archive module, base-backup target)
 * and frontend tools (cmk_restore).  It must never ereport, palloc, log or
 * touch files: it reports failures by status code plus a message, moves
 * bytes only through the caller's callbacks, and keeps key material only in
 * its OpenSSL context and one key buffer, both wiped when a stream ends.
 *
 *-------------------------------------------------------------------------
 */
#ifndef CMK_STREAM_H
#define CMK_STREAM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define CMK_STREAM_VERSION			1
#define CMK_STREAM_DEFAULT_CHUNK	(64 * 1024)
#define CMK_STREAM_MIN_CHUNK		256
#define CMK_STREAM_MAX_CHUNK		(16 * 1024 * 1024)
#define CMK_STREAM_TAG_LEN			16
#define CMK_STREAM_SALT_LEN			32
#define CMK_STREAM_SET_ID_LEN		16
#define CMK_STREAM_DEK_ID_LEN		16
#define CMK_STREAM_KEY_LEN			32	/* purpose subkey and file key */
#define CMK_STREAM_MAX_WRAPPED		1024
#define CMK_STREAM_MAX_KID			1024
#define CMK_STREAM_MAX_NAME			255
#define CMK_STREAM_FIXED_LEN		100 /* header bytes before the variable fields */
#define CMK_STREAM_TRAILER_LEN		48	/* header checksum + header tag */
#define CMK_STREAM_MAX_HEADER \
	(CMK_STREAM_FIXED_LEN + CMK_STREAM_MAX_WRAPPED + CMK_STREAM_MAX_KID + \
	 CMK_STREAM_MAX_NAME + CMK_STREAM_TRAILER_LEN)

/* What a stream holds; selects the HKDF subkey (authenticated). */
typedef enum CmkStreamPurpose
{
	CMK_STREAM_WAL = 1,			/* a file archived by the archive module */
	CMK_STREAM_BACKUP = 2,		/* an archive of a base backup */
} CmkStreamPurpose;

typedef enum CmkStreamStatus
{
	CMK_STREAM_OK = 0,
	CMK_STREAM_ERR_FORMAT,		/* not a stream, unknown version, bad header */
	CMK_STREAM_ERR_MISMATCH,	/* intact header, but not the file asked for */
	CMK_STREAM_ERR_KEY,			/* the caller could not supply the key */
	CMK_STREAM_ERR_AUTH,		/* authentication failed: tampered or damaged */
	CMK_STREAM_ERR_TRUNCATED,	/* ends before its final chunk */
	CMK_STREAM_ERR_WRITE,		/* the write callback failed */
	CMK_STREAM_ERR_CRYPTO,		/* OpenSSL failure or out of memory */
	CMK_STREAM_ERR_USAGE,		/* API misuse */
} CmkStreamStatus;

/* Header fields; on decryption filled from the stream. */
typedef struct CmkStreamHeader
{
	uint16_t	version;
	uint8_t		purpose;		/* CmkStreamPurpose */
	uint32_t	chunk_size;		/* plaintext bytes per non-final chunk */
	uint64_t	system_identifier;
	uint8_t		dek_id[CMK_STREAM_DEK_ID_LEN];
	uint8_t		salt[CMK_STREAM_SALT_LEN];
	uint8_t		set_id[CMK_STREAM_SET_ID_LEN];	/* backup id; zero for WAL */
	uint16_t	wrap_alg;		/* CmkWrapAlg of the wrapped DEK */
	uint16_t	wrapped_len;
	uint8_t		wrapped[CMK_STREAM_MAX_WRAPPED];
	char		kid[CMK_STREAM_MAX_KID + 1];
	char		name[CMK_STREAM_MAX_NAME + 1];
	uint32_t	header_len;		/* set by serialisation and parsing */
} CmkStreamHeader;

/* Receives output; returns false on failure (errno kept for the caller). */
typedef bool (*CmkStreamWriteFn) (void *arg, const uint8_t *data, size_t len);

/*
 * Decryption asks for the purpose subkey once the header has been parsed
 * (and its checksum checked), so the caller can check the header (name,
 * purpose, DEK id) and unwrap the DEK.  Return CMK_STREAM_OK with
 * CMK_STREAM_KEY_LEN bytes in subkey, or an error status (usually
 * CMK_STREAM_ERR_MISMATCH or CMK_STREAM_ERR_KEY) with the reason kept by
 * the caller.
 */
typedef CmkStreamStatus (*CmkStreamKeyFn) (void *arg, const CmkStreamHeader *hdr,
										   uint8_t *subkey);

typedef struct CmkStream CmkStream;

/* One context, reusable for any number of streams in either direction. */
extern CmkStream *cmk_stream_create(void);
extern void cmk_stream_destroy(CmkStream *s);

/*
 * Start encrypting.  hdr names everything but the salt, which is drawn at
 * random and written back to hdr; the header is emitted immediately.
 */
extern CmkStreamStatus cmk_stream_encrypt_begin(CmkStream *s, CmkStreamHeader *hdr,
												const uint8_t *subkey,
												CmkStreamWriteFn wfn, void *warg);
/* The same with the caller's salt: for known-answer tests only. */
extern CmkStreamStatus cmk_stream_encrypt_begin_with_salt(CmkStream *s,
														  CmkStreamHeader *hdr,
														  const uint8_t *subkey,
														  CmkStreamWriteFn wfn,
														  void *warg);
extern CmkStreamStatus cmk_stream_decrypt_begin(CmkStream *s,
												CmkStreamKeyFn kfn, void *karg,
												CmkStreamWriteFn wfn, void *warg);

/*
 * Feed plaintext (encrypting) or stream bytes (decrypting).  Decryption
 * passes plaintext on only after its chunk has been authenticated.
 */
extern CmkStreamStatus cmk_stream_update(CmkStream *s, const void *data, size_t len);

/*
 * End the stream: encrypting, emit the final chunk; decrypting, check the
 * final chunk is there and authentic.  Either way the key is wiped.  Only
 * an OK from finish means the whole stream was authentic.
 */
extern CmkStreamStatus cmk_stream_finish(CmkStream *s);

/* Abandon a stream (wipes the key); the context stays usable. */
extern void cmk_stream_abort(CmkStream *s);

extern const CmkStreamHeader *cmk_stream_header(const CmkStream *s);
extern uint64_t cmk_stream_plain_bytes(const CmkStream *s);
extern uint64_t cmk_stream_chunks(const CmkStream *s);
extern const char *cmk_stream_errmsg(const CmkStream *s);
extern const char *cmk_stream_status_name(CmkStreamStatus st);
extern const char *cmk_stream_purpose_name(int purpose);

/* Pure header codec (no key); serialise leaves checksum and tag to the caller. */
extern CmkStreamStatus cmk_stream_parse_header(const uint8_t *buf, size_t len,
											   CmkStreamHeader *hdr,
											   char *errbuf, size_t errlen);

/* Known-answer and tamper tests; name/ok pairs go to the callback. */
typedef void (*cmk_stream_selftest_report) (void *arg, const char *name, bool ok);
extern bool cmk_stream_selftest(cmk_stream_selftest_report report, void *arg);

#endif							/* CMK_STREAM_H */
