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
