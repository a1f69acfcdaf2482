/*-------------------------------------------------------------------------
 *
 * cmk_restore.c
 *		Frontend tool that verifies and decrypts what cmk_storage's archive
 *		module and base-backup target wrote: as restore_command for WAL,
 *		and to turn an encrypted base backup into a data directory.
 *
 *	 cmk_restore wal     ANCHOR [--key-uri URI] --archive-directory DIR [--pgdata DIR] WALFILE PATH
 *	 cmk_restore backup  ANCHOR [--key-uri URI] --backup-directory DIR --target-directory DIR
 *						 [-T OLD=NEW]... [--no-sync]
 *	 cmk_restore verify  ANCHOR [--key-uri URI] (--backup-directory DIR | FILE...)
 *	 cmk_restore decrypt ANCHOR [--key-uri URI] FILE [--output PATH]
 *	 cmk_restore info FILE... | selftest | bench [--megabytes N]
 *
 *	 ANCHOR = --dek-id HEX... | CMK_DEK_ID=HEX[,HEX...] | --insecure-skip-dek-check
 *
 * The anchor is mandatory.  The KEK is an RSA key pair and wrapping uses
 * only its public half: anyone who holds that public key and can write to
 * the archive or backup directory can wrap a DEK of their own and make
 * files that decrypt and authenticate perfectly -- a forged backup whose
 * postgresql.auto.conf runs commands as the database's OS user, say.  What
 * they cannot make is a DEK whose identifier (an HMAC under the DEK) is
 * the operator's, so every file must carry one of the DEK identifiers the
 * operator recorded before the disaster.  Nothing read from the archive or
 * backup directory (nor from a data directory restored out of it) can
 * serve as that anchor.
 *
 * Exit codes (docs/streams-runbook.md): 0 done; 1 the file is not in the
 * archive (the normal end of an archive); every other failure is above 125
 * so that the server's startup process stops recovery with FATAL instead
 * of taking the failure for the end of the archive and promoting:
 * 200 usage/configuration, 201 key unavailable, 202 wrong key or another
 * cluster's file, 203 tampered/corrupt/incomplete, 204 I/O error,
 * 205 internal error.
 *
 * No secret is ever taken from the command line or printed: the key URI
 * names the KEK, the DEK is unwrapped through the provider, held in locked
 * memory and wiped at exit.  Output goes to a temporary name and is renamed
 * into place only after the whole stream authenticated; a failed backup
 * restore removes what it extracted.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres_fe.h"

#include <dirent.h>
#include <fcntl.h>
#include <getopt.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <openssl/crypto.h>

#include "common/file_perm.h"
#include "common/file_utils.h"
#include "common/logging.h"

#include "crypto/cmk_crypto.h"
#include "keys/control_file.h"
#include "keys/key_provider.h"
#include "stream/cmk_fd_sink.h"
#include "stream/cmk_stream.h"

#define EXIT_NOT_FOUND			1
#define EXIT_CONFIG				200
#define EXIT_KEY_UNAVAILABLE	201
#define EXIT_WRONG_KEY			202
#define EXIT_TAMPERED			203
#define EXIT_IO					204
#define EXIT_INTERNAL			205

#define IO_BUFFER		(1024 * 1024)
#define END_NAME		"backup_end"
#define CMK_SUFFIX		".cmk"
#define MAX_END_TEXT	(1024 * 1024)

static const char *progname;

/*
 * This executable's absolute path, for the restore_command examples we
 * print: the server runs restore_command through the shell with its own
 * PATH, which on Debian does not contain the directory cmk_restore is
 * installed in (pg_config --bindir, next to pg_ctl).  A bare "cmk_restore"
 * there exits 127, which ends recovery with FATAL.
 */
static char my_exec_path[MAXPGPATH];

/* Options */
/* Key URIs to try, in order: one per KEK that wrapped what is restored. */
#define MAX_KEY_URIS	16
static char *key_uris[MAX_KEY_URIS];
static int	nkey_uris = 0;
static char *archive_dir = NULL;
static char *backup_dir = NULL;
static char *target_dir = NULL;
static char *pgdata = ".";
static char *output_path = NULL;
static bool no_sync = false;
static int	bench_mb = 256;

/*
 * The trust anchor (see the header comment): the DEK identifiers given with
 * --dek-id or CMK_DEK_ID.  More than one only for a cluster whose DEK was
 * replaced (cmk_storage.create_key() after a lost key directory).
 */
#define MAX_TRUSTED_DEKS	8
static uint8 trusted_deks[MAX_TRUSTED_DEKS][CMK_DEK_ID_LEN];
static int	ntrusted_deks = 0;
static bool skip_dek_check = false;

typedef struct TablespaceMap
{
	char	   *old_dir;
	char	   *new_dir;
	struct TablespaceMap *next;
} TablespaceMap;
static TablespaceMap *ts_maps = NULL;

/* ---------------------------------------------------------------------- */
/* The unwrapped DEK, in one locked page, wiped at exit.                  */

typedef struct KeyCache
{
	bool		valid;
	uint8		dek[CMK_DEK_LEN];
	uint8		dek_id[CMK_DEK_ID_LEN];
	uint16		wrapped_len;
	uint8		wrapped[CMK_STREAM_MAX_WRAPPED];
	char		kid[CMK_STREAM_MAX_KID + 1];
} KeyCache;

static KeyCache *key_cache = NULL;
static size_t key_cache_size = 0;

static void
wipe_key_cache(void)
{
	if (key_cache)
		OPENSSL_cleanse(key_cache, key_cache_size);
}

static KeyCache *
get_key_cache(void)
{
	void	   *p;

	if (key_cache)
		return key_cache;
	key_cache_size = TYPEALIGN(sysconf(_SC_PAGESIZE), sizeof(KeyCache));
	p = mmap(NULL, key_cache_size, PROT_READ | PROT_WRITE,
			 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED)
		pg_fatal("could not map key memory: %m");
	/* Best effort: a frontend run is short, but keep the DEK off disk. */
	(void) madvise(p, key_cache_size, MADV_DONTDUMP);
	(void) mlock(p, key_cache_size);
	key_cache = p;
	memset(key_cache, 0, key_cache_size);
	atexit(wipe_key_cache);
	return key_cache;
}

/* ---------------------------------------------------------------------- */
/* Decrypting one file with expectations about its header.               */

typedef struct Expect
{
	int			purpose;		/* 0: any */
	const char *name;			/* NULL: any */
	const uint8 *set_id;		/* NULL: any */
	const uint8 *salt;			/* NULL: any */
	const uint8 *dek_id;		/* NULL: any; else this DEK (another file's) */
	bool		trusted_dek;	/* the DEK must be one of trusted_deks */
	const char *file_name;		/* NULL, or the file's own name: must match */
	bool		check_sysid;
	uint64		sysid;
} Expect;

typedef struct Job
{
	const char *path;			/* for messages */
	Expect		e;
	int			exit_code;		/* set by the key callback or the writer */
	char		reason[CMK_ERR_MSG * 2];
	char		detail[CMK_ERR_MSG];	/* empty: the default for the exit code */
	char		hint[CMK_ERR_MSG];
} Job;

static void
job_fail(Job *job, int code, const char *fmt,...) pg_attribute_printf(3, 4);

static void
job_fail(Job *job, int code, const char *fmt,...)
{
	va_list		ap;

	job->exit_code = code;
	va_start(ap, fmt);
	vsnprintf(job->reason, sizeof(job->reason), fmt, ap);
	va_end(ap);
}

static bool
unhex(const char *hex, uint8 *out, size_t len)
{
	if (strlen(hex) != 2 * len)
		return false;
	for (size_t i = 0; i < len; i++)
	{
		int			v = 0;

		for (int k = 0; k < 2; k++)
		{
			char		c = hex[2 * i + k];

			v <<= 4;
			if (c >= '0' && c <= '9')
				v |= c - '0';
			else if (c >= 'a' && c <= 'f')
				v |= c - 'a' + 10;
			else if (c >= 'A' && c <= 'F')
				v |= c - 'A' + 10;
			else
				return false;
		}
		out[i] = (uint8) v;
	}
	return true;
}

