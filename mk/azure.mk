# Azure Key Vault provider: built into the server module by the Makefile's
# src/*/*.c wildcard, and registered unconditionally in key_provider.c.
# Frontend tools link key_provider.c too, so they need the provider as
# well: mk/stream.mk compiles src/keys/provider_azure*.c for them (and links
# libcurl and jansson) when CMK_HAVE_AZURE is among the preprocessor flags.
# Included by the Makefile after PGXS.

override CPPFLAGS += -DCMK_HAVE_AZURE

# The frontend objects of the provider, whatever order mk/*.mk are read in.
src/tools/cmk_restore/cmk_restore: $(patsubst %.c,src/tools/cmk_restore/obj/%.o,$(wildcard src/keys/provider_azure*.c))
