# factory-init — see README.md.
#   make            development build (dynamic): build/factory-init
#   make static     the shipped binary, fully static: build/factory-init.static
#   make check      unit tests (ASan+UBSan) and the QEMU scenario tests
#   make demo       builds everything and boots the VM twice, headless
#   make bench      boot-time and size benchmark

VERSION := 0.1.0
CC ?= cc
BUILD := build
CACHE ?= $(or $(FACTORY_INIT_CACHE),$(HOME)/.cache/factory-init)
export FACTORY_INIT_CACHE := $(CACHE)

WARN := -Wall -Wextra -Werror -Wshadow -Wformat=2 -Wstrict-prototypes -Wmissing-prototypes \
	-Wno-missing-field-initializers -Wno-format-truncation
CFLAGS ?= -O2 -g
CFLAGS += -std=gnu17 $(WARN) -DFACTORY_INIT_VERSION='"$(VERSION)"' -D_FILE_OFFSET_BITS=64
LIBS := -lpthread -lblkid -lmount -lcryptsetup -lkmod -ljson-c -ltss2-esys -ltss2-mu -ltss2-rc \
	-ltss2-tcti-device -lnettle -largon2 -lmbedcrypto
# The development build also speaks to software TPMs (swtpm, mssim) for enroll-tpm2 on the host;
# the static build carries only the device TCTI (the TCTI archives all define Tss2_Tcti_Info).
DEV_TCTI := -DHAVE_TCTI_SWTPM -DHAVE_TCTI_MSSIM
DEV_TCTI_LIBS := -ltss2-tcti-swtpm -ltss2-tcti-mssim

SRC := util.c agekey.c fileio.c log.c beneath.c persist.c cmdline.c config.c network.c metrics.c plan.c status.c statusview.c candidates.c devices.c modules.c unlock.c mounts.c provision.c blank.c \
	switchroot.c tpm2.c pinkdf.c askpw.c base64.c credentials.c credentials_read.c passphrase.c token.c tpm2_policy.c enroll.c seed.c stage1.c main.c
# The pure files: parsers, the planner, the decisions and the records. No system calls (secrets'
# mlock aside): what the fuzzers link, and every unit test.
PURE := util.c agekey.c blank.c cmdline.c config.c network.c metrics.c plan.c status.c statusview.c candidates.c base64.c credentials.c token.c \
	tpm2_policy.c
# The system code the unit tests also run, on the host, in temporary directories and ptys.
HOST_TESTED := fileio.c log.c beneath.c persist.c devices.c credentials_read.c passphrase.c seed.c \
	pinkdf.c askpw.c
TESTS := test_log test_persist test_cmdline test_config test_plan test_status test_devices test_credentials test_passphrase test_token test_tpm2_policy test_seed test_pinkdf test_askpw test_statusview test_network test_metrics test_agekey test_blank

SANITIZE := -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all

.PHONY: all static deps unit cli check nix-store-check qemu-check demo bench format format-check clean fuzz \
	examples-check packages FORCE

all: $(BUILD)/factory-init

# The Debian packages the build and the tests need (installed when run as root).
PACKAGES_STAMP := $(BUILD)/.packages
packages $(PACKAGES_STAMP): src/deps/packages.sh
	@mkdir -p $(BUILD)
	bash src/deps/packages.sh all
	@touch $(PACKAGES_STAMP)

