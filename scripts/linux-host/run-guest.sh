#!/usr/bin/env bash
# Boots a throw-away QEMU guest running Debian's stock kernel and runs ONE shell command in it,
# with the host's root file system visible (read-only) as the guest's root. The guest is a real
# Linux kernel acting as, for example, an NVMe/TCP host, using the host's nvme-cli, fio and
# modprobe.
#
#   run-guest.sh [--timeout S] [--share DIR] [--kernel VMLINUZ] [--monitor SOCKET] -- 'command'
#
#   --timeout S   kill the guest after S seconds (default 120)
#   --share DIR   writable directory shared with the guest; it is mounted at /run/share in the
#                 guest ($SHARE in the command's environment). The guest's output
#                 (guest-output.log), exit status (guest-exit-status) and kernel console
#                 (console.log) are left there. Default: a temporary directory removed on exit.
#   --kernel F    kernel image (default: the newest /boot/vmlinuz-* with /lib/modules/VERSION)
#   --monitor P   serve QEMU's human monitor (HMP) on the unix socket P while the guest runs, e.g.
#                 for `echo 'device_del nvme0' | socat - UNIX-CONNECT:P` (hot-unplug a device
#                 given an id through LINUX_HOST_QEMU_ARGS)
#
# The command runs as root under bash in a chroot of the host's / with fresh proc, sys, devtmpfs
# (/dev), and tmpfs on /tmp, /run and /var/tmp. Networking is QEMU user networking: the guest is
# 10.0.2.15 and reaches the host's 127.0.0.1 as 10.0.2.2. There is no udev and no module
# auto-loading: the command must `modprobe` what it needs.
#
# Exit status: the guest command's exit status. If the guest never reported one (boot failure,
# kernel panic, timeout), a message and the console log tail are printed and the status is 124
# (timeout) or 125 (anything else).
#
# Environment: LINUX_HOST_CACHE (initramfs cache directory, default <repo>/build/linux-host),
# LINUX_HOST_MEM (guest memory, default 1024M), LINUX_HOST_CPUS (default 2),
# LINUX_HOST_NETDEV_OPTS (appended to QEMU's -netdev user,..., e.g. ",hostfwd=tcp:127.0.0.1:14420-:4420"),
# LINUX_HOST_QEMU_ARGS (extra QEMU arguments, split on white space, placed before the guest's
# own devices: a -device intel-iommu must precede the devices it translates; a -machine option
# is merged with the built-in "-machine q35"), LINUX_HOST_APPEND (appended to the kernel command
# line), LINUX_HOST_BOOT_ATTEMPTS (boots tried when the kernel dies before the guest command
# starts, default 3). For example, an emulated IOMMU and an NVMe controller on a hot-pluggable port:
#   LINUX_HOST_QEMU_ARGS="-device intel-iommu,intremap=on,aw-bits=48
#     -device pcie-root-port,id=rp1,slot=1 -drive file=IMG,if=none,id=nvm,format=raw
#     -device nvme,bus=rp1,id=nvme0,serial=strata0,drive=nvm"
#   LINUX_HOST_APPEND="intel_iommu=on iommu=pt"
set -euo pipefail
# modprobe, busybox and friends live in sbin, which is not on every PATH.
export PATH="$PATH:/usr/sbin:/sbin"

script_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo_dir="$(cd "$script_dir/../.." && pwd)"

usage() {
  echo "usage: $0 [--timeout S] [--share DIR] [--kernel VMLINUZ] [--monitor SOCKET] -- 'command'" >&2
  exit 2
}

timeout_s=120
share=""
kernel=""
monitor=""
while [ $# -gt 0 ]; do
  case "$1" in
    --timeout) timeout_s="${2:?--timeout needs seconds}"; shift 2 ;;
    --share) share="${2:?--share needs a directory}"; shift 2 ;;
    --kernel) kernel="${2:?--kernel needs a file}"; shift 2 ;;
    --monitor) monitor="${2:?--monitor needs a socket path}"; shift 2 ;;
    --) shift; break ;;
    *) usage ;;
  esac
done
[ $# -eq 1 ] || usage
command_text="$1"
case "$timeout_s" in '' | *[!0-9]*) echo "run-guest: --timeout must be whole seconds" >&2; exit 2 ;; esac

