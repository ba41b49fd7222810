#!/usr/bin/env bash
# Provides a newer Debian kernel for the Linux-host tests that need host features Debian 12's
# 6.1 kernel is built without (DH-HMAC-CHAP: CONFIG_NVME_HOST_AUTH; NVMe/TCP TLS:
# CONFIG_NVME_TCP_TLS). It takes Debian's own bookworm-backports kernel package, without
# installing it as a boot kernel: the image goes to the test cache and its modules to
# /lib/modules/VERSION (the guest loads modules from the host's root), with depmod run.
# Debian 12's stock kernel stays the default of run-guest.sh.
#
# Prints the path of the kernel image (for run-guest.sh --kernel). Idempotent. Run as root
# after scripts/linux-host/install.sh.
#
# Environment: LINUX_HOST_CACHE (default <repo>/build/linux-host).
set -euo pipefail
export PATH="$PATH:/usr/sbin:/sbin"
script_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo_dir="$(cd "$script_dir/../.." && pwd)"
cache="${LINUX_HOST_CACHE:-$repo_dir/build/linux-host}/newer-kernel"
mkdir -p "$cache"

# Reuse a kernel fetched before.
for k in "$cache"/vmlinuz-*; do
  [ -e "$k" ] || continue
  [ -f "/lib/modules/${k##*/vmlinuz-}/modules.dep" ] && { echo "$k"; exit 0; }
done

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/lists/partial" "$work/debs"
echo "deb http://deb.debian.org/debian bookworm-backports main" >"$work/sources.list"
apt_opts=(-o "Dir::Etc::sourcelist=$work/sources.list" -o "Dir::Etc::sourceparts=/nonexistent"
  -o "Dir::State::Lists=$work/lists" -o "APT::Sandbox::User=root" -qq)
apt-get "${apt_opts[@]}" update >"$work/log" 2>&1 || { cat "$work/log" >&2; exit 1; }
# The newest backports kernel image (unsigned: the same kernel, no signature needed here).
pkg="$(apt-cache "${apt_opts[@]}" depends linux-image-amd64 2>/dev/null |
  sed -n 's/^ *Depends: \(linux-image-[0-9][^ ]*-amd64\)$/\1/p' | sort -V | tail -n 1)"
[ -n "$pkg" ] || { echo "newer-kernel: no backports kernel package found" >&2; exit 1; }
(cd "$work/debs" && apt-get "${apt_opts[@]}" download "$pkg-unsigned" >"$work/log" 2>&1) ||
  { cat "$work/log" >&2; exit 1; }
dpkg-deb -x "$work"/debs/*.deb "$work/x"
img="$(ls "$work"/x/boot/vmlinuz-* | head -n 1)"
ver="${img##*/vmlinuz-}"
rm -rf "/lib/modules/$ver"
cp -a "$work/x/lib/modules/$ver" "/lib/modules/$ver"
depmod "$ver"
cp "$img" "$cache/vmlinuz-$ver"
echo "$cache/vmlinuz-$ver"