/* ---------------------------------------------------------------------- */
/* The trust anchor                                                       */

/*
 * Add the DEK identifiers in list (one, or several separated by commas or
 * blanks) to trusted_deks.  what names the source for messages.
 */
static bool
add_trusted_deks(const char *list, const char *what)
{
	char	   *copy = pg_strdup(list);
	char	   *save = NULL;
	int			added = 0;
	bool		ok = true;

	for (char *tok = strtok_r(copy, ", \t\n", &save); tok && ok;
		 tok = strtok_r(NULL, ", \t\n", &save))
	{
		if (ntrusted_deks == MAX_TRUSTED_DEKS)
		{
			pg_log_error("too many data encryption key identifiers (at most %d)", MAX_TRUSTED_DEKS);
			ok = false;
		}
		else if (!unhex(tok, trusted_deks[ntrusted_deks], CMK_DEK_ID_LEN))
		{
			pg_log_error("invalid data encryption key identifier \"%s\" in %s", tok, what);
			pg_log_error_detail("An identifier is %d hexadecimal digits, as in the dek_id column of cmk_storage.status.",
								2 * CMK_DEK_ID_LEN);
			ok = false;
		}
		else
		{
			ntrusted_deks++;
			added++;
		}
	}
	pg_free(copy);
	if (ok && added == 0)
	{
		pg_log_error("%s names no data encryption key identifier", what);
		ok = false;
	}
	return ok;
}

static bool
is_trusted_dek(const uint8 *dek_id)
{
	for (int i = 0; i < ntrusted_deks; i++)
		if (memcmp(trusted_deks[i], dek_id, CMK_DEK_ID_LEN) == 0)
			return true;
	return false;
}

/* The trusted identifiers as text, for messages. */
static const char *
trusted_deks_text(void)
{
	static char buf[MAX_TRUSTED_DEKS * (2 * CMK_DEK_ID_LEN + 2) + 1];

	buf[0] = '\0';
	for (int i = 0; i < ntrusted_deks; i++)
	{
		char		hex[2 * CMK_DEK_ID_LEN + 1];

		cmk_hex(trusted_deks[i], CMK_DEK_ID_LEN, hex);
		if (i > 0)
			strlcat(buf, ", ", sizeof(buf));
		strlcat(buf, hex, sizeof(buf));
	}
	return buf;
}

/*
 * Every command that decrypts needs the anchor, or the explicit, loud
 * refusal of one.  Returns 0 or EXIT_CONFIG.
 */
static int
require_anchor(const char *cmd)
{
	if (skip_dek_check && ntrusted_deks > 0)
	{
		pg_log_error("--insecure-skip-dek-check contradicts the data encryption key identifier given by %s",
					 getenv("CMK_DEK_ID") && getenv("CMK_DEK_ID")[0] ? "--dek-id or CMK_DEK_ID" : "--dek-id");
		pg_log_error_hint("Give the identifier and leave out --insecure-skip-dek-check.");
		return EXIT_CONFIG;
	}
	if (skip_dek_check)
	{
		pg_log_warning("--insecure-skip-dek-check: the data encryption key of the files is not checked; "
					   "files forged with the public key encryption key are accepted");
		pg_log_warning_hint("Use --dek-id with your cluster's identifier for any restore you rely on.");
		return 0;
	}
	if (ntrusted_deks == 0)
	{
		pg_log_error("cmk_restore %s needs the identifier of your cluster's data encryption key", cmd);
		pg_log_error_detail("Anyone who holds the public key encryption key and can write to the archive or backup "
							"directory can make files that decrypt and authenticate under a key of their own; "
							"only the data encryption key identifier tells them from your cluster's files.");
		pg_log_error_hint("Pass --dek-id HEX (or set CMK_DEK_ID) with the identifier you recorded from "
						  "\"SELECT dek_id FROM cmk_storage.status\" or from pg_basebackup's output; never take "
						  "it from the files themselves.  --insecure-skip-dek-check accepts any key.");
		return EXIT_CONFIG;
	}
	return 0;
}

/* ---------------------------------------------------------------------- */

/* Unwrap (or reuse) the DEK a header names, and derive its purpose subkey. */
static bool
header_subkey(Job *job, const CmkStreamHeader *hdr, uint8 *subkey)
{
	KeyCache   *kc = get_key_cache();
	uint8		id[CMK_DEK_ID_LEN];

	if (!(kc->valid && kc->wrapped_len == hdr->wrapped_len &&
		  memcmp(kc->wrapped, hdr->wrapped, hdr->wrapped_len) == 0 &&
		  strcmp(kc->kid, hdr->kid) == 0))
	{
		CmkError	err;
		size_t		dek_len = 0;
		CmkWrapAlg	alg = (CmkWrapAlg) hdr->wrap_alg;
		bool		unwrapped = false;

		kc->valid = false;
		memset(&err, 0, sizeof(err));
		if (nkey_uris == 0)
		{
			job_fail(job, EXIT_KEY_UNAVAILABLE, "no key URI given");
			strlcpy(job->hint, "Name the key encryption key with --key-uri (or CMK_KEY_URI); the file was wrapped with key id ", sizeof(job->hint));
			strlcat(job->hint, hdr->kid, sizeof(job->hint));
			return false;
		}
		if (alg != CMK_WRAP_RSA_OAEP_256 && alg != CMK_WRAP_RSA_OAEP)
		{
			job_fail(job, EXIT_TAMPERED, "unknown key wrap algorithm %u in the header", hdr->wrap_alg);
			return false;
		}

		/*
		 * Try each key URI; keep the most telling failure: "wrong key" only
		 * if every key was reachable and none was the right one.
		 */
		for (int i = 0; i < nkey_uris && !unwrapped; i++)
		{
			const CmkKeyProvider *provider;
			CmkError	e;

			memset(&e, 0, sizeof(e));
			provider = cmk_find_provider(key_uris[i], &e);
			unwrapped = provider != NULL &&
				provider->unwrap(key_uris[i], hdr->kid, alg, hdr->wrapped,
								 hdr->wrapped_len, kc->dek, &dek_len, &e);
			if (!unwrapped && (i == 0 || (err.kind == CMK_ERR_WRONG_KEY &&
										  e.kind != CMK_ERR_WRONG_KEY)))
				err = e;
		}
		if (!unwrapped)
		{
			job_fail(job, err.kind == CMK_ERR_WRONG_KEY ? EXIT_WRONG_KEY : EXIT_KEY_UNAVAILABLE,
					 "%s%s%s", err.message, err.detail[0] ? ": " : "", err.detail);
			strlcpy(job->hint, err.hint, sizeof(job->hint));
			/* the providers' hints name the server's settings */
			if (strstr(job->hint, "cmk_storage.") != NULL)
				strlcat(job->hint,
						" (cmk_restore reads cmk_storage.azure_* and cmk_storage.ca_file from the"
						" environment: CMK_AZURE_CLIENT_ID, CMK_AZURE_TOKEN_ENDPOINT, CMK_CA_FILE and"
						" the others in docs/azure-setup.md.)",
						sizeof(job->hint));
			OPENSSL_cleanse(kc->dek, sizeof(kc->dek));
			return false;
		}
		if (dek_len != CMK_DEK_LEN || !cmk_dek_identifier(kc->dek, id) ||
			memcmp(id, hdr->dek_id, CMK_DEK_ID_LEN) != 0)
		{
			OPENSSL_cleanse(kc->dek, sizeof(kc->dek));
			job_fail(job, EXIT_TAMPERED,
					 "the key encryption key unwrapped a data encryption key that does not match the header's DEK identifier");
			return false;
		}
		memcpy(kc->dek_id, id, sizeof(id));
		kc->wrapped_len = hdr->wrapped_len;
		memcpy(kc->wrapped, hdr->wrapped, hdr->wrapped_len);
		strlcpy(kc->kid, hdr->kid, sizeof(kc->kid));
		kc->valid = true;
	}
	else if (memcmp(kc->dek_id, hdr->dek_id, CMK_DEK_ID_LEN) != 0)
	{
		/* the same wrapped DEK, another identifier: the header lies */
		job_fail(job, EXIT_TAMPERED,
				 "the key encryption key unwrapped a data encryption key that does not match the header's DEK identifier");
		return false;
	}
	if (!cmk_derive_subkey(kc->dek, hdr->purpose == CMK_STREAM_WAL ?
						   CMK_PURPOSE_ARCHIVE : CMK_PURPOSE_BACKUP, subkey))
	{
		job_fail(job, EXIT_INTERNAL, "key derivation failed");
		return false;
	}
	return true;
}

