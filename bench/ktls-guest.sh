#!/usr/bin/env bash
# Kernel TLS against user-space TLS, measured where a kernel offers kTLS: this machine's does
# not, so the measurement runs in a QEMU guest (Debian's kernel, `modprobe tls`), strata-tgt
# on guest core 0 and strata-perf on core 1 over the guest's loopback, in three set-ups:
# plain TCP, TLS with the record layer in user space (both sides), TLS with kTLS (both
# sides). Under TCG emulation the absolute figures mean little; the ratios between the rows
# of one run are the result.
#   usage: bench/ktls-guest.sh [seconds per run, default 5]     (after cargo build --release)
set -euo pipefail
cd "$(dirname "$0")/.."
T=${1:-5}
BIN=$PWD/build/release
[ -x "$BIN/strata-tgt" ] && [ -x "$BIN/strata-perf" ] || { echo "cargo build --release first" >&2; exit 1; }
share=$(mktemp -d); trap 'rm -rf "$share"' EXIT
NQN=nqn.2026-12.io.strata:ktls; HOST=nqn.2014-08.org.nvmexpress:uuid:2f1e0d9c-8b7a-4695-a483-72615f4e3d2c
HOSTP=nqn.2014-08.org.nvmexpress:uuid:3a4b5c6d-7e8f-4091-a2b3-c4d5e6f70819
python3 -c 'import os,base64,zlib; k=os.urandom(32); print("NVMeTLSkey-1:01:"+base64.b64encode(k+zlib.crc32(k).to_bytes(4,"little")).decode()+":",end="")' > "$share/psk.key"
for ktls in true false; do cat > "$share/tgt-$ktls.json" <<EOF
{"subsystems":[{"subsystem":"keyring","config":[{"method":"keyring_file_add_key","params":{"name":"k","path":"/run/share/psk.key"}}]},
{"subsystem":"bdev","config":[{"method":"bdev_malloc_create","params":{"name":"M0","num_blocks":65536,"block_size":4096}}]},
{"subsystem":"nvmf","config":[{"method":"nvmf_create_transport","params":{"trtype":"TCP","enable_ktls":$ktls}},
{"method":"nvmf_create_subsystem","params":{"nqn":"$NQN","allow_any_host":false}},
{"method":"nvmf_subsystem_add_ns","params":{"nqn":"$NQN","namespace":{"bdev_name":"M0","nsid":1}}},
{"method":"nvmf_subsystem_add_host","params":{"nqn":"$NQN","host":"$HOST","psk":"k"}},
{"method":"nvmf_subsystem_add_host","params":{"nqn":"$NQN","host":"$HOSTP"}},
{"method":"nvmf_subsystem_add_listener","params":{"nqn":"$NQN","listen_address":{"trtype":"TCP","adrfam":"IPv4","traddr":"127.0.0.1","trsvcid":"4420"}}},
{"method":"nvmf_subsystem_add_listener","params":{"nqn":"$NQN","secure_channel":true,"listen_address":{"trtype":"TCP","adrfam":"IPv4","traddr":"127.0.0.1","trsvcid":"4421"}}}]}]}
EOF
done
cat > "$share/run.sh" <<EOF
set -u
modprobe tls; for m in ctr ghash-generic gcm aesni-intel ghash-clmulni-intel; do modprobe \$m 2>/dev/null || true; done
ip link set lo up
chmod 600 /run/share/psk.key
echo "kernel \$(uname -r), ULPs: \$(cat /proc/sys/net/ipv4/tcp_available_ulp)"
run() { # label ktls-config port host extra...
  local label=\$1 cfg=\$2 port=\$3 host=\$4; shift 4
  $BIN/strata-tgt -m 0x1 --no-default --json /run/share/tgt-\$cfg.json -r /tmp/t.sock --log-level info > /tmp/tgt.log 2>&1 &
  local tp=\$!
  for _ in \$(seq 1 300); do (exec 3<>/dev/tcp/127.0.0.1/4421) 2>/dev/null && break; sleep 0.1; done
  for w in "-q 32 -o 4096 -w randread" "-q 16 -o 131072 -w read"; do
    r=\$($BIN/strata-perf -c 0x2 -t $T --json \$w -r "trtype:TCP adrfam:IPv4 traddr:127.0.0.1 trsvcid:\$port subnqn:$NQN hostnqn:\$host" "\$@" 2>&1 |
      python3 -c 'import json,sys; t=json.load(sys.stdin)["total"]; print(int(t["iops"]), round(t["mib_s"],1), "MiB/s", round(t["avg_us"],1), "us")' 2>/dev/null || echo FAILED)
    echo "RESULT \$label | \$w | \$r"
  done
  grep -o 'ktls=[a-z]*' /tmp/tgt.log | sort | uniq -c | sed "s/^/      target \$label: /"
  kill \$tp; wait \$tp 2>/dev/null
}
run plain true 4420 $HOSTP
run tls-user false 4421 $HOST --psk-path /run/share/psk.key --disable-ktls
run tls-kernel true 4421 $HOST --psk-path /run/share/psk.key
echo "ALL STEPS OK"
EOF
LINUX_HOST_MEM=${LINUX_HOST_MEM:-2048M} scripts/linux-host/run-guest.sh --timeout 900 --share "$share" -- "bash /run/share/run.sh" >/dev/null 2>&1 || true
grep -E "RESULT|target|kernel|ALL STEPS" "$share/guest-output.log" || { tail -30 "$share/guest-output.log"; exit 1; }