$(BUILD)/factory-init: $(addprefix src/,$(SRC)) src/*.h Makefile | $(PACKAGES_STAMP)
	@mkdir -p $(BUILD)
	$(CC) $(CFLAGS) $(DEV_TCTI) -o $@ $(addprefix src/,$(SRC)) $(LIBS) $(DEV_TCTI_LIBS)

# ---- the static binary -------------------------------------------------------------------
# src/deps/build.sh builds the libraries Debian ships no .a for into $(CACHE) (once) and prints
# the prefix; the prefix holds static-ldflags, the link flags in an order that resolves.
DEPS_PREFIX_FILE := $(BUILD)/deps-prefix

# It always runs (a no-op taking a fraction of a second once the cache holds the prefix); the
# prefix file only changes, and so only triggers a relink, when the prefix does.
deps $(DEPS_PREFIX_FILE): FORCE | $(PACKAGES_STAMP)
	@mkdir -p $(BUILD)
	@bash src/deps/build.sh > $(DEPS_PREFIX_FILE).out
	@P=$$(tail -n 1 $(DEPS_PREFIX_FILE).out); test -e "$$P/.complete" || \
		{ echo "src/deps/build.sh gave no complete prefix"; exit 1; }; \
	echo "$$P" > $(DEPS_PREFIX_FILE).tmp
	@cmp -s $(DEPS_PREFIX_FILE).tmp $(DEPS_PREFIX_FILE) && rm $(DEPS_PREFIX_FILE).tmp || \
		mv $(DEPS_PREFIX_FILE).tmp $(DEPS_PREFIX_FILE)

STATIC_CFLAGS := -Os -std=gnu17 $(WARN) -DFACTORY_INIT_VERSION='"$(VERSION)"' \
	-D_FILE_OFFSET_BITS=64 -ffunction-sections -fdata-sections

static: $(BUILD)/factory-init.static

STATIC_OBJ := $(addprefix $(BUILD)/static-obj/,$(SRC:.c=.o))

$(BUILD)/static-obj/%.o: src/%.c src/*.h Makefile $(DEPS_PREFIX_FILE)
	@mkdir -p $(BUILD)/static-obj
	$(CC) $(STATIC_CFLAGS) -I$$(cat $(DEPS_PREFIX_FILE))/include -c -o $@ $<

# symbol-clash.sh first: a global of ours that an archive also defines would silently replace
# the archive's inside the library (see the script).
$(BUILD)/factory-init.static: $(STATIC_OBJ) src/deps/symbol-clash.sh
	P=$$(cat $(DEPS_PREFIX_FILE)); \
	bash src/deps/symbol-clash.sh $$P/static-ldflags $(STATIC_OBJ) && \
	$(CC) -static -Wl,--gc-sections -o $@ $(STATIC_OBJ) $$(cat $$P/static-ldflags)
	strip $@
	@file $@ | grep -q 'statically linked' || { echo "$@ is not statically linked"; exit 1; }
	@echo "$@: $$(stat -c %s $@) bytes, stripped, statically linked"

# ---- unit tests ---------------------------------------------------------------------------
$(BUILD)/tests/%: src/tests/%.c $(addprefix src/,$(PURE) $(HOST_TESTED)) src/*.h Makefile | $(PACKAGES_STAMP)
	@mkdir -p $(BUILD)/tests
	$(CC) $(CFLAGS) $(SANITIZE) -Isrc -o $@ $< $(addprefix src/,$(PURE) $(HOST_TESTED)) -lcmocka $(LIBS)

unit: $(addprefix $(BUILD)/tests/,$(TESTS))
	@fail=0; for t in $^; do echo "== $$t"; $$t || fail=1; done; exit $$fail

# The binary's command line: --help, --plan, exit codes.
cli: $(BUILD)/factory-init
	bash src/tests/cli.sh $(BUILD)/factory-init

# ---- fuzzing (clang's libFuzzer): make fuzz FUZZ_RUNS=N ---------------------------------------
FUZZ_RUNS ?= 20000
# A fixed seed keeps the gate reproducible; `make fuzz FUZZ_SEED=0` lets libFuzzer pick one.
FUZZ_SEED ?= 1
FUZZ_FLAGS = -runs=$(FUZZ_RUNS) -seed=$(FUZZ_SEED) -artifact_prefix=$(BUILD)/fuzz/
$(BUILD)/fuzz/%: src/tests/%.c $(addprefix src/,$(PURE)) src/*.h Makefile | $(PACKAGES_STAMP)
	@mkdir -p $(BUILD)/fuzz
	clang -g -O1 -std=gnu17 -DFACTORY_INIT_VERSION='"$(VERSION)"' -Isrc \
		-fsanitize=fuzzer,address,undefined -o $@ $< $(addprefix src/,$(PURE)) $(LIBS)

# libFuzzer adds what it finds to its first corpus folder: a copy in build/, seeded from the repo
# (the plan: src/tests/corpus; tokens: the real tokens in src/tests/tokens; SMBIOS:
# src/tests/smbios, which also keeps inputs that once failed; age keys: src/tests/agekeys).
fuzz: $(BUILD)/fuzz/fuzz_plan $(BUILD)/fuzz/fuzz_token $(BUILD)/fuzz/fuzz_smbios $(BUILD)/fuzz/fuzz_agekey
	@mkdir -p $(BUILD)/fuzz/corpus $(BUILD)/fuzz/tokens $(BUILD)/fuzz/smbios $(BUILD)/fuzz/agekeys
	@cp src/tests/corpus/* $(BUILD)/fuzz/corpus/ && cp src/tests/tokens/* $(BUILD)/fuzz/tokens/ && \
		cp src/tests/smbios/* $(BUILD)/fuzz/smbios/ && cp src/tests/agekeys/* $(BUILD)/fuzz/agekeys/
	$(BUILD)/fuzz/fuzz_plan $(FUZZ_FLAGS) -max_len=4096 \
		$(BUILD)/fuzz/corpus
	$(BUILD)/fuzz/fuzz_token $(FUZZ_FLAGS) -max_len=4096 \
		$(BUILD)/fuzz/tokens
	$(BUILD)/fuzz/fuzz_smbios $(FUZZ_FLAGS) -max_len=2048 \
		$(BUILD)/fuzz/smbios
	$(BUILD)/fuzz/fuzz_agekey $(FUZZ_FLAGS) -max_len=256 \
		$(BUILD)/fuzz/agekeys

# ---- QEMU ---------------------------------------------------------------------------------
# The full run boots bookworm's 6.1 cloud kernel; then QEMU_CORE runs on each kernel of
# QEMU_CORE_KERNELS (trixie 6.12 LTS, forky 7.2; qemu-tests/stack.sh kernel SUITE): LUKS2 key on
# the command line (luks-cmdline-key) and in a key file after a refused TPM2 unseal
# (tpm2-pcr-mismatch), TPM2 (tpm2-ours), passphrase, the fallbacks (no-data-disk, wrong-key),
# credentials (SMBIOS, fw_cfg), the bind store, the factory refresh in both store modes, and
# provisioning a blank disk (provision-tpm2: LUKS2 format, dm-crypt, mkfs.btrfs on that kernel).
# Initrds carry the kernel's modules: one build directory per kernel. Every run goes ahead even
# when an earlier one failed; the target fails if any did.
QEMU_CORE := luks-cmdline-key tpm2-ours tpm2-pcr-mismatch passphrase no-data-disk wrong-key \
	credential-smbios credential-fw_cfg bind-store refresh-bind refresh-overlay provision-tpm2
QEMU_CORE_KERNELS := trixie forky
qemu-check: $(BUILD)/factory-init.static
	@rc=0; \
	echo "python3 qemu-tests/run.py --kernel bookworm -b $(BUILD)/qemu"; \
	python3 qemu-tests/run.py --kernel bookworm -b $(BUILD)/qemu || rc=1; \
	for k in $(QEMU_CORE_KERNELS); do \
		echo "python3 qemu-tests/run.py --kernel $$k -b $(BUILD)/qemu-$$k \$$(QEMU_CORE)"; \
		python3 qemu-tests/run.py --kernel $$k -b $(BUILD)/qemu-$$k $(QEMU_CORE) || rc=1; \
	done; \
	exit $$rc

# The libvirt example validates against libvirt's schemas (virt-xml-validate: libvirt-clients).
examples-check: | $(PACKAGES_STAMP)
	sh nixos/examples/validate.sh

# The NixOS modules, package and images, evaluated (not built) by forky's Nix 2.34 against
# $(NIXPKGS), or else the NixOS 24.05 tarball of ../shared/nixos (SKIP with neither):
# nixos/tests/eval.sh (NIXOS_CHECK_NIX=host: the host's nix-instantiate).
nixos-check:
	bash nixos/tests/eval.sh

# Nix itself on the /nix layouts of both store modes, with a store made by real Nix
# (qemu-tests/mknixstore.sh, forky's Nix 2.34): bind (copy-store's copy compared name by name and
# by inode sharing) and overlay (the module's local-overlay-store settings); in each, verify
# --check-contents, the database, builds, gc and optimise: qemu-tests/nix-store-check.sh.
nix-store-check: $(BUILD)/factory-init
	sh qemu-tests/nix-store-check.sh $(BUILD)/factory-init

check: unit cli fuzz nix-store-check qemu-check examples-check nixos-check

demo: $(BUILD)/factory-init.static
	python3 qemu-tests/demo.py

bench: $(BUILD)/factory-init.static $(BUILD)/factory-init
	python3 qemu-tests/bench.py --kernel bookworm --kernel trixie --kernel forky
	python3 qemu-tests/bench-store.py

format:
	clang-format -i src/*.c src/*.h src/tests/*.c

format-check:
	clang-format --dry-run --Werror src/*.c src/*.h src/tests/*.c

clean:
	rm -rf $(BUILD)
