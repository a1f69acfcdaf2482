/*-------------------------------------------------------------------------
 *
 * cmk_offline.c
 *		Run one of PostgreSQL's offline tools on a cluster with cluster
 *		encryption on (docs/io-layer.md, "Offline tools").
 *
 *	 cmk_offline [-D DATADIR] [--key-uri URI] TOOL [TOOL OPTIONS...]
 *
 *	 TOOL = pg_waldump | pg_rewind | pg_checksums | pg_resetwal | pg_verifybackup
 *
 * The data directory is cmk_offline's -D if given, else the one the tool's
 * own arguments name (-D/--pgdata, pg_rewind's --target-pgdata, the
 * positional DATADIR of pg_checksums and pg_resetwal, pg_verifybackup's
 * backup directory), else $PGDATA.  From it cmk_offline reads pg_control
 * and cmk_storage/control, unwraps the DEK with the key provider -- the KEK
 * is --key-uri if given, else the URI the control file records (the one
 * the server itself uses first) -- checks it against the control file's DEK
 * identifier and system identifier exactly as the postmaster does, derives
 * the relation-page and WAL-page XTS keys, and runs the stock tool from its
 * own bin directory with cmk_offline_preload.so preloaded.
 *
 * The keys travel in a sealed, locked memory file whose descriptor the
 * tool inherits (cmk_offline.h); the DEK never leaves this process and is
 * wiped as soon as the keys are derived; the memory file is wiped when the
 * tool exits.  Nothing secret is taken from or put on a command line, an
 * environment variable or a file.
 *
 * Exit status: the tool's; 2 when cmk_offline refuses before the tool runs
 * (no key, wrong key, not an encrypted data directory, bad usage).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres_fe.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <openssl/crypto.h>

#include "catalog/pg_control.h"
#include "common/controldata_utils.h"
#include "common/logging.h"

#include "crypto/cmk_crypto.h"
#include "io/io_layer.h"
#include "keys/control_file.h"
#include "keys/key_provider.h"
#include "tools/cmk_offline/cmk_offline.h"

#define EXIT_REFUSED	2

static const char *progname;

/*
 * The tools and how their arguments name a data directory: options that
 * take a value (so that their value is not taken for a positional
 * argument), the options that name the data directory, and whether the
 * first positional argument does.
 */
typedef struct ToolSpec
{
	const char *name;
	const char *short_with_arg; /* getopt letters that take a value */
	const char *const *long_with_arg;
	const char *const *datadir_long;
	char		datadir_short;
	bool		positional_datadir;
} ToolSpec;

static const char *const waldump_long[] = {"block", "end", "fork", "limit", "path",
	"relation", "rmgr", "start", "timeline", "xid", "stats", NULL};
static const char *const rewind_long[] = {"target-pgdata", "source-pgdata",
	"source-server", "config-file", NULL};
static const char *const rewind_datadir[] = {"target-pgdata", NULL};
static const char *const checksums_long[] = {"pgdata", "filenode", NULL};
static const char *const resetwal_long[] = {"pgdata", "commit-timestamp-ids",
	"epoch", "wal-segsize", "next-wal-file", "multixact-ids", "next-oid",
	"multixact-offset", "oldest-transaction-id", "next-transaction-id", NULL};
static const char *const verifybackup_long[] = {"ignore", "manifest-path",
	"wal-directory", NULL};
static const char *const pgdata_long[] = {"pgdata", NULL};
static const char *const none[] = {NULL};

static const ToolSpec tools[] = {
	{"pg_waldump", "BeFnpRrtx", waldump_long, none, 0, false},
	{"pg_rewind", "D", rewind_long, rewind_datadir, 'D', false},
	{"pg_checksums", "Df", checksums_long, pgdata_long, 'D', true},
	{"pg_resetwal", "cDelmoOux", resetwal_long, pgdata_long, 'D', true},
	{"pg_verifybackup", "imw", verifybackup_long, none, 0, true},
};

static bool
in_list(const char *const *list, const char *name, size_t len)
{
	for (; *list; list++)
		if (strlen(*list) == len && strncmp(*list, name, len) == 0)
			return true;
	return false;
}

/*
 * The data directory the tool's arguments name, or NULL.  Only what getopt
 * would see: --name=value, --name value, -Xvalue, -X value, bundled flags,
 * "--" ending the options.  (getopt's abbreviated long names are not
 * recognised: give cmk_offline -D then.)
 */
