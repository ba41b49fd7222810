#!/bin/bash
# The guest's side of the dual-redundancy test (nvmf/tests/journal_linux.rs): the Linux
# kernel host writes a pattern to a protected RAID-5 volume, the test drains the journal to
# the repository, the host writes a second pattern over half of the first and beyond (held
# only by the journal and the RAID), the test loses two RAID-5 members and rebuilds the
# volume from the repository and the journal, and the host reads the whole span back and
# compares it with what it wrote.
#
# Run inside run-guest.sh with: PORT, NQN, MIB (size of each pattern). Hand-shakes with the
# test through files in $SHARE:
#   guest: written1   test: drained   guest: written2   test: rebuilt   guest: verified
# Prints "STEP <name> OK" per step and "ALL STEPS OK" at the end.
set -euo pipefail
# shellcheck source=guest-steps.sh
source "$(dirname "${BASH_SOURCE[0]}")/guest-steps.sh"

begin patterns
dd if=/dev/urandom of=/tmp/pat1 bs=1M count="$MIB" status=none
dd if=/dev/urandom of=/tmp/pat2 bs=1M count="$MIB" status=none
# What the span holds at the end: the first half of pat1, then pat2.
head -c $((MIB * 512 * 1024)) /tmp/pat1 >/tmp/expect
cat /tmp/pat2 >>/tmp/expect
ok

begin write-first-pattern
modprobe nvme-tcp
nvme connect -t tcp -a "$ADDR" -s "$PORT" -n "$NQN" || fail "nvme connect"
dev="$(ns_dev "$NQN")" || fail "no namespace of $NQN"
echo "the protected volume: /dev/$dev"
dd if=/tmp/pat1 of="/dev/$dev" bs=64k oflag=direct conv=fsync status=none || fail "write"
touch "$SHARE/written1"
ok

begin write-second-pattern-after-the-drain
wait_file drained 240
dd if=/tmp/pat2 of="/dev/$dev" bs=64k seek=$((MIB * 8)) oflag=direct conv=fsync status=none ||
  fail "write"
touch "$SHARE/written2"
ok

begin verify-after-the-rebuild
wait_file rebuilt 300
dd if="/dev/$dev" of=/tmp/back bs=64k count=$((MIB * 24)) iflag=direct status=none ||
  fail "read after the rebuild"
cmp /tmp/back /tmp/expect || fail "the rebuilt volume does not hold what was written"
touch "$SHARE/verified"
ok

nvme disconnect -n "$NQN" >/dev/null 2>&1 || true
step=""
echo
echo "ALL STEPS OK"
