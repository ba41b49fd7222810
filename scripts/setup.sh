#!/usr/bin/env bash
# Installs what strata needs on a fresh Debian 12 machine (run as root). Idempotent.
#   scripts/setup.sh                 build prerequisites
#   scripts/setup.sh --hugepages N   also reserve N 2 MiB hugepages (optional: strata runs
#                                    on ordinary pages without them)
set -euo pipefail
hugepages=""
while [ $# -gt 0 ]; do
  case "$1" in
    --hugepages) hugepages="${2:?--hugepages needs a count}"; shift 2 ;;
    *) echo "usage: $0 [--hugepages N]" >&2; exit 2 ;;
  esac
done

need=()
command -v cc >/dev/null || need+=(build-essential)
command -v pkg-config >/dev/null || need+=(pkg-config)
# bench/perf.sh reads strata-perf's JSON with jq.
command -v jq >/dev/null || need+=(jq)
# The etcd client (etcd-client, gRPC) compiles etcd's protobuf files with protoc; the
# cluster-store tests start a real etcd on a loopback port.
command -v protoc >/dev/null || need+=(protobuf-compiler)
command -v etcd >/dev/null || need+=(etcd-server)
# The metrics test has a real Prometheus scrape strata-tgt --metrics.
command -v prometheus >/dev/null || need+=(prometheus)
# Multi-node tests cut links between loopback addresses with nftables and delay/drop with
# tc netem (iproute2).
command -v nft >/dev/null || need+=(nftables)
command -v tc >/dev/null || need+=(iproute2)
# ISA-L (XOR, P+Q, CRC32C, GF(2^8) kernels), linked by isal/build.rs through pkg-config.
if ! { command -v pkg-config >/dev/null && pkg-config --exists libisal; } &&
   ! dpkg -s libisal-dev >/dev/null 2>&1; then
  need+=(libisal-dev)
fi
# NVMe/TCP TLS (TLS 1.3 external PSKs) uses OpenSSL, linked by openssl-sys.
dpkg -s libssl-dev >/dev/null 2>&1 || need+=(libssl-dev)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
  else
    echo "setup: missing ${need[*]}; run as root or install them" >&2
    exit 1
  fi
fi
if ! command -v cargo >/dev/null; then
  echo "setup: cargo not found: install a Rust toolchain (rustup) first" >&2
  exit 1
fi
if [ -n "$hugepages" ]; then
  echo "$hugepages" > /proc/sys/vm/nr_hugepages
  echo "setup: hugepages reserved: $(cat /proc/sys/vm/nr_hugepages)"
fi
