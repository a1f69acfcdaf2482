/*-------------------------------------------------------------------------
 *
 * key_store.c
 *		Custody of the DEK at run time.
 *
 * The postmaster maps one page of anonymous shared memory before any child
 * exists, locks it (mlock) and excludes it from core dumps
 * (MADV_DONTDUMP); every backend, background, parallel and autovacuum
 * worker inherits the mapping through fork.  Only the key worker writes key
 * bytes into it, and only key_store.c reads them.  When the key becomes
 * unavailable the bytes are wiped with OPENSSL_cleanse and the generation
 * counter moves, so every backend drops its cipher context before its next
 * use of encrypted data.
 *
 * Key bytes must never leave this page except into OpenSSL cipher and MAC
 * contexts (which OpenSSL wipes on free), the brief stack copy made to
 * create a cipher context, and a process's own locked page for a MAC key.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <sys/mman.h>

#include <openssl/crypto.h>

#include "miscadmin.h"
#include "pgstat.h"
#include "port/atomics.h"
#include "storage/latch.h"
#include "storage/spin.h"
#include "utils/timestamp.h"

#include "cmk_storage.h"
#include "keys/key_store.h"

typedef struct CmkKeyStore
{
	slock_t		mutex;
	pg_atomic_uint64 generation;	/* moves on every change of keys or state */
	pg_atomic_uint32 control_epoch; /* moves when the control file changes */
	Latch	   *worker_latch;	/* mutex */
	/* one request at a time, from a session to the key worker (mutex) */
	uint64		req_seq;
	uint64		req_taken;
	uint64		req_done;
	CmkRequestKind req_kind;
	char		req_uri[CMK_CONTROL_TEXT_MAX + 1];
	char		req_actor[NAMEDATALEN];
	bool		req_ok;
	char		req_msg[CMK_ERR_MSG];
	CmkKeyStatus status;		/* protected by mutex */
	uint8		subkeys[CMK_NUM_PURPOSES][CMK_SUBKEY_LEN];	/* mutex */
	uint8		dek[CMK_DEK_LEN];	/* mutex */
	uint8		scratch[CMK_DEK_LEN];	/* key worker only */
	uint8		scratch_sub[CMK_NUM_PURPOSES][CMK_SUBKEY_LEN];	/* key worker */
} CmkKeyStore;

static CmkKeyStore *store = NULL;
static size_t store_size = 0;

/*
 * This process's locked page for the subkey of one MAC computation
 * (cmk_key_store_hmac), and the process that locked it: a forked child
 * inherits the mapping but not the lock.
 */
static uint8 *mac_page = NULL;
static int	mac_page_pid = 0;

/* Per-backend cipher context for tuples, valid for local_generation. */
static CmkKeystream tuple_ks;
static uint64 local_generation = 0;
static uint32 local_dek_tag = 0;

void
cmk_key_store_create(void)
{
	long		pagesize = sysconf(_SC_PAGESIZE);
	void	   *p;
	bool		locked;

	store_size = TYPEALIGN(pagesize, sizeof(CmkKeyStore));
	p = mmap(NULL, store_size, PROT_READ | PROT_WRITE,
			 MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED)
		ereport(FATAL,
				(errcode(ERRCODE_OUT_OF_MEMORY),
				 errmsg("cmk_storage: could not map key memory: %m")));
	/* Keep key pages out of core dumps and out of swap. */
	(void) madvise(p, store_size, MADV_DONTDUMP);
	locked = mlock(p, store_size) == 0;

	store = (CmkKeyStore *) p;
	memset(store, 0, sizeof(CmkKeyStore));
	SpinLockInit(&store->mutex);
	pg_atomic_init_u64(&store->generation, 1);
	pg_atomic_init_u32(&store->control_epoch, 0);
	store->status.memory_locked = locked;
	store->status.state_since = GetCurrentTimestamp();
	store->status.state = (cmk_key_uri && cmk_key_uri[0]) ?
		CMK_KEY_LOADING : CMK_KEY_NOT_CONFIGURED;
	if (!locked)
	{
		/* Fail closed: no key will be placed in swappable memory. */
		store->status.state = CMK_KEY_UNAVAILABLE;
		store->status.err_kind = CMK_ERR_CONFIG;
		snprintf(store->status.reason, sizeof(store->status.reason),
				 "could not lock key memory: %m");
		strlcpy(store->status.hint,
				"Allow the server's operating system user to lock at least one page of memory (ulimit -l, LimitMEMLOCK= in systemd).",
				sizeof(store->status.hint));
		ereport(WARNING,
				(errmsg("cmk_storage: %s", store->status.reason),
				 errhint("%s", store->status.hint)));
	}
}

