/*-------------------------------------------------------------------------
 *
 * key_audit.h
 *		Key events: one parseable log line each, and a bounded ring in
 *		shared memory that SQL reads (cmk_storage.key_events), kept in
 *		$PGDATA/cmk_storage/audit_trail across restarts.
 *
 *-------------------------------------------------------------------------
 */
#ifndef CMK_KEY_AUDIT_H
#define CMK_KEY_AUDIT_H

#include "keys/key_provider.h"

#define CMK_AUDIT_SLOTS		512

extern Size cmk_audit_shmem_size(void);
extern void cmk_audit_shmem_init(void);

/*
 * Record a key event.  event: create, unwrap, wrap, rotate, check, revoke,
 * recover, request; outcome: success, failure, denied, transient; actor:
 * the role that asked, or NULL for the key worker.  Never pass key bytes.
 */
extern void cmk_audit(const char *event, const char *outcome, const char *actor,
					  const char *kid, const char *fmt,...) pg_attribute_printf(5, 6);
extern void cmk_audit_error(const char *event, const char *actor,
							const char *kid, const CmkError *err);

#endif							/* CMK_KEY_AUDIT_H */