static CmkStreamStatus
job_key(void *arg, const CmkStreamHeader *hdr, uint8_t *subkey)
{
	Job		   *job = arg;
	const Expect *e = &job->e;
	char		a[2 * CMK_DEK_ID_LEN + 1],
				b[2 * CMK_DEK_ID_LEN + 1];

	if (e->purpose && hdr->purpose != e->purpose)
	{
		job_fail(job, EXIT_TAMPERED, "the file holds %s data, not %s data",
				 cmk_stream_purpose_name(hdr->purpose), cmk_stream_purpose_name(e->purpose));
		return CMK_STREAM_ERR_MISMATCH;
	}
	if (e->file_name)
	{
		/* WAL keeps its file name in the archive; backup files add ".cmk" */
		size_t		nlen = strlen(hdr->name);
		bool		same = hdr->purpose == CMK_STREAM_WAL ?
			strcmp(e->file_name, hdr->name) == 0 :
			(strncmp(e->file_name, hdr->name, nlen) == 0 &&
			 strcmp(e->file_name + nlen, CMK_SUFFIX) == 0);

		if (!same)
		{
			job_fail(job, EXIT_TAMPERED,
					 "the file holds \"%s\" and is named \"%s\" instead of \"%s%s\" (renamed or misplaced)",
					 hdr->name, e->file_name, hdr->name,
					 hdr->purpose == CMK_STREAM_WAL ? "" : CMK_SUFFIX);
			strlcpy(job->detail, "The name is part of the authenticated header: a WAL file or backup archive "
					"renamed to another's name is refused, because restoring it under that name would "
					"replay the wrong data.", sizeof(job->detail));
			strlcpy(job->hint, "If you copied the file under another name yourself, give it back the name it "
					"holds; otherwise find out who renamed it.", sizeof(job->hint));
			return CMK_STREAM_ERR_MISMATCH;
		}
	}
	if (e->name && strcmp(hdr->name, e->name) != 0)
	{
		job_fail(job, EXIT_TAMPERED, "the file holds \"%s\", not \"%s\" (renamed or misplaced)",
				 hdr->name, e->name);
		return CMK_STREAM_ERR_MISMATCH;
	}
	if (e->set_id && memcmp(hdr->set_id, e->set_id, CMK_STREAM_SET_ID_LEN) != 0)
	{
		job_fail(job, EXIT_TAMPERED, "the file belongs to another backup");
		return CMK_STREAM_ERR_MISMATCH;
	}
	if (e->salt && memcmp(hdr->salt, e->salt, CMK_STREAM_SALT_LEN) != 0)
	{
		job_fail(job, EXIT_TAMPERED, "the file is not the one the backup recorded (replaced)");
		return CMK_STREAM_ERR_MISMATCH;
	}
	if (e->trusted_dek && !skip_dek_check && !is_trusted_dek(hdr->dek_id))
	{
		cmk_hex(hdr->dek_id, CMK_DEK_ID_LEN, a);
		job_fail(job, EXIT_WRONG_KEY,
				 "the file was encrypted with data encryption key %s, which is not a trusted one (%s)",
				 a, trusted_deks_text());
		snprintf(job->detail, sizeof(job->detail),
				 "Only files under a data encryption key given with --dek-id or CMK_DEK_ID are accepted. "
				 "The file comes from another cluster, or it was forged by someone holding the public key "
				 "encryption key.  Nothing from it was kept.");
		strlcpy(job->hint, "Check the identifier against the one you recorded for this cluster "
				"(cmk_storage.status, pg_basebackup's output), never against the files; do not restore "
				"files under a key you do not recognise.", sizeof(job->hint));
		return CMK_STREAM_ERR_MISMATCH;
	}
	if (e->dek_id && memcmp(hdr->dek_id, e->dek_id, CMK_DEK_ID_LEN) != 0)
	{
		cmk_hex(hdr->dek_id, CMK_DEK_ID_LEN, a);
		cmk_hex(e->dek_id, CMK_DEK_ID_LEN, b);
		job_fail(job, EXIT_WRONG_KEY,
				 "the file was encrypted with data encryption key %s, expected %s", a, b);
		strlcpy(job->hint, "The file comes from another cluster, or from before the cluster's data encryption key changed.",
				sizeof(job->hint));
		return CMK_STREAM_ERR_MISMATCH;
	}
	if (e->check_sysid && hdr->system_identifier != e->sysid)
	{
		job_fail(job, EXIT_WRONG_KEY,
				 "the file belongs to database system " UINT64_FORMAT ", not " UINT64_FORMAT,
				 (uint64) hdr->system_identifier, e->sysid);
		return CMK_STREAM_ERR_MISMATCH;
	}
	if (!header_subkey(job, hdr, subkey))
		return CMK_STREAM_ERR_KEY;
	return CMK_STREAM_OK;
}

/* Map a stream failure to an exit code and message unless already set. */
static int
job_status(Job *job, CmkStream *s, CmkStreamStatus st)
{
	if (st == CMK_STREAM_OK)
		return 0;
	if (job->exit_code != 0)
		return job->exit_code;
	switch (st)
	{
		case CMK_STREAM_ERR_FORMAT:
		case CMK_STREAM_ERR_AUTH:
		case CMK_STREAM_ERR_TRUNCATED:
		case CMK_STREAM_ERR_MISMATCH:
			job_fail(job, EXIT_TAMPERED, "%s", cmk_stream_errmsg(s));
			break;
		case CMK_STREAM_ERR_WRITE:
			job_fail(job, EXIT_IO, "could not write the output: %m");
			break;
		default:
			job_fail(job, EXIT_INTERNAL, "%s", cmk_stream_errmsg(s));
			break;
	}
	return job->exit_code;
}

static void
job_report(Job *job)
{
	pg_log_error("\"%s\": %s", job->path, job->reason);
	if (job->detail[0])
		pg_log_error_detail("%s", job->detail);
	else if (job->exit_code == EXIT_TAMPERED)
		pg_log_error_detail("The file failed verification: it was modified, truncated, replaced or damaged. Nothing from it was kept.");
	if (job->hint[0])
		pg_log_error_hint("%s", job->hint);
}

static CmkStream *
new_stream(void)
{
	CmkStream  *s = cmk_stream_create();

	if (s == NULL)
	{
		pg_log_error("out of memory");
		exit(EXIT_INTERNAL);
	}
	return s;
}

/*
 * Decrypt the file at job->path through wfn.  Returns 0 or an exit code
 * (EXIT_NOT_FOUND, quietly, when the file does not exist).  hdr_out, if
 * given, receives the header; bytes_out the plaintext length.
 */
static int
decrypt_file(CmkStream *s, Job *job, CmkStreamWriteFn wfn, void *warg,
			 CmkStreamHeader *hdr_out, uint64 *bytes_out)
{
	static char *buf = NULL;
	int			fd;
	CmkStreamStatus st;
	int			rc;

	if (buf == NULL)
		buf = pg_malloc(IO_BUFFER);
	fd = open(job->path, O_RDONLY | PG_BINARY, 0);
	if (fd < 0)
	{
		if (errno == ENOENT)
			return EXIT_NOT_FOUND;
		job_fail(job, EXIT_IO, "could not open: %m");
		return EXIT_IO;
	}
	cmk_stream_decrypt_begin(s, job_key, job, wfn, warg);
	for (;;)
	{
		ssize_t		n = read(fd, buf, IO_BUFFER);

		if (n < 0)
		{
			job_fail(job, EXIT_IO, "could not read: %m");
			close(fd);
			cmk_stream_abort(s);
			return EXIT_IO;
		}
		if (n == 0)
		{
			st = cmk_stream_finish(s);
			break;
		}
		st = cmk_stream_update(s, buf, n);
		if (st != CMK_STREAM_OK)
			break;
	}
	close(fd);
	rc = job_status(job, s, st);
	if (hdr_out)
		*hdr_out = *cmk_stream_header(s);
	if (bytes_out)
		*bytes_out = cmk_stream_plain_bytes(s);
	if (rc != 0)
		cmk_stream_abort(s);
	return rc;
}

