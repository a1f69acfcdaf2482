/*-------------------------------------------------------------------------
 *
 * cmk_storage.h
 *		Settings shared by the subsystems of cmk_storage.
 *
 *-------------------------------------------------------------------------
 */
#ifndef CMK_STORAGE_H
#define CMK_STORAGE_H

extern char *cmk_key_uri;
extern int	cmk_wrap_algorithm;
extern int	cmk_key_wait_timeout_ms;
extern int	cmk_key_check_interval_s;
extern int	cmk_key_grace_period_s;
extern bool cmk_auto_rewrap;
extern bool cmk_cluster_encryption;
extern bool cmk_temp_file_encryption;
extern bool cmk_cluster_encryption_read_ahead;
extern int	cmk_debug_rotation_crash;

extern void cmk_key_worker_register(void);

/* cmk_preload.c */
extern void cmk_note_load(void);

#endif							/* CMK_STORAGE_H */