for tool in qemu-system-x86_64 busybox cpio gzip modprobe timeout; do
  if ! command -v "$tool" >/dev/null; then
    echo "run-guest: $tool not found: run scripts/linux-host/install.sh" >&2
    exit 2
  fi
done

# --- the kernel ------------------------------------------------------------------------------
if [ -z "$kernel" ]; then
  # Newest installed kernel whose modules are present (the guest loads them from the host's
  # /lib/modules through the shared root).
  while read -r k; do
    if [ -d "/lib/modules/${k#/boot/vmlinuz-}" ]; then kernel="$k"; fi
  done < <(find /boot -maxdepth 1 -name 'vmlinuz-*' | sort -V)
fi
if [ -z "$kernel" ] || [ ! -r "$kernel" ]; then
  echo "run-guest: no usable kernel in /boot (install linux-image-amd64)" >&2
  exit 2
fi
kver="${kernel##*/vmlinuz-}"
[ -d "/lib/modules/$kver" ] || { echo "run-guest: /lib/modules/$kver missing" >&2; exit 2; }

qemu_pid=""
tail_pid=""
build_tmp=""
initramfs=""
own_share=0
share_created=""
# shellcheck disable=SC2317  # invoked by the trap
cleanup() {
  # timeout(1) passes the TERM on to QEMU.
  if [ -n "$qemu_pid" ]; then kill "$qemu_pid" 2>/dev/null || true; wait "$qemu_pid" 2>/dev/null || true; fi
  if [ -n "$tail_pid" ]; then kill "$tail_pid" 2>/dev/null || true; wait "$tail_pid" 2>/dev/null || true; fi
  if [ -n "$build_tmp" ]; then rm -rf "$build_tmp"; fi
  if [ -n "$initramfs" ]; then rm -f "$initramfs.$$"; fi
  if [ "$own_share" = 1 ] && [ -n "$share_created" ]; then rm -rf "$share_created"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

# --- the initramfs ---------------------------------------------------------------------------
# PID 1 of the guest. It runs from the initramfs (busybox), mounts the host's root over 9p,
# prepares a chroot in it, runs the command there and powers off. Kept in this file so the
# cache key below changes whenever it does.
read -r -d '' init_script <<'INIT' || true
#!/bin/busybox sh
/bin/busybox mkdir -p /bin /proc /sys /dev /newroot
/bin/busybox --install -s /bin
export PATH=/bin
mount -t devtmpfs devtmpfs /dev
# The kernel found no /dev/console in the initramfs, so PID 1 has no stdio yet.
exec </dev/console >/dev/console 2>&1
mount -t proc proc /proc
mount -t sysfs sysfs /sys

die() {
  echo "GUEST-INIT: FAILED: $*"
  poweroff -f
  sleep 10
}

while read -r m; do
  insmod "/modules/$m" || die "insmod $m"
done </modules/order

# msize: larger 9p messages make the (emulated) file I/O much faster. cache=loose for the
# read-only root only: the host does not change it while the test runs.
p9="trans=virtio,version=9p2000.L,msize=262144"
R=/newroot
mount -t 9p -o "$p9,ro,cache=loose" hostroot "$R" || die "mount the host root over 9p"
mount -t proc proc "$R/proc"
mount -t sysfs sysfs "$R/sys"
mount -t devtmpfs devtmpfs "$R/dev"
mkdir -p "$R/dev/pts" "$R/dev/shm"
mount -t devpts devpts "$R/dev/pts"
mount -t tmpfs tmpfs "$R/dev/shm"
# The root is read-only: writable scratch space where programs expect it.
for d in tmp run var/tmp; do
  mount -t tmpfs tmpfs "$R/$d" || die "tmpfs on /$d"
done
mkdir -p "$R/run/share" "$R/run/lock"
mount -t 9p -o "$p9" share "$R/run/share" || die "mount the writable share over 9p"
S="$R/run/share"

ip link set lo up
for n in /sys/class/net/*; do
  n="${n##*/}"
  [ "$n" = lo ] && continue
  ip link set "$n" up
  ip addr add 10.0.2.15/24 dev "$n"
  ip route add default via 10.0.2.2 dev "$n"
  break
done