/* Output sinks */
static bool
write_discard(void *arg, const uint8_t *data, size_t len)
{
	return true;
}

typedef struct MemOut
{
	char	   *data;
	size_t		len;
	size_t		cap;
} MemOut;

static bool
write_mem(void *arg, const uint8_t *data, size_t len)
{
	MemOut	   *m = arg;

	if (m->len + len > m->cap)
	{
		errno = EFBIG;
		return false;
	}
	memcpy(m->data + m->len, data, len);
	m->len += len;
	return true;
}

/*
 * Decrypt to a file: PATH.cmk_partial, renamed to PATH once the stream has
 * authenticated completely.  fsync only if asked (see the runbook: the
 * server makes restored WAL durable itself).
 */
static int
decrypt_to_path(CmkStream *s, Job *job, const char *dest, bool do_fsync)
{
	char		tmp[MAXPGPATH];
	CmkFdSink	out;
	int			rc;

	snprintf(tmp, sizeof(tmp), "%s.cmk_partial", dest);
	out.fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | PG_BINARY, pg_file_create_mode);
	if (out.fd < 0)
	{
		job_fail(job, EXIT_IO, "could not create \"%s\": %m", tmp);
		return EXIT_IO;
	}
	rc = decrypt_file(s, job, cmk_fd_sink_write, &out, NULL, NULL);
	if (rc == 0 && do_fsync && fsync(out.fd) != 0)
	{
		job_fail(job, EXIT_IO, "could not fsync \"%s\": %m", tmp);
		rc = EXIT_IO;
	}
	if (close(out.fd) != 0 && rc == 0)
	{
		job_fail(job, EXIT_IO, "could not close \"%s\": %m", tmp);
		rc = EXIT_IO;
	}
	if (rc == 0)
	{
		if ((do_fsync ? durable_rename(tmp, dest) : rename(tmp, dest)) != 0)
		{
			job_fail(job, EXIT_IO, "could not rename \"%s\" to \"%s\": %m", tmp, dest);
			rc = EXIT_IO;
		}
	}
	if (rc != 0)
		(void) unlink(tmp);
	return rc;
}

/* ---------------------------------------------------------------------- */
/* cmk_restore wal                                                        */

/*
 * The cluster being recovered pins the archive to its system identifier,
 * and its control file must name a trusted DEK: a data directory restored
 * from a forged backup (under --insecure-skip-dek-check) has a control file
 * of the forger's making, so by itself it anchors nothing.
 */
static bool
read_cluster_control(const char *dir, CmkControl *ctl, bool *found)
{
	CmkError	err;
	CmkControlStatus cs;

	memset(&err, 0, sizeof(err));
	cs = cmk_control_read_dir(dir, ctl, &err);
	*found = cs == CMK_CONTROL_PRESENT;
	if (cs == CMK_CONTROL_INVALID)
	{
		pg_log_error("%s", err.message);
		return false;
	}
	return true;
}

static int
cmd_wal(int argc, char **argv)
{
	const char *walfile,
			   *dest;
	char		src[MAXPGPATH];
	struct stat st;
	CmkControl	ctl;
	bool		found;
	Job			job;
	CmkStream  *s;
	int			rc;

	if (argc != 2)
	{
		pg_log_error("wal needs exactly two arguments: WALFILE (%%f) and PATH (%%p)");
		return EXIT_CONFIG;
	}
	walfile = argv[0];
	dest = argv[1];
	if (archive_dir == NULL)
	{
		pg_log_error("--archive-directory is required");
		return EXIT_CONFIG;
	}
	if (walfile[0] == '\0' || strchr(walfile, '/') != NULL || strlen(walfile) > CMK_STREAM_MAX_NAME ||
		strcmp(walfile, ".") == 0 || strcmp(walfile, "..") == 0)
	{
		pg_log_error("\"%s\" is not a WAL file name", walfile);
		return EXIT_CONFIG;
	}
	/* A missing archive (unmounted share) must not look like its end. */
	if (stat(archive_dir, &st) != 0 || !S_ISDIR(st.st_mode))
	{
		pg_log_error("archive directory \"%s\" is not accessible: %m", archive_dir);
		pg_log_error_hint("Refusing to report the end of the archive while the archive itself is missing.");
		return EXIT_CONFIG;
	}

	memset(&job, 0, sizeof(job));
	if (!read_cluster_control(pgdata, &ctl, &found))
		return EXIT_CONFIG;
	if (found)
	{
		if (skip_dek_check)
			job.e.dek_id = ctl.dek_id;
		else if (!is_trusted_dek(ctl.dek_id))
		{
			char		hex[2 * CMK_DEK_ID_LEN + 1];

			cmk_hex(ctl.dek_id, CMK_DEK_ID_LEN, hex);
			pg_log_error("the data directory \"%s\" uses data encryption key %s, which is not a trusted one (%s)",
						 pgdata, hex, trusted_deks_text());
			pg_log_error_detail("A data directory restored from another cluster's backup, or from a forged "
								"one, has a key of its own; recovering it would run that backup's configuration.");
			pg_log_error_hint("Correct --dek-id (or CMK_DEK_ID) in restore_command if it is mistyped; otherwise "
							  "restore the data directory again with \"cmk_restore backup --dek-id\" from a "
							  "backup of your cluster.");
			return EXIT_WRONG_KEY;
		}
		job.e.check_sysid = true;
		job.e.sysid = ctl.system_identifier;
		if (nkey_uris == 0 && ctl.key_uri[0] != '\0')
			key_uris[nkey_uris++] = pg_strdup(ctl.key_uri);
	}
	job.e.trusted_dek = true;

	snprintf(src, sizeof(src), "%s/%s", archive_dir, walfile);
	job.path = src;
	job.e.purpose = CMK_STREAM_WAL;
	job.e.name = walfile;

	s = new_stream();
	rc = decrypt_to_path(s, &job, dest, false);
	cmk_stream_destroy(s);
	if (rc == EXIT_NOT_FOUND)
	{
		/* The normal end of the archive: say so briefly. */
		fprintf(stderr, "%s: \"%s\" is not in the archive\n", progname, walfile);
		return EXIT_NOT_FOUND;
	}
	if (rc != 0)
		job_report(&job);
	return rc;
}

/* ---------------------------------------------------------------------- */
/* Backups                                                                */

typedef struct EndFile
{
	char	   *name;
	uint64		bytes;
	uint8		salt[CMK_STREAM_SALT_LEN];
} EndFile;

typedef struct BackupEnd
{
	CmkStreamHeader hdr;
	uint8		backup_id[CMK_STREAM_SET_ID_LEN];
	uint64		sysid;
	char		start_lsn[32];
	char		end_lsn[32];
	unsigned int start_tli;
	unsigned int end_tli;
	int			nfiles;
	EndFile    *files;
} BackupEnd;

