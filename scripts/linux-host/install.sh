#!/usr/bin/env bash
# Installs what the Linux-host NVMe/TCP test needs on Debian 12 (run as root). Idempotent and
# quiet: does nothing when everything is already installed.
#
#   qemu-system-x86    the guest VM (TCG: /dev/kvm is not usable on every machine)
#   linux-image-amd64  the guest kernel (booted directly with -kernel) and its modules
#   nvme-cli, fio      run inside the guest from the host's root, shared read-only over 9p
#   busybox-static     the guest's initramfs userland
#   cpio, kmod         to build the initramfs and resolve module dependencies
#
# Exit status: 0 ready; 3 (after printing "SKIPPED: <reason>") when QEMU cannot run here at
# all; anything else is a real failure.
set -euo pipefail
# modprobe, busybox and friends live in sbin, which is not on every PATH.
export PATH="$PATH:/usr/sbin:/sbin"

skip() {
  echo "SKIPPED: $*"
  exit 3
}

arch="$(uname -m)"
[ "$arch" = x86_64 ] || skip "the Linux-host test needs an x86-64 host (this is $arch)"

packages=(qemu-system-x86 linux-image-amd64 nvme-cli fio busybox-static cpio kmod)

installed() {
  [ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null)" = installed ]
}

missing=()
if command -v dpkg-query >/dev/null; then
  for p in "${packages[@]}"; do
    installed "$p" || missing+=("$p")
  done
elif ! command -v qemu-system-x86_64 >/dev/null; then
  skip "QEMU is not installed and this is not a Debian system this script can install it on"
fi

if [ ${#missing[@]} -gt 0 ]; then
  can_install=1
  [ "$(id -u)" = 0 ] || can_install=0
  command -v apt-get >/dev/null || can_install=0
  log="$(mktemp)"
  trap 'rm -f "$log"' EXIT
  if [ "$can_install" = 1 ]; then
    # -qq plus output to a log: quiet on success, the log is shown on failure.
    export DEBIAN_FRONTEND=noninteractive
    if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}"; } \
      >"$log" 2>&1; then
      can_install=0
    fi
  fi
  if [ "$can_install" = 0 ]; then
    if ! command -v qemu-system-x86_64 >/dev/null; then
      if [ -s "$log" ]; then tail -n 20 "$log" >&2; fi
      skip "QEMU is not installed and packages cannot be installed (need root and apt access): ${missing[*]}"
    fi
    if [ -s "$log" ]; then tail -n 20 "$log" >&2; fi
    echo "install.sh: could not install ${missing[*]}" >&2
    exit 1
  fi
fi

# Every tool the harness uses must now be present.
for tool in qemu-system-x86_64 nvme fio busybox cpio modinfo modprobe timeout; do
  command -v "$tool" >/dev/null || { echo "install.sh: $tool not found after install" >&2; exit 1; }
done
if ! compgen -G '/boot/vmlinuz-*' >/dev/null; then
  echo "install.sh: no kernel in /boot (linux-image-amd64)" >&2
  exit 1
fi

# The guest uses the host's host NQN (it sees /etc over 9p); nvme-cli does not always create it.
if [ ! -s /etc/nvme/hostnqn ]; then
  if [ "$(id -u)" = 0 ]; then
    mkdir -p /etc/nvme
    nvme gen-hostnqn >/etc/nvme/hostnqn
  else
    echo "install.sh: /etc/nvme/hostnqn missing and not root to create it" >&2
    exit 1
  fi
fi
if [ ! -s /etc/nvme/hostid ] && [ "$(id -u)" = 0 ]; then
  # nvme-cli >= 2 reads the host ID from here; derive it from the NQN's UUID when possible.
  uuid="$(sed -n 's/.*uuid:\([0-9a-fA-F-]\{36\}\).*/\1/p' /etc/nvme/hostnqn)"
  if [ -n "$uuid" ]; then echo "$uuid" >/etc/nvme/hostid; fi
fi
exit 0
