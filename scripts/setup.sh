#!/usr/bin/env bash
# Installs what strata needs on a fresh Debian 12 machine (run as root). Idempotent.
#   scripts/setup.sh                 build prerequisites
#   scripts/setup.sh --hugepages N   also reserve N 2 MiB hugepages (optional: strata runs
#                                    on ordinary pages without them)
#   scripts/setup.sh --bind BDF      give the NVMe controller at PCI address BDF to vfio-pci,
#                                    for strata's userspace driver (bdev_nvme_attach_controller
#                                    -t PCIe -a BDF); needs the IOMMU on (intel_iommu=on)
#   scripts/setup.sh --unbind BDF    give it back to the kernel's nvme driver
set -euo pipefail
hugepages=""
bind=""
unbind=""
usage() { echo "usage: $0 [--hugepages N] [--bind BDF] [--unbind BDF]" >&2; exit 2; }
while [ $# -gt 0 ]; do
  case "$1" in
    --hugepages) hugepages="${2:?--hugepages needs a count}"; shift 2 ;;
    --bind) bind="${2:?--bind needs a PCI address}"; shift 2 ;;
    --unbind) unbind="${2:?--unbind needs a PCI address}"; shift 2 ;;
    *) usage ;;
  esac
done

# A PCI address in sysfs form (dddd:bb:dd.f; bb:dd.f means domain 0000).
pci_dev() {
  local a="$1"
  case "$a" in
    [0-9a-fA-F][0-9a-fA-F]:[0-9a-fA-F][0-9a-fA-F].[0-7]) a="0000:$a" ;;
  esac
  a="$(echo "$a" | tr 'A-F' 'a-f')"
  if ! [[ "$a" =~ ^[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$ ]]; then
    echo "setup: '$1' is not a PCI address (dddd:bb:dd.f)" >&2
    exit 2
  fi
  if [ ! -d "/sys/bus/pci/devices/$a" ]; then
    echo "setup: no PCI device $a" >&2
    exit 1
  fi
  echo "$a"
}

current_driver() {
  local l="/sys/bus/pci/devices/$1/driver"
  if [ -e "$l" ]; then basename "$(readlink "$l")"; fi
}

# Moves device $1 to driver $2 ("" = whatever the kernel picks) the way SPDK's setup.sh
# does: driver_override, unbind, probe.
rebind() {
  local dev="$1" drv="$2" cur
  cur="$(current_driver "$dev")"
  echo "${drv:-}" > "/sys/bus/pci/devices/$dev/driver_override"
  if [ -n "$cur" ] && [ "$cur" != "$drv" ]; then
    echo "$dev" > "/sys/bus/pci/devices/$dev/driver/unbind"
  fi
  if [ -z "$(current_driver "$dev")" ]; then
    echo "$dev" > /sys/bus/pci/drivers_probe || true
  fi
}

if [ -n "$bind" ] || [ -n "$unbind" ]; then
  [ "$(id -u)" = 0 ] || { echo "setup: --bind/--unbind need root" >&2; exit 1; }
fi
if [ -n "$bind" ]; then
  dev="$(pci_dev "$bind")"
  class="$(cat "/sys/bus/pci/devices/$dev/class")"
  if [ "$class" != 0x010802 ]; then
    echo "setup: $dev is not an NVMe controller (class $class)" >&2
    exit 1
  fi
  if [ ! -e "/sys/bus/pci/devices/$dev/iommu_group" ]; then
    echo "setup: $dev has no IOMMU group: boot with intel_iommu=on (or amd_iommu=on)" >&2
    exit 1
  fi
  # A controller whose namespaces are in use (mounted, swap, held by LVM/md/dm) stays with
  # the kernel: unbinding it would pull the disk from under them.
  for blk in /sys/bus/pci/devices/"$dev"/nvme/nvme*/nvme*n*; do
    [ -e "$blk" ] || continue
    b="$(basename "$blk")"
    used=""
    if grep -qE "^/dev/${b}(p[0-9]+)? " /proc/mounts /proc/swaps 2>/dev/null; then used="mounted or swap"; fi
    for h in "$blk"/holders/* "$blk"/"$b"p*/holders/*; do
      if [ -e "$h" ]; then used="held by $(basename "$h")"; fi
    done
    if [ -n "$used" ]; then
      echo "setup: $dev is in use ($b $used): not unbinding it" >&2
      exit 1
    fi
  done
  modprobe vfio-pci
  rebind "$dev" vfio-pci
  if [ "$(current_driver "$dev")" != vfio-pci ]; then
    echo "setup: $dev did not bind to vfio-pci" >&2
    exit 1
  fi
  group="$(basename "$(readlink "/sys/bus/pci/devices/$dev/iommu_group")")"
  echo "setup: $dev is bound to vfio-pci (IOMMU group $group, /dev/vfio/$group)"
  exit 0
fi
if [ -n "$unbind" ]; then
  dev="$(pci_dev "$unbind")"
  modprobe nvme 2>/dev/null || true
  rebind "$dev" ""
  drv="$(current_driver "$dev")"
  echo "setup: $dev is bound to ${drv:-no driver}"
  exit 0
fi

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
