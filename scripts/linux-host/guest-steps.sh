# Shared by the guest scripts of the Linux-host tests (sourced, not run): numbered steps that
# print "STEP <name> OK" / "STEP <name> FAILED", hand-shakes with the test through files in
# $SHARE, and the block device of an NVMe/TCP subsystem's namespace 1.
export PATH="$PATH:/usr/sbin:/sbin"
ADDR=10.0.2.2
step=""
fail() {
  echo "STEP $step FAILED: $*"
  exit 1
}
begin() {
  step="$1"
  echo
  echo "=== $step"
}
ok() { echo "STEP $step OK"; }
trap 'rc=$?; [ $rc = 0 ] || { echo "STEP ${step:-setup} FAILED (status $rc)"; dmesg | grep -i nvme | tail -n 30; }' EXIT

# Waits up to $2 s for the test to write $SHARE/$1.
wait_file() {
  local i
  for ((i = 0; i < $2 * 5; i++)); do
    [ -e "$SHARE/$1" ] && return 0
    sleep 0.2
  done
  fail "the test did not write $1 within $2 s"
}
# Block device of namespace 1 of subsystem $1.
ns_dev() {
  local b i
  for ((i = 0; i < 75; i++)); do
    for b in /sys/block/nvme*; do
      [ -e "$b" ] || continue
      case "${b##*/}" in nvme*c*n*) continue ;; esac
      [ "$(cat "$b/device/subsysnqn" 2>/dev/null)" = "$1" ] || continue
      [ -b "/dev/${b##*/}" ] && echo "${b##*/}" && return 0
    done
    sleep 0.2
  done
  return 1
}
