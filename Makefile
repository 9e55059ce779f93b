# egresstrator: build, lint and test entry points.
# Everything the tests need (Docker, Consul, nftables, busybox test image, ...) is installed and
# started by the scripts below, so `make test` works on a fresh Debian 12 machine that only has
# the Rust toolchain (run as root).

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c

# cargo may live in ~/.cargo/bin without being on PATH (appended: an existing PATH wins).
export PATH := $(PATH):$(or $(HOME),/root)/.cargo/bin

CARGO ?= cargo
CONSUL_ACL_EXAMPLE := examples/acl/example
# Extra arguments for `make run`, e.g. make run ARGS='--help'
ARGS ?=

.PHONY: prereqs services image build test run lint clean-test

prereqs:
	scripts/prereqs.sh

services: prereqs
	scripts/services.sh

image: services
	scripts/test-image.sh

# egresstrator-runc is exec'd by dockerd for every runc verb of every container; linked
# statically it starts ~0.4 ms sooner per exec (BENCHMARKS.md). A later `cargo build` relinks
# it dynamically, so this comes after every build of the egresstrator package.
STATIC_SHIM := $(CARGO) rustc --release -p egresstrator --bin egresstrator-runc -- -C target-feature=+crt-static

build:
	$(CARGO) build --release --workspace
	$(STATIC_SHIM)

test: image
	$(CARGO) test --workspace -- --test-threads=1

run: image build
	if [ -f $(CONSUL_ACL_EXAMPLE) ]; then \
		consul kv put egress/acl/example @$(CONSUL_ACL_EXAMPLE); \
	fi
	exec ./target/release/egresstrator $(ARGS)

# Depends on prereqs so that a crate linking system libraries (libnftables) also lints on a
# fresh machine.
lint: prereqs
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

clean-test:
	scripts/clean-test.sh

# Benchmark (issue 6): real dockerd, Consul and agent, side by side with 0.2's helper container.
# Extra arguments with ARGS, e.g. make bench ARGS='--json'. See BENCHMARKS.md.
.PHONY: bench bench-quick
bench: image
	$(CARGO) build --release -p egresstrator -p egresstrator-bench
	$(STATIC_SHIM)
	./target/release/egresstrator-bench $(ARGS)

bench-quick: image
	$(CARGO) build --release -p egresstrator -p egresstrator-bench
	$(STATIC_SHIM)
	./target/release/egresstrator-bench --quick --json $(ARGS)

# Fleet scale on Consul (issue 19): 200 agents' policy watchers in one process against a Consul
# dev agent of its own (HTTP 18500, started and killed by the program; the shared one on 8500
# is not touched), behind a counting proxy. Needs only the consul binary (no dockerd, no root).
# fleet-quick (20 agents, ~25 s) is the CI version. See BENCHMARKS.md.
.PHONY: fleet fleet-quick
fleet: prereqs
	$(CARGO) build --release -p egresstrator-bench --bin egresstrator-fleet
	./target/release/egresstrator-fleet $(ARGS)

fleet-quick: prereqs
	$(CARGO) build --release -p egresstrator-bench --bin egresstrator-fleet
	./target/release/egresstrator-fleet --quick --json $(ARGS)

# The plots of BENCHMARKS.md (issue 19): SVGs drawn with egresstrator-plot from a run's JSON
# committed in docs/bench/ (bench.json: egresstrator-bench --json; fleet.json: the fleet
# benchmark's), written next to it. Needs no dockerd or Consul; a plot whose fields are absent
# from the JSON is skipped with a message.
.PHONY: plots
plots:
	$(CARGO) build --release -p egresstrator-bench --bin egresstrator-plot
	./target/release/egresstrator-plot --bench docs/bench/bench.json --fleet docs/bench/fleet.json --out docs/bench/

# The soak (RELIABILITY.md): a churn of 1,000 containers with an independent invariant
# checker, then the fault schedules (agent SIGKILL, dockerd and Consul restarts, full and
# corrupt state dir). It restarts dockerd and Consul: run it alone. soak-quick (100 containers,
# smaller bursts) is the CI version. Its exit code fails on any violation.
.PHONY: soak soak-quick
soak: image
	$(CARGO) build --release -p egresstrator -p egresstrator-bench
	$(STATIC_SHIM)
	./target/release/egresstrator-bench --soak $(ARGS)

soak-quick: image
	$(CARGO) build --release -p egresstrator -p egresstrator-bench
	$(STATIC_SHIM)
	./target/release/egresstrator-bench --soak --quick $(ARGS)

