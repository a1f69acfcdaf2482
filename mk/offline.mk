# cmk_offline: runs PostgreSQL's offline tools (pg_waldump, pg_rewind,
# pg_checksums, pg_resetwal, pg_verifybackup) on a cluster with cluster
# encryption, through cmk_offline_preload.so (src/tools/cmk_offline/,
# docs/io-layer.md "Offline tools").  Included by the Makefile after PGXS.
#
# Both are built from the project's own sources compiled a second time with
# -DFRONTEND into their own object directory, never copied: the launcher
# with the crypto, control-file and key-provider code (as cmk_restore); the
# preload library with the server's page formats, classifier and descriptor
# table (src/io/io_relpage.c, io_walpage.c, io_classify.c, io_fdtable.c),
# position-independent, with every symbol hidden but the interposed libc
# calls.  The library's interposers define read(), open() and friends, so
# its objects are compiled without _FORTIFY_SOURCE (whose inline wrappers
# would collide with those definitions).

CMK_OFFLINE_DIR = src/tools/cmk_offline
CMK_OFFLINE = $(CMK_OFFLINE_DIR)/cmk_offline
CMK_OFFLINE_LIB = $(CMK_OFFLINE_DIR)/cmk_offline_preload.so
CMK_OFF_OBJDIR = $(CMK_OFFLINE_DIR)/obj
CMK_OFF_LIBOBJDIR = $(CMK_OFFLINE_DIR)/libobj

CMK_OFF_AZURE = $(if $(findstring CMK_HAVE_AZURE,$(CPPFLAGS) $(PG_CPPFLAGS)),$(wildcard src/keys/provider_azure*.c))
CMK_OFF_SRCS = $(CMK_OFFLINE_DIR)/cmk_offline.c \
	src/crypto/cmk_crypto.c \
	src/keys/key_provider.c src/keys/provider_file.c src/keys/control_file.c \
	$(CMK_OFF_AZURE)
CMK_OFF_OBJS = $(patsubst %.c,$(CMK_OFF_OBJDIR)/%.o,$(CMK_OFF_SRCS))
CMK_OFF_LIBS = -L$(pkglibdir) -lpgcommon -lpgport \
	$(shell pkg-config --libs openssl 2>/dev/null || echo -lssl -lcrypto) \
	$(if $(CMK_OFF_AZURE),$(SHLIB_LINK)) -lm

CMK_OFF_LIBSRCS = $(CMK_OFFLINE_DIR)/offline_preload.c $(CMK_OFFLINE_DIR)/preload_elog.c \
	src/io/io_relpage.c src/io/io_walpage.c src/io/io_classify.c src/io/io_fdtable.c \
	src/crypto/cmk_crypto.c
CMK_OFF_LIBOBJS = $(patsubst %.c,$(CMK_OFF_LIBOBJDIR)/%.o,$(CMK_OFF_LIBSRCS))
CMK_OFF_LIBLIBS = -L$(pkglibdir) -lpgcommon_shlib -lpgport_shlib \
	$(shell pkg-config --libs libcrypto 2>/dev/null || echo -lcrypto) -ldl

all: $(CMK_OFFLINE) $(CMK_OFFLINE_LIB)

$(CMK_OFF_OBJDIR)/%.o: %.c
	@$(MKDIR_P) $(dir $@)
	$(CC) $(CFLAGS) -DFRONTEND $(CPPFLAGS) -c -o $@ $<

$(CMK_OFF_LIBOBJDIR)/%.o: %.c
	@$(MKDIR_P) $(dir $@)
	$(CC) $(CFLAGS) $(CFLAGS_SL) -fvisibility=hidden -DFRONTEND $(CPPFLAGS) -U_FORTIFY_SOURCE -D_FORTIFY_SOURCE=0 -c -o $@ $<

$(CMK_OFF_OBJS) $(CMK_OFF_LIBOBJS): $(wildcard src/*/*.h) $(wildcard $(CMK_OFFLINE_DIR)/*.h)

$(CMK_OFFLINE): $(CMK_OFF_OBJS)
	$(CC) $(CFLAGS) $(CMK_OFF_OBJS) $(LDFLAGS) $(LDFLAGS_EX) $(CMK_OFF_LIBS) -o $@

# -z defs: an unresolved symbol (a server-only function reached from a shared
# source) fails the build, not the tool's start.
$(CMK_OFFLINE_LIB): $(CMK_OFF_LIBOBJS)
	$(CC) $(CFLAGS) -shared -Wl,--exclude-libs,ALL -Wl,-z,now -Wl,-z,defs $(CMK_OFF_LIBOBJS) $(LDFLAGS) $(CMK_OFF_LIBLIBS) -o $@

install: install-cmk-offline
install-cmk-offline: $(CMK_OFFLINE) $(CMK_OFFLINE_LIB)
	$(MKDIR_P) '$(DESTDIR)$(bindir)' '$(DESTDIR)$(pkglibdir)'
	$(INSTALL_PROGRAM) $(CMK_OFFLINE) '$(DESTDIR)$(bindir)/cmk_offline'
	$(INSTALL_SHLIB) $(CMK_OFFLINE_LIB) '$(DESTDIR)$(pkglibdir)/cmk_offline_preload.so'

uninstall: uninstall-cmk-offline
uninstall-cmk-offline:
	rm -f '$(DESTDIR)$(bindir)/cmk_offline' '$(DESTDIR)$(pkglibdir)/cmk_offline_preload.so'

clean: clean-cmk-offline
clean-cmk-offline:
	rm -rf $(CMK_OFFLINE) $(CMK_OFFLINE_LIB) $(CMK_OFF_OBJDIR) $(CMK_OFF_LIBOBJDIR)

.PHONY: install-cmk-offline uninstall-cmk-offline clean-cmk-offline
