# composefs toolchain — top-level entry points.
#   make demo       set everything up, then build a sample image and print digests
#   make test       set everything up, then run the whole test suite (CI runs this)
#   make bench      run the benchmarks (not part of the tests)
#   make qemu-test  kernel-level tests in a QEMU guest
#   make rust-check cargo fmt --check, clippy -D warnings and cargo test of native/
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV     := $(CURDIR)/.venv
PY       := $(VENV)/bin/python
STAMPS   := $(CURDIR)/.venv/.stamps
SUDO     := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

# System packages needed by the tool, its tests and its benchmarks.
APT_PACKAGES := fsverity erofs-utils e2fsprogs attr util-linux python3-venv openssl zstd umoci

NATIVE_SRC := $(shell find native/src -name '*.rs') native/Cargo.toml native/Cargo.lock pyproject.toml

.PHONY: help setup demo test unit-test rust-check bench bench-apt qemu-test clean
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

# Release build of the Rust extension, installed into .venv (Python sources are linked, not copied).
$(STAMPS)/native: $(STAMPS)/venv $(NATIVE_SRC)
	@echo ">> building composefs._native (release)"
	@cd $(CURDIR) && VIRTUAL_ENV=$(VENV) PATH=$(VENV)/bin:$$PATH $(VENV)/bin/maturin develop --release -q
	@touch $@

# The package is installed in editable mode, so nothing byte-compiles its modules when
# PYTHONDONTWRITEBYTECODE is set; compiling here halves the start-up of every cfsctl command.
setup: $(STAMPS)/native
	@$(PY) -m compileall -q python/composefs

demo: setup
	@PATH=$(VENV)/bin:$$PATH bash tests/demo.sh

unit-test: setup
	@$(PY) -m pytest -q

test: setup
	@rm -rf $(CURDIR)/.pytest-tmp && $(PY) -m pytest -q -ra --basetemp=$(CURDIR)/.pytest-tmp

# The Rust crate on its own: formatting (native/rustfmt.toml), lints, its unit and conformance tests.
rust-check:
	@cd native && cargo fmt --check && cargo clippy -q --all-targets -- -D warnings && cargo test -q
test: rust-check

# Only the benchmarks need these (bench_repo.py makes two Debian root filesystems).
BENCH_APT_PACKAGES := debootstrap

$(STAMPS)/bench-apt: Makefile
	$(call apt_install,benchmark packages,$(BENCH_APT_PACKAGES))

bench-apt: $(STAMPS)/bench-apt

bench: setup $(STAMPS)/bench-apt
	@$(PY) bench/run.py

clean:
	rm -rf $(VENV) native/target

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

.PHONY: qemu-clean
qemu-clean:
	rm -rf qemu/work