static const char *
tool_datadir(const ToolSpec *t, int argc, char **argv, const char **source_pgdata)
{
	const char *found = NULL;
	const char *positional = NULL;
	bool		options_done = false;

	*source_pgdata = NULL;
	for (int i = 0; i < argc; i++)
	{
		const char *a = argv[i];

		if (options_done || a[0] != '-' || a[1] == '\0')
		{
			if (positional == NULL)
				positional = a;
			continue;
		}
		if (strcmp(a, "--") == 0)
		{
			options_done = true;
			continue;
		}
		if (a[1] == '-')
		{
			const char *name = a + 2;
			const char *eq = strchr(name, '=');
			size_t		len = eq ? (size_t) (eq - name) : strlen(name);
			const char *value = NULL;

			if (!in_list(t->long_with_arg, name, len))
				continue;
			if (eq)
				value = eq + 1;
			else if (i + 1 < argc)
				value = argv[++i];
			if (value && in_list(t->datadir_long, name, len))
				found = value;
			if (value && len == strlen("source-pgdata") &&
				strncmp(name, "source-pgdata", len) == 0)
				*source_pgdata = value;
			continue;
		}
		for (const char *c = a + 1; *c; c++)
		{
			if (strchr(t->short_with_arg, *c) == NULL)
				continue;
			{
				const char *value = c[1] ? c + 1 : (i + 1 < argc ? argv[++i] : NULL);

				if (value && *c == t->datadir_short)
					found = value;
			}
			break;
		}
	}
	if (found == NULL && t->positional_datadir)
		found = positional;
	return found;
}

/* ---------------------------------------------------------------------- */
/* The key                                                                */

static bool
read_cmk_control(const char *dir, CmkControl *ctl)
{
	CmkError	err;

	memset(&err, 0, sizeof(err));
	switch (cmk_control_read_dir(dir, ctl, &err))
	{
		case CMK_CONTROL_PRESENT:
			return true;
		case CMK_CONTROL_ABSENT:
			pg_log_error("\"%s\" has no cmk_storage key directory (%s/%s is missing)",
						 dir, dir, CMK_CONTROL_FILE);
			pg_log_error_detail("cmk_offline is for clusters with cmk_storage.cluster_encryption on; their key is recorded there.");
			pg_log_error_hint("Restore the data directory's cmk_storage directory from a backup, or run the tool directly if this cluster is not encrypted.");
			return false;
		default:
			pg_log_error("%s", err.message);
			pg_log_error_hint("Restore the data directory's cmk_storage directory from a backup.");
			return false;
	}
}

/* The DEK, unwrapped and checked as key_early.c does, into dek. */
static bool
unwrap_dek(const CmkControl *ctl, const char *key_uri, uint8 *dek)
{
	const CmkKeyProvider *provider;
	CmkError	err;
	size_t		dek_len = 0;
	uint8		dek_id[CMK_DEK_ID_LEN];

	memset(&err, 0, sizeof(err));
	provider = cmk_find_provider(key_uri, &err);
	if (provider == NULL ||
		!provider->unwrap(key_uri, ctl->kid, ctl->wrap_alg, ctl->wrapped,
						  ctl->wrapped_len, dek, &dek_len, &err))
	{
		OPENSSL_cleanse(dek, CMK_DEK_LEN);
		pg_log_error("could not unwrap the cluster's data encryption key with \"%s\": %s",
					 key_uri, err.message);
		if (err.detail[0])
			pg_log_error_detail("%s", err.detail);
		pg_log_error_hint("%s%sThe key URI is --key-uri if given, else the one the data directory's cmk_storage/control records.",
						  err.hint, err.hint[0] ? " " : "");
		return false;
	}
	if (dek_len != CMK_DEK_LEN || !cmk_dek_identifier(dek, dek_id) ||
		!cmk_ct_equal(dek_id, ctl->dek_id, CMK_DEK_ID_LEN))
	{
		OPENSSL_cleanse(dek, CMK_DEK_LEN);
		pg_log_error("the key \"%s\" unwrapped a data encryption key that does not match the control file's DEK identifier",
					 key_uri);
		pg_log_error_hint("Give the key that wraps this cluster's data encryption key with --key-uri.");
		return false;
	}
	return true;
}

/*
 * The sealed memory file: one locked page, mapped here until the tool
 * exits so that it can be wiped then; the tool can only read it.
 */
static CmkOfflineKeys *keys_map = NULL;
static size_t keys_size = 0;

