#!/usr/bin/env bash
# Self-test of the Linux-host harness WITHOUT strata: runs nvme-tcp-test.sh against the Linux
# kernel's own NVMe/TCP target (nvmet), which runs in a second QEMU guest whose ports are
# forwarded to 127.0.0.1 on this machine. A stand-in for strata-rpc turns the hot-add request
# into nvmet configfs writes in that guest. If this passes and the strata run fails, the
# failure is strata's, not the harness's.
#
#   selftest-linux-target.sh [--port P] [--discovery-port P]     (defaults: free ports)
#
# Needs python3 (free ports, the stand-in RPC socket) besides what install.sh installs.
set -euo pipefail

script_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
nqn="nqn.2026-11.io.strata:default"

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
port=""
disc_port=""
while [ $# -gt 0 ]; do
  case "$1" in
    --port) port="${2:?}"; shift 2 ;;
    --discovery-port) disc_port="${2:?}"; shift 2 ;;
    *) echo "usage: $0 [--port P] [--discovery-port P]" >&2; exit 2 ;;
  esac
done
[ -n "$port" ] || port="$(free_port)"
[ -n "$disc_port" ] || disc_port="$(free_port)"

work="$(mktemp -d)"
tgt_pid=""
# shellcheck disable=SC2317  # invoked by the trap
cleanup() {
  touch "$work/share/stop" 2>/dev/null || true
  if [ -n "$tgt_pid" ]; then
    # Give the target guest a moment to power off by itself, then stop it.
    for _ in $(seq 1 50); do kill -0 "$tgt_pid" 2>/dev/null || break; sleep 0.2; done
    kill "$tgt_pid" 2>/dev/null || true
    wait "$tgt_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP
mkdir -p "$work/share"

# --- the target guest: nvmet over configfs ---------------------------------------------------
cat >"$work/share/target.sh" <<EOF
set -euo pipefail
NQN=$(printf %q "$nqn")
EOF
cat >>"$work/share/target.sh" <<'EOF'
modprobe nvmet-tcp
# Digests need crc32c and nothing loads it on demand here (without it nvmet 6.1 oopses on a
# connect with -g -G).
modprobe crc32c_generic
mount -t configfs none /sys/kernel/config
cd /sys/kernel/config/nvmet
truncate -s 256M /tmp/ns1.img
mkdir "subsystems/$NQN"
echo 1 >"subsystems/$NQN/attr_allow_any_host"
add_ns() {
  mkdir "subsystems/$NQN/namespaces/$1"
  echo -n "$2" >"subsystems/$NQN/namespaces/$1/device_path"
  # tmpfs has no O_DIRECT, which nvmet's file back end uses by default.
  echo 1 >"subsystems/$NQN/namespaces/$1/buffered_io"
  echo 1 >"subsystems/$NQN/namespaces/$1/enable"
}
add_ns 1 /tmp/ns1.img
# Two ports, like strata: I/O on 4420, discovery on 8009 (nvmet serves both on each).
for p in 4420 8009; do
  mkdir "ports/$p"
  echo tcp >"ports/$p/addr_trtype"
  echo ipv4 >"ports/$p/addr_adrfam"
  echo 0.0.0.0 >"ports/$p/addr_traddr"
  echo "$p" >"ports/$p/addr_trsvcid"
  ln -s "/sys/kernel/config/nvmet/subsystems/$NQN" "ports/$p/subsystems/$NQN"
done
touch "$SHARE/target-ready"
echo "nvmet ready"
while [ ! -e "$SHARE/stop" ]; do
  if [ -e "$SHARE/hotadd-cmd" ] && [ ! -e "$SHARE/hotadd-ok" ]; then
    truncate -s 64M /tmp/ns2.img
    add_ns 2 /tmp/ns2.img
    touch "$SHARE/hotadd-ok"
    echo "nvmet: namespace 2 added"
  fi
  sleep 0.2
done
EOF
# shellcheck disable=SC2016  # $SHARE is the guest's
LINUX_HOST_NETDEV_OPTS=",hostfwd=tcp:127.0.0.1:$port-:4420,hostfwd=tcp:127.0.0.1:$disc_port-:8009" \
  "$script_dir/run-guest.sh" --timeout 400 --share "$work/share" -- 'bash "$SHARE/target.sh"' \
  >"$work/target.log" 2>&1 &
tgt_pid=$!
for _ in $(seq 1 300); do
  [ -e "$work/share/target-ready" ] && break
  kill -0 "$tgt_pid" 2>/dev/null || { cat "$work/target.log"; echo "selftest: target guest died" >&2; exit 1; }
  sleep 0.2
done
[ -e "$work/share/target-ready" ] || { cat "$work/target.log"; echo "selftest: target guest not ready" >&2; exit 1; }

# --- a stand-in for strata-rpc and its socket -------------------------------------------------
python3 -c 'import socket,sys; socket.socket(socket.AF_UNIX).bind(sys.argv[1])' "$work/fake.sock"
cat >"$work/fake-rpc" <<EOF
#!/usr/bin/env bash
set -euo pipefail
share=$(printf %q "$work/share")
EOF
cat >>"$work/fake-rpc" <<'EOF'
[ "$1" = -s ] && shift 2
case "$1" in
  bdev_malloc_create) echo '"HotAdd0"' ;;
  nvmf_subsystem_add_ns)
    touch "$share/hotadd-cmd"
    for _ in $(seq 1 100); do [ -e "$share/hotadd-ok" ] && { echo 2; exit 0; }; sleep 0.1; done
    echo "nvmet did not add the namespace" >&2; exit 1 ;;
  call) exit 0 ;;  # the test's best-effort clean-up
  *) echo "fake-rpc: unexpected $*" >&2; exit 1 ;;
esac
EOF
chmod +x "$work/fake-rpc"

rc=0
"$script_dir/nvme-tcp-test.sh" --port "$port" --discovery-port "$disc_port" --nqn "$nqn" \
  --rpc-sock "$work/fake.sock" --rpc-bin "$work/fake-rpc" || rc=$?
if [ "$rc" != 0 ]; then
  echo "--- target guest output ---"
  cat "$work/target.log"
fi
exit "$rc"