bool
cmk_key_store_exists(void)
{
	return store != NULL;
}

uint8 *
cmk_key_store_scratch(void)
{
	Assert(store != NULL);
	return store->scratch;
}

static void
set_control_fields(CmkKeyStatus *st, const CmkControl *ctl)
{
	st->have_control = ctl != NULL;
	if (ctl == NULL)
		return;
	strlcpy(st->kid, ctl->kid, sizeof(st->kid));
	st->wrap_alg = ctl->wrap_alg;
	memcpy(st->dek_id, ctl->dek_id, CMK_DEK_ID_LEN);
	st->created_at = ctl->created_at;
	st->wrapped_at = ctl->wrapped_at;
	st->control_generation = ctl->generation;
}

/*
 * Make the DEK in scratch the live key.  The worker checked it against the
 * control file's DEK identifier before calling this.
 */
void
cmk_key_store_publish(const CmkControl *ctl, const char *provider)
{
	bool		derived = true;

	Assert(store != NULL);
	for (int p = 0; p < CMK_NUM_PURPOSES; p++)
		derived = derived && cmk_derive_subkey(store->scratch, p, store->scratch_sub[p]);
	if (!derived || !store->status.memory_locked)
	{
		CmkError	err;

		if (!store->status.memory_locked)
			return;				/* stays unavailable, reason already set */
		cmk_error_set(&err, CMK_ERR_INTERNAL, NULL, NULL, "key derivation failed");
		cmk_key_store_unavailable(CMK_KEY_UNAVAILABLE, &err, ctl);
		return;
	}

	SpinLockAcquire(&store->mutex);
	memcpy(store->dek, store->scratch, CMK_DEK_LEN);
	memcpy(store->subkeys, store->scratch_sub, sizeof(store->subkeys));
	store->status.state = CMK_KEY_AVAILABLE;
	store->status.state_since = GetCurrentTimestamp();
	store->status.err_kind = CMK_ERR_NONE;
	store->status.reason[0] = store->status.detail[0] = store->status.hint[0] = '\0';
	strlcpy(store->status.provider, provider, sizeof(store->status.provider));
	strlcpy(store->status.key_uri, cmk_key_uri, sizeof(store->status.key_uri));
	set_control_fields(&store->status, ctl);
	pg_atomic_fetch_add_u64(&store->generation, 1);
	SpinLockRelease(&store->mutex);

	OPENSSL_cleanse(store->scratch, sizeof(store->scratch));
	OPENSSL_cleanse(store->scratch_sub, sizeof(store->scratch_sub));
}

