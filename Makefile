# SPDX-License-Identifier: MIT OR Apache-2.0
# composefs toolchain — top-level entry points.
#   make demo       set everything up, then build a sample image and print digests
#   make test       set everything up, then run the whole test suite (CI runs this)
#   make bench      run the benchmarks (not part of the tests)
#   make qemu-test  kernel-level tests in a QEMU guest
#   make qemu-boot-test  boot Debian from a composefs image in QEMU (both root paths)
#   make bench-boot boot time and disk use of a composefs root against plain ext4 (QEMU)
#   make fuzz       long coverage-guided fuzzing runs of the Rust core (FUZZ_SECONDS per target)
#   make rust-check cargo fmt --check, clippy -D warnings and cargo test of native/
#   make man        regenerate the man pages and shell completions in pkgdata/ from the commands
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV     := $(CURDIR)/.venv
PY       := $(VENV)/bin/python
STAMPS   := $(CURDIR)/.venv/.stamps
SUDO     := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

# System packages needed by the tool, its tests and its benchmarks (the OCI tests: a registry,
# skopeo, umoci, debootstrap, htpasswd, iproute2 and iptables for network namespaces; the remote
# repository tests: nginx; FUSE mounts: fuse3; a user's cfsctl in the FUSE test: python3-click;
# `man cfsctl` from the environment in the man page test: man-db).
APT_PACKAGES := fsverity erofs-utils e2fsprogs attr util-linux python3-venv openssl zstd umoci \
	docker-registry skopeo debootstrap apache2-utils iproute2 iptables nginx-light fuse3 python3-click man-db

# pkgdata/: the wheel's data directory (pyproject.toml's tool.maturin data): data/share/ holds the
# man pages and completions; scripts/ the three binaries of the native/mount crate, staged there by
# stage-helper: the mount(8) helper (no Python at mount time), installed as bin/mount.composefs,
# the cfsctl front (mount/umount natively, every other command handed to the Python CLI,
# installed as bin/cfsctl-py), installed as bin/cfsctl, and composefs-setup-root, the initramfs's
# root mounter, which `cfsctl boot install-initramfs` copies into an OS tree.
NATIVE_SRC := $(shell find native/src native/mount/src native/base/src -name '*.rs') native/Cargo.toml native/mount/Cargo.toml \
	native/base/Cargo.toml \
	native/Cargo.lock pyproject.toml $(shell find pkgdata/data -type f)
HELPER_STAGED := $(CURDIR)/pkgdata/scripts/mount.composefs
FRONT_STAGED := $(CURDIR)/pkgdata/scripts/cfsctl

.PHONY: help setup demo test unit-test rust-check bench bench-apt qemu-test clean stage-helper man
help:
	@sed -n 's/^#   //p' Makefile

APT_LOCK := -o DPkg::Lock::Timeout=600

# $(call apt_install,WHAT,PACKAGES): the recipe of a stamp that installs PACKAGES with apt-get
# unless dpkg already has every one of them (`apt-get update` retried: mirrors fail at times).
define apt_install
	@mkdir -p $(STAMPS)
	@if ! dpkg -s $(2) >/dev/null 2>&1; then \
		echo ">> installing $(1): $(2)"; \
		for i in 1 2 3 4 5; do $(SUDO) apt-get $(APT_LOCK) update -qq && break; sleep 20; done; \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get $(APT_LOCK) install -y -qq --no-install-recommends $(2); \
	fi
	@touch $@
endef

$(STAMPS)/apt: Makefile
	$(call apt_install,system packages,$(APT_PACKAGES))

$(STAMPS)/venv: $(STAMPS)/apt pyproject.toml
	@[ -x $(PY) ] || python3 -m venv $(VENV)
	@$(PY) -m pip install -q --upgrade pip
	@$(PY) -m pip install -q 'maturin>=1.5,<2' 'click>=8.1' pytest hypothesis pytest-virtualenv pyroute2
	@touch $@

# composefs-setup-root runs in the initramfs (scripts/local-bottom/composefs), where every
# program started costs: linked statically against glibc's libc.a (libc6-dev) where the C compiler
# finds one, else dynamically against libc alone. Built for an explicit --target so that its
# RUSTFLAGS do not touch (and rebuild) the other binaries: its own directory under native/target.
HOST_TRIPLE := $(shell rustc -vV 2>/dev/null | sed -n 's/^host: //p')
SETUP_ROOT_STAGED := $(CURDIR)/pkgdata/scripts/composefs-setup-root