read -r up _ </proc/uptime
echo "GUEST-INIT: running the command (uptime ${up}s)"
chroot "$R" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root TERM=dumb \
  SHARE=/run/share LANG=C.UTF-8 \
  /bin/bash -c 'cd /tmp && exec /bin/bash /run/share/guest-command.sh' \
  >"$S/guest-output.log" 2>&1 </dev/null
rc=$?
read -r up _ </proc/uptime
echo "GUEST-INIT: command exited with status $rc (uptime ${up}s)"
# Write-then-rename: the host never sees a half-written status.
echo "$rc" >"$S/guest-exit-status.tmp" && mv "$S/guest-exit-status.tmp" "$S/guest-exit-status"
sync
umount "$S"
poweroff -f
sleep 10
INIT

modules=(virtio_pci virtio_net 9pnet_virtio 9p)
cache_dir="${LINUX_HOST_CACHE:-$repo_dir/build/linux-host}"
key="$( { echo "$init_script"; echo "${modules[*]}"; sha256sum "$(command -v busybox)"; } |
  sha256sum | cut -c1-16)"
initramfs="$cache_dir/initramfs-$kver-$key.cpio.gz"

build_initramfs() {
  local work
  work="$(mktemp -d)"
  build_tmp="$work"
  mkdir -p "$work/root/bin" "$work/root/modules"
  cp "$(command -v busybox)" "$work/root/bin/busybox"
  printf '%s\n' "$init_script" >"$work/root/init"
  chmod 755 "$work/root/init"
  # modprobe prints the insmod commands that would load each module with its dependencies,
  # in load order ("builtin X" for those compiled in). Copy each .ko once, decompressed
  # (busybox insmod does not read every compression format).
  local line ko base
  : >"$work/root/modules/order"
  while read -r line; do
    case "$line" in
      insmod\ *) ko="$(echo "$line" | awk '{print $2}')" ;;
      *) continue ;;
    esac
    base="$(basename "$ko")"
    base="${base%.xz}"; base="${base%.zst}"; base="${base%.gz}"
    grep -qxF "$base" "$work/root/modules/order" && continue
    case "$ko" in
      *.xz) xz -dc "$ko" >"$work/root/modules/$base" ;;
      *.zst) zstd -qdc "$ko" >"$work/root/modules/$base" ;;
      *.gz) gzip -dc "$ko" >"$work/root/modules/$base" ;;
      *) cp "$ko" "$work/root/modules/$base" ;;
    esac
    echo "$base" >>"$work/root/modules/order"
  done < <(for m in "${modules[@]}"; do modprobe -S "$kver" --show-depends "$m"; done)
  (cd "$work/root" && find . -print0 | cpio --null -o -H newc --quiet) | gzip -1 >"$work/initramfs"
  mkdir -p "$cache_dir"
  # Rename into place: concurrent runs never see a partial file. Drop stale builds for this
  # kernel (older init scripts).
  mv "$work/initramfs" "$initramfs.$$"
  find "$cache_dir" -maxdepth 1 -name "initramfs-$kver-*.cpio.gz" ! -name "${initramfs##*/}" -delete
  mv "$initramfs.$$" "$initramfs"
  rm -rf "$work"
  build_tmp=""
}

[ -s "$initramfs" ] || build_initramfs

# --- the run ---------------------------------------------------------------------------------
if [ -z "$share" ]; then
  share="$(mktemp -d)"
  share_created="$share"
  own_share=1
fi
mkdir -p "$share"
share="$(cd "$share" && pwd)"
rm -f "$share/guest-exit-status" "$share/guest-output.log" "$share/console.log"
printf '%s\n' "$command_text" >"$share/guest-command.sh"

# -d '': all lines (read fails at the end of its input, hence || true).
read -r -d '' -a qemu_args <<<"${LINUX_HOST_QEMU_ARGS:-}" || true
if [ -n "$monitor" ]; then qemu_args+=(-monitor "unix:$monitor,server=on,wait=off"); fi

elapsed() {
  local now="$EPOCHREALTIME"
  awk -v a="$start" -v b="$now" 'BEGIN { printf "%.1f", b - a }'
}

