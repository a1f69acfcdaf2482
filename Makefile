# cmk_storage — PGXS build.
#
# Every .c file under src/ is part of the server module; sub-makefiles under
# mk/ add frontend tools and their tests without editing this file.

EXTENSION = cmk_storage
MODULE_big = cmk_storage
DATA = cmk_storage--0.1.sql
PGFILEDESC = "cmk_storage - encryption at rest with a customer-managed key"

SRCS := $(sort $(wildcard src/*.c src/*/*.c))
OBJS = $(SRCS:.c=.o)

PG_CONFIG ?= pg_config
PG_CPPFLAGS = -I$(srcdir)/src $(shell pkg-config --cflags openssl libcurl jansson 2>/dev/null)
PG_CFLAGS = -Wall -Wextra -Wno-unused-parameter -Wno-missing-field-initializers -Wno-sign-compare -Werror=implicit-function-declaration
SHLIB_LINK = $(shell pkg-config --libs openssl libcurl jansson 2>/dev/null || echo -lssl -lcrypto -lcurl -ljansson)

# Tests (pg_regress in sql/ and expected/, TAP in t/, the regression-suite
# oracle, the emulator conformance tests) need a generated key and a
# preloaded library: scripts/test.sh runs them all.

PGXS := $(shell $(PG_CONFIG) --pgxs)
include $(PGXS)

# PGXS tracks no header dependencies unless the server was configured with
# --enable-depend: rebuild every object when any of our headers changes (a
# stale object with an old struct layout crashes, it does not fail to link).
HEADERS := $(wildcard src/*.h src/*/*.h)
$(OBJS): $(HEADERS)

-include $(wildcard mk/*.mk)
