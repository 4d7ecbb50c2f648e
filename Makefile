# ordersuite — one Makefile for everything (GNU make).
#
#   make            build every executable into build/bin/
#   make deps       install the Debian packages (root; prints the sudo line otherwise)
#   make up|down|status   the project's own RabbitMQ node and PostgreSQL cluster (var/)
#   make migrate    apply migrations/NNNN_*.sql
#   make test       build, the unit suites, up, migrate, every other suite, make compose-test
#   make compose-test  the docker compose path for real (tests/compose_test.sh)
#   make asan       the same tests built with -fsanitize=address,undefined
#   make fuzz       libFuzzer over the decoders, bounded
#   make demo | demo-stop, make fmt | lint
#
# BUILD selects the output tree (build/ or build/asan/); SAN=1 adds sanitizers.

BUILD   ?= build
SAN     ?=
CC      ?= cc

PKGS     := librabbitmq libpq libmicrohttpd libcjson libcrypto
PKG_CFLAGS := $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS   := $(shell pkg-config --libs $(PKGS) 2>/dev/null)
CHECK_CFLAGS := $(shell pkg-config --cflags check 2>/dev/null)
CHECK_LIBS   := $(shell pkg-config --libs check 2>/dev/null)

# -Wformat-truncation (in -Wall) stays on: an snprintf that may cut its
# output checks its return, or the cut is a limit its header states.
WARN    := -Wall -Wextra -Werror -Wstrict-prototypes -Wmissing-prototypes -Wshadow -Wvla
CFLAGS  ?= -O2 -g
ORDERSUITE_VERSION ?= dev
CFLAGS  += -std=c11 -D_GNU_SOURCE $(WARN) -MMD -MP -Icommon -Icontracts $(PKG_CFLAGS) \
           -DORDERSUITE_VERSION='"$(ORDERSUITE_VERSION)"'
LDLIBS  := $(PKG_LIBS) -lcurl -lpthread -lm
ifeq ($(SAN),1)
CFLAGS  += -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
LDFLAGS += -fsanitize=address,undefined
endif

