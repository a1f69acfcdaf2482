/*-------------------------------------------------------------------------
 *
 * io_sweep_state.c
 *		The sweep's shared state, its settings and its cost-based delay.
 *
 * The state is a small struct in the module's shared memory, under a
 * spinlock: the sweep workers write it, cmk_storage.status and
 * cmk_storage.cluster_encryption_progress read it.  It holds counters and
 * names only, never data or key material.
 *
 * Throttling reuses vacuum's cost machinery (VacuumCostBalance,
 * vacuum_delay_point) with settings of its own, so that the sweep is paced
 * like autovacuum by default and can be tuned without touching vacuum:
 * buffer reads and dirtied pages are charged by the buffer manager as for
 * vacuum, raw page reads by the sweep as page misses.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "commands/vacuum.h"
#include "miscadmin.h"
#include "postmaster/interrupt.h"
#include "storage/shmem.h"
#include "utils/guc.h"
#include "utils/timestamp.h"

#include "io/io_layer.h"
#include "io/io_sweep.h"

CmkSweepState *cmk_sweep = NULL;

static double sweep_cost_delay = 2;
static int	sweep_cost_limit = 200;

Size
cmk_sweep_shmem_size(void)
{
	return MAXALIGN(sizeof(CmkSweepState));
}

/* Under AddinShmemInitLock, from the module's shmem_startup_hook. */
void
cmk_sweep_shmem_init(void)
{
	bool		found;

	cmk_sweep = ShmemInitStruct("cmk_storage cluster encryption sweep",
								cmk_sweep_shmem_size(), &found);
	if (!found)
	{
		memset(cmk_sweep, 0, sizeof(CmkSweepState));
		SpinLockInit(&cmk_sweep->mutex);
	}
}

void
cmk_sweep_define_settings(void)
{
	DefineCustomRealVariable("cmk_storage.cluster_encryption_cost_delay",
							 "Cost-based delay of the cluster encryption sweep, as vacuum_cost_delay for vacuum.",
							 "0 turns the throttling off.",
							 &sweep_cost_delay,
							 2, 0, 100,
							 PGC_SIGHUP,
							 GUC_UNIT_MS,
							 NULL, NULL, NULL);

	DefineCustomIntVariable("cmk_storage.cluster_encryption_cost_limit",
							"Cost accumulated by the cluster encryption sweep before it sleeps, as vacuum_cost_limit for vacuum.",
							NULL,
							&sweep_cost_limit,
							200, 1, 10000,
							PGC_SIGHUP,
							0,
							NULL, NULL, NULL);
}

/* A sweep worker: turn vacuum's cost accounting on with our settings. */
void
cmk_sweep_throttle_setup(void)
{
	VacuumCostDelay = sweep_cost_delay;
	VacuumCostLimit = sweep_cost_limit;
	VacuumCostActive = (VacuumCostDelay > 0);
	VacuumCostBalance = 0;
}

/*
 * Charge cost (a raw page read; the buffer manager charges its own) and
 * sleep if the balance is over the limit.  Also reloads the configuration
 * on SIGHUP, so a changed delay applies at once, and checks for
 * interrupts.
 */
void
cmk_sweep_throttle(int cost)
{
	if (ConfigReloadPending)
	{
		ConfigReloadPending = false;
		ProcessConfigFile(PGC_SIGHUP);
		cmk_sweep_throttle_setup();
	}
	if (VacuumCostActive)
		VacuumCostBalance += cost;
	vacuum_delay_point();
}

void
cmk_sweep_set_phase(CmkSweepPhase phase)
{
	TimestampTz now = GetCurrentTimestamp();

	SpinLockAcquire(&cmk_sweep->mutex);
	cmk_sweep->phase = phase;
	cmk_sweep->updated = now;
	if (phase == CMK_SWEEP_COMPLETE)
	{
		cmk_sweep->complete = true;
		cmk_sweep->completed = now;
	}
	SpinLockRelease(&cmk_sweep->mutex);
}