void
cmk_key_store_unavailable(CmkKeyState state, const CmkError *err,
						  const CmkControl *ctl)
{
	Assert(store != NULL);
	SpinLockAcquire(&store->mutex);
	OPENSSL_cleanse(store->dek, sizeof(store->dek));
	OPENSSL_cleanse(store->subkeys, sizeof(store->subkeys));
	if (state != store->status.state)
		store->status.state_since = GetCurrentTimestamp();
	store->status.state = state;
	store->status.err_kind = err ? err->kind : CMK_ERR_NONE;
	strlcpy(store->status.reason, err ? err->message : "", sizeof(store->status.reason));
	strlcpy(store->status.detail, err ? err->detail : "", sizeof(store->status.detail));
	strlcpy(store->status.hint, err ? err->hint : "", sizeof(store->status.hint));
	strlcpy(store->status.key_uri, cmk_key_uri ? cmk_key_uri : "", sizeof(store->status.key_uri));
	if (ctl)
		set_control_fields(&store->status, ctl);
	pg_atomic_fetch_add_u64(&store->generation, 1);
	SpinLockRelease(&store->mutex);
	OPENSSL_cleanse(store->scratch, sizeof(store->scratch));
	OPENSSL_cleanse(store->scratch_sub, sizeof(store->scratch_sub));
}

void
cmk_key_store_status(CmkKeyStatus *out)
{
	if (store == NULL)
	{
		memset(out, 0, sizeof(*out));
		out->state = CMK_KEY_UNAVAILABLE;
		strlcpy(out->reason, "cmk_storage is not loaded through shared_preload_libraries",
				sizeof(out->reason));
		strlcpy(out->hint, "Add cmk_storage to shared_preload_libraries and restart the server.",
				sizeof(out->hint));
		return;
	}
	SpinLockAcquire(&store->mutex);
	memcpy(out, &store->status, sizeof(*out));
	SpinLockRelease(&store->mutex);
}

/*
 * Copy one purpose subkey (CMK_SUBKEY_LEN bytes) and the DEK identifier, for
 * code that encrypts whole streams (the archiver, a base-backup target).
 * Copies nothing and returns false unless the key is available.  The caller
 * wipes subkey with OPENSSL_cleanse as soon as its cipher context holds it.
 */
bool
cmk_key_store_subkey(CmkKeyPurpose purpose, uint8 *subkey, uint8 *dek_id)
{
	bool		ok = false;

	if (store == NULL || purpose < 0 || purpose >= CMK_NUM_PURPOSES)
		return false;
	SpinLockAcquire(&store->mutex);
	if (store->status.state == CMK_KEY_AVAILABLE)
	{
		memcpy(subkey, store->subkeys[purpose], CMK_SUBKEY_LEN);
		memcpy(dek_id, store->status.dek_id, CMK_DEK_ID_LEN);
		ok = true;
	}
	SpinLockRelease(&store->mutex);
	return ok;
}

/*
 * This process's locked, non-dumpable page for a MAC key, or NULL if it
 * cannot be locked (then no MAC key is copied at all).
 */