# --- Install like a daemon ---------------------------------------------------------------------
# make install [PREFIX=/usr/local] [DESTDIR=]: builds release, generates the man pages and shell
# completions from the CLI definition (egresstrator-gen), and installs:
#   $(BINDIR)/egresstrator, $(BINDIR)/egresstrator-runc (0755; the shim linked statically)
#   $(UNITDIR)/egresstrator.service, its ExecStart pointed at $(BINDIR)
#   $(SYSCONFDIR)/default/egresstrator, only when absent: an operator's file is never replaced
#   $(MANDIR)/man1/egresstrator*.1, $(MANDIR)/man8/egresstrator-runc.8
#   bash, zsh and fish completions
# `install` = `install-build` (cargo; needs the toolchain and libnftables-dev) + `install-files`
# (copies only, from BUILT and GEN: what tests/install.rs checks without a release build).
# `make uninstall` with the same PREFIX/DESTDIR removes exactly those files except
# $(SYSCONFDIR)/default/egresstrator, kept like a Debian conffile. Run
# `systemctl disable --now egresstrator` before it.
PREFIX ?= /usr/local
DESTDIR ?=
BINDIR ?= $(PREFIX)/bin
DATADIR ?= $(PREFIX)/share
MANDIR ?= $(DATADIR)/man
# The unit directory under PREFIX: systemd searches /usr/local/lib/systemd/system (for the
# default PREFIX, a local install) as well as /usr/lib/systemd/system (PREFIX=/usr, what a
# Debian package uses; /lib is /usr/lib on Debian 12). /etc/systemd/system is left to the
# administrator's own units and overrides.
UNITDIR ?= $(PREFIX)/lib/systemd/system
# The unit reads /etc/default/egresstrator whatever the PREFIX.
SYSCONFDIR ?= /etc
BASHCOMPDIR ?= $(DATADIR)/bash-completion/completions
# Debian's zsh searches /usr/share/zsh/vendor-completions (packages) and
# /usr/local/share/zsh/site-functions (local installs), not .../local/share/zsh/vendor-completions.
ZSHCOMPDIR ?= $(if $(filter /usr,$(PREFIX)),$(DATADIR)/zsh/vendor-completions,$(DATADIR)/zsh/site-functions)
FISHCOMPDIR ?= $(DATADIR)/fish/vendor_completions.d
# Where install-files takes the binaries and the generated pages and completions from.
BUILT ?= target/release
GEN ?= target/gen

.PHONY: install install-build install-files uninstall

install: install-build
	$(MAKE) install-files

install-build:
	$(CARGO) build --release -p egresstrator
	$(STATIC_SHIM)
	rm -rf -- '$(GEN)'
	./target/release/egresstrator-gen '$(GEN)' >/dev/null

install-files:
	for f in '$(BUILT)/egresstrator' '$(BUILT)/egresstrator-runc'; do \
		[ -x "$$f" ] || { echo "install-files: $$f missing: run make install (or make install-build)" >&2; exit 1; }; \
	done
	for f in egresstrator.1 egresstrator.bash _egresstrator egresstrator.fish; do \
		[ -f '$(GEN)'/"$$f" ] || { echo "install-files: $(GEN)/$$f missing: run make install-build" >&2; exit 1; }; \
	done
	install -d -m 0755 '$(DESTDIR)$(BINDIR)' '$(DESTDIR)$(UNITDIR)' '$(DESTDIR)$(MANDIR)/man1' \
		'$(DESTDIR)$(MANDIR)/man8' '$(DESTDIR)$(BASHCOMPDIR)' '$(DESTDIR)$(ZSHCOMPDIR)' \
		'$(DESTDIR)$(FISHCOMPDIR)' '$(DESTDIR)$(SYSCONFDIR)/default'
	install -m 0755 '$(BUILT)/egresstrator' '$(BUILT)/egresstrator-runc' '$(DESTDIR)$(BINDIR)/'
	sed 's|^ExecStart=/usr/bin/egresstrator |ExecStart=$(BINDIR)/egresstrator |' \
		packaging/egresstrator.service > '$(DESTDIR)$(UNITDIR)/egresstrator.service'
	chmod 0644 '$(DESTDIR)$(UNITDIR)/egresstrator.service'
	if [ -e '$(DESTDIR)$(SYSCONFDIR)/default/egresstrator' ]; then \
		echo "keeping the existing $(DESTDIR)$(SYSCONFDIR)/default/egresstrator"; \
	else \
		install -m 0644 packaging/egresstrator.default '$(DESTDIR)$(SYSCONFDIR)/default/egresstrator'; \
	fi
	install -m 0644 '$(GEN)'/egresstrator.1 '$(GEN)'/egresstrator-*.1 '$(DESTDIR)$(MANDIR)/man1/'
	install -m 0644 packaging/egresstrator-runc.8 '$(DESTDIR)$(MANDIR)/man8/'
	install -m 0644 '$(GEN)/egresstrator.bash' '$(DESTDIR)$(BASHCOMPDIR)/egresstrator'
	install -m 0644 '$(GEN)/_egresstrator' '$(DESTDIR)$(ZSHCOMPDIR)/_egresstrator'
	install -m 0644 '$(GEN)/egresstrator.fish' '$(DESTDIR)$(FISHCOMPDIR)/egresstrator.fish'

