#!/usr/bin/env bash
# End-to-end NVMe/TCP test with a real Linux kernel as the host: boots one QEMU guest
# (run-guest.sh) that discovers, connects to and exercises a RUNNING target on this machine,
# while this script, on the machine itself, answers the guest's request to hot-add a namespace
# through the target's JSON-RPC socket.
#
#   nvme-tcp-test.sh [--port P] [--discovery-port P] [--nqn NQN] [--rpc-sock SOCK]
#                    [--rpc-bin STRATA_RPC] [--timeout S]
#
# Defaults come from the environment: TARGET_PORT (4420), DISCOVERY_PORT (8009),
# NQN (nqn.2026-11.io.strata:default), RPC_SOCK (/var/tmp/strata.sock), STRATA_RPC
# (build/release/strata-rpc, else build/debug/strata-rpc), GUEST_TIMEOUT (240 s),
# HOTADD_BDEV (HotAdd0). The target must listen on 127.0.0.1 (the guest reaches it as
# 10.0.2.2), export NQN with at least one namespace of >= 32 MiB, and serve discovery on
# DISCOVERY_PORT.
#
# Every step prints "STEP <name> OK" or "STEP <name> FAILED: <why>"; the exit status is the
# verdict (0: all steps passed).
set -euo pipefail
# modprobe, busybox and friends live in sbin, which is not on every PATH.
export PATH="$PATH:/usr/sbin:/sbin"

script_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo_dir="$(cd "$script_dir/../.." && pwd)"

port="${TARGET_PORT:-4420}"
disc_port="${DISCOVERY_PORT:-8009}"
nqn="${NQN:-nqn.2026-11.io.strata:default}"
rpc_sock="${RPC_SOCK:-/var/tmp/strata.sock}"
rpc_bin="${STRATA_RPC:-}"
guest_timeout="${GUEST_TIMEOUT:-240}"
hotadd_bdev="${HOTADD_BDEV:-HotAdd0}"
hotadd_mb=64

usage() {
  sed -n '7,8p' "$0" >&2
  exit 2
}
while [ $# -gt 0 ]; do
  case "$1" in
    --port) port="${2:?}"; shift 2 ;;
    --discovery-port) disc_port="${2:?}"; shift 2 ;;
    --nqn) nqn="${2:?}"; shift 2 ;;
    --rpc-sock) rpc_sock="${2:?}"; shift 2 ;;
    --rpc-bin) rpc_bin="${2:?}"; shift 2 ;;
    --timeout) guest_timeout="${2:?}"; shift 2 ;;
    *) usage ;;
  esac
done
if [ -z "$rpc_bin" ]; then
  rpc_bin="$repo_dir/build/release/strata-rpc"
  [ -x "$rpc_bin" ] || rpc_bin="$repo_dir/build/debug/strata-rpc"
fi

die() {
  echo "nvme-tcp-test: FAILED: $*" >&2
  exit 1
}

# --- pre-flight on the host: fail in a second, not after a guest boot ---------------------------
[ -x "$rpc_bin" ] || die "strata-rpc not found at $rpc_bin (build it, or pass --rpc-bin)"
[ -S "$rpc_sock" ] || die "no RPC socket at $rpc_sock (is the target running? pass --rpc-sock)"
[ -s /etc/nvme/hostnqn ] || die "/etc/nvme/hostnqn missing: run scripts/linux-host/install.sh"
for p in "$port" "$disc_port"; do
  # bash's /dev/tcp: a plain connect, closed at once.
  if ! timeout 5 bash -c "exec 3<>/dev/tcp/127.0.0.1/$p" 2>/dev/null; then
    die "nothing accepts TCP connections on 127.0.0.1:$p (connection refused): the target's NVMe/TCP listener (port $port) and discovery service (port $disc_port) must be up"
  fi
done

