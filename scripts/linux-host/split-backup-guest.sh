#!/bin/bash
# The guest's side of the split-mirror backup test (nvmf/tests/split_backup_linux.rs): the
# Linux kernel, as the production host, writes a pattern to a mirror whose initial copy is
# still running, splits the mirror itself with strata's vendor admin command (C0h, through
# `nvme admin-passthru`, as a freeze/thaw hook would), and writes a second pattern over the
# first; then, as the backup host, connects to the point-in-time image's namespace, checks
# that it holds the first pattern while the mirror holds the second, and starts a backup of
# the image with the vendor admin command C1h (its JSON parameters in the capsule).
#
# Run inside run-guest.sh with: PORT, NQN (the mirror's export), IMG_NQN (the image's export,
# made by the test once the split answered), MIB (size written), REPO (the repository path
# on the target's machine). Hand-shakes with the test through files in $SHARE:
#   guest: split       (the split answered; its output in split.out)
#   test:  exported    (the image is exported as IMG_NQN)
#   guest: verified    (image and mirror checked)
#   guest: backup      (the backup command was accepted)
# Prints "STEP <name> OK" per step and "ALL STEPS OK" at the end.
set -euo pipefail
# shellcheck source=guest-steps.sh
source "$(dirname "${BASH_SOURCE[0]}")/guest-steps.sh"

begin patterns
dd if=/dev/urandom of=/tmp/pat1 bs=1M count="$MIB" status=none
dd if=/dev/urandom of=/tmp/pat2 bs=1M count="$MIB" status=none
ok

begin write-first-pattern
modprobe nvme-tcp
nvme connect -t tcp -a "$ADDR" -s "$PORT" -n "$NQN" || fail "nvme connect to the mirror"
dev="$(ns_dev "$NQN")" || fail "no namespace of $NQN"
echo "the mirror: /dev/$dev"
dd if=/tmp/pat1 of="/dev/$dev" bs=64k oflag=direct conv=fsync status=none || fail "write"
ok

begin split-from-the-host
# A freeze/thaw hook's split: nothing in flight (the write above was synced), then C0h.
nvme admin-passthru "/dev/$dev" --opcode=0xc0 --namespace-id=1 >"$SHARE/split.out" 2>&1 ||
  fail "vendor split refused: $(cat "$SHARE/split.out")"
cat "$SHARE/split.out"
touch "$SHARE/split"
ok

begin write-second-pattern
dd if=/tmp/pat2 of="/dev/$dev" bs=64k oflag=direct conv=fsync status=none || fail "write"
ok

begin image-holds-the-first-pattern
wait_file exported 120
nvme connect -t tcp -a "$ADDR" -s "$PORT" -n "$IMG_NQN" || fail "nvme connect to the image"
img="$(ns_dev "$IMG_NQN")" || fail "no namespace of $IMG_NQN"
echo "the image: /dev/$img"
dd if="/dev/$img" of=/tmp/back bs=64k count=$((MIB * 16)) iflag=direct status=none
cmp /tmp/back /tmp/pat1 || fail "the image does not hold the first pattern"
dd if="/dev/$dev" of=/tmp/back bs=64k count=$((MIB * 16)) iflag=direct status=none
cmp /tmp/back /tmp/pat2 || fail "the mirror does not hold the second pattern"
# The image is read-only.
if dd if=/tmp/pat2 of="/dev/$img" bs=4k count=1 oflag=direct status=none 2>/dev/null; then
  fail "a write to the image succeeded"
fi
touch "$SHARE/verified"
ok

begin backup-from-the-backup-host
printf '{"repository": "%s", "mode": "memory"}' "$REPO" >/tmp/params
truncate -s 1024 /tmp/params
nvme admin-passthru "/dev/$img" --opcode=0xc1 --namespace-id=1 --data-len=1024 \
  --input-file=/tmp/params -w >/tmp/backup.out 2>&1 || fail "vendor backup refused: $(cat /tmp/backup.out)"
cat /tmp/backup.out
nvme admin-passthru "/dev/$img" --opcode=0xc2 --namespace-id=1 --data-len=4096 -r -b >/tmp/status 2>/dev/null ||
  fail "vendor status refused"
tr -d '\0' </tmp/status | head -c 600
echo
grep -q '"backup"' /tmp/status || fail "the status does not show the backup"
touch "$SHARE/backup"
ok

nvme disconnect -n "$IMG_NQN" >/dev/null 2>&1 || true
nvme disconnect -n "$NQN" >/dev/null 2>&1 || true
step=""
echo
echo "ALL STEPS OK"