/* Read, authenticate and parse backup_end.cmk.  Returns 0 or an exit code. */
static int
read_backup_end(CmkStream *s, BackupEnd *be)
{
	char		path[MAXPGPATH];
	MemOut		m = {NULL, 0, MAX_END_TEXT};
	Job			job;
	int			rc;
	char	   *line,
			   *save = NULL;
	bool		saw_end = false;

	memset(be, 0, sizeof(*be));
	snprintf(path, sizeof(path), "%s/%s%s", backup_dir, END_NAME, CMK_SUFFIX);
	memset(&job, 0, sizeof(job));
	job.path = path;
	job.e.purpose = CMK_STREAM_BACKUP;
	job.e.name = END_NAME;
	job.e.trusted_dek = true;
	m.data = pg_malloc(MAX_END_TEXT + 1);
	rc = decrypt_file(s, &job, write_mem, &m, &be->hdr, NULL);
	if (rc == EXIT_NOT_FOUND)
	{
		pg_log_error("\"%s\" is missing: the backup is incomplete (it did not finish) or not a cmk_storage backup",
					 path);
		return EXIT_TAMPERED;
	}
	if (rc != 0)
	{
		job_report(&job);
		return rc;
	}
	m.data[m.len] = '\0';

	for (line = strtok_r(m.data, "\n", &save); line; line = strtok_r(NULL, "\n", &save))
	{
		char		hex[2 * CMK_STREAM_SALT_LEN + 1];
		char		name[CMK_STREAM_MAX_NAME + 1];
		unsigned long long bytes;

		if (saw_end)
			goto bad;
		if (strcmp(line, "cmk_storage base backup 1") == 0)
			continue;
		if (sscanf(line, "backup_id %32s", hex) == 1)
		{
			if (!unhex(hex, be->backup_id, sizeof(be->backup_id)))
				goto bad;
		}
		else if (sscanf(line, "system_identifier %llu", &bytes) == 1)
			be->sysid = bytes;
		else if (sscanf(line, "start_lsn %31s", be->start_lsn) == 1 ||
				 sscanf(line, "end_lsn %31s", be->end_lsn) == 1 ||
				 sscanf(line, "start_tli %u", &be->start_tli) == 1 ||
				 sscanf(line, "end_tli %u", &be->end_tli) == 1)
			continue;
		else if (sscanf(line, "file %llu %64s %255s", &bytes, hex, name) == 3)
		{
			EndFile    *f;

			be->files = pg_realloc(be->files, sizeof(EndFile) * (be->nfiles + 1));
			f = &be->files[be->nfiles++];
			f->name = pg_strdup(name);
			f->bytes = bytes;
			if (!unhex(hex, f->salt, sizeof(f->salt)) || strchr(name, '/') != NULL ||
				name[0] == '.')
				goto bad;
		}
		else if (strcmp(line, "end") == 0)
			saw_end = true;
		else
			goto bad;
	}
	if (!saw_end || be->nfiles == 0 ||
		memcmp(be->backup_id, be->hdr.set_id, sizeof(be->backup_id)) != 0 ||
		be->sysid != be->hdr.system_identifier)
		goto bad;
	pg_free(m.data);
	return 0;

bad:
	pg_log_error("\"%s\" authenticated but its contents are not understood", path);
	pg_log_error_hint("It was written by a newer cmk_storage, or by a faulty one.");
	return EXIT_TAMPERED;
}

/* Start "tar -x" into dir, decompressing as the archive name says. */
static pid_t
spawn_tar(const char *name, const char *dir, int *wfd, int *exit_code)
{
	const char *argv[10];
	int			n = 0;
	int			p[2];
	pid_t		pid;
	size_t		len = strlen(name);

#define ENDS_WITH(sfx) (len >= strlen(sfx) && strcmp(name + len - strlen(sfx), sfx) == 0)
	argv[n++] = "tar";
	argv[n++] = "-x";
	argv[n++] = "-f";
	argv[n++] = "-";
	argv[n++] = "-C";
	argv[n++] = dir;
	if (ENDS_WITH(".tar"))
		;
	else if (ENDS_WITH(".tar.gz"))
		argv[n++] = "-z";
	else if (ENDS_WITH(".tar.zst"))
		argv[n++] = "--zstd";
	else if (ENDS_WITH(".tar.lz4"))
		argv[n++] = "--use-compress-program=lz4";
	else
	{
		pg_log_error("archive \"%s\" has an unknown type", name);
		*exit_code = EXIT_CONFIG;
		return -1;
	}
	argv[n] = NULL;
#undef ENDS_WITH

	if (pipe(p) != 0)
	{
		pg_log_error("could not create pipe: %m");
		*exit_code = EXIT_IO;
		return -1;
	}
	fflush(NULL);
	pid = fork();
	if (pid < 0)
	{
		pg_log_error("could not fork: %m");
		*exit_code = EXIT_IO;
		return -1;
	}
	if (pid == 0)
	{
		dup2(p[0], 0);
		close(p[0]);
		close(p[1]);
		signal(SIGPIPE, SIG_DFL);
		execvp("tar", (char *const *) argv);
		fprintf(stderr, "%s: could not run tar: %s\n", progname, strerror(errno));
		_exit(127);
	}
	close(p[0]);
	*wfd = p[1];
	return pid;
}

static bool
is_base_archive(const char *name)
{
	return strncmp(name, "base.tar", 8) == 0;
}

static const char *
map_tablespace(const char *dir)
{
	for (TablespaceMap *m = ts_maps; m; m = m->next)
		if (strcmp(m->old_dir, dir) == 0)
			return m->new_dir;
	return dir;
}

/*
 * The tablespaces of the backup.  With a backup target PostgreSQL 15 always
 * sends a tablespace_map file in base.tar instead of pg_tblspc symlinks
 * (the server recreates the links from it at start-up), so that file says
 * where each <oid>.tar belongs.  Format as in xlog.c/xlogrecovery.c:
 * "<oid> <path>\n" with \n, \r and \\ in the path escaped by a backslash.
 */
typedef struct Tablespace
{
	char		oid[64];
	char		path[MAXPGPATH];
} Tablespace;
static Tablespace *tablespaces = NULL;
static int	ntablespaces = 0;

static int
read_tablespace_map(void)
{
	char		path[MAXPGPATH];
	char		line[MAXPGPATH + 64];
	FILE	   *fp;
	int			ch;
	int			i = 0;
	bool		was_backslash = false;
	bool		mapped = false;

	snprintf(path, sizeof(path), "%s/tablespace_map", target_dir);
	fp = fopen(path, "r");
	if (fp == NULL)
		return errno == ENOENT ? 0 : EXIT_IO;
	while ((ch = fgetc(fp)) != EOF)
	{
		if (!was_backslash && (ch == '\n' || ch == '\r'))
		{
			Tablespace *t;
			char	   *sp;

			if (i == 0)
				continue;
			line[i] = '\0';
			i = 0;
			sp = strchr(line, ' ');
			if (sp == NULL || sp == line || sp - line >= (int) sizeof(t->oid) || sp[1] == '\0')
				break;
			tablespaces = pg_realloc(tablespaces, sizeof(Tablespace) * (ntablespaces + 1));
			t = &tablespaces[ntablespaces++];
			*sp = '\0';
			strlcpy(t->oid, line, sizeof(t->oid));
			strlcpy(t->path, map_tablespace(sp + 1), sizeof(t->path));
			mapped = mapped || strcmp(t->path, sp + 1) != 0;
		}
		else if (!was_backslash && ch == '\\')
			was_backslash = true;
		else
		{
			if (i < (int) sizeof(line) - 1)
				line[i++] = (char) ch;
			was_backslash = false;
		}
	}
	fclose(fp);
	if (i != 0 || was_backslash)
	{
		pg_log_error("\"%s\" in the backup is malformed", path);
		return EXIT_TAMPERED;
	}
	if (mapped)
	{
		/* Relocate: rewrite the map; the server makes the links from it. */
		char		tmp[MAXPGPATH];

		snprintf(tmp, sizeof(tmp), "%s.tmp", path);
		fp = fopen(tmp, "w");
		if (fp == NULL)
		{
			pg_log_error("could not create \"%s\": %m", tmp);
			return EXIT_IO;
		}
		for (int t = 0; t < ntablespaces; t++)
		{
			fprintf(fp, "%s ", tablespaces[t].oid);
			for (const char *c = tablespaces[t].path; *c; c++)
			{
				if (*c == '\n' || *c == '\r' || *c == '\\')
					fputc('\\', fp);
				fputc(*c, fp);
			}
			fputc('\n', fp);
		}
		if (fclose(fp) != 0 || rename(tmp, path) != 0)
		{
			pg_log_error("could not rewrite \"%s\": %m", path);
			return EXIT_IO;
		}
		pg_log_info("tablespace_map rewritten for the tablespace mapping (pass -i tablespace_map to pg_verifybackup)");
	}
	return 0;
}

