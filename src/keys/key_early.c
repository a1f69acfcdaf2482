/*-------------------------------------------------------------------------
 *
 * key_early.c
 *		The DEK in the postmaster, before the startup process runs: what
 *		cluster encryption needs for crash recovery and standby replay.
 *
 * With cmk_storage.cluster_encryption on, every relation and WAL page the
 * startup process reads may be ciphertext, so the key cannot wait for the
 * key worker.  The postmaster reads the control file, unwraps the DEK with
 * the provider (synchronously, retrying transient failures until
 * cmk_storage.key_wait_timeout), checks it against the control file's DEK
 * identifier and this cluster's system identifier, and publishes it into
 * the locked key page (key_store.c) that every child inherits.  The key
 * worker starts later as usual, unwraps again and takes over custody.
 *
 * On the very first start of a new cluster (no key directory, no marker
 * file, no relation outside initdb's, no tablespace, not a standby, and the
 * caller found no encrypted WAL) it creates the DEK itself, as the key
 * worker would: nothing can be encrypted under an earlier key there, which
 * is what key_guard.c otherwise proves by scanning the catalogs (impossible
 * before the server runs).  Anywhere else a missing key directory is
 * refused with the way out (docs/io-layer.md, "Turning it on").  It
 * reports through CmkError; the caller decides that the server does not
 * start.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <dirent.h>
#include <sys/stat.h>
#include <time.h>

#include <openssl/crypto.h>

#include "access/transam.h"
#include "access/xlog.h"
#include "miscadmin.h"
#include "utils/timestamp.h"

#include "cmk_storage.h"
#include "keys/control_file.h"
#include "keys/key_guard.h"
#include "keys/key_store.h"

/* Whether dir holds a relation file named by a node >= FirstNormalObjectId. */
static bool
has_user_relation(const char *dir)
{
	DIR		   *d = opendir(dir);
	struct dirent *de;
	bool		found = false;

	if (d == NULL)
		return errno != ENOENT; /* unreadable: assume the worst */
	while (!found && (de = readdir(d)) != NULL)
		if (de->d_name[0] >= '0' && de->d_name[0] <= '9' &&
			strtoul(de->d_name, NULL, 10) >= FirstNormalObjectId)
			found = true;
	closedir(d);
	return found;
}

/*
 * A cluster as initdb left it: no relation file with a node initdb does not
 * use (every user relation, cmk_heap ones included, gets one >= 16384), no
 * tablespace, no marker that a DEK ever existed, and not a copy of another
 * cluster being recovered.
 */
static bool
pristine_cluster(void)
{
	DIR		   *d;
	struct dirent *de;
	struct stat st;
	bool		pristine = true;

	if (stat(CMK_MARKER_FILE, &st) == 0 || errno != ENOENT ||
		stat(STANDBY_SIGNAL_FILE, &st) == 0 || stat(RECOVERY_SIGNAL_FILE, &st) == 0 ||
		has_user_relation("global"))
		return false;
	if ((d = opendir("pg_tblspc")) == NULL)
		return false;
	while (pristine && (de = readdir(d)) != NULL)
		if (strcmp(de->d_name, ".") != 0 && strcmp(de->d_name, "..") != 0)
			pristine = false;
	closedir(d);
	if (!pristine || (d = opendir("base")) == NULL)
		return false;
	while (pristine && (de = readdir(d)) != NULL)
	{
		char		path[MAXPGPATH];

		if (de->d_name[0] < '0' || de->d_name[0] > '9')
			continue;
		snprintf(path, sizeof(path), "base/%s", de->d_name);
		if (has_user_relation(path))
			pristine = false;
	}
	closedir(d);
	return pristine;
}

/*
 * First start: a new DEK into the key store's locked scratch area, wrapped
 * and durably recorded (control file, then the marker), as the key worker's
 * create_dek() does.  Not WAL-logged: WAL cannot be written before the
 * startup process, and a new cluster has no standby or archive that would
 * need the record (base backups copy the key directory).
 */
static bool
create_first_key(const CmkKeyProvider *provider, CmkControl *c, CmkError *err)
{
	uint8	   *dek = cmk_key_store_scratch();
	size_t		wrapped_len = 0;

	memset(c, 0, sizeof(*c));
	if (!cmk_random_bytes(dek, CMK_DEK_LEN) || !cmk_dek_identifier(dek, c->dek_id))
	{
		cmk_error_set(err, CMK_ERR_INTERNAL, NULL, NULL,
					  "could not generate a data encryption key");
		return false;
	}
	c->wrap_alg = (CmkWrapAlg) cmk_wrap_algorithm;
	if (!provider->wrap(cmk_key_uri, c->wrap_alg, dek, CMK_DEK_LEN,
						c->wrapped, &wrapped_len, c->kid, sizeof(c->kid), err))
	{
		OPENSSL_cleanse(dek, CMK_DEK_LEN);
		return false;
	}
	c->wrapped_len = (uint16) wrapped_len;
	c->version = CMK_CONTROL_VERSION;
	c->generation = 1;
	c->system_identifier = GetSystemIdentifier();
	c->created_at = c->wrapped_at = (int64) time(NULL);
	strlcpy(c->key_uri, cmk_key_uri, sizeof(c->key_uri));
	if (!cmk_control_create(c, err) || !cmk_guard_write_marker(c, err))
	{
		OPENSSL_cleanse(dek, CMK_DEK_LEN);
		return false;
	}
	ereport(LOG,
			(errmsg("cmk_storage: created a new data encryption key at the cluster's first start, wrapped with %s by %s",
					cmk_wrap_alg_name(c->wrap_alg), c->kid)));
	return true;
}

