#!/usr/bin/env bash
# The whole test suite: set-up, formatting, lints, every crate's unit and integration tests,
# and the end-to-end tests against the real strata-tgt and strata-rpc binaries.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
# The end-to-end tests start the binaries, so build them first.
cargo build --workspace --bins
cargo test --workspace
