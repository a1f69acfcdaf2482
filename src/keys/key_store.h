/*-------------------------------------------------------------------------
 *
 * key_store.h
 *		The DEK and its subkeys in shared, locked, non-dumpable memory, and
 *		the per-backend cipher contexts built from them.
 *
 *-------------------------------------------------------------------------
 */
#ifndef CMK_KEY_STORE_H
#define CMK_KEY_STORE_H

#include "datatype/timestamp.h"

#include "crypto/cmk_crypto.h"
#include "keys/control_file.h"
#include "keys/key_provider.h"

typedef enum CmkKeyState
{
	CMK_KEY_NOT_CONFIGURED,		/* cmk_storage.key_uri is empty */
	CMK_KEY_LOADING,			/* the key worker has not finished yet */
	CMK_KEY_AVAILABLE,
	CMK_KEY_UNAVAILABLE,		/* see reason */
} CmkKeyState;

/* What SQL may see: everything but key bytes. */
typedef struct CmkKeyStatus
{
	CmkKeyState state;
	bool		memory_locked;
	TimestampTz state_since;
	CmkErrorKind err_kind;
	char		reason[CMK_ERR_MSG];
	char		detail[CMK_ERR_MSG];
	char		hint[CMK_ERR_MSG];
	char		provider[16];
	char		key_uri[CMK_CONTROL_TEXT_MAX + 1];
	char		kid[CMK_CONTROL_TEXT_MAX + 1];
	CmkWrapAlg	wrap_alg;
	bool		have_control;
	uint8		dek_id[CMK_DEK_ID_LEN];
	int64		created_at;
	int64		wrapped_at;
	uint32		control_generation;
	TimestampTz last_check_at;	/* last re-validation attempt */
	TimestampTz last_ok_at;		/* last time the KEK unwrapped the DEK */
	uint64		checks_ok;
	uint64		checks_failed;
} CmkKeyStatus;

/* What a session asks the key worker to do. */
typedef enum CmkRequestKind
{
	CMK_REQ_NONE = 0,
	CMK_REQ_CHECK,				/* re-validate the KEK now */
	CMK_REQ_ROTATE,				/* re-wrap the DEK with a KEK */
	CMK_REQ_CREATE,				/* a DEK where there is none and no
								 * encrypted relation */
	CMK_REQ_CREATE_FORCE,		/* a DEK where there is none, whatever the
								 * evidence */
} CmkRequestKind;

/* postmaster, from _PG_init */
extern void cmk_key_store_create(void);
extern bool cmk_key_store_exists(void);

/*
 * postmaster, cluster encryption only: the DEK before the startup process
 * (key_early.c), and keys derived from the published DEK for the I/O layer.
 */
extern bool cmk_key_early_publish(bool may_create, CmkError *err);
extern bool cmk_key_store_derive(const char *label, uint8 *out, size_t len);

/* key worker */
extern uint8 *cmk_key_store_scratch(void);	/* CMK_DEK_LEN bytes, locked */
extern bool cmk_key_store_dek_to_scratch(void);
extern void cmk_key_store_note_check(bool ok, const CmkControl *ctl);
extern void cmk_key_store_set_worker_latch(void);
extern bool cmk_key_take_request(CmkRequestKind *kind, char *uri, size_t urisize,
								 char *actor, size_t actorsize);
extern void cmk_key_finish_request(bool ok, const char *msg);
extern uint32 cmk_key_store_control_epoch(void);

/* startup process (redo) and key worker */
extern void cmk_key_store_control_changed(void);

/* sessions: ask the key worker and wait for its answer */
extern bool cmk_key_request(CmkRequestKind kind, const char *uri,
							const char *actor, int timeout_ms,
							char *msg, size_t msgsize);
extern void cmk_key_store_publish(const CmkControl *ctl, const char *provider);
extern void cmk_key_store_unavailable(CmkKeyState state, const CmkError *err,
									  const CmkControl *ctl);

/* anyone */
extern void cmk_key_store_status(CmkKeyStatus *out);

/* A key-state reason with file-system paths left out, for SQL clients. */
extern void cmk_key_reason_for_client(const char *reason, char *out,
									  size_t outsize);
extern bool cmk_key_store_subkey(CmkKeyPurpose purpose, uint8 *subkey, uint8 *dek_id);
extern bool cmk_key_store_hmac(CmkKeyPurpose purpose, const uint8 *data,
							   size_t len, uint8 *mac, uint8 *dek_id);
extern const char *cmk_key_state_name(CmkKeyState state);

/*
 * Backends: the tuple keystream of the current DEK.  Waits while the key is
 * loading and raises an ERROR naming the reason if it is unavailable; the
 * returned context stays valid until the next call.  dek_tag receives the
 * 4-byte DEK identifier prefix that the nonce epochs record (a tuple is
 * decrypted only under an epoch of this DEK).
 */
extern CmkKeystream *cmk_tuple_keystream(const char *relname, uint32 *dek_tag);
extern void cmk_report_key_unavailable(const char *relname);

#endif							/* CMK_KEY_STORE_H */
