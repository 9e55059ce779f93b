#!/usr/bin/env bash
# Runs every cargo-fuzz target for a bounded time and prints the executions per target
# (`make fuzz`, `make fuzz-quick`; FUZZING.md). Fails when any target crashes, hangs past the
# timeout, runs out of memory or does not run.
#
# Environment:
#   FUZZ_SECONDS   seconds per target (default 60)
#   FUZZ_JOBS      targets run at once (default: 2, or 1 on a one-core machine)
#   FUZZ_TARGETS   space-separated targets (default: all of fuzz/Cargo.toml's)
#   FUZZ_TIMEOUT   seconds one input may take before it counts as a hang (default 10)
#   FUZZ_RSS_MB    memory limit of one fuzzer process (default 2048)
#   FUZZ_WORK      working directory (default fuzz/work): the growing corpus, crash
#                  artifacts and logs; fuzz/corpus/<target> is only read (the seeds)
#   FUZZ_SANITIZER cargo fuzz's sanitizer (default none: the code under test is safe Rust,
#                  and without AddressSanitizer it runs about three times as many inputs;
#                  `address` for the unsafe code in dependencies)
#   FUZZ_NO_BUILD  set to skip `cargo +nightly fuzz build`
#
# Needs the nightly toolchain, cargo-fuzz (`cargo install cargo-fuzz --locked`) and a C++
# compiler (libfuzzer-sys builds libFuzzer).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"
export PATH="$PATH:${HOME:-/root}/.cargo/bin"

seconds="${FUZZ_SECONDS:-60}"
ncpu="$(nproc 2>/dev/null || echo 1)"
jobs="${FUZZ_JOBS:-$(( ncpu >= 2 ? 2 : 1 ))}"
timeout="${FUZZ_TIMEOUT:-10}"
rss="${FUZZ_RSS_MB:-2048}"
sanitizer="${FUZZ_SANITIZER:-none}"
work="${FUZZ_WORK:-$here/work}"
all_targets="$(sed -n 's/^name = "\([a-z_]*\)"$/\1/p' Cargo.toml | grep -v '^egresstrator' || true)"
targets="${FUZZ_TARGETS:-$all_targets}"

if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "fuzz: needs the nightly toolchain and cargo-fuzz:" >&2
    echo "  rustup toolchain install nightly && cargo install cargo-fuzz --locked" >&2
    exit 2
fi

# The longest input a target is given: enough for every seed, short enough to stay fast
# (the ACL grammar and runc.conf are line by line; longer inputs repeat the same code).
max_len_of() {
    case "$1" in
        compile_render | template | oci_bundle) echo 2048 ;;
        *) echo 1024 ;;
    esac
}

if ! command -v c++ >/dev/null 2>&1; then
    echo "fuzz: needs a C++ compiler to build libFuzzer (Debian: apt-get install g++)" >&2
    exit 2
fi

dict_of() {
    case "$1" in
        acl_parse | compile_render | consul_decode) echo dict/acl.dict ;;
        template) echo dict/template.dict ;;
        hook_proto | oci_bundle) echo dict/json.dict ;;
        runc_conf) echo dict/runc.dict ;;
        *) echo "" ;;
    esac
}

if [ -z "${FUZZ_NO_BUILD:-}" ]; then
    echo "fuzz: building every target (cargo +nightly fuzz build -s $sanitizer)"
    cargo +nightly fuzz build -s "$sanitizer"
fi
triple="$(rustc +nightly -vV | sed -n 's/^host: //p')"
bindir="$here/target/$triple/release"

mkdir -p "$work/logs"
# runc_conf and oci_bundle write each input to files: on tmpfs when there is one.
scratch_base=/dev/shm
[ -d "$scratch_base" ] || scratch_base="${TMPDIR:-/tmp}"
export EGRESSTRATOR_FUZZ_SCRATCH="$scratch_base/egresstrator-fuzz.$$"
mkdir -p "$EGRESSTRATOR_FUZZ_SCRATCH"
trap 'rm -rf "$EGRESSTRATOR_FUZZ_SCRATCH"' EXIT
# Runs one target; its outcome lands in $work/logs/<target>.rc and .log.
run_one() {
    local t="$1" dict
    dict="$(dict_of "$t")"
    mkdir -p "$work/corpus/$t" "$work/artifacts/$t"
    local -a args=(
        "$work/corpus/$t" "corpus/$t"
        -max_total_time="$seconds" -timeout="$timeout" -rss_limit_mb="$rss"
        -max_len="$(max_len_of "$t")" -print_final_stats=1
        -artifact_prefix="$work/artifacts/$t/"
    )
    [ -n "$dict" ] && args+=(-dict="$dict")
    echo "fuzz: $t for ${seconds}s: $bindir/$t ${args[*]}"
    local rc=0
    "$bindir/$t" "${args[@]}" >"$work/logs/$t.log" 2>&1 || rc=$?
    echo "$rc" >"$work/logs/$t.rc"
}

start=$(date +%s)
running=0
for t in $targets; do
    if [ ! -x "$bindir/$t" ]; then
        echo "fuzz: no binary for target $t in $bindir" >&2
        echo 127 >"$work/logs/$t.rc"
        continue
    fi
    rm -f "$work/logs/$t.rc"
    run_one "$t" &
    running=$((running + 1))
    if [ "$running" -ge "$jobs" ]; then
        wait -n || true
        running=$((running - 1))
    fi
done
wait || true
elapsed=$(( $(date +%s) - start ))

stat() { sed -n "s/^stat::$1: *//p" "$2" | tail -1; }
failed=0
total=0
printf '\n%-16s %8s %14s %10s %8s %8s  %s\n' target seconds executions exec/s corpus rss_mb result
for t in $targets; do
    log="$work/logs/$t.log"
    rc="$(cat "$work/logs/$t.rc" 2>/dev/null || echo 127)"
    execs="$( [ -f "$log" ] && stat number_of_executed_units "$log" || true)"
    speed="$( [ -f "$log" ] && stat average_exec_per_sec "$log" || true)"
    peak="$( [ -f "$log" ] && stat peak_rss_mb "$log" || true)"
    corpus="$(find "$work/corpus/$t" -type f 2>/dev/null | wc -l)"
    result=ok
    if [ "$rc" != 0 ] || grep -qE '^==[0-9]+== ?ERROR|deadly signal|ALARM: working on the last Unit|out-of-memory' "$log" 2>/dev/null; then
        result="FAILED (exit $rc; see $log and $work/artifacts/$t/)"
        failed=1
    fi
    total=$(( total + ${execs:-0} ))
    printf '%-16s %8s %14s %10s %8s %8s  %s\n' "$t" "$seconds" "${execs:-?}" "${speed:-?}" "$corpus" "${peak:-?}" "$result"
done
printf '%-16s %8s %14s\n' total "${elapsed}" "$total"
if [ "$failed" != 0 ]; then
    echo "fuzz: a target failed; reproduce with: fuzz/target/$triple/release/TARGET ARTIFACT" >&2
    exit 1
fi
