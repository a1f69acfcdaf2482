# cmk_restore: the frontend tool that verifies and decrypts encrypted WAL
# archives and base backups (src/tools/cmk_restore/).  Included by the
# Makefile after PGXS.
#
# It links the same crypto, stream, control-file and key-provider sources as
# the server module, compiled a second time with -DFRONTEND into their own
# object directory, against libpgcommon/libpgport and OpenSSL.  The tool's
# own sources live three levels down so that the Makefile's src/*/*.c
# wildcard never pulls main() into cmk_storage.so.
#
# Key providers besides the file provider join automatically once they are
# enabled for the server: if CMK_HAVE_AZURE is in the preprocessor flags,
# src/keys/provider_azure*.c is compiled for the frontend too and linked
# with the module's libraries (SHLIB_LINK).  Extra frontend sources can be
# added with CMK_FE_EXTRA_SRCS.

CMK_RESTORE_DIR = src/tools/cmk_restore
CMK_RESTORE = $(CMK_RESTORE_DIR)/cmk_restore
CMK_FE_OBJDIR = $(CMK_RESTORE_DIR)/obj

CMK_FE_AZURE = $(if $(findstring CMK_HAVE_AZURE,$(CPPFLAGS) $(PG_CPPFLAGS)),$(wildcard src/keys/provider_azure*.c))
CMK_FE_SRCS = $(CMK_RESTORE_DIR)/cmk_restore.c \
	src/crypto/cmk_crypto.c src/crypto/cmk_selftest.c \
	src/stream/cmk_stream.c src/stream/cmk_stream_selftest.c \
	src/keys/key_provider.c src/keys/provider_file.c src/keys/control_file.c \
	$(CMK_FE_AZURE) $(CMK_FE_EXTRA_SRCS)
CMK_FE_OBJS = $(patsubst %.c,$(CMK_FE_OBJDIR)/%.o,$(CMK_FE_SRCS))
CMK_FE_LIBS = -L$(pkglibdir) -lpgcommon -lpgport \
	$(shell pkg-config --libs openssl 2>/dev/null || echo -lssl -lcrypto) \
	$(if $(CMK_FE_AZURE),$(SHLIB_LINK)) -lm

all: $(CMK_RESTORE)

$(CMK_FE_OBJDIR)/%.o: %.c
	@$(MKDIR_P) $(dir $@)
	$(CC) $(CFLAGS) -DFRONTEND $(CPPFLAGS) -c -o $@ $<

$(CMK_FE_OBJS): $(wildcard src/*/*.h) $(wildcard $(CMK_RESTORE_DIR)/*.h)

$(CMK_RESTORE): $(CMK_FE_OBJS)
	$(CC) $(CFLAGS) $(CMK_FE_OBJS) $(LDFLAGS) $(LDFLAGS_EX) $(CMK_FE_LIBS) -o $@

install: install-cmk-restore
install-cmk-restore: $(CMK_RESTORE)
	$(MKDIR_P) '$(DESTDIR)$(bindir)'
	$(INSTALL_PROGRAM) $(CMK_RESTORE) '$(DESTDIR)$(bindir)/cmk_restore'

uninstall: uninstall-cmk-restore
uninstall-cmk-restore:
	rm -f '$(DESTDIR)$(bindir)/cmk_restore'

clean: clean-cmk-restore
clean-cmk-restore:
	rm -rf $(CMK_RESTORE) $(CMK_FE_OBJDIR)

# Stream known-answer and tamper tests, without a server.
stream-selftest: $(CMK_RESTORE)
	$(CMK_RESTORE) selftest

.PHONY: install-cmk-restore uninstall-cmk-restore clean-cmk-restore stream-selftest