# The man1 pages are removed by name (egresstrator.1, egresstrator-*.1: one per subcommand),
# so this works without the target/gen that installed them.
uninstall:
	rm -f '$(DESTDIR)$(BINDIR)/egresstrator' '$(DESTDIR)$(BINDIR)/egresstrator-runc' \
		'$(DESTDIR)$(UNITDIR)/egresstrator.service' \
		'$(DESTDIR)$(MANDIR)/man1/egresstrator.1' '$(DESTDIR)$(MANDIR)/man1/'egresstrator-*.1 \
		'$(DESTDIR)$(MANDIR)/man8/egresstrator-runc.8' \
		'$(DESTDIR)$(BASHCOMPDIR)/egresstrator' '$(DESTDIR)$(ZSHCOMPDIR)/_egresstrator' \
		'$(DESTDIR)$(FISHCOMPDIR)/egresstrator.fish'
	if [ -e '$(DESTDIR)$(SYSCONFDIR)/default/egresstrator' ]; then \
		echo "kept $(DESTDIR)$(SYSCONFDIR)/default/egresstrator (configuration, like a conffile): remove it by hand if unwanted"; \
	fi

# The agent's own image, egresstrator:<version>, imported locally (no registry) from the
# release binary and this host's nft, iptables, conntrack and ip (README, "The agent's image").
.PHONY: agent-image
agent-image:
	$(CARGO) build --release -p egresstrator
	./target/release/egresstrator image build

# Fuzzing ("Prove reliability"): every cargo-fuzz target under fuzz/ for FUZZ_SECONDS each,
# two at a time; prints the executions per target and fails if any target crashes, hangs or
# runs out of memory. Needs nightly and cargo-fuzz (FUZZING.md). fuzz-quick is the CI version.
FUZZ_SECONDS ?= 60
.PHONY: fuzz fuzz-quick
fuzz:
	FUZZ_SECONDS=$(FUZZ_SECONDS) fuzz/run.sh

fuzz-quick:
	FUZZ_SECONDS=30 fuzz/run.sh

# --- Debian package ----------------------------------------------------------------------------
# make deb: target/debian/egresstrator_<version>-1_<arch>.deb, with cargo-deb
# (cargo install cargo-deb --locked) and the metadata in crates/egresstrator/Cargo.toml.
# install-build makes the binaries (the shim linked statically), the man pages and the
# completions; cargo deb --no-build packages exactly those (a build of its own would relink
# the shim dynamically). Man pages are gzipped here (gzip -9n, Debian policy 12.1).
# make deb-test: installs that package in a Debian 12 chroot (debootstrap, cached under
# /var/cache/egresstrator-deb-test), then removes and purges it (scripts/deb-test.sh).
# make systemd-test: boots that Debian 12 (with docker.io) under systemd in a privileged
# container, installs the package, and checks the unit runs a working agent: READY=1,
# enforcement, Restart=always, the watchdog, runtime install and doctor, its security score,
# purge (scripts/systemd-test.sh).
DEB_GEN := target/deb-gen

.PHONY: deb deb-test deb-check systemd-test
# Before the build: a missing cargo-deb is reported at once.
deb-check:
	command -v cargo-deb >/dev/null || { echo "deb: cargo-deb missing: cargo install cargo-deb --locked" >&2; exit 1; }

deb: deb-check install-build
	rm -rf -- '$(DEB_GEN)'
	install -d '$(DEB_GEN)/man1' '$(DEB_GEN)/man8'
	for f in '$(GEN)'/egresstrator.1 '$(GEN)'/egresstrator-*.1; do \
		gzip -9nc "$$f" > '$(DEB_GEN)/man1/'"$${f##*/}.gz"; \
	done
	gzip -9nc packaging/egresstrator-runc.8 > '$(DEB_GEN)/man8/egresstrator-runc.8.gz'
	ldd target/release/egresstrator-runc 2>&1 | grep -qE 'statically linked|not a dynamic executable' || \
		{ echo "deb: target/release/egresstrator-runc is not statically linked" >&2; exit 1; }
	$(CARGO) deb -p egresstrator --no-build | tail -n 1 > target/debian-path
	ldd target/release/egresstrator-runc 2>&1 | grep -qE 'statically linked|not a dynamic executable' || \
		{ echo "deb: cargo deb relinked egresstrator-runc dynamically" >&2; exit 1; }
	cat target/debian-path

deb-test: deb
	scripts/deb-test.sh "$$(cat target/debian-path)"

systemd-test: deb image
	scripts/systemd-test.sh "$$(cat target/debian-path)"