static uint8 *
local_mac_page(void)
{
	long		pagesize = sysconf(_SC_PAGESIZE);

	if (mac_page != NULL && mac_page_pid == MyProcPid)
		return mac_page;
	if (mac_page == NULL)
	{
		void	   *p = mmap(NULL, pagesize, PROT_READ | PROT_WRITE,
							 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

		if (p == MAP_FAILED)
			return NULL;
		(void) madvise(p, pagesize, MADV_DONTDUMP);
		mac_page = (uint8 *) p;
	}
	if (mlock(mac_page, pagesize) != 0)
	{
		ereport(WARNING,
				(errmsg("cmk_storage: could not lock memory for a MAC key: %m"),
				 errhint("Allow the server's operating system user to lock a page of memory in every server process (ulimit -l, LimitMEMLOCK= in systemd).")));
		return NULL;
	}
	mac_page_pid = MyProcPid;
	return mac_page;
}

/*
 * HMAC-SHA256 of data under one purpose subkey of the live DEK (for the
 * nonce-epoch file), and the identifier of that DEK.  Computes nothing and
 * returns false unless the key is available.  The subkey goes from the key
 * page into this process's locked page and from there into OpenSSL's MAC
 * context only, and is wiped as soon as the MAC is computed.
 */
bool
cmk_key_store_hmac(CmkKeyPurpose purpose, const uint8 *data, size_t len,
				   uint8 *mac, uint8 *dek_id)
{
	uint8	   *key;
	bool		ok;

	if (store == NULL || (key = local_mac_page()) == NULL ||
		!cmk_key_store_subkey(purpose, key, dek_id))
		return false;
	ok = cmk_hmac_sha256(key, CMK_SUBKEY_LEN, data, len, mac);
	OPENSSL_cleanse(key, CMK_SUBKEY_LEN);
	return ok;
}

/*
 * HKDF of the live DEK under label into out (len bytes), for keys outside
 * the purpose table: the I/O layer's XTS keys, derived once in the
 * postmaster.  False unless the key is available.  The caller wipes out as
 * soon as its cipher contexts hold it.
 */
bool
cmk_key_store_derive(const char *label, uint8 *out, size_t len)
{
	bool		ok = false;

	Assert(!IsUnderPostmaster);
	if (store == NULL)
		return false;
	SpinLockAcquire(&store->mutex);
	if (store->status.state == CMK_KEY_AVAILABLE)
		ok = true;
	SpinLockRelease(&store->mutex);

	/*
	 * HKDF allocates, which a spinlock forbids; only the postmaster calls
	 * this, before any other process exists, so nothing can change the DEK
	 * in between.
	 */
	return ok && cmk_derive_labelled(store->dek, label, out, len);
}

const char *
cmk_key_state_name(CmkKeyState state)
{
	switch (state)
	{
		case CMK_KEY_NOT_CONFIGURED:
			return "not configured";
		case CMK_KEY_LOADING:
			return "loading";
		case CMK_KEY_AVAILABLE:
			return "available";
		case CMK_KEY_UNAVAILABLE:
			return "unavailable";
	}
	return "unknown";
}

/*
 * The reason without file-system paths, for errors sent to SQL clients.  A
 * client of a Citus coordinator receives a worker's error as it is, and no
 * client needs to learn where a server keeps its key file; the full reason
 * stays in cmk_storage.status (cmk_key_admin only) and in the key worker's
 * log lines.  Each double-quoted string that starts with '/' is dropped,
 * with the space before it ("could not open key file: No such file ...").
 */
void
cmk_key_reason_for_client(const char *reason, char *out, size_t outsize)
{
	const char *p = reason;
	size_t		o = 0;

	while (*p && o + 1 < outsize)
	{
		const char *q = (p[0] == ' ' && p[1] == '"') ? p + 1 : p;

		if (q[0] == '"' && q[1] == '/')
		{
			const char *end = strchr(q + 1, '"');

			if (end)
			{
				p = end + 1;
				continue;
			}
		}
		out[o++] = *p++;
	}
	out[o] = '\0';
}

/*
 * ERROR out with the reason the key cannot be used.  relname, when given,
 * names the relation whose data was wanted.
 */
void
cmk_report_key_unavailable(const char *relname)
{
	CmkKeyStatus st;
	char		reason[sizeof(st.reason)];

	cmk_key_store_status(&st);
	cmk_key_reason_for_client(st.reason, reason, sizeof(reason));
	if (st.state == CMK_KEY_NOT_CONFIGURED)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 relname ?
				 errmsg("cannot access encrypted relation \"%s\": no customer-managed key is configured", relname) :
				 errmsg("no customer-managed key is configured"),
				 errhint("Set cmk_storage.key_uri in postgresql.conf and restart the server.")));
	if (st.state == CMK_KEY_LOADING)
		ereport(ERROR,
				(errcode(ERRCODE_CANNOT_CONNECT_NOW),
				 relname ?
				 errmsg("cannot access encrypted relation \"%s\": the data encryption key is still being loaded", relname) :
				 errmsg("the data encryption key is still being loaded"),
				 errhint("Retry shortly; see cmk_storage.status for progress.")));
	ereport(ERROR,
			(errcode(st.err_kind == CMK_ERR_DENIED ? ERRCODE_INSUFFICIENT_PRIVILEGE :
					 ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
			 relname ?
			 errmsg("cannot access encrypted relation \"%s\": the data encryption key is unavailable: %s",
					relname, reason) :
			 errmsg("the data encryption key is unavailable: %s", reason),
			 st.detail[0] ? errdetail("%s", st.detail) : 0,
			 st.hint[0] ? errhint("%s", st.hint) : 0));
}