/* Where <oid>.tar goes: tablespace_map, else the pg_tblspc link. */
static bool
tablespace_location(const char *oid, char *dest)
{
	char		link[MAXPGPATH];
	ssize_t		len;

	for (int t = 0; t < ntablespaces; t++)
		if (strcmp(tablespaces[t].oid, oid) == 0)
		{
			strlcpy(dest, tablespaces[t].path, MAXPGPATH);
			return true;
		}
	snprintf(link, sizeof(link), "%s/pg_tblspc/%s", target_dir, oid);
	len = readlink(link, dest, MAXPGPATH - 1);
	if (len < 0)
		return false;
	dest[len] = '\0';
	strlcpy(dest, map_tablespace(dest), MAXPGPATH);
	return true;
}

/* What a failed restore must remove again. */
typedef struct Created
{
	char	   *path;
	bool		remove_top;
} Created;
static Created created[1024];
static int	ncreated = 0;

static void
remove_created(void)
{
	for (int i = ncreated - 1; i >= 0; i--)
	{
		if (!rmtree(created[i].path, created[i].remove_top))
			pg_log_warning("could not remove \"%s\"", created[i].path);
		else
			pg_log_info("removed \"%s\"%s", created[i].path,
						created[i].remove_top ? "" : " (contents)");
	}
	ncreated = 0;
}

/* Make dir usable as an extraction target: absent (created) or empty. */
static int
prepare_dir(const char *dir)
{
	switch (pg_check_dir(dir))
	{
		case 0:
			if (pg_mkdir_p((char *) dir, pg_dir_create_mode) != 0)
			{
				pg_log_error("could not create directory \"%s\": %m", dir);
				return EXIT_IO;
			}
			created[ncreated].path = pg_strdup(dir);
			created[ncreated++].remove_top = true;
			return 0;
		case 1:
			created[ncreated].path = pg_strdup(dir);
			created[ncreated++].remove_top = false;
			return 0;
		case -1:
			pg_log_error("could not access directory \"%s\": %m", dir);
			return EXIT_IO;
		default:
			pg_log_error("directory \"%s\" exists but is not empty", dir);
			return EXIT_CONFIG;
	}
}

/* Decrypt one archive of the backup into tar (or, verifying, nowhere). */
static int
restore_archive(CmkStream *s, const BackupEnd *be, const EndFile *f, bool extract)
{
	char		path[MAXPGPATH];
	char		dest[MAXPGPATH];
	Job			job;
	uint64		bytes = 0;
	int			rc;

	snprintf(path, sizeof(path), "%s/%s%s", backup_dir, f->name, CMK_SUFFIX);
	memset(&job, 0, sizeof(job));
	job.path = path;
	job.e.purpose = CMK_STREAM_BACKUP;
	job.e.name = f->name;
	job.e.set_id = be->backup_id;
	job.e.salt = f->salt;
	job.e.dek_id = be->hdr.dek_id;
	job.e.trusted_dek = true;
	job.e.check_sysid = true;
	job.e.sysid = be->sysid;

	if (!extract)
		rc = decrypt_file(s, &job, write_discard, NULL, NULL, &bytes);
	else if (strcmp(f->name, "backup_manifest") == 0)
	{
		snprintf(dest, sizeof(dest), "%s/backup_manifest", target_dir);
		rc = decrypt_to_path(s, &job, dest, false);
		bytes = cmk_stream_plain_bytes(s);
	}
	else
	{
		CmkFdSink	out;
		pid_t		pid;
		int			status;

		if (is_base_archive(f->name))
			strlcpy(dest, target_dir, sizeof(dest));
		else
		{
			/* <oid>.tar[.gz|...]: a tablespace */
			char		oid[64];

			strlcpy(oid, f->name, sizeof(oid));
			oid[strcspn(oid, ".")] = '\0';
			if (!tablespace_location(oid, dest))
			{
				pg_log_error("archive \"%s\" belongs to tablespace %s, which the base archive does not name",
							 f->name, oid);
				return EXIT_TAMPERED;
			}
			rc = prepare_dir(dest);
			if (rc != 0)
				return rc;
		}
		if (!is_base_archive(f->name))
		{
			/*
			 * Link pg_tblspc/<oid> as a plain-format backup would, so the
			 * directory is complete for pg_verifybackup and tools; the
			 * server re-creates the link from tablespace_map at start-up.
			 */
			char		link[MAXPGPATH];
			char		oid[64];

			strlcpy(oid, f->name, sizeof(oid));
			oid[strcspn(oid, ".")] = '\0';
			snprintf(link, sizeof(link), "%s/pg_tblspc/%s", target_dir, oid);
			if ((unlink(link) != 0 && errno != ENOENT) || symlink(dest, link) != 0)
			{
				pg_log_error("could not link \"%s\" to \"%s\": %m", link, dest);
				return EXIT_IO;
			}
		}
		pid = spawn_tar(f->name, dest, &out.fd, &rc);
		if (pid < 0)
			return rc;
		rc = decrypt_file(s, &job, cmk_fd_sink_write, &out, NULL, &bytes);
		close(out.fd);
		if (rc != 0)
			kill(pid, SIGTERM);
		if (waitpid(pid, &status, 0) != pid)
			status = -1;
		if (rc == 0 && !(WIFEXITED(status) && WEXITSTATUS(status) == 0))
		{
			pg_log_error("tar failed extracting \"%s\" into \"%s\"", f->name, dest);
			return EXIT_IO;
		}
	}
	if (rc == 0 && bytes != f->bytes)
		job_fail(&job, rc = EXIT_TAMPERED,
				 "holds %llu bytes, the backup recorded %llu",
				 (unsigned long long) bytes, (unsigned long long) f->bytes);
	if (rc == EXIT_NOT_FOUND)
	{
		job_fail(&job, rc = EXIT_TAMPERED, "is missing from the backup");
	}
	if (rc != 0)
		job_report(&job);
	else
		pg_log_info("%s %s (%llu bytes)", extract ? "restored" : "verified", f->name,
					(unsigned long long) bytes);
	return rc;
}

static int
cmd_backup(int argc, char **argv, bool extract)
{
	BackupEnd	be;
	CmkStream  *s;
	int			rc;
	char		hex[2 * CMK_DEK_ID_LEN + 1];

	if (argc != 0 || backup_dir == NULL || (extract && target_dir == NULL))
	{
		pg_log_error(extract ? "backup needs --backup-directory and --target-directory" :
					 "verify needs --backup-directory or files");
		return EXIT_CONFIG;
	}
	s = new_stream();
	rc = read_backup_end(s, &be);
	if (rc != 0)
		return rc;
	cmk_hex(be.backup_id, sizeof(be.backup_id), hex);
	pg_log_info("backup %s of database system " UINT64_FORMAT ": WAL %s (timeline %u) to %s (timeline %u), %d files",
				hex, be.sysid, be.start_lsn, be.start_tli, be.end_lsn, be.end_tli, be.nfiles);

	if (extract && (rc = prepare_dir(target_dir)) != 0)
		return rc;

	/* The base archive first: tablespace archives go where it links them. */
	for (int pass = 0; pass < 3 && rc == 0; pass++)
		for (int i = 0; i < be.nfiles && rc == 0; i++)
		{
			const EndFile *f = &be.files[i];
			int			kind = is_base_archive(f->name) ? 0 :
				strcmp(f->name, "backup_manifest") == 0 ? 2 : 1;

			if (kind == pass)
				rc = restore_archive(s, &be, f, extract);
			if (rc == 0 && extract && pass == 0 && i == be.nfiles - 1)
				rc = read_tablespace_map();
		}
	cmk_stream_destroy(s);

	if (rc != 0)
	{
		if (extract)
			remove_created();
		return rc;
	}
	if (extract)
	{
		if (!no_sync)
			fsync_pgdata(target_dir, PG_VERSION_NUM);
		cmk_hex(be.hdr.dek_id, CMK_DEK_ID_LEN, hex);
		printf("restored backup into \"%s\" (DEK %s, key %s)\n", target_dir, hex, be.hdr.kid);
		printf("WAL from %s is needed to reach consistency at %s (timeline %u).\n",
			   be.start_lsn, be.end_lsn, be.end_tli);
		if (skip_dek_check)
			printf("To recover further, set restore_command = '%s wal --dek-id HEX --key-uri ... --archive-directory ... %%f %%p' "
				   "with your cluster's DEK identifier and create recovery.signal.\n", my_exec_path);
		else
			printf("To recover further, set restore_command = '%s wal --dek-id %s --key-uri ... --archive-directory ... %%f %%p' "
				   "and create recovery.signal.\n", my_exec_path, hex);
	}
	else
		printf("backup in \"%s\" verified: %d files\n", backup_dir, be.nfiles);
	return 0;
}