stage-helper:
	@cd native && cargo build -q --release -p composefs-mount --bin mount-composefs --bin cfsctl
	@install -D -m 0755 native/target/release/mount-composefs $(HELPER_STAGED)
	@install -D -m 0755 native/target/release/cfsctl $(FRONT_STAGED)
	@cd native && static=$$([ -f "$$(cc -print-file-name=libc.a)" ] && echo "-C target-feature=+crt-static"); \
		RUSTFLAGS="$$static -C strip=symbols" cargo build -q --release -p composefs-mount \
		--bin composefs-setup-root --target $(HOST_TRIPLE)
	@install -D -m 0755 native/target/$(HOST_TRIPLE)/release/composefs-setup-root $(SETUP_ROOT_STAGED)

# Release build of the Rust extension, installed into .venv (Python sources are linked, not copied),
# and the mount helper and the cfsctl front beside the Python CLI (cfsctl-py).
$(STAMPS)/native: $(STAMPS)/venv $(NATIVE_SRC)
	@echo ">> building composefs._native, mount.composefs and composefs-setup-root (release)"
	@$(MAKE) -s stage-helper
	@cd $(CURDIR) && VIRTUAL_ENV=$(VENV) PATH=$(VENV)/bin:$$PATH $(VENV)/bin/maturin develop --release -q
	@install -m 0755 $(HELPER_STAGED) $(VENV)/bin/mount.composefs
	@install -m 0755 $(FRONT_STAGED) $(VENV)/bin/cfsctl
	@install -m 0755 $(SETUP_ROOT_STAGED) $(VENV)/bin/composefs-setup-root
	@touch $@

# The package is installed in editable mode, so nothing byte-compiles its modules when
# PYTHONDONTWRITEBYTECODE is set; compiling here halves the start-up of every cfsctl command.
setup: $(STAMPS)/native
	@$(PY) -m compileall -q python/composefs
	@# What fuse3's udev rule does where no udev runs: /dev/fuse open to users (FUSE mounts).
	@if [ -c /dev/fuse ] && [ "$$(stat -c %a /dev/fuse)" != 666 ]; then $(SUDO) chmod 0666 /dev/fuse; fi

demo: setup
	@PATH=$(VENV)/bin:$$PATH bash tests/demo.sh

unit-test: setup
	@$(PY) -m pytest -q

test: setup qemu-boot-root-bg
	@rm -rf $(CURDIR)/.pytest-tmp && $(PY) -m pytest -q -ra --basetemp=$(CURDIR)/.pytest-tmp

# The Rust workspace (the core, native/mount and native/base): formatting (native/rustfmt.toml), lints, unit and conformance tests.
rust-check:
	@cd native && cargo fmt --all --check && cargo clippy -q --workspace --all-targets -- -D warnings && cargo test -q --workspace
test: rust-check

# Only the benchmarks need these (bench_repo.py makes two Debian root filesystems).
BENCH_APT_PACKAGES := debootstrap

$(STAMPS)/bench-apt: Makefile
	$(call apt_install,benchmark packages,$(BENCH_APT_PACKAGES))

bench-apt: $(STAMPS)/bench-apt

bench: setup $(STAMPS)/bench-apt
	@$(PY) bench/run.py

# The boot benchmark alone (bench/bench_boot.py; QEMU, root, tens of minutes under TCG).
.PHONY: bench-boot
bench-boot: setup $(STAMPS)/qemu-apt
	@$(SUDO) $(PY) bench/run.py --markdown boot

clean:
	rm -rf $(VENV) native/target native/fuzz/target

# Man pages and completion scripts are generated from the commands (composefs/manpages.py) and
# kept in the repository; tests/test_manpages.py fails when they are out of date.
man: setup
	@$(PY) -m composefs.manpages pkgdata/data/share
	@$(MAKE) -s setup

