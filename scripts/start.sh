#!/usr/bin/env bash
# Builds (release) and starts strata-tgt. With no arguments it serves the embedded default:
# a 256 MiB malloc bdev Malloc0 (4096-byte blocks), JSON-RPC on /var/tmp/strata.sock.
# Any arguments are passed to strata-tgt (see `strata-tgt --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release --bins
exec build/release/strata-tgt "$@"