/*
 * Unwrap (or, on a new cluster, create) and publish the DEK.  may_create is
 * false when the caller found evidence of encryption it can see (encrypted
 * WAL).  False with err filled if the server must not start.  Postmaster
 * (or single-user backend), from _PG_init.
 */
bool
cmk_key_early_publish(bool may_create, CmkError *err)
{
	const CmkKeyProvider *provider;
	CmkControl	ctl;
	CmkControlStatus cs;
	uint8	   *dek;
	uint8		dek_id[CMK_DEK_ID_LEN];
	size_t		dek_len = 0;
	TimestampTz deadline;
	long		backoff_ms = 500;
	CmkKeyStatus st;

	memset(err, 0, sizeof(*err));
	if (!cmk_key_store_exists())
	{
		cmk_error_set(err, CMK_ERR_CONFIG, NULL,
					  "Add cmk_storage to shared_preload_libraries and restart the server.",
					  "cmk_storage is not loaded through shared_preload_libraries");
		return false;
	}
	if (cmk_key_uri == NULL || cmk_key_uri[0] == '\0')
	{
		cmk_error_set(err, CMK_ERR_CONFIG, NULL,
					  "Set cmk_storage.key_uri to the key that wraps this cluster's data encryption key.",
					  "cluster encryption needs a key, and cmk_storage.key_uri is not set");
		return false;
	}

	cs = cmk_control_read(&ctl, err);
	if (cs == CMK_CONTROL_ABSENT)
	{
		if (!may_create || !pristine_cluster())
		{
			cmk_error_set(err, CMK_ERR_CONFIG, NULL,
						  "Restore this cluster's $PGDATA/cmk_storage directory. If this cluster never had a key, start it once with cmk_storage.cluster_encryption = off so that the key worker creates one after checking that nothing is encrypted (cmk_storage.status shows \"available\"), then turn cluster encryption on.",
						  "cluster encryption is on, but $PGDATA/%s is missing and this cluster is not new",
						  CMK_CONTROL_DIR);
			return false;
		}
		provider = cmk_find_provider(cmk_key_uri, err);
		if (provider == NULL || !create_first_key(provider, &ctl, err))
			return false;
		cmk_key_store_publish(&ctl, provider->name);
		goto published;
	}
	if (cs != CMK_CONTROL_PRESENT)
		return false;
	if (ctl.system_identifier != GetSystemIdentifier())
	{
		cmk_error_set(err, CMK_ERR_CONFIG, "ControlFileForeign",
					  "Restore this cluster's own $PGDATA/cmk_storage directory.",
					  "cmk_storage control file belongs to another cluster");
		cmk_error_detail(err, "The file names database system identifier %llu; this cluster's is %llu.",
						 (unsigned long long) ctl.system_identifier,
						 (unsigned long long) GetSystemIdentifier());
		return false;
	}

	provider = cmk_find_provider(ctl.key_uri[0] ? ctl.key_uri : cmk_key_uri, err);
	if (provider == NULL)
		return false;

	dek = cmk_key_store_scratch();
	deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
										   cmk_key_wait_timeout_ms);
	for (;;)
	{
		memset(err, 0, sizeof(*err));
		if (provider->unwrap(ctl.key_uri[0] ? ctl.key_uri : cmk_key_uri,
							 ctl.kid, ctl.wrap_alg, ctl.wrapped, ctl.wrapped_len,
							 dek, &dek_len, err))
			break;
		if (err->kind != CMK_ERR_TRANSIENT ||
			GetCurrentTimestamp() + backoff_ms * 1000 >= deadline)
		{
			OPENSSL_cleanse(dek, CMK_DEK_LEN);
			return false;
		}
		ereport(LOG,
				(errmsg("cmk_storage: could not unwrap the data encryption key yet, retrying in %ld ms: %s",
						backoff_ms, err->message)));
		pg_usleep(backoff_ms * 1000L);
		backoff_ms = Min(backoff_ms * 2, 10000);
	}
	if (dek_len != CMK_DEK_LEN || !cmk_dek_identifier(dek, dek_id) ||
		!cmk_ct_equal(dek_id, ctl.dek_id, CMK_DEK_ID_LEN))
	{
		cmk_error_set(err, CMK_ERR_WRONG_KEY, "DekIdentifierMismatch",
					  "Configure the key that wrapped this cluster's data encryption key. The control file was left untouched.",
					  "the unwrapped data encryption key does not match the control file's DEK identifier");
		OPENSSL_cleanse(dek, CMK_DEK_LEN);
		return false;
	}

	/* publish() moves the DEK into the locked page and wipes scratch */
	cmk_key_store_publish(&ctl, provider->name);
published:
	/* publish() returns early, leaving scratch, if memory is not locked */
	OPENSSL_cleanse(cmk_key_store_scratch(), CMK_DEK_LEN);
	cmk_key_store_status(&st);
	if (st.state != CMK_KEY_AVAILABLE)
	{
		cmk_error_set(err, st.err_kind ? st.err_kind : CMK_ERR_INTERNAL, NULL,
					  st.hint, "%s", st.reason[0] ? st.reason : "the key could not be published");
		return false;
	}

	/*
	 * This unwrap is the key's last proof of access: the key worker's grace
	 * period for transient faults (key_worker.c) counts from it, so a vault
	 * hiccup right after start-up does not revoke the key at once.
	 */
	cmk_key_store_note_check(true, &ctl);
	return true;
}