# ---- QEMU guest tests (see qemu/README.md) ------------------------------------------------------
# Boots Debian's 6.12 kernel under QEMU/TCG once and runs tests/guest there (real fs-verity, our
# kernel module). Options go to qemu/run.py, e.g.: make qemu-test QEMU_ARGS="--keep -- tests/guest -x"
QEMU_APT_PACKAGES := qemu-system-x86 busybox-static cpio tiny-initramfs linux-image-6.12-amd64 \
	linux-headers-6.12-amd64 e2fsprogs xz-utils kmod
QEMU_ARGS ?=
$(STAMPS)/qemu-apt: Makefile
	$(call apt_install,QEMU guest packages,$(QEMU_APT_PACKAGES))

qemu-test: setup $(STAMPS)/qemu-apt
	@$(SUDO) $(PY) qemu/run.py $(QEMU_ARGS)

# The guest suite is part of the full test run (one boot, a few minutes under TCG).
test: qemu-test

# Boots a Debian system from a composefs image (issue #15, qemu/boot.py): both root paths (the
# second boot is the reboot that finds /etc as the first left it), three boots that must stop in
# the initramfs. The Debian root is debootstrap'd once per machine (cached in /var/cache/cfs-test);
# QEMU_BOOT_ARGS go to qemu/boot.py.
QEMU_BOOT_ARGS ?=
qemu-boot-test: setup $(STAMPS)/qemu-apt
	@$(SUDO) $(PY) qemu/boot.py $(QEMU_BOOT_ARGS)

# On a clean machine the Debian root comes from the network (debootstrap, mostly waiting on
# downloads and dpkg): `make test` starts it in the background first, and qemu/boot.py, run after
# the other QEMU tests, waits for it (a lock in the cache) or makes it itself if that run failed.
qemu-boot-root-bg: setup
	@mkdir -p qemu/work
	@echo ">> making the boot test's Debian root in the background (log: qemu/work/boot-root.log)"
	@$(SUDO) nohup $(PY) qemu/boot.py --root-only >qemu/work/boot-root.log 2>&1 </dev/null &

.PHONY: qemu-clean qemu-boot-test qemu-boot-root-bg
qemu-clean:
	rm -rf qemu/work