static int
make_key_file(const CmkControl *ctl, const ControlFileData *pgc,
			  const char *datadir)
{
	uint8	   *dek;
	char	   *real;
	bool		ok;
	int			fd;

	keys_size = TYPEALIGN(sysconf(_SC_PAGESIZE), sizeof(CmkOfflineKeys));
	fd = memfd_create("cmk_offline_keys", MFD_ALLOW_SEALING);
	if (fd < 0 || ftruncate(fd, keys_size) != 0)
		pg_fatal("could not create the key memory file: %m");
	keys_map = mmap(NULL, keys_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (keys_map == MAP_FAILED)
		pg_fatal("could not map the key memory file: %m");
	if (mlock(keys_map, keys_size) != 0)
		pg_fatal("could not lock the key memory in RAM: %m");
	(void) madvise(keys_map, keys_size, MADV_DONTDUMP);

	/* The DEK lives in the same locked page, after the keys, briefly. */
	StaticAssertStmt(sizeof(CmkOfflineKeys) + CMK_DEK_LEN <= 4096,
					 "the key page holds the keys and the DEK");
	dek = (uint8 *) keys_map + sizeof(CmkOfflineKeys);
	if (!unwrap_dek(ctl, ctl->key_uri, dek))
		return -1;
	ok = cmk_derive_labelled(dek, CMK_IO_REL_LABEL, keys_map->rel_key, CMK_XTS_KEY_LEN) &&
		cmk_derive_labelled(dek, CMK_IO_WAL_LABEL, keys_map->wal_key, CMK_XTS_KEY_LEN);
	OPENSSL_cleanse(dek, CMK_DEK_LEN);
	if (!ok)
		pg_fatal("could not derive the cluster encryption keys");

	memcpy(keys_map->magic, CMK_OFFLINE_MAGIC, sizeof(keys_map->magic));
	keys_map->checksums = pgc->data_checksum_version != 0;
	keys_map->system_identifier = pgc->system_identifier;
	strlcpy(keys_map->datadir, datadir, sizeof(keys_map->datadir));
	real = realpath(datadir, NULL);
	strlcpy(keys_map->datadir_real, real ? real : datadir, sizeof(keys_map->datadir_real));
	free(real);

	if (fcntl(fd, F_ADD_SEALS, CMK_OFFLINE_SEALS) != 0)
		pg_fatal("could not seal the key memory file: %m");
	return fd;
}

static void
wipe_keys(void)
{
	if (keys_map != NULL && keys_map != MAP_FAILED)
	{
		OPENSSL_cleanse(keys_map, keys_size);
		munmap(keys_map, keys_size);
		keys_map = NULL;
	}
}

/* ---------------------------------------------------------------------- */

static pid_t child = 0;

static void
forward_signal(int signo)
{
	if (child > 0)
		kill(child, signo);
}

static void
usage(void)
{
	printf("%s runs a PostgreSQL offline tool on a cluster with cmk_storage cluster encryption:\n"
		   "the tool reads and writes plaintext pages, the disk keeps ciphertext.\n\n", progname);
	printf("Usage:\n  %s [-D DATADIR] [--key-uri URI] TOOL [TOOL OPTIONS...]\n\n", progname);
	printf("TOOL is pg_waldump, pg_rewind, pg_checksums, pg_resetwal or pg_verifybackup,\n"
		   "run from the directory cmk_offline is installed in.\n\n");
	printf("Options:\n"
		   "  -D, --pgdata=DATADIR  data directory whose key to use (default: the one the\n"
		   "                        tool's arguments name, else $PGDATA); also set as the\n"
		   "                        tool's PGDATA\n"
		   "      --key-uri=URI     key encryption key (default: the URI recorded in\n"
		   "                        DATADIR/cmk_storage/control)\n"
		   "  -V, --version         output version information, then exit\n"
		   "  -?, --help            show this help, then exit\n\n");
	printf("Examples:\n"
		   "  %s pg_checksums --check -D /srv/pg/data\n"
		   "  %s -D /srv/pg/data pg_waldump -p /srv/pg/data/pg_wal 000000010000000000000003\n"
		   "  %s pg_rewind -D /srv/pg/old --source-server='host=new dbname=postgres'\n",
		   progname, progname, progname);
}

int
main(int argc, char **argv)
{
	const char *opt_datadir = NULL;
	const char *key_uri = NULL;
	const ToolSpec *tool = NULL;
	const char *datadir;
	const char *source_pgdata;
	char	   *abs_datadir;
	char		tool_path[MAXPGPATH];
	char		my_path[MAXPGPATH];
	char		lib_path[MAXPGPATH];
	char		version[128];
	char		pgcpath[MAXPGPATH];
	char		fdnum[16];
	char	   *preload;
	const char *old_preload;
	ControlFileData *pgc;
	bool		crc_ok;
	CmkControl	ctl;
	struct stat st;
	int			keyfd;
	int			i;
	int			status;

	pg_logging_init(argv[0]);
	progname = get_progname(argv[0]);
	(void) prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);

	/* Our options end at the tool's name. */
	for (i = 1; i < argc; i++)
	{
		const char *a = argv[i];

		if (strcmp(a, "--help") == 0 || strcmp(a, "-?") == 0)
		{
			usage();
			exit(0);
		}
		if (strcmp(a, "--version") == 0 || strcmp(a, "-V") == 0)
		{
			puts("cmk_offline (cmk_storage) for PostgreSQL " PG_MAJORVERSION);
			exit(0);
		}
		if ((strcmp(a, "-D") == 0 || strcmp(a, "--pgdata") == 0) && i + 1 < argc)
			opt_datadir = argv[++i];
		else if (strncmp(a, "-D", 2) == 0 && a[2] != '\0')
			opt_datadir = a + 2;
		else if (strncmp(a, "--pgdata=", 9) == 0)
			opt_datadir = a + 9;
		else if (strcmp(a, "--key-uri") == 0 && i + 1 < argc)
			key_uri = argv[++i];
		else if (strncmp(a, "--key-uri=", 10) == 0)
			key_uri = a + 10;
		else if (a[0] == '-')
		{
			pg_log_error("unrecognized option \"%s\" before the tool's name", a);
			pg_log_error_hint("Try \"%s --help\" for more information.", progname);
			exit(EXIT_REFUSED);
		}
		else
			break;
	}
	if (i >= argc)
	{
		pg_log_error("no tool given");
		pg_log_error_hint("Try \"%s --help\" for more information.", progname);
		exit(EXIT_REFUSED);
	}
	for (int t = 0; t < lengthof(tools); t++)
		if (strcmp(argv[i], tools[t].name) == 0)
			tool = &tools[t];
	if (tool == NULL)
	{
		pg_log_error("\"%s\" is not a tool cmk_offline runs", argv[i]);
		pg_log_error_hint("Use one of pg_waldump, pg_rewind, pg_checksums, pg_resetwal, pg_verifybackup; other tools do not read relation or WAL files, or need a running server.");
		exit(EXIT_REFUSED);
	}

	/* The stock tool of this installation's version, next to us. */
	snprintf(version, sizeof(version), "%s (PostgreSQL) " PG_VERSION "\n", tool->name);
	if (find_my_exec(argv[0], my_path) < 0 ||
		find_other_exec(argv[0], tool->name, version, tool_path) < 0)
	{
		pg_log_error("could not find %s %s next to %s", tool->name, PG_VERSION, progname);
		pg_log_error_hint("Install cmk_offline into the bin directory of the PostgreSQL installation whose tools it runs (pg_config --bindir).");
		exit(EXIT_REFUSED);
	}
	get_pkglib_path(my_path, lib_path);
	strlcat(lib_path, "/" CMK_OFFLINE_LIBRARY, sizeof(lib_path));
	if (stat(lib_path, &st) != 0)
	{
		pg_log_error("could not find \"%s\": %m", lib_path);
		pg_log_error_hint("Install cmk_storage completely (make install) into this PostgreSQL installation.");
		exit(EXIT_REFUSED);
	}

	/* The data directory, hence the key. */
	datadir = tool_datadir(tool, argc - i - 1, argv + i + 1, &source_pgdata);
	if (opt_datadir != NULL)
	{
		if (datadir != NULL && tool->datadir_short != 0)
		{
			char	   *a = make_absolute_path(opt_datadir);
			char	   *b = make_absolute_path(datadir);

			if (strcmp(a, b) != 0)
			{
				pg_log_error("-D \"%s\" and the tool's data directory \"%s\" differ", opt_datadir, datadir);
				exit(EXIT_REFUSED);
			}
		}
		datadir = opt_datadir;
		setenv("PGDATA", opt_datadir, 1);
	}
	if (datadir == NULL)
		datadir = getenv("PGDATA");
	if (datadir == NULL || datadir[0] == '\0')
	{
		pg_log_error("no data directory: cmk_offline needs one to find the cluster's key");
		pg_log_error_hint("Give it with -D before the tool's name (\"%s -D DATADIR %s ...\") or set PGDATA.",
						  progname, tool->name);
		exit(EXIT_REFUSED);
	}
	abs_datadir = make_absolute_path(datadir);

	snprintf(pgcpath, sizeof(pgcpath), "%s/global/pg_control", abs_datadir);
	if (stat(pgcpath, &st) != 0)
	{
		pg_log_error("\"%s\" is not a data directory: could not find \"%s\": %m", datadir, pgcpath);
		exit(EXIT_REFUSED);
	}
	pgc = get_controlfile(abs_datadir, &crc_ok);
	if (!crc_ok)
	{
		pg_log_error("the control file of \"%s\" has a wrong checksum", datadir);
		pg_log_error_hint("Repair the control file first (pg_resetwal without cmk_offline does not need the key for that).");
		exit(EXIT_REFUSED);
	}
	if (!read_cmk_control(abs_datadir, &ctl))
		exit(EXIT_REFUSED);
	if (ctl.system_identifier != pgc->system_identifier)
	{
		pg_log_error("\"%s\"'s cmk_storage control file belongs to another cluster", datadir);
		pg_log_error_detail("The file names database system identifier %llu; pg_control's is %llu.",
							(unsigned long long) ctl.system_identifier,
							(unsigned long long) pgc->system_identifier);
		pg_log_error_hint("Restore this cluster's own cmk_storage directory.");
		exit(EXIT_REFUSED);
	}
	if (key_uri != NULL)
		strlcpy(ctl.key_uri, key_uri, sizeof(ctl.key_uri));
	if (ctl.key_uri[0] == '\0')
	{
		pg_log_error("the control file records no key URI");
		pg_log_error_hint("Give the key encryption key with --key-uri (cmk_storage.key_uri of the server).");
		exit(EXIT_REFUSED);
	}

	/* pg_rewind copies the source's ciphertext as it is: one key for both. */
	if (source_pgdata != NULL && strcmp(tool->name, "pg_rewind") == 0)
	{
		CmkControl	src;

		if (!read_cmk_control(source_pgdata, &src))
			exit(EXIT_REFUSED);
		if (!cmk_ct_equal(src.dek_id, ctl.dek_id, CMK_DEK_ID_LEN))
		{
			pg_log_error("the source \"%s\" and the target \"%s\" use different data encryption keys",
						 source_pgdata, datadir);
			pg_log_error_detail("pg_rewind copies encrypted pages as they are; they decrypt only under the key they were written with.");
			pg_log_error_hint("Rewind only from a cluster made from this one (a standby or a base backup), whose cmk_storage directory it copied.");
			exit(EXIT_REFUSED);
		}
	}

	keyfd = make_key_file(&ctl, pgc, abs_datadir);
	if (keyfd < 0)
	{
		wipe_keys();
		exit(EXIT_REFUSED);
	}
	OPENSSL_cleanse(&ctl, sizeof(ctl));

	/* Only the descriptor's number goes into the environment. */
	snprintf(fdnum, sizeof(fdnum), "%d", keyfd);
	setenv(CMK_OFFLINE_FD_ENV, fdnum, 1);
	old_preload = getenv("LD_PRELOAD");
	preload = psprintf("%s%s%s", lib_path, old_preload && old_preload[0] ? ":" : "",
					   old_preload ? old_preload : "");
	setenv("LD_PRELOAD", preload, 1);

	fflush(NULL);
	child = fork();
	if (child < 0)
	{
		wipe_keys();
		pg_fatal("could not fork: %m");
	}
	if (child == 0)
	{
		argv[i] = tool_path;
		execv(tool_path, argv + i);
		pg_log_error("could not run \"%s\": %m", tool_path);
		_exit(EXIT_REFUSED);
	}

	/* Terminal signals reach the tool directly; pass the others on. */
	pqsignal(SIGINT, SIG_IGN);
	pqsignal(SIGQUIT, SIG_IGN);
	pqsignal(SIGTERM, forward_signal);
	pqsignal(SIGHUP, forward_signal);
	close(keyfd);
	while (waitpid(child, &status, 0) < 0)
	{
		if (errno != EINTR)
		{
			wipe_keys();
			pg_fatal("could not wait for %s: %m", tool->name);
		}
	}
	wipe_keys();
	if (WIFEXITED(status))
		exit(WEXITSTATUS(status));
	if (WIFSIGNALED(status))
	{
		pg_log_error("%s was terminated by signal %d: %s", tool->name,
					 WTERMSIG(status), pg_strsignal(WTERMSIG(status)));
		exit(128 + WTERMSIG(status));
	}
	exit(EXIT_REFUSED);
}
