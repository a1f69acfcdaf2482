/*-------------------------------------------------------------------------
 *
 * key_gate.h
 *		Cluster encryption and revocation: while the data encryption key is
 *		unavailable, no client reads or writes data (docs/operations.md,
 *		"Revocation with cluster encryption").
 *
 *-------------------------------------------------------------------------
 */
#ifndef CMK_KEY_GATE_H
#define CMK_KEY_GATE_H

/* How often the key worker ends newly started sessions while closed. */
#define CMK_GATE_SWEEP_MS	1000

/* postmaster, _PG_init, only once the I/O layer is on */
extern void cmk_gate_install(void);

/*
 * key worker, after every check and every CMK_GATE_SWEEP_MS while closed:
 * logs each change of the gate and, while it is closed, ends the processes
 * that serve clients.  Returns whether the gate is closed.
 */
extern bool cmk_gate_tick(void);

#endif							/* CMK_KEY_GATE_H */