# ---- Fuzzing (native/fuzz, see native/fuzz/README.md) -------------------------------------------
# cargo-fuzz targets (libFuzzer) over the Rust core, one file each in native/fuzz/src/bin/, with
# their corpora in native/fuzz/corpus/TARGET/. The stable toolchain builds them with
# RUSTC_BOOTSTRAP=1 (no nightly here); no sanitizer (safe Rust is bounds-checked), debug
# assertions on (integer overflow panics). New inputs go to a scratch corpus under
# native/fuzz/target/, never into the committed one; `make fuzz-merge` adds the ones that bring new
# coverage. The targets run one after another (CI has two cores).
#   make fuzz                 FUZZ_SECONDS (default 1800) per target
#   make fuzz-short           FUZZ_SECONDS (default 60) per target; part of `make test`
#   make fuzz FUZZ_TARGETS=dump_parse FUZZ_SECONDS=600
FUZZ_DIR       := native/fuzz
FUZZ_TARGETS   ?= $(sort $(basename $(notdir $(wildcard $(FUZZ_DIR)/src/bin/*.rs))))
FUZZ_SECONDS   ?=
FUZZ_WORK      := $(CURDIR)/$(FUZZ_DIR)/target/corpus
CARGO_FUZZ_VERSION := 0.13.2
CARGO_FUZZ     := cd native && RUSTC_BOOTSTRAP=1 cargo fuzz
FUZZ_BUILD     := -s none --debug-assertions

$(STAMPS)/cargo-fuzz: Makefile
	@mkdir -p $(STAMPS)
	@if ! cargo fuzz --version 2>/dev/null | grep -qx 'cargo-fuzz $(CARGO_FUZZ_VERSION)'; then \
		echo ">> installing cargo-fuzz $(CARGO_FUZZ_VERSION)"; \
		cargo install cargo-fuzz --locked --version $(CARGO_FUZZ_VERSION); \
	fi
	@touch $@

.PHONY: fuzz fuzz-short fuzz-build fuzz-merge fuzz-seeds
fuzz-build: $(STAMPS)/cargo-fuzz
	@echo ">> building fuzz targets: $(FUZZ_TARGETS)"
	@set -o pipefail; $(CARGO_FUZZ) build $(FUZZ_BUILD) 2>&1 | { grep -v '^ *Compiling ' || true; }

# $(call fuzz_run,SECONDS): run each target for SECONDS (FUZZ_SECONDS wins when given) from its
# committed corpus; stop at the first crash (its input is kept in native/fuzz/artifacts/TARGET/).
define fuzz_run
	@set -e; secs=$(or $(FUZZ_SECONDS),$(1)); for t in $(FUZZ_TARGETS); do \
		echo ">> fuzzing $$t for $${secs}s"; \
		ls $(FUZZ_DIR)/corpus/$$t/* >/dev/null 2>&1 || { echo "fuzz target $$t has no seeds in $(FUZZ_DIR)/corpus/$$t"; exit 1; }; \
		mkdir -p $(FUZZ_WORK)/$$t; \
		( $(CARGO_FUZZ) run $(FUZZ_BUILD) $$t $(FUZZ_WORK)/$$t fuzz/corpus/$$t -- \
			-max_total_time=$$secs -timeout=120 -print_final_stats=1 ) > $(FUZZ_WORK)/$$t.log 2>&1 \
			|| { tail -n 60 $(FUZZ_WORK)/$$t.log; echo "fuzz target $$t failed (log: $(FUZZ_WORK)/$$t.log)"; exit 1; }; \
		grep -E 'backends on this CPU|^#[0-9]+[[:space:]]+DONE' $(FUZZ_WORK)/$$t.log | sed 's/^/   /'; \
	done
endef

fuzz-short: fuzz-build
	$(call fuzz_run,60)

fuzz: fuzz-build
	$(call fuzz_run,1800)

# Add to the committed corpora what the runs found that reaches new code (libFuzzer -merge=1 on
# edges alone, -use_counters=0: hit counts would keep hundreds of near-copies).
fuzz-merge: fuzz-build
	@for t in $(FUZZ_TARGETS); do \
		mkdir -p $(FUZZ_WORK)/$$t; \
		set -o pipefail; ( $(CARGO_FUZZ) run $(FUZZ_BUILD) $$t fuzz/corpus/$$t $(FUZZ_WORK)/$$t -- -merge=1 -use_counters=0 ) 2>&1 \
			| { grep -E '^MERGE-OUTER: [0-9]+ new files' || true; }; \
	done

# Re-make the seeds from the conformance data (../shared/conformance) and images our writer builds.
fuzz-seeds: setup
	@$(PY) $(FUZZ_DIR)/seeds.py $(or $(CONFORMANCE),$(CURDIR)/../shared/conformance)/dumps $(FUZZ_DIR)/corpus

# The short fuzzing runs are part of the full test run.
test: fuzz-short

# ---- Power cuts in QEMU (qemu/powercut.py) ------------------------------------------------------
# Boots the guest on one ext4 disk (-O verity) again and again, SIGKILLs QEMU at a random moment of
# an import/gc loop or a `cfsctl build --digest-store` loop, and checks what is left after each
# reboot. `make powercut-test CUTS=50` is the long run; 3 cuts are part of `make test`.
CUTS ?= 50
POWERCUT_ARGS ?= --lanes 4
.PHONY: powercut-test powercut-short
powercut-test: setup $(STAMPS)/qemu-apt
	@$(SUDO) $(PY) qemu/powercut.py --cuts $(CUTS) $(POWERCUT_ARGS)

powercut-short: setup $(STAMPS)/qemu-apt
	@$(SUDO) $(PY) qemu/powercut.py --cuts 3 --lanes 3 --max-delay 8 --work qemu/work-powercut-short

test: powercut-short

# The boot test last among the QEMU runs, when its Debian root has had the longest to be made.
test: qemu-boot-test

# ---- Concurrency soak on the host (tests/soak.py) -----------------------------------------------
# 8 concurrent imports + gc + mounts on one repository for SOAK_SECONDS, then fsck and a mount of
# every name left; reports lock waits. A short one is tests/test_soak.py in the host suite.
SOAK_SECONDS ?= 600
.PHONY: soak
soak: setup
	@$(SUDO) $(PY) tests/soak.py --seconds $(SOAK_SECONDS)