share="$(mktemp -d)"
guest_pid=""
hotadd_nsid=""
# shellcheck disable=SC2317  # invoked by the trap
cleanup() {
  if [ -n "$guest_pid" ]; then
    # run-guest.sh's own trap stops QEMU.
    kill "$guest_pid" 2>/dev/null || true
    wait "$guest_pid" 2>/dev/null || true
  fi
  # Leave a long-running target as we found it, so the test can run again (best effort).
  if [ -n "$hotadd_nsid" ]; then
    "$rpc_bin" -s "$rpc_sock" call nvmf_subsystem_remove_ns \
      "{\"nqn\": \"$nqn\", \"nsid\": $hotadd_nsid}" >/dev/null 2>&1 || true
  fi
  if [ -e "$share/hotadd-bdev-created" ]; then
    "$rpc_bin" -s "$rpc_sock" call bdev_malloc_delete "{\"name\": \"$hotadd_bdev\"}" \
      >/dev/null 2>&1 || true
  fi
  rm -rf "$share"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

# --- the guest's side ------------------------------------------------------------------------
{
  echo '#!/bin/bash'
  printf 'NQN=%q\nPORT=%q\nDISC_PORT=%q\nHOTADD_MB=%q\n' "$nqn" "$port" "$disc_port" "$hotadd_mb"
  cat <<'GUEST'
set -euo pipefail
ADDR=10.0.2.2   # the host's 127.0.0.1 under QEMU user networking

step=""
failed=0
fail() {
  failed=1
  echo "STEP $step FAILED: $*"
  exit 1
}
begin() {
  step="$1"
  step_start="$EPOCHREALTIME"
  echo
  echo "=== $step"
}
ok() {
  echo "STEP $step OK ($(awk -v a="$step_start" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }') s)"
}
on_exit() {
  local rc=$?
  if [ "$rc" != 0 ]; then
    [ "$failed" = 1 ] || echo "STEP ${step:-setup} FAILED: a command exited with status $rc"
    echo "--- guest kernel log (nvme) ---"
    dmesg | grep -i nvme | tail -n 30 || true
  fi
}
trap on_exit EXIT

# The block device (e.g. nvme0n1) of namespace $1 of $NQN, or nothing. With native NVMe
# multipath the name's number is the subsystem's, not the controller's, so look it up in sysfs
# rather than assuming nvme0nN (hidden per-path devices nvmeXcYnZ are skipped).
ns_dev() {
  local b name
  for b in /sys/block/nvme*; do
    [ -e "$b" ] || continue
    name="${b##*/}"
    case "$name" in nvme*c*n*) continue ;; esac
    [ "$(cat "$b/nsid" 2>/dev/null)" = "$1" ] || continue
    [ "$(cat "$b/device/subsysnqn" 2>/dev/null)" = "$NQN" ] || continue
    [ -b "/dev/$name" ] && echo "$name" && return 0
  done
  return 0
}
# The controller (e.g. nvme0) connected to $NQN over TCP, or nothing.
ctrl_dev() {
  local c
  for c in /sys/class/nvme/nvme*; do
    [ -e "$c" ] || continue
    [ "$(cat "$c/transport" 2>/dev/null)" = tcp ] || continue
    [ "$(cat "$c/subsysnqn" 2>/dev/null)" = "$NQN" ] && echo "${c##*/}" && return 0
  done
  return 0
}
# Waits up to $2 seconds for namespace $1's block device; prints its name.
wait_ns() {
  local i dev
  for ((i = 0; i < $2 * 5; i++)); do
    dev="$(ns_dev "$1")"
    [ -n "$dev" ] && echo "$dev" && return 0
    sleep 0.2
  done
  return 1
}
connect() {
  local out
  out="$(nvme connect -t tcp -a "$ADDR" -s "$PORT" -n "$NQN" "$@" 2>&1)" ||
    fail "nvme connect -t tcp -a $ADDR -s $PORT -n $NQN $*: $out"
  [ -z "$out" ] || echo "$out"
  ctrl="$(ctrl_dev)"
  [ -n "$ctrl" ] || fail "nvme connect succeeded but no TCP controller for $NQN in /sys/class/nvme"
  echo "controller: /dev/$ctrl"
}
disconnect() {
  local out i
  out="$(nvme disconnect -n "$NQN" 2>&1)" || fail "nvme disconnect -n $NQN: $out"
  echo "$out"
  grep -q 'disconnected 1 controller' <<<"$out" || fail "expected 1 controller disconnected: $out"
  for ((i = 0; i < 50; i++)); do
    [ -z "$(ctrl_dev)" ] && return 0
    sleep 0.2
  done
  fail "controller for $NQN still present 10 s after the disconnect"
}
# fio with the options every job here needs (--verify_state_save=0: the root is read-only).
run_fio() {
  fio --direct=1 --ioengine=libaio --bs=4k --iodepth=8 --verify_state_save=0 --eta=never "$@" ||
    fail "fio $* exited with status $?"
}

begin modules
modprobe nvme-tcp || fail "modprobe nvme-tcp"
ok

begin discover
out="$(nvme discover -t tcp -a "$ADDR" -s "$DISC_PORT" 2>&1)" ||
  fail "nvme discover -t tcp -a $ADDR -s $DISC_PORT: $out"
echo "$out"
grep -qF -- "$NQN" <<<"$out" || fail "the discovery log does not list $NQN"
ok

begin connect
connect
ok

begin wait-namespace
ns1="$(wait_ns 1 15)" || fail "no block device for namespace 1 of $NQN within 15 s"
echo "namespace 1: /dev/$ns1"
ok

begin list
out="$(nvme list 2>&1)" || fail "nvme list: $out"
echo "$out"
grep -q "/dev/$ns1" <<<"$out" || fail "nvme list does not show /dev/$ns1"
ok

begin id-ctrl
out="$(nvme id-ctrl "/dev/$ctrl" 2>&1)" || fail "nvme id-ctrl /dev/$ctrl: $out"
head -n 30 <<<"$out"
grep -E "^subnqn" <<<"$out" | grep -qF -- "$NQN" || fail "id-ctrl subnqn is not $NQN"
ok

begin id-ns
out="$(nvme id-ns "/dev/$ns1" 2>&1)" || fail "nvme id-ns /dev/$ns1: $out"
head -n 12 <<<"$out"
grep -Eq '^nsze *: *0x0*[1-9a-f]' <<<"$out" || fail "id-ns reports no size (nsze)"
ok

begin smart-log
out="$(nvme smart-log "/dev/$ctrl" 2>&1)" || fail "nvme smart-log /dev/$ctrl: $out"
echo "$out"
ok

begin fio-write-verify
run_fio --name=w --filename="/dev/$ns1" --rw=randwrite --size=32m --verify=crc32c
ok

begin fio-randread
run_fio --name=r --filename="/dev/$ns1" --rw=randread --size=32m --runtime=5
ok

begin hotadd
# The host side of nvme-tcp-test.sh watches the share for this marker and creates the bdev
# and namespace over JSON-RPC; the target must then tell us with a Namespace Attribute Changed
# event (there is no rescan here).
touch "$SHARE/hotadd-request"
ns2=""
t0=$SECONDS
for ((i = 0; i < 150; i++)); do
  ns2="$(ns_dev 2)"
  [ -n "$ns2" ] && break
  [ -e "$SHARE/hotadd-failed" ] && fail "the host could not add the namespace: $(cat "$SHARE/hotadd-failed")"
  sleep 0.2
done
if [ -z "$ns2" ]; then
  [ -e "$SHARE/hotadd-done" ] || fail "the host never answered the hot-add request"
  # Tell "no event" from "no namespace" for whoever debugs this.
  nvme ns-rescan "/dev/$ctrl" >/dev/null 2>&1 || true
  ns2="$(wait_ns 2 5)" &&
    fail "namespace 2 appeared only after a manual ns-rescan: no Namespace Attribute Changed AEN from the target within 30 s"
  fail "namespace 2 did not appear within 30 s (not even after nvme ns-rescan)"
fi
echo "namespace 2: /dev/$ns2 (appeared $((SECONDS - t0)) s after the request)"
bytes=$(($(cat "/sys/block/$ns2/size") * 512))
[ "$bytes" = $((HOTADD_MB * 1024 * 1024)) ] || fail "/dev/$ns2 has $bytes bytes, expected $HOTADD_MB MiB"
run_fio --name=h --filename="/dev/$ns2" --rw=randwrite --size=4m --verify=crc32c
ok

begin disconnect
disconnect
ok

begin connect-digests
# No module auto-loading in this guest: without crc32c the kernel's digest setup fails with
# "Failed to write to /dev/nvme-fabrics: No such file or directory".
modprobe crc32c_generic || fail "modprobe crc32c_generic"
modprobe crc32c-intel 2>/dev/null || true
connect -g -G
ns1="$(wait_ns 1 15)" || fail "no block device for namespace 1 within 15 s (header+data digests)"
echo "namespace 1: /dev/$ns1"
ok

begin fio-digests
run_fio --name=d --filename="/dev/$ns1" --rw=randwrite --size=8m --verify=crc32c
ok

begin disconnect-digests
disconnect
ok

begin connect-no-sqflow
# SQ flow control disabled at Connect: the target ends each read with SUCCESS in its last
# C2HData instead of a CapsuleResp (and the Connect completion carries SQHD FFFFh).
connect --disable-sqflow
ns1="$(wait_ns 1 15)" || fail "no block device for namespace 1 within 15 s (SQ flow control disabled)"
ok

begin fio-no-sqflow
run_fio --name=s --filename="/dev/$ns1" --rw=randwrite --size=8m --verify=crc32c
ok

begin disconnect-no-sqflow
disconnect
ok

step=""
echo
echo "ALL STEPS OK"
GUEST
} >"$share/nvme-tcp-guest.sh"

