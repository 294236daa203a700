#!/usr/bin/env bash
# Run every cargo-fuzz target of fuzz/ for SECONDS each (default 30), one after
# the other, single process each. Exits non-zero if any target finds a crash
# (a panic: the targets check invariants with assertions), printing the
# crashing input (path and hex dump) and how to replay it.
#
#   scripts/fuzz.sh [SECONDS]
#
# Toolchain: only a stable Rust is needed. cargo-fuzz is installed with
# `cargo install cargo-fuzz --locked` when missing; libfuzzer-sys builds libFuzzer
# with the system C++ compiler (g++). Targets are built with `--sanitizer none`:
# the sanitizer-coverage instrumentation cargo-fuzz uses (`-Cpasses=sancov-module`,
# `-Cllvm-args=-sanitizer-coverage-*`) is stable, AddressSanitizer
# (`-Zsanitizer=address`) is not. ASan adds little here (no `unsafe` in the code
# the targets reach, besides syscalls), but can be had on stable with
#   RUSTC_BOOTSTRAP=1 cargo fuzz run --sanitizer address TARGET
# from fuzz/. Release build with debug assertions (overflow checks on).
#
# Seeds: fuzz/corpus/TARGET and fuzz/regressions/TARGET (committed, read-only
# here: the latter holds inputs that once failed); new inputs go to a
# temporary directory so the committed corpus stays small. Crashers are kept in
# fuzz/artifacts/TARGET/ (not committed): turn each fixed one into a test in
# filter|switch|mgmt/tests/fuzz_regressions.rs.
#
# Environment: FUZZ_TARGET_DIR (default fuzz/target), FUZZ_TARGETS (default:
# every target), FUZZ_MAX_LEN (default 4096).
set -euo pipefail

secs=${1:-30}
case $secs in '' | *[!0-9]*) echo "usage: $0 [SECONDS]" >&2; exit 2 ;; esac
root=$(cd "$(dirname "$0")/.." && pwd)
fuzz="$root/fuzz"
target_dir=${FUZZ_TARGET_DIR:-$fuzz/target}
max_len=${FUZZ_MAX_LEN:-4096}
# cargo-fuzz finds its binaries through --target-dir, not CARGO_TARGET_DIR.
unset CARGO_TARGET_DIR

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz.sh: installing cargo-fuzz" >&2
    cargo install cargo-fuzz --locked
fi
if ! command -v c++ >/dev/null 2>&1; then
    echo "fuzz.sh: a C++ compiler is needed to build libFuzzer (Debian: g++)" >&2
    exit 1
fi

cd "$fuzz"
targets=${FUZZ_TARGETS:-$(cargo fuzz list)}
work=$(mktemp -d "${TMPDIR:-/tmp}/sgswitch-fuzz.XXXXXX")
trap 'rm -rf "$work"' EXIT

build_opts=(--sanitizer none --target-dir "$target_dir")
start=$(date +%s)
echo "fuzz.sh: building $(echo $targets | wc -w) targets (release, debug assertions)"
cargo fuzz build "${build_opts[@]}"
echo "fuzz.sh: built in $(($(date +%s) - start)) s; running each target for ${secs} s"

failed=()
for t in $targets; do
    mkdir -p "$work/$t" "$fuzz/artifacts/$t"
    log="$work/$t.log"
    set +e
    seeds=("$fuzz/corpus/$t")
    if [ -d "$fuzz/regressions/$t" ]; then seeds+=("$fuzz/regressions/$t"); fi
    cargo fuzz run "${build_opts[@]}" "$t" "$work/$t" "${seeds[@]}" -- \
        -max_total_time="$secs" -max_len="$max_len" -timeout=20 -rss_limit_mb=2048 \
        -print_final_stats=1 -artifact_prefix="$fuzz/artifacts/$t/" >"$log" 2>&1
    rc=$?
    set -e
    done_line=$(grep -E '^#[0-9]+[[:space:]]+DONE' "$log" | tail -1 || true)
    execs=$(sed -n 's/^stat::number_of_executed_units:[[:space:]]*//p' "$log" | tail -1)
    rate=$(sed -n 's/^stat::average_exec_per_sec:[[:space:]]*//p' "$log" | tail -1)
    cov=$(grep -oE 'cov: [0-9]+ ft: [0-9]+' "$log" | tail -1 || true)
    if [ "$rc" -eq 0 ]; then
        echo "fuzz.sh: $t: ok, ${execs:-?} execs (${rate:-?}/s), ${cov:-no coverage line} ${done_line:+[$done_line]}"
        continue
    fi
    failed+=("$t")
    echo "fuzz.sh: $t: FAILED (exit $rc) after ${execs:-?} execs" >&2
    grep -E 'panicked at|^thread|assertion|left:|right:|ERROR: libFuzzer|SUMMARY' "$log" | head -20 >&2 || true
    for crash in $(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log"); do
        echo "fuzz.sh: crasher $crash ($(wc -c <"$crash") bytes):" >&2
        od -A d -t x1 "$crash" | head -40 >&2
        echo "fuzz.sh: replay: (cd fuzz && cargo fuzz run --sanitizer none $t $crash)" >&2
    done
    echo "fuzz.sh: last lines of the log:" >&2
    tail -15 "$log" >&2
done

echo "fuzz.sh: total $(($(date +%s) - start)) s"
if [ "${#failed[@]}" -ne 0 ]; then
    echo "fuzz.sh: crashes in: ${failed[*]}" >&2
    exit 1
fi
echo "fuzz.sh: no crash in: $(echo $targets)"