/*
 * Key worker: copy the live DEK into the locked scratch area, to re-wrap it.
 * False if the key is not available.
 */
bool
cmk_key_store_dek_to_scratch(void)
{
	bool		ok;

	SpinLockAcquire(&store->mutex);
	ok = store->status.state == CMK_KEY_AVAILABLE;
	if (ok)
		memcpy(store->scratch, store->dek, CMK_DEK_LEN);
	SpinLockRelease(&store->mutex);
	return ok;
}

/* Key worker: record a re-validation result (and a new control file). */
void
cmk_key_store_note_check(bool ok, const CmkControl *ctl)
{
	SpinLockAcquire(&store->mutex);
	store->status.last_check_at = GetCurrentTimestamp();
	if (ok)
	{
		store->status.last_ok_at = store->status.last_check_at;
		store->status.checks_ok++;
	}
	else
		store->status.checks_failed++;
	if (ctl)
	{
		set_control_fields(&store->status, ctl);
		strlcpy(store->status.key_uri, ctl->key_uri, sizeof(store->status.key_uri));
	}
	SpinLockRelease(&store->mutex);
}

/*
 * A (re)started key worker announces itself.  The key page outlives crash
 * restarts, so a request a previous worker took and never finished is
 * failed here rather than left blocking every later request.
 */
void
cmk_key_store_set_worker_latch(void)
{
	SpinLockAcquire(&store->mutex);
	store->worker_latch = MyLatch;
	if (store->req_done != store->req_seq)
	{
		store->req_done = store->req_taken = store->req_seq;
		store->req_ok = false;
		strlcpy(store->req_msg, "the key worker restarted before finishing the request",
				sizeof(store->req_msg));
	}
	SpinLockRelease(&store->mutex);
}

static void
wake_worker(void)
{
	Latch	   *latch;

	SpinLockAcquire(&store->mutex);
	latch = store->worker_latch;
	SpinLockRelease(&store->mutex);
	if (latch)
		SetLatch(latch);
}

uint32
cmk_key_store_control_epoch(void)
{
	return pg_atomic_read_u32(&store->control_epoch);
}

/* Redo wrote a new control file: the key worker re-reads it. */
void
cmk_key_store_control_changed(void)
{
	if (store == NULL)
		return;
	pg_atomic_fetch_add_u32(&store->control_epoch, 1);
	wake_worker();
}

bool
cmk_key_take_request(CmkRequestKind *kind, char *uri, size_t urisize,
					 char *actor, size_t actorsize)
{
	bool		have;

	SpinLockAcquire(&store->mutex);
	have = store->req_seq != store->req_done && store->req_taken != store->req_seq;
	if (have)
	{
		store->req_taken = store->req_seq;
		*kind = store->req_kind;
		strlcpy(uri, store->req_uri, urisize);
		strlcpy(actor, store->req_actor, actorsize);
	}
	SpinLockRelease(&store->mutex);
	return have;
}

void
cmk_key_finish_request(bool ok, const char *msg)
{
	SpinLockAcquire(&store->mutex);
	store->req_ok = ok;
	strlcpy(store->req_msg, msg ? msg : "", sizeof(store->req_msg));
	store->req_done = store->req_taken;
	SpinLockRelease(&store->mutex);
}

/*
 * Sessions: hand a request to the key worker and wait for its answer.  A
 * request that times out on our side is still carried out.
 */
