#!/usr/bin/env bash
# Runs every cargo-fuzz target for SECONDS each (default 30), starting from the committed seeds, and fails on the
# first target that finds a crash or a broken property (the failing input is left in fuzz/artifacts/<target>/).
# Installs cargo-fuzz when missing. Only the stable toolchain is needed: RUSTC_BOOTSTRAP=1 lets it take -Z flags.
set -euo pipefail
cd "$(dirname "$0")"
seconds="${1:-30}"
export RUSTC_BOOTSTRAP=1
if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked
fi
# The code under test forbids unsafe code, so AddressSanitizer adds nothing but cost: no sanitizer, but debug
# assertions (integer overflow) on.
build_flags=(--sanitizer none --debug-assertions)
cargo fuzz build "${build_flags[@]}"
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
for target in $(cargo fuzz list); do
  # New corpus entries go to a scratch folder, so a run leaves the committed seeds as they are.
  mkdir "$scratch/$target"
  echo "fuzz: $target for ${seconds}s"
  if ! cargo fuzz run "${build_flags[@]}" "$target" "$scratch/$target" "corpus/$target" -- \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -max_len=8192 -print_final_stats=1 \
    >"$scratch/$target.log" 2>&1; then
    tail -n 60 "$scratch/$target.log" >&2
    echo "fuzz: $target failed; reproduce with:" \
      "RUSTC_BOOTSTRAP=1 cargo fuzz run ${build_flags[*]} $target fuzz/artifacts/$target/<file>" >&2
    exit 1
  fi
  grep -E '^#[0-9]+[[:space:]]+DONE|^stat::(number_of_executed_units|average_exec_per_sec|peak_rss_mb)' \
    "$scratch/$target.log" || true
done
