#!/usr/bin/env bash
# strata's userspace NVMe driver (vfio) against the same device through the kernel's nvme
# driver and strata's io_uring bdev: strata-bdevperf, 4 KiB randread QD32 on one core, in a
# QEMU guest whose emulated NVMe controller sits behind an emulated IOMMU (the only NVMe
# device this machine has). Each driver runs in poll mode and in interrupt mode. Reported:
# IOPS, and CPU per I/O two ways: the bdevperf process's own user+sys time, and the whole
# guest's busy time (which also counts the kernel's interrupt work for the nvme driver).
# Under TCG emulation the absolute figures mean little; the ratios within one run are the
# result.
#   usage: bench/vfio-guest.sh [seconds per run, default 10]    (after cargo build --release)
set -euo pipefail
cd "$(dirname "$0")/.."
T=${1:-10}
BIN=$PWD/build/release
[ -x "$BIN/strata-bdevperf" ] || { echo "cargo build --release first" >&2; exit 1; }
scripts/linux-host/install.sh >/dev/null
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
share=$work/share; mkdir -p "$share"
# Random data, so reads move real bytes rather than holes.
head -c 512M /dev/urandom > "$work/nvme.img"
cat > "$share/run.sh" <<EOF
set -u
modprobe vfio-pci
BDF=''; for d in /sys/bus/pci/devices/*; do [ "\$(cat \$d/class)" = 0x010802 ] && BDF=\${d##*/}; done
echo "NVMe controller \$BDF, kernel \$(uname -r)"
busy() { awk '/^cpu /{print \$2+\$3+\$4+\$7+\$8}' /proc/stat; }
run() { # label config mode-flag
  local label=\$1 cfg=\$2 flag=\$3 b0 b1 out
  b0=\$(busy)
  TIMEFORMAT='%U %S'
  { time $BIN/strata-bdevperf -c \$cfg -m 0x1 -q 32 -o 4096 -w randread -t $T --json-output \$flag > /tmp/out.json 2>/tmp/err.log ; } 2> /tmp/time.txt
  b1=\$(busy)
  python3 - "\$label" "\$b0" "\$b1" <<'PY'
import json, sys
label, b0, b1 = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
try:
    t = json.loads(open("/tmp/out.json").read().splitlines()[-1])["total"]
except Exception:
    print("RESULT", label, "FAILED:", open("/tmp/err.log").read()[-400:]); sys.exit(0)
u, s = map(float, open("/tmp/time.txt").read().split())
ios = t["iops"] * $T
hz = 100  # USER_HZ
print(f"RESULT {label:22} | {t['iops']:9.0f} IOPS | p99 {t['p99_us']:8.1f} us | process CPU {1e6*(u+s)/ios:6.2f} us/IO | guest CPU {1e6*(b1-b0)/hz/ios:6.2f} us/IO | errors {t['errors']}")
PY
}
scripts=$PWD/scripts
$PWD/scripts/setup.sh --bind \$BDF
echo '{"subsystems":[{"subsystem":"bdev","config":[{"method":"bdev_nvme_attach_controller","params":{"name":"NV","trtype":"PCIe","traddr":"'\$BDF'"}}]}]}' > /tmp/vfio.json
run "vfio, poll" /tmp/vfio.json ""
run "vfio, interrupt" /tmp/vfio.json --interrupt-mode
$PWD/scripts/setup.sh --unbind \$BDF
for _ in \$(seq 1 100); do [ -b /dev/nvme0n1 ] && break; sleep 0.1; done
echo '{"subsystems":[{"subsystem":"bdev","config":[{"method":"bdev_uring_create","params":{"name":"U0","filename":"/dev/nvme0n1"}}]}]}' > /tmp/uring.json
run "kernel nvme + uring, poll" /tmp/uring.json ""
run "kernel nvme + uring, intr" /tmp/uring.json --interrupt-mode
echo "ALL STEPS OK"
EOF
LINUX_HOST_QEMU_ARGS="-device intel-iommu,intremap=on,caching-mode=on -device pcie-root-port,id=rp1,slot=1,chassis=1 \
 -drive file=$work/nvme.img,if=none,id=nvm,format=raw -device nvme,bus=rp1,id=nvme0,serial=strata-bench,drive=nvm" \
LINUX_HOST_APPEND="intel_iommu=on iommu=pt" LINUX_HOST_MEM=${LINUX_HOST_MEM:-2048M} \
  scripts/linux-host/run-guest.sh --timeout 1200 --share "$share" -- "cd $PWD && bash /run/share/run.sh" >/dev/null 2>&1 || true
grep -E "RESULT|NVMe controller|setup:|ALL STEPS" "$share/guest-output.log" || { tail -30 "$share/guest-output.log"; exit 1; }