# --- the host's side -------------------------------------------------------------------------
rpc() {
  "$rpc_bin" -s "$rpc_sock" "$@"
}

# Creates the bdev and adds it as a namespace; answers the guest with hotadd-done or
# hotadd-failed (written then renamed: the guest never reads half a file).
hotadd() {
  local out
  echo "host: hot-add requested: $rpc_bin -s $rpc_sock bdev_malloc_create -b $hotadd_bdev $hotadd_mb 4096"
  if ! out="$(rpc bdev_malloc_create -b "$hotadd_bdev" "$hotadd_mb" 4096 2>&1)"; then
    echo "bdev_malloc_create failed: $out" >"$share/hotadd-failed.tmp"
    mv "$share/hotadd-failed.tmp" "$share/hotadd-failed"
    echo "host: bdev_malloc_create failed: $out"
    return
  fi
  touch "$share/hotadd-bdev-created"
  echo "host: $rpc_bin -s $rpc_sock nvmf_subsystem_add_ns $nqn $hotadd_bdev"
  if ! out="$(rpc nvmf_subsystem_add_ns "$nqn" "$hotadd_bdev" 2>&1)"; then
    if grep -qi 'unrecognized subcommand' <<<"$out"; then
      # strata-rpc without this subcommand yet: the same request as raw JSON-RPC (SPDK params).
      echo "host: (no nvmf_subsystem_add_ns subcommand in strata-rpc; sending it with 'call')"
      out="$(rpc call nvmf_subsystem_add_ns \
        "{\"nqn\": \"$nqn\", \"namespace\": {\"bdev_name\": \"$hotadd_bdev\"}}" 2>&1)" || {
        echo "nvmf_subsystem_add_ns failed: $out" >"$share/hotadd-failed.tmp"
        mv "$share/hotadd-failed.tmp" "$share/hotadd-failed"
        echo "host: nvmf_subsystem_add_ns failed: $out"
        return
      }
    else
      echo "nvmf_subsystem_add_ns failed: $out" >"$share/hotadd-failed.tmp"
      mv "$share/hotadd-failed.tmp" "$share/hotadd-failed"
      echo "host: nvmf_subsystem_add_ns failed: $out"
      return
    fi
  fi
  # SPDK returns the new namespace ID; remember it to remove the namespace afterwards.
  hotadd_nsid="$(tr -dc '0-9' <<<"$out")"
  echo "host: namespace added (nsid ${hotadd_nsid:-?})"
  touch "$share/hotadd-done"
}