/* verify/decrypt/info of single files */
static int
cmd_files(int argc, char **argv, const char *what)
{
	CmkStream  *s = new_stream();
	int			worst = 0;

	if (argc == 0 || (strcmp(what, "decrypt") == 0 && argc != 1))
	{
		pg_log_error("%s needs %s", what, strcmp(what, "decrypt") == 0 ? "exactly one FILE" : "FILE arguments");
		return EXIT_CONFIG;
	}
	for (int i = 0; i < argc; i++)
	{
		Job			job;
		int			rc;
		CmkStreamHeader hdr;
		uint64		bytes = 0;

		memset(&job, 0, sizeof(job));
		job.path = argv[i];
		job.e.trusted_dek = true;
		/* the name in the authenticated header must be the file's own */
		job.e.file_name = last_dir_separator(argv[i]) ? last_dir_separator(argv[i]) + 1 : argv[i];
		if (strcmp(what, "info") == 0)
		{
			uint8		buf[CMK_STREAM_MAX_HEADER];
			char		err[256];
			char		dek[2 * CMK_DEK_ID_LEN + 1],
						set[2 * CMK_STREAM_SET_ID_LEN + 1];
			int			fd = open(argv[i], O_RDONLY | PG_BINARY, 0);
			ssize_t		n = fd < 0 ? -1 : read(fd, buf, sizeof(buf));

			if (fd >= 0)
				close(fd);
			if (n < 0)
			{
				pg_log_error("could not read \"%s\": %m", argv[i]);
				worst = Max(worst, EXIT_IO);
				continue;
			}
			if (cmk_stream_parse_header(buf, n, &hdr, err, sizeof(err)) != CMK_STREAM_OK)
			{
				pg_log_error("\"%s\": %s", argv[i], err);
				worst = Max(worst, EXIT_TAMPERED);
				continue;
			}
			cmk_hex(hdr.dek_id, CMK_DEK_ID_LEN, dek);
			cmk_hex(hdr.set_id, CMK_STREAM_SET_ID_LEN, set);
			printf("%s: cmk_storage stream v%u, %s \"%s\", chunk %u, database system " UINT64_FORMAT
				   ", DEK %s, key %s (%s), set %s, header %u bytes (not authenticated without the key)\n",
				   argv[i], hdr.version, cmk_stream_purpose_name(hdr.purpose), hdr.name,
				   hdr.chunk_size, (uint64) hdr.system_identifier, dek, hdr.kid,
				   cmk_wrap_alg_name((CmkWrapAlg) hdr.wrap_alg), set, hdr.header_len);
			continue;
		}
		if (strcmp(what, "decrypt") == 0)
		{
			if (output_path && strcmp(output_path, "-") != 0)
				rc = decrypt_to_path(s, &job, output_path, true);
			else
			{
				CmkFdSink	out = {1, 0};

				rc = decrypt_file(s, &job, cmk_fd_sink_write, &out, &hdr, &bytes);
			}
		}
		else
			rc = decrypt_file(s, &job, write_discard, NULL, &hdr, &bytes);
		if (rc == EXIT_NOT_FOUND)
			job_fail(&job, rc = EXIT_IO, "no such file");
		if (rc != 0)
		{
			job_report(&job);
			worst = Max(worst, rc);
		}
		else if (strcmp(what, "verify") == 0)
			printf("%s: ok (%s \"%s\", %llu bytes)\n", argv[i],
				   cmk_stream_purpose_name(cmk_stream_header(s)->purpose),
				   cmk_stream_header(s)->name, (unsigned long long) bytes);
	}
	cmk_stream_destroy(s);
	return worst;
}

/* ---------------------------------------------------------------------- */
/* selftest and bench                                                     */

static void
print_test(void *arg, const char *name, bool ok)
{
	printf("%-60s %s\n", name, ok ? "ok" : "FAILED");
}

static int
cmd_selftest(void)
{
	bool		ok = cmk_crypto_selftest(print_test, NULL);

	ok = cmk_stream_selftest(print_test, NULL) && ok;
	printf("%s\n", ok ? "all self-tests passed" : "SELF-TEST FAILED");
	return ok ? 0 : EXIT_INTERNAL;
}

typedef struct BenchOut
{
	uint8	   *data;
	size_t		len;
} BenchOut;

static bool
bench_write(void *arg, const uint8_t *data, size_t len)
{
	BenchOut   *b = arg;

	if (b->data)
	{
		memcpy(b->data + b->len, data, len);
	}
	b->len += len;
	return true;
}

