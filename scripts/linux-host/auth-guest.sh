#!/bin/bash
# The guest's side of the DH-HMAC-CHAP test (nvmf/tests/auth_linux.rs), on a kernel with
# CONFIG_NVME_HOST_AUTH: the Linux kernel host connects with its secret and the controller's
# (bidirectional authentication) and runs fio write+verify; connects with its secret alone
# (one-way); and is refused with a wrong secret and with none.
#
# Run inside run-guest.sh with: PORT, NQN, HOSTNQN, HOSTID, SECRET, CTRL_SECRET, WRONG.
# Prints "STEP <name> OK" per step and "ALL STEPS OK" at the end.
set -euo pipefail
# shellcheck source=guest-steps.sh
source "$(dirname "${BASH_SOURCE[0]}")/guest-steps.sh"

conn() {
  nvme connect -t tcp -a "$ADDR" -s "$PORT" -n "$NQN" --hostnqn "$HOSTNQN" --hostid "$HOSTID" "$@"
}

begin modules
modprobe nvme-tcp
[ -d /sys/module/nvme_auth ] || modprobe nvme-auth || true
ok

begin bidirectional-authentication-and-verified-io
conn --dhchap-secret "$SECRET" --dhchap-ctrl-secret "$CTRL_SECRET" || fail "nvme connect with both secrets"
dev="$(ns_dev "$NQN")" || fail "no namespace of $NQN"
fio --name=auth --filename="/dev/$dev" --direct=1 --ioengine=libaio --bs=4k --iodepth=8 \
  --rw=randwrite --size=8M --verify=crc32c --verify_fatal=1 --verify_state_save=0 \
  --eta=never --output=/tmp/fio.out || { cat /tmp/fio.out; fail "fio"; }
grep -E "err= *[1-9]" /tmp/fio.out && fail "fio reported errors"
nvme disconnect -n "$NQN" >/dev/null || fail "disconnect"
ok

begin one-way-authentication
conn --dhchap-secret "$SECRET" || fail "nvme connect with the host secret"
dev="$(ns_dev "$NQN")" || fail "no namespace of $NQN"
dd if="/dev/$dev" of=/dev/null bs=4k count=16 iflag=direct status=none || fail "read"
nvme disconnect -n "$NQN" >/dev/null || fail "disconnect"
ok

begin wrong-secret-refused
if conn --dhchap-secret "$WRONG" 2>/tmp/err; then
  nvme disconnect -n "$NQN" >/dev/null 2>&1 || true
  fail "connected with a wrong secret"
fi
cat /tmp/err
ok

begin no-secret-refused
if conn 2>/tmp/err; then
  nvme disconnect -n "$NQN" >/dev/null 2>&1 || true
  fail "connected without a secret"
fi
cat /tmp/err
ok
step=""
echo
echo "ALL STEPS OK"