COMMON_SRC    := $(wildcard common/*.c)
CONTRACTS_SRC := $(wildcard contracts/*.c)
SERVICES      := $(notdir $(patsubst %/,%,$(dir $(wildcard services/*/main.c))))
TOOLS         := $(notdir $(patsubst %/,%,$(dir $(wildcard tools/*/main.c))))
TESTS         := $(basename $(notdir $(wildcard tests/check_*.c)))
TEST_HELPERS  := $(basename $(notdir $(wildcard tests/helpers/*.c)))

OBJ = $(patsubst %.c,$(BUILD)/obj/%.o,$(1))
LIBCOMMON    := $(BUILD)/lib/libcommon.a
LIBCONTRACTS := $(BUILD)/lib/libcontracts.a
LIBS         := $(LIBCOMMON) $(LIBCONTRACTS)

BINS := $(addprefix $(BUILD)/bin/,$(SERVICES) $(TOOLS))
TEST_BINS := $(addprefix $(BUILD)/test/,$(TESTS) $(TEST_HELPERS))

.PHONY: all deps up down status migrate test test-run compose-test asan fuzz fuzz-long fmt lint demo demo-stop clean new-service bench chaos soak
.DEFAULT_GOAL := all

all: $(BINS)

$(BUILD)/obj/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c -o $@ $<

# Made afresh each time: ar would keep the object of a source that is gone
# (common/mq.c after its split) and the link would see it twice.
$(LIBCOMMON): $(call OBJ,$(COMMON_SRC))
	@mkdir -p $(dir $@)
	@rm -f $@
	$(AR) rcs $@ $^

$(LIBCONTRACTS): $(call OBJ,$(CONTRACTS_SRC))
	@mkdir -p $(dir $@)
	@rm -f $@
	$(AR) rcs $@ $^

# A service or tool is every .c file in its folder.
.SECONDEXPANSION:
$(BUILD)/bin/%: $$(call OBJ,$$(wildcard services/$$*/*.c) $$(wildcard tools/$$*/*.c)) $(LIBS)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $(filter %.o,$^) $(LIBS) $(LDLIBS)

TESTUTIL_OBJ := $(call OBJ,$(wildcard tests/testutil*.c))
$(BUILD)/obj/tests/%.o: CFLAGS += $(CHECK_CFLAGS)

$(BUILD)/test/check_%: $(BUILD)/obj/tests/check_%.o $(TESTUTIL_OBJ) $(LIBS)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $(filter %.o,$^) $(LIBS) $(LDLIBS) $(CHECK_LIBS)

# A unit suite of a service's own files links those files (and sees their
# headers); it starts no server.
UNITS_SPOOL := services/pos/spool.c services/pos/catalog.c
$(BUILD)/test/check_units_spool: $(call OBJ,$(UNITS_SPOOL))
$(BUILD)/obj/tests/check_units_spool.o: CFLAGS += -Iservices/pos
# board.c includes the page with .incbin, which the compiler's dependency list misses.
$(call OBJ,services/order-api/board.c): services/order-api/board.html services/order-api/board.css \
	services/order-api/board.js

$(BUILD)/test/check_units_api: $(call OBJ,$(filter-out services/order-api/main.c,$(wildcard services/order-api/*.c)))
$(BUILD)/obj/tests/check_units_api.o: CFLAGS += -Iservices/order-api
$(BUILD)/test/check_units_rpc: $(call OBJ,$(filter-out services/order-api/main.c,$(wildcard services/order-api/*.c)))
$(BUILD)/obj/tests/check_units_rpc.o: CFLAGS += -Iservices/order-api
$(BUILD)/test/check_units_billing: $(call OBJ,services/billing/invoices.c services/billing/voids.c)
$(BUILD)/obj/tests/check_units_billing.o: CFLAGS += -Iservices/billing

$(BUILD)/test/%: $(BUILD)/obj/tests/helpers/%.o $(LIBS)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $< $(LIBS) $(LDLIBS)

tests: $(BINS) $(TEST_BINS)

deps:
	@bash scripts/deps.sh

up:
	@bash scripts/up.sh

down:
	@bash scripts/down.sh

status:
	@bash scripts/status.sh

migrate: all
	@bash scripts/migrate.sh $(BUILD)/bin/migrate

# Everything CI runs. Suites run one after another; the run fails if any did.
# The unit suites (tests/check_units_*.c, no server) run first, before make
# up, so that a logic error fails in seconds.
test: deps
	@$(MAKE) --no-print-directory tests
	@bash scripts/run-tests.sh --units $(BUILD)
	@$(MAKE) --no-print-directory up
	@$(MAKE) --no-print-directory migrate
	@bash scripts/run-tests.sh --no-units $(BUILD)
	@[ -n "$(SUITES)" ] || [ "$(COMPOSE_TEST)" = 0 ] || $(MAKE) --no-print-directory compose-test

# docker compose up, the checks of tests/compose_test.sh, down -v; a Docker
# engine and debian:bookworm-slim are made here when missing. make test runs
# it after the suites, unless SUITES= limits the run or COMPOSE_TEST=0.
COMPOSE_TEST ?= 1
compose-test: deps
	@bash tests/compose_test.sh

# The compose images are the same with sanitizers or without: not run twice.
asan:
	@$(MAKE) --no-print-directory BUILD=build/asan SAN=1 CC=gcc COMPOSE_TEST=0 test

FUZZ_TARGETS := $(basename $(notdir $(wildcard tests/fuzz/fuzz_*.c)))
FUZZ_RUNS ?= 200000
fuzz: $(addprefix build/fuzz/,$(FUZZ_TARGETS))
	@bash scripts/fuzz.sh build/fuzz $(FUZZ_RUNS) $(FUZZ_TARGETS)

# The long mode: a million executions of each target.
fuzz-long:
	@$(MAKE) --no-print-directory fuzz FUZZ_RUNS=1000000

# fuzz_http decodes order-api's request bodies: it links order-api's files
# too (all but its main.c).
API_SRC := $(filter-out services/order-api/main.c,$(wildcard services/order-api/*.c))
build/fuzz/%: tests/fuzz/%.c $(CONTRACTS_SRC) $(COMMON_SRC) $(API_SRC)
	@mkdir -p $(dir $@)
	clang -std=c11 -D_GNU_SOURCE -g -O1 -fsanitize=fuzzer,address,undefined -Icommon -Icontracts \
		-Iservices/order-api \
		$(PKG_CFLAGS) -o $@ $^ $(LDLIBS)

SOURCES := $(shell find common contracts services tools tests -name '*.[ch]' 2>/dev/null)
fmt:
	clang-format -i $(SOURCES)

lint:
	@clang-format --dry-run --Werror $(SOURCES)
	cppcheck --quiet --error-exitcode=1 --enable=warning,performance,portability \
		--inline-suppr --suppress=missingIncludeSystem --std=c11 -D_GNU_SOURCE \
		-Icommon -Icontracts $(SOURCES)

demo: deps
	@$(MAKE) --no-print-directory all
	@$(MAKE) --no-print-directory up
	@$(MAKE) --no-print-directory migrate
	@bash scripts/demo.sh $(BUILD)

demo-stop:
	@bash scripts/services.sh stop

# Faults under load, the ledger after each (docs/RELIABILITY.md), a few minutes.
chaos: all up migrate
	@bash scripts/chaos.sh

# Steady load for SOAK_SECONDS (600): RSS and fds per service, then the ledger.
soak: all up migrate
	@bash scripts/soak.sh

# The suite against the machine's limits (docs/PERFORMANCE.md), then on a
# RabbitMQ cluster (docs/SCALING.md); 25-30 minutes on this loaded machine.
# BENCH_ONLY=cluster runs the cluster stage alone, on its own servers: make
# up's are not needed.
bench: deps
	@$(MAKE) --no-print-directory all
	@if bash scripts/bench.sh --needs-main-pair; then \
		$(MAKE) --no-print-directory up && $(MAKE) --no-print-directory migrate; fi
	@bash scripts/bench.sh

clean:
	rm -rf build

-include $(shell find $(BUILD)/obj -name '*.d' 2>/dev/null)

# make new-service NAME=shipping KEYS="billing.invoiced inventory.reserved"
new-service:
	@python3 scripts/new-service.py "$(NAME)" $(KEYS)