bool
cmk_key_request(CmkRequestKind kind, const char *uri, const char *actor,
				int timeout_ms, char *msg, size_t msgsize)
{
	TimestampTz deadline;
	uint64		mine = 0;

	if (store == NULL)
		cmk_report_key_unavailable(NULL);
	deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), timeout_ms);

	for (;;)
	{
		bool		done = false;
		bool		ok = false;

		SpinLockAcquire(&store->mutex);
		if (mine == 0 && store->req_seq == store->req_done)
		{
			mine = ++store->req_seq;
			store->req_kind = kind;
			strlcpy(store->req_uri, uri ? uri : "", sizeof(store->req_uri));
			strlcpy(store->req_actor, actor, sizeof(store->req_actor));
		}
		else if (mine != 0 && store->req_done >= mine)
		{
			done = true;
			ok = store->req_ok;
			strlcpy(msg, store->req_msg, msgsize);
		}
		SpinLockRelease(&store->mutex);

		if (done)
			return ok;
		if (mine != 0)
			wake_worker();
		if (GetCurrentTimestamp() >= deadline)
		{
			snprintf(msg, msgsize, mine ? "the key worker did not answer in time; the request is still pending" :
					 "another key request is in progress");
			return false;
		}
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 10L, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
	}
}

static void
drop_local_context(void)
{
	cmk_keystream_free(&tuple_ks);
	local_generation = 0;
}

/*
 * cmk_tuple_keystream when this backend's cipher context is missing or older
 * than the key store's generation: make it again from the shared subkey, or
 * wait for a key that is loading, or report why there is none.
 */
static pg_noinline CmkKeystream *
tuple_keystream_refresh(const char *relname, uint32 *dek_tag)
{
	uint64		gen;
	TimestampTz deadline = 0;

	if (store == NULL)
		cmk_report_key_unavailable(relname);

	drop_local_context();
	for (;;)
	{
		uint8		key[CMK_SUBKEY_LEN];
		CmkKeyState state;
		bool		ok;

		SpinLockAcquire(&store->mutex);
		gen = pg_atomic_read_u64(&store->generation);
		state = store->status.state;
		if (state == CMK_KEY_AVAILABLE)
		{
			memcpy(key, store->subkeys[CMK_PURPOSE_TUPLE], sizeof(key));
			memcpy(&local_dek_tag, store->status.dek_id, sizeof(uint32));
		}
		SpinLockRelease(&store->mutex);

		if (state == CMK_KEY_AVAILABLE)
		{
			ok = cmk_keystream_init(&tuple_ks, key);
			OPENSSL_cleanse(key, sizeof(key));
			if (!ok)
				ereport(ERROR,
						(errcode(ERRCODE_INTERNAL_ERROR),
						 errmsg("could not initialise the AES cipher")));
			local_generation = gen;
			*dek_tag = local_dek_tag;
			return &tuple_ks;
		}
		if (state != CMK_KEY_LOADING)
			cmk_report_key_unavailable(relname);

		/* Loading: wait up to cmk_storage.key_wait_timeout for the worker. */
		if (deadline == 0)
			deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
												   cmk_key_wait_timeout_ms);
		else if (GetCurrentTimestamp() >= deadline)
			cmk_report_key_unavailable(relname);
		CHECK_FOR_INTERRUPTS();
		pg_usleep(10000L);
	}
}

/*
 * The cipher context for tuple data, and the tag of the DEK it uses.  Called
 * before every use, so a key change or revocation (which moves the store's
 * generation) takes effect at the next page or tuple: the common case is one
 * shared-memory read, kept free of the refresh path's stack frame.
 */
CmkKeystream *
cmk_tuple_keystream(const char *relname, uint32 *dek_tag)
{
	if (likely(store != NULL && tuple_ks.evp != NULL &&
			   pg_atomic_read_u64(&store->generation) == local_generation))
	{
		*dek_tag = local_dek_tag;
		return &tuple_ks;
	}
	return tuple_keystream_refresh(relname, dek_tag);
}
