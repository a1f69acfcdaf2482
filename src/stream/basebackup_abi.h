/*-------------------------------------------------------------------------
 *
 * basebackup_abi.h
 *		The PostgreSQL 15 base-backup sink and target ABI, re-declared.
 *
 * Debian's postgresql-server-dev-15 does not ship include/backup/, so an
 * extension that adds a base-backup target has to declare the structures
 * itself.  Everything here mirrors, field for field and in order:
 *
 *   src/include/backup/basebackup_sink.h    (bbsink_state, bbsink,
 *                                            bbsink_ops, bbsink_forward_*)
 *   src/include/backup/basebackup_target.h  (BaseBackupAddTarget)
 *
 * of PostgreSQL 15 (checked against 15.18).  The layouts are part of the
 * server's ABI and stable within a major version; do not use this header
 * with any other major version.  The static inline helpers of
 * basebackup_sink.h (bbsink_begin_archive() and friends) are not copied:
 * cmk_storage only calls the exported bbsink_forward_* functions.  The
 * include guards are the server's own, so whichever header comes first
 * wins and the two can never both define the types.
 *
 *-------------------------------------------------------------------------
 */
#ifndef BASEBACKUP_SINK_H
#define BASEBACKUP_SINK_H

#include "access/xlogdefs.h"
#include "nodes/pg_list.h"

#if PG_VERSION_NUM < 150000 || PG_VERSION_NUM >= 160000
#error "basebackup_abi.h mirrors the PostgreSQL 15 base-backup ABI only"
#endif

struct bbsink;
struct bbsink_ops;
typedef struct bbsink bbsink;
typedef struct bbsink_ops bbsink_ops;

/* Overall backup state shared by all bbsink objects for a backup. */
typedef struct bbsink_state
{
	List	   *tablespaces;
	int			tablespace_num;
	uint64		bytes_done;
	uint64		bytes_total;
	bool		bytes_total_is_valid;
	XLogRecPtr	startptr;
	TimeLineID	starttli;
} bbsink_state;

/* Common data for any type of basebackup sink. */
struct bbsink
{
	const bbsink_ops *bbs_ops;
	char	   *bbs_buffer;
	size_t		bbs_buffer_length;
	bbsink	   *bbs_next;
	bbsink_state *bbs_state;
};

/* Callbacks for a base backup sink, in the server's order. */
struct bbsink_ops
{
	void		(*begin_backup) (bbsink *sink);
	void		(*begin_archive) (bbsink *sink, const char *archive_name);
	void		(*archive_contents) (bbsink *sink, size_t len);
	void		(*end_archive) (bbsink *sink);
	void		(*begin_manifest) (bbsink *sink);
	void		(*manifest_contents) (bbsink *sink, size_t len);
	void		(*end_manifest) (bbsink *sink);
	void		(*end_backup) (bbsink *sink, XLogRecPtr endptr, TimeLineID endtli);
	void		(*cleanup) (bbsink *sink);
};

/* Forwarding callbacks (exported by the server). */
extern void bbsink_forward_begin_backup(bbsink *sink);
extern void bbsink_forward_begin_archive(bbsink *sink,
										 const char *archive_name);
extern void bbsink_forward_archive_contents(bbsink *sink, size_t len);
extern void bbsink_forward_end_archive(bbsink *sink);
extern void bbsink_forward_begin_manifest(bbsink *sink);
extern void bbsink_forward_manifest_contents(bbsink *sink, size_t len);
extern void bbsink_forward_end_manifest(bbsink *sink);
extern void bbsink_forward_end_backup(bbsink *sink, XLogRecPtr endptr,
									  TimeLineID endtli);
extern void bbsink_forward_cleanup(bbsink *sink);

#endif							/* BASEBACKUP_SINK_H */

#ifndef BASEBACKUP_TARGET_H
#define BASEBACKUP_TARGET_H

/*
 * Register a target for pg_basebackup --target=name[:detail].  check_detail
 * runs when a backup names the target and returns what get_sink receives;
 * get_sink builds the sink placed just before the copy-stream sink.
 */
extern void BaseBackupAddTarget(char *name,
								void *(*check_detail) (char *, char *),
								bbsink *(*get_sink) (bbsink *, void *));

#endif							/* BASEBACKUP_TARGET_H */