echo "nvme-tcp-test: target 127.0.0.1:$port (discovery $disc_port), $nqn, RPC $rpc_sock"
start="$EPOCHREALTIME"
# QEMU runs in the background so that this shell can serve the hot-add request meanwhile.
# shellcheck disable=SC2016  # $SHARE is the guest's, expanded there
"$script_dir/run-guest.sh" --timeout "$guest_timeout" --share "$share" -- \
  'exec bash "$SHARE/nvme-tcp-guest.sh"' &
guest_pid=$!
hotadd_handled=0
while kill -0 "$guest_pid" 2>/dev/null; do
  if [ "$hotadd_handled" = 0 ] && [ -e "$share/hotadd-request" ]; then
    hotadd_handled=1
    hotadd
  fi
  sleep 0.2
done
rc=0
wait "$guest_pid" || rc=$?
guest_pid=""
took="$(awk -v a="$start" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }')"

if [ "$rc" = 0 ] && grep -q '^ALL STEPS OK$' "$share/guest-output.log"; then
  echo "nvme-tcp-test: PASSED in ${took}s"
  exit 0
fi
failed_step="$(grep -m1 -E '^STEP .* FAILED' "$share/guest-output.log" 2>/dev/null || true)"
echo "nvme-tcp-test: FAILED after ${took}s (status $rc)${failed_step:+: $failed_step}" >&2
[ "$rc" != 0 ] || rc=1
exit "$rc"