static double
now_seconds(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static CmkStreamStatus
bench_key(void *arg, const CmkStreamHeader *hdr, uint8_t *subkey)
{
	memcpy(subkey, arg, CMK_STREAM_KEY_LEN);
	return CMK_STREAM_OK;
}

static int
cmd_bench(void)
{
	size_t		size = (size_t) bench_mb * 1024 * 1024;
	uint8	   *plain = pg_malloc(size);
	size_t		cap = size + size / 1024 + 65536;
	BenchOut	ct = {pg_malloc(cap), 0};
	BenchOut	sink = {NULL, 0};
	uint8		subkey[CMK_STREAM_KEY_LEN];
	CmkStreamHeader hdr;
	CmkStream  *s = new_stream();
	double		best_enc = 0,
				best_dec = 0;

	for (size_t i = 0; i < size; i++)
		plain[i] = (uint8) (i * 131 + (i >> 12));
	if (!cmk_random_bytes(subkey, sizeof(subkey)))
		return EXIT_INTERNAL;

	for (int round = 0; round < 3; round++)
	{
		double		t0,
					t1;

		memset(&hdr, 0, sizeof(hdr));
		hdr.purpose = CMK_STREAM_WAL;
		hdr.chunk_size = CMK_STREAM_DEFAULT_CHUNK;
		hdr.wrapped_len = 256;
		strlcpy(hdr.kid, "bench", sizeof(hdr.kid));
		strlcpy(hdr.name, "bench", sizeof(hdr.name));
		ct.len = 0;
		t0 = now_seconds();
		if (cmk_stream_encrypt_begin(s, &hdr, subkey, bench_write, &ct) != CMK_STREAM_OK)
			return EXIT_INTERNAL;
		for (size_t off = 0; off < size; off += IO_BUFFER)
			cmk_stream_update(s, plain + off, Min((size_t) IO_BUFFER, size - off));
		if (cmk_stream_finish(s) != CMK_STREAM_OK)
			return EXIT_INTERNAL;
		t1 = now_seconds();
		best_enc = Max(best_enc, size / (t1 - t0) / 1e6);

		sink.len = 0;
		t0 = now_seconds();
		cmk_stream_decrypt_begin(s, bench_key, subkey, bench_write, &sink);
		for (size_t off = 0; off < ct.len; off += IO_BUFFER)
			cmk_stream_update(s, ct.data + off, Min((size_t) IO_BUFFER, ct.len - off));
		if (cmk_stream_finish(s) != CMK_STREAM_OK || sink.len != size)
		{
			pg_log_error("benchmark round trip failed: %s", cmk_stream_errmsg(s));
			return EXIT_INTERNAL;
		}
		t1 = now_seconds();
		best_dec = Max(best_dec, size / (t1 - t0) / 1e6);
	}
	OPENSSL_cleanse(subkey, sizeof(subkey));
	cmk_stream_destroy(s);
	printf("AES-256-GCM stream, %u KiB chunks, %d MiB in memory, one thread (best of 3):\n",
		   CMK_STREAM_DEFAULT_CHUNK / 1024, bench_mb);
	printf("encrypt: %.0f MB/s\n", best_enc);
	printf("decrypt: %.0f MB/s\n", best_dec);
	return 0;
}

/* ---------------------------------------------------------------------- */

static void
usage(void)
{
	printf("%s verifies and decrypts cmk_storage encrypted WAL archives and base backups.\n\n", progname);
	printf("Usage:\n");
	printf("  %s wal --dek-id HEX [--key-uri URI] --archive-directory DIR [--pgdata DIR] WALFILE PATH\n", progname);
	printf("      restore_command = '%s wal --dek-id HEX --key-uri file:///path/kek.pem --archive-directory /archive %%f %%p'\n"
		   "      (restore_command needs the full path: the server's PATH may not contain it)\n", my_exec_path);
	printf("  %s backup --dek-id HEX [--key-uri URI] --backup-directory DIR --target-directory DIR\n"
		   "      [-T OLDDIR=NEWDIR]... [--no-sync]\n", progname);
	printf("  %s verify --dek-id HEX [--key-uri URI] (--backup-directory DIR | FILE...)\n", progname);
	printf("  %s decrypt --dek-id HEX [--key-uri URI] [--output PATH] FILE\n", progname);
	printf("  %s info FILE...\n", progname);
	printf("  %s selftest\n", progname);
	printf("  %s bench [--megabytes N]\n", progname);
	printf("\nOptions:\n");
	printf("  -k, --key-uri=URI            key encryption key; repeat for files wrapped by\n"
		   "                               different KEKs (default: $CMK_KEY_URI; for wal,\n"
		   "                               the key URI recorded in PGDATA's control file)\n");
	printf("  -a, --archive-directory=DIR  where cmk_storage.archive_directory put the WAL\n");
	printf("  -D, --pgdata=DIR             data directory being recovered (default: .); its\n"
		   "                               control file pins the system identifier and must\n"
		   "                               name a trusted DEK\n");
	printf("  -b, --backup-directory=DIR   directory written by pg_basebackup --target=cmk:DIR\n");
	printf("  -t, --target-directory=DIR   new data directory (absent or empty)\n");
	printf("      --dek-id=HEX             accept only files of this data encryption key: the\n"
		   "                               dek_id of cmk_storage.status, recorded before the\n"
		   "                               disaster (repeatable; default: $CMK_DEK_ID, one or\n"
		   "                               more separated by commas); required by wal, backup,\n"
		   "                               verify and decrypt\n");
	printf("      --insecure-skip-dek-check  accept files under any data encryption key, even\n"
		   "                               files forged with the public key encryption key\n");
	printf("  -T, --tablespace-mapping=OLDDIR=NEWDIR  relocate a tablespace\n");
	printf("  -o, --output=PATH            decrypt into PATH instead of standard output\n");
	printf("  -N, --no-sync                do not fsync the restored data directory\n");
	printf("\nExit status: 0 done, 1 not in the archive; failures are above 125 so that\n"
		   "recovery stops instead of ending early: 200 usage/configuration, 201 key\n"
		   "unavailable, 202 wrong key or cluster, 203 tampered/corrupt/incomplete,\n"
		   "204 I/O error, 205 internal error.\n");
}

int
main(int argc, char **argv)
{
	static struct option long_options[] = {
		{"key-uri", required_argument, NULL, 'k'},
		{"archive-directory", required_argument, NULL, 'a'},
		{"pgdata", required_argument, NULL, 'D'},
		{"backup-directory", required_argument, NULL, 'b'},
		{"target-directory", required_argument, NULL, 't'},
		{"dek-id", required_argument, NULL, 1},
		{"insecure-skip-dek-check", no_argument, NULL, 3},
		{"tablespace-mapping", required_argument, NULL, 'T'},
		{"output", required_argument, NULL, 'o'},
		{"no-sync", no_argument, NULL, 'N'},
		{"megabytes", required_argument, NULL, 2},
		{NULL, 0, NULL, 0}
	};
	const char *cmd;
	int			c;

	pg_logging_init(argv[0]);
	progname = get_progname(argv[0]);
	if (find_my_exec(argv[0], my_exec_path) < 0)
		strlcpy(my_exec_path, progname, sizeof(my_exec_path));
	signal(SIGPIPE, SIG_IGN);

	if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-?") == 0)
	{
		usage();
		return argc < 2 ? EXIT_CONFIG : 0;
	}
	if (strcmp(argv[1], "--version") == 0 || strcmp(argv[1], "-V") == 0)
	{
		printf("cmk_restore (cmk_storage) stream format %d, PostgreSQL " PG_MAJORVERSION "\n",
			   CMK_STREAM_VERSION);
		return 0;
	}
	cmd = argv[1];
	argc--;
	argv++;

	while ((c = getopt_long(argc, argv, "k:a:D:b:t:T:o:N", long_options, NULL)) != -1)
	{
		switch (c)
		{
			case 'k':
				if (nkey_uris == MAX_KEY_URIS)
				{
					pg_log_error("too many --key-uri options (at most %d)", MAX_KEY_URIS);
					return EXIT_CONFIG;
				}
				key_uris[nkey_uris++] = pg_strdup(optarg);
				break;
			case 'a':
				archive_dir = pg_strdup(optarg);
				break;
			case 'D':
				pgdata = pg_strdup(optarg);
				break;
			case 'b':
				backup_dir = pg_strdup(optarg);
				break;
			case 't':
				target_dir = pg_strdup(optarg);
				break;
			case 'o':
				output_path = pg_strdup(optarg);
				break;
			case 'N':
				no_sync = true;
				break;
			case 1:
				if (!add_trusted_deks(optarg, "--dek-id"))
					return EXIT_CONFIG;
				break;
			case 3:
				skip_dek_check = true;
				break;
			case 2:
				bench_mb = atoi(optarg);
				if (bench_mb < 1 || bench_mb > 4096)
				{
					pg_log_error("--megabytes must be between 1 and 4096");
					return EXIT_CONFIG;
				}
				break;
			case 'T':
				{
					TablespaceMap *m = pg_malloc0(sizeof(TablespaceMap));
					char	   *eq = strchr(optarg, '=');

					if (eq == NULL || eq == optarg || eq[1] == '\0' ||
						!is_absolute_path(eq + 1))
					{
						pg_log_error("invalid tablespace mapping \"%s\": use OLDDIR=NEWDIR with absolute paths", optarg);
						return EXIT_CONFIG;
					}
					m->old_dir = pg_strdup(optarg);
					m->old_dir[eq - optarg] = '\0';
					m->new_dir = pg_strdup(eq + 1);
					m->next = ts_maps;
					ts_maps = m;
					break;
				}
			default:
				pg_log_error_hint("Try \"%s --help\" for more information.", progname);
				return EXIT_CONFIG;
		}
	}
	if (nkey_uris == 0 && getenv("CMK_KEY_URI") != NULL && getenv("CMK_KEY_URI")[0] != '\0')
		key_uris[nkey_uris++] = pg_strdup(getenv("CMK_KEY_URI"));
	if (ntrusted_deks == 0 && getenv("CMK_DEK_ID") != NULL && getenv("CMK_DEK_ID")[0] != '\0' &&
		!add_trusted_deks(getenv("CMK_DEK_ID"), "CMK_DEK_ID"))
		return EXIT_CONFIG;
	argc -= optind;
	argv += optind;

	if (strcmp(cmd, "wal") == 0 || strcmp(cmd, "backup") == 0 ||
		strcmp(cmd, "verify") == 0 || strcmp(cmd, "decrypt") == 0)
	{
		int			rc = require_anchor(cmd);

		if (rc != 0)
			return rc;
	}

	if (strcmp(cmd, "wal") == 0)
		return cmd_wal(argc, argv);
	if (strcmp(cmd, "backup") == 0)
		return cmd_backup(argc, argv, true);
	if (strcmp(cmd, "verify") == 0)
		return backup_dir ? cmd_backup(argc, argv, false) : cmd_files(argc, argv, "verify");
	if (strcmp(cmd, "decrypt") == 0)
		return cmd_files(argc, argv, "decrypt");
	if (strcmp(cmd, "info") == 0)
		return cmd_files(argc, argv, "info");
	if (strcmp(cmd, "selftest") == 0)
		return cmd_selftest();
	if (strcmp(cmd, "bench") == 0)
		return cmd_bench();
	pg_log_error("unknown command \"%s\"", cmd);
	pg_log_error_hint("Try \"%s --help\" for more information.", progname);
	return EXIT_CONFIG;
}
