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
} CmkKeyStatus;

/* postmaster, from _PG_init */
extern void cmk_key_store_create(void);
extern bool cmk_key_store_exists(void);

/* key worker */
extern uint8 *cmk_key_store_scratch(void);	/* CMK_DEK_LEN bytes, locked */
extern void cmk_key_store_publish(const CmkControl *ctl, const char *provider);
extern void cmk_key_store_unavailable(CmkKeyState state, const CmkError *err,
									  const CmkControl *ctl);

/* anyone */
extern void cmk_key_store_status(CmkKeyStatus *out);
extern const char *cmk_key_state_name(CmkKeyState state);

/*
 * Backends: the tuple keystream of the current DEK.  Waits while the key is
 * loading and raises an ERROR naming the reason if it is unavailable; the
 * returned context stays valid until the next call.  dek_tag receives the
 * 4-byte DEK identifier prefix that tuples carry.
 */
extern CmkKeystream *cmk_tuple_keystream(const char *relname, uint32 *dek_tag);
extern void cmk_report_key_unavailable(const char *relname);

#endif							/* CMK_KEY_STORE_H */
