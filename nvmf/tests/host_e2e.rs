//! The host library against the real `strata-tgt` (built by `cargo build --bins`), started on
//! free ports: identify fields, log pages, discovery, large transfers, error statuses,
//! reconnect, and a model-checked random workload at queue depth > 1 (read, write,
//! write_zeroes, flush, xor_write, checksum), with and without digests.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use strata_nvmf::host::{BlockingController, Controller, ControllerOptions, HostError, IoBuf};
use strata_nvmf::spec::fabrics::DISCOVERY_NQN;
use strata_nvmf::spec::identify::IdentifyController;
use strata_nvmf::spec::log::{lid, DiscoveryLogEntry, DiscoveryLogHeader};
use strata_nvmf::spec::{get_cstr, status};
use strata_nvmf::tcp::pdu;
use zerocopy::FromBytes;

mod common;
use common::{bin, free_port, wait_listening};

const NQN: &str = "nqn.2026-11.io.strata:default";
const BS: usize = 4096;

/// A running strata-tgt, killed on drop.
struct Target {
    child: Child,
    addr: SocketAddr,
    discovery: SocketAddr,
    sock: PathBuf,
}

impl Drop for Target {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.sock);
    }
}

static N: AtomicU32 = AtomicU32::new(0);

fn start_target() -> Target {
    let (p, d) = (free_port(), free_port());
    let sock = std::env::temp_dir().join(format!(
        "strata-host-e2e-{}-{}.sock",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let child = Command::new(bin("strata-tgt"))
        .args(["--interrupt-mode", "-m", "0x1", "--log-level", "warn", "-r"])
        .arg(&sock)
        .args(["--nvmf-port", &p.to_string()])
        .args(["--discovery-port", &d.to_string()])
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let mut t = Target {
        child,
        addr: format!("127.0.0.1:{p}").parse().unwrap(),
        discovery: format!("127.0.0.1:{d}").parse().unwrap(),
        sock,
    };
    wait_listening(&mut t.child, None, &[t.addr, t.discovery]);
    t
}

fn opts(io_queues: u16, qd: u16, digests: bool) -> ControllerOptions {
    ControllerOptions {
        io_queues,
        queue_depth: qd,
        hdgst: digests,
        ddgst: digests,
        kato_ms: 5000,
        timeout: Duration::from_secs(10),
        ..Default::default()
    }
}

#[test]
fn identify_log_pages_and_discovery() {
    let t = start_target();
    let mut c = BlockingController::connect(t.addr, NQN, opts(1, 32, false)).unwrap();
    let ctrl = c.controller();
    assert!(ctrl.vs() >= 0x0001_0300, "VS {:#x}", ctrl.vs());
    let id: IdentifyController = *ctrl.identify_data();
    assert_eq!(id.cntlid, ctrl.cntlid());
    assert_eq!(id.cntrltype, 1);
    assert_eq!(get_cstr(&id.subnqn).as_deref(), Some(NQN));
    assert!(id.nn >= 1);
    assert!(id.ioccsz >= 4, "IOCCSZ {}", id.ioccsz);
    assert!(
        id.sqes == 0x66 && id.cqes == 0x44,
        "SQES/CQES {:#x}/{:#x}",
        id.sqes,
        id.cqes
    );
    assert!(get_cstr(&id.sn).is_some_and(|s| !s.is_empty()));
    assert!(get_cstr(&id.mn).is_some_and(|s| !s.is_empty()));
    let ns = &c.namespaces()[0];
    assert_eq!((ns.nsid, ns.block_size, ns.nsze), (1, 4096, 65536));
    // Identify again through the admin helper, and a namespace that does not exist.
    let raw = c.identify(1, 0, 0).unwrap();
    assert_eq!(&raw[..], zerocopy::IntoBytes::as_bytes(&id));
    let e = c.identify(0, 77, 0).unwrap_err();
    assert!(matches!(e, HostError::Status { .. }), "{e}");
    // SMART log.
    let smart = c.get_log_page(lid::SMART, 0xffff_ffff, 512).unwrap();
    assert_eq!(smart.len(), 512);
    c.disconnect().unwrap();

    // Discovery: the log page lists the subsystem.
    let mut d = Controller::connect(t.discovery, DISCOVERY_NQN, opts(0, 1, false)).unwrap();
    let hdr = d.get_log_page(lid::DISCOVERY, 0, 1024, 0).unwrap();
    let h = DiscoveryLogHeader::read_from_bytes(&hdr[..]).unwrap();
    assert!(h.numrec >= 1, "discovery log has {} records", h.numrec);
    let n = h.numrec as usize;
    let all = d
        .get_log_page(lid::DISCOVERY, 0, 1024 * (n + 1), 0)
        .unwrap();
    let entries: Vec<(String, u8)> = (0..n)
        .filter_map(|i| {
            DiscoveryLogEntry::read_from_bytes(&all[1024 * (i + 1)..1024 * (i + 2)])
                .ok()
                .and_then(|e| get_cstr(&e.subnqn).map(|nqn| (nqn, e.treq)))
        })
        .collect();
    // TREQ: secure channel not required (10b), and bit 2, SQ flow control disable supported
    // (what makes `nvme connect-all` ask for it).
    assert!(
        entries.iter().any(|(s, treq)| s == NQN && *treq == 0x06),
        "{entries:?}"
    );
    d.disconnect().unwrap();
}

#[test]
fn large_transfers_errors_and_reconnect() {
    let t = start_target();
    let mut c = BlockingController::connect(t.addr, NQN, opts(2, 32, false)).unwrap();
    // 128 KiB (R2T, several H2CData PDUs if MAXH2CDATA is smaller), 1 MiB (split by MDTS).
    let big: Vec<u8> = (0..(1 << 20))
        .map(|i: usize| (i * 7 + i / 4096) as u8)
        .collect();
    c.write_blocks(1, 100, &big[..128 << 10]).unwrap();
    assert_eq!(c.read_blocks(1, 100, 32).unwrap(), &big[..128 << 10]);
    c.write_blocks(1, 1000, &big).unwrap();
    assert_eq!(c.read_blocks(1, 1000, 256).unwrap(), big);
    // Compare.
    assert!(c.compare_blocks(1, 1000, &big[..BS]).unwrap());
    assert!(!c.compare_blocks(1, 1001, &big[..BS]).unwrap());
    // Out of range and a bad namespace: statuses, and the connection stays up.
    let e = c.read_blocks(1, 65535, 2).unwrap_err();
    assert!(
        matches!(e, HostError::Status { sct: 0, sc } if sc == status::LBA_OUT_OF_RANGE.sc),
        "{e}"
    );
    let e = c
        .io(strata_nvmf::host::cmd::flush(9), Default::default())
        .unwrap_err();
    assert!(
        matches!(e, HostError::Status { sct: 0, sc } if sc == status::INVALID_NAMESPACE.sc),
        "{e}"
    );
    // Deallocate then write over it.
    c.deallocate(1, &[(2000, 8), (3000, 1)]).unwrap();
    // Keep-alive from poll, then reconnect and read back.
    c.keep_alive().unwrap();
    let old = c.controller().cntlid();
    let failed = c.reconnect().unwrap();
    assert!(failed.is_empty());
    assert_eq!(c.controller().io_queue_count(), 2);
    assert_ne!(c.controller().cntlid(), 0xffff);
    let _ = old;
    assert_eq!(c.read_blocks(1, 1000, 256).unwrap(), big);
    c.disconnect().unwrap();
}

/// One operation in flight in the model-checked workload.
struct Op {
    kind: u8,
    lba: u64,
    nlb: u64,
    chunk: u32,
}

/// A TCP transport counter of `nvmf_get_stats`, summed over the poll groups.
fn transport_stat(t: &Target, key: &str) -> u64 {
    let st = common::rpc_call(&t.sock, "nvmf_get_stats", &serde_json::json!({})).unwrap();
    st["poll_groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["transports"][0][key].as_u64().unwrap())
        .sum()
}

fn model_checked(digests: bool, ops: usize, seed: u64) {
    let t = start_target();
    let queues = 2usize;
    let mut c = Controller::connect(t.addr, NQN, opts(queues as u16, 16, digests)).unwrap();
    let region: u64 = 2048;
    let mut model = vec![0u8; region as usize * BS];
    // Start from a known state.
    let mut b = BlockingController::new(c, Duration::from_secs(10));
    b.write_zeroes(1, 0, region).unwrap();
    c = b.into_inner();
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut inflight: HashMap<u64, Op> = HashMap::new();
    let mut next = 0u64;
    let mut submitted = 0;
    let mut counts = [0usize; 6];
    let deadline = Instant::now() + Duration::from_secs(120);
    let qd = 12;
    // MDTS (the target's largest I/O), at most 64 blocks.
    let max_blocks = (c.max_transfer().unwrap_or(1 << 20) / BS).min(64) as u64;
    eprintln!("MDTS: {max_blocks} blocks");
    while submitted < ops || !inflight.is_empty() {
        assert!(
            Instant::now() < deadline,
            "workload stuck: {} in flight",
            inflight.len()
        );
        while submitted < ops && inflight.len() < qd * queues {
            let kind = rng.gen_range(0..6u8);
            let nlb = if rng.gen_bool(0.3) {
                rng.gen_range(1..=max_blocks)
            } else {
                rng.gen_range(1..=4)
            };
            let lba = rng.gen_range(0..region - nlb);
            // Keep in-flight ranges disjoint so the model is exact.
            if inflight
                .values()
                .any(|o| o.kind != 4 && lba < o.lba + o.nlb.max(1) && o.lba < lba + nlb)
            {
                continue;
            }
            let q = rng.gen_range(0..queues);
            let q = if c.io_queue(q).unwrap().free_slots() > 0 {
                q
            } else {
                1 - q
            };
            let cookie = next;
            next += 1;
            let range = lba as usize * BS..(lba + nlb) as usize * BS;
            let mut op = Op {
                kind,
                lba,
                nlb,
                chunk: 0,
            };
            let r = match kind {
                0 => c.read(q, 1, lba, IoBuf::Heap(vec![0; range.len()]), cookie),
                1 => {
                    let d: Vec<u8> = (0..range.len()).map(|_| rng.gen()).collect();
                    model[range].copy_from_slice(&d);
                    c.write(q, 1, lba, IoBuf::Heap(d), cookie)
                }
                2 => {
                    model[range].fill(0);
                    c.write_zeroes(q, 1, lba, nlb as u32, cookie)
                }
                3 => {
                    let d: Vec<u8> = (0..range.len()).map(|_| rng.gen()).collect();
                    for (m, x) in model[range].iter_mut().zip(&d) {
                        *m ^= *x;
                    }
                    c.xor_write(q, 1, lba, IoBuf::Heap(d), cookie)
                }
                4 => {
                    op.nlb = 0;
                    c.flush(q, 1, cookie)
                }
                _ => {
                    op.chunk = rng.gen_range(0..=5);
                    c.checksum(q, 1, lba, nlb as u32, op.chunk, cookie)
                }
            };
            r.unwrap();
            counts[kind as usize] += 1;
            inflight.insert(cookie, op);
            submitted += 1;
        }
        c.poll().unwrap();
        for q in 0..queues {
            while let Some(done) = c.pop_completion(q) {
                let op = inflight.remove(&done.cookie).expect("unknown cookie");
                assert!(
                    done.is_success(),
                    "op {} at {} x{} failed: {:?}",
                    op.kind,
                    op.lba,
                    op.nlb,
                    done.status()
                );
                let range = op.lba as usize * BS..(op.lba + op.nlb) as usize * BS;
                match op.kind {
                    0 => {
                        let d = done.data.unwrap().into_vec();
                        assert!(
                            d == model[range.clone()],
                            "read of {} x{} differs from the model",
                            op.lba,
                            op.nlb
                        );
                    }
                    5 => {
                        let d = done.data.unwrap().into_vec();
                        let chunk = op.chunk.max(1) as usize * BS;
                        let want: Vec<u8> = model[range]
                            .chunks(chunk)
                            .flat_map(|ch| pdu::digest(&[ch]).to_le_bytes())
                            .collect();
                        assert_eq!(
                            d, want,
                            "checksum of {} x{} chunk {}",
                            op.lba, op.nlb, op.chunk
                        );
                    }
                    _ => {}
                }
            }
        }
    }
    // Everything agrees at the end.
    let mut b = BlockingController::new(c, Duration::from_secs(10));
    assert!(
        b.read_blocks(1, 0, region).unwrap() == model,
        "final read-back differs"
    );
    eprintln!("ops by kind (read, write, zeroes, xor, flush, checksum): {counts:?}");
    b.disconnect().unwrap();
    // Malloc0 lends its memory: without data digests the reads were sent straight from it
    // (zcopy, on by default); with them, through a buffer the digest is computed over.
    let zcopy = transport_stat(&t, "zcopy_reads");
    if digests {
        assert_eq!(zcopy, 0, "a data-digest connection read through a view");
    } else {
        assert!(
            zcopy >= counts[0] as u64,
            "zcopy reads {zcopy} < reads {}",
            counts[0]
        );
    }
}

#[test]
fn model_checked_random_workload() {
    model_checked(false, 3000, 1);
}

#[test]
fn model_checked_random_workload_with_digests() {
    model_checked(true, 1500, 2);
}

/// Zero-copy reads to a host that stops reading: the target's sends go out in part, the rest of
/// each partly sent read is copied (frozen), and writes another host makes to the same blocks
/// meanwhile never show up half in a block: every 4 KiB block a read returns is wholly the old
/// or wholly the new data (single-block writes are atomic).
#[test]
fn zero_copy_reads_to_a_stalled_host_keep_blocks_whole() {
    let t = start_target();
    const READS: u64 = 96;
    const PER: u64 = 32; // 128 KiB each
    let blocks = READS * PER;
    let fill = |gen: u8| -> Vec<u8> {
        (0..blocks as usize * BS)
            .map(|i| ((i / BS) as u8).wrapping_mul(31) ^ gen ^ (i % 7) as u8)
            .collect()
    };
    let (old, new) = (fill(0x11), fill(0xa7));
    let mut w = BlockingController::connect(t.addr, NQN, opts(1, 32, false)).unwrap();
    w.write_blocks(1, 0, &old).unwrap();

    let mut c = Controller::connect(t.addr, NQN, opts(1, 128, false)).unwrap();
    for i in 0..READS {
        let buf = IoBuf::Heap(vec![0; (PER as usize) * BS]);
        c.read(0, 1, i * PER, buf, i).unwrap();
    }
    c.poll().unwrap();
    // The host reads nothing for a while: the target's socket fills and sends go out in part.
    std::thread::sleep(Duration::from_millis(300));
    w.write_blocks(1, 0, &new).unwrap();
    let mut got = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while got < READS {
        assert!(
            Instant::now() < deadline,
            "reads stuck: {got} of {READS} done"
        );
        c.poll().unwrap();
        while let Some(done) = c.pop_completion(0) {
            assert!(
                done.is_success(),
                "read {} failed: {:?}",
                done.cookie,
                done.status()
            );
            let d = done.data.unwrap().into_vec();
            let base = (done.cookie * PER) as usize * BS;
            for (k, blk) in d.chunks(BS).enumerate() {
                let at = base + k * BS;
                assert!(
                    blk == &old[at..at + BS] || blk == &new[at..at + BS],
                    "read {} block {k} is neither the old nor the new data (torn)",
                    done.cookie
                );
            }
            got += 1;
        }
    }
    let reads = transport_stat(&t, "zcopy_reads");
    assert!(reads >= READS, "zcopy reads {reads} < {READS}");
    assert!(
        transport_stat(&t, "zcopy_frozen") > 0,
        "no send went out in part"
    );
    // And the new data is what is there now.
    assert!(
        w.read_blocks(1, 0, blocks).unwrap() == new,
        "final read-back"
    );
}