boot_and_run() {
  # panic=-1 + -no-reboot: a kernel panic (oops=panic: also an oops) ends QEMU at once instead
  # of hanging until the timeout. -nodefaults: no VGA, no default NIC, no monitor.
  start="$EPOCHREALTIME"
  timeout -k 5 "$timeout_s" qemu-system-x86_64 \
    -accel tcg,thread=multi -cpu max -machine q35 \
    -smp "${LINUX_HOST_CPUS:-2}" -m "${LINUX_HOST_MEM:-1024M}" \
    -nodefaults -no-user-config -display none -no-reboot \
    "${qemu_args[@]}" \
    -serial "file:$share/console.log" \
    -kernel "$kernel" -initrd "$initramfs" \
    -append "console=ttyS0 panic=-1 oops=panic mitigations=off random.trust_cpu=on ${LINUX_HOST_APPEND:-}" \
    -fsdev local,id=hostroot,path=/,security_model=none,readonly=on,multidevs=remap \
    -device virtio-9p-pci,fsdev=hostroot,mount_tag=hostroot \
    -fsdev "local,id=share,path=$share,security_model=none" \
    -device virtio-9p-pci,fsdev=share,mount_tag=share \
    -netdev "user,id=n0${LINUX_HOST_NETDEV_OPTS:-}" -device virtio-net-pci,netdev=n0 \
    </dev/null >"$share/qemu.log" 2>&1 &
  qemu_pid=$!

  # Stream the guest's output while it runs (it can take minutes); tail exits once QEMU has.
  booted=""
  while kill -0 "$qemu_pid" 2>/dev/null; do
    if [ -z "$booted" ] && [ -e "$share/guest-output.log" ]; then
      booted="$(elapsed)"
      echo "run-guest: guest booted in ${booted}s (kernel $kver)" >&2
      tail -n +1 -s 0.2 -f --pid="$qemu_pid" "$share/guest-output.log" &
      tail_pid=$!
    fi
    sleep 0.1
  done
  qemu_rc=0
  wait "$qemu_pid" || qemu_rc=$?
  qemu_pid=""
  if [ -n "$tail_pid" ]; then wait "$tail_pid" || true; tail_pid=""; fi
  total="$(elapsed)"
}

# Under TCG the guest kernel now and then dies while booting, before PID 1 runs anything (an
# int3 oops while it patches its own text, a QEMU TCG race). The guest command has not started
# then (it has not created guest-output.log), so booting again is safe; a guest whose command
# started is never run twice.
attempts="${LINUX_HOST_BOOT_ATTEMPTS:-3}"
for attempt in $(seq 1 "$attempts"); do
  rm -f "$share/guest-exit-status" "$share/guest-output.log"
  boot_and_run
  if [ -s "$share/guest-exit-status" ] || [ -e "$share/guest-output.log" ] || [ "$qemu_rc" = 124 ] ||
    [ "$qemu_rc" = 137 ] || [ "$attempt" = "$attempts" ]; then
    break
  fi
  echo "run-guest: the guest kernel failed before init (attempt $attempt of $attempts, QEMU status $qemu_rc); booting again. Its console:" >&2
  grep -E "Oops|panic|RIP:|BUG" "$share/console.log" | head -n 5 >&2 || true
  cp "$share/console.log" "$share/console.boot-failure-$attempt.log" 2>/dev/null || true
done

if [ -s "$share/guest-exit-status" ]; then
  rc="$(cat "$share/guest-exit-status")"
  echo "run-guest: guest command exited with status $rc; boot ${booted:-?}s, total ${total}s" >&2
  if [ "$rc" != 0 ]; then
    echo "run-guest: --- guest console (last 40 lines) ---" >&2
    tail -n 40 "$share/console.log" >&2 || true
  fi
  exit "$rc"
fi

if [ "$qemu_rc" = 124 ] || [ "$qemu_rc" = 137 ]; then
  echo "run-guest: TIMEOUT: the guest did not finish within ${timeout_s}s" >&2
  rc=124
else
  echo "run-guest: FAILED: the guest ended without reporting an exit status (QEMU status $qemu_rc: boot failure or kernel panic)" >&2
  rc=125
fi
if [ -s "$share/qemu.log" ]; then
  echo "run-guest: --- QEMU output ---" >&2
  tail -n 20 "$share/qemu.log" >&2
fi
echo "run-guest: --- guest console (last 60 lines) ---" >&2
tail -n 60 "$share/console.log" >&2 || true
exit "$rc"
