//! `bdev_parity_verify`: the parity node reads its volume and every data member piece by
//! piece, recomputes P (XOR) or Q (Σ g^i·D_i) with ISA-L and compares, on a consistent
//! view (read again while deltas move the parity: [`ParityVolume::stamp`]). A piece that
//! still differs is read again up to [`ATTEMPTS`] times before it counts as a mismatch;
//! with `repair` the recomputed parity is written. Rate-limited, reported through the job
//! engine.

use super::piece::{self, PIECE_BYTES};
use super::superblock::Kind;
use super::volume::{coef, ParityVolume};
use crate::io::{IoStatus, IoType};
use crate::kernels;
use crate::volume::job::{JobRun, Progress};
use crate::wait;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Reads of a differing piece before it counts as a mismatch.
pub const ATTEMPTS: u32 = 4;

pub struct VerifyJob {
    pub progress: Progress,
    pub repair: bool,
    pub max_bandwidth_mb_sec: u64,
    pub mismatches: AtomicU64,
    pub repaired: AtomicU64,
    /// Pieces P was found right by checksums alone (no data moved).
    pub by_checksum: AtomicU64,
}

impl VerifyJob {
    pub fn info(&self) -> Value {
        let mut v = self.progress.report().json(self.progress.kind);
        v["repair"] = json!(self.repair);
        v["mismatched_blocks"] = json!(self.mismatches.load(Ordering::Relaxed));
        v["repaired_blocks"] = json!(self.repaired.load(Ordering::Relaxed));
        v["pieces_by_checksum"] = json!(self.by_checksum.load(Ordering::Relaxed));
        v
    }
}

/// Whether P's digest of blocks `lba..lba+n` is the one the members' digests give, on a
/// consistent view (read again while deltas move P; false when it stays unsettled or a
/// digest cannot be had: the caller then compares the data).
async fn p_matches_by_digest(
    v: &ParityVolume,
    base: &crate::IoChannel,
    inputs: &[(crate::IoChannel, u64)],
    lba: u64,
    n: u64,
    zero_crc: u32,
) -> bool {
    let chunk = n as u32;
    for attempt in 1..=ATTEMPTS {
        ParityVolume::back_off(attempt).await;
        let before = v.stamp(lba, n);
        let waits: Vec<_> = inputs
            .iter()
            .map(|(ch, _)| wait::checksums(ch, lba, n, chunk))
            .collect();
        let mut want = if inputs.len().is_multiple_of(2) {
            zero_crc
        } else {
            0
        };
        for w in waits {
            match w.await.as_deref() {
                Ok([c]) => want ^= c,
                _ => return false,
            }
        }
        let have = match wait::checksums(base, v.data_offset + lba, n, chunk)
            .await
            .as_deref()
        {
            Ok([c]) => *c,
            _ => return false,
        };
        if v.stamp(lba, n) == before {
            return have == want;
        }
    }
    false
}

/// Runs the verify job to its end and records its outcome on the volume.
pub async fn run(v: Arc<ParityVolume>, job: Arc<VerifyJob>) {
    let outcome = verify(&v, &job).await;
    let mut info = job.info();
    let (state, error) = match outcome {
        Ok(()) => ("done", None),
        Err(e) => ("failed", Some(e)),
    };
    info["result"] = json!(state);
    info["error"] = json!(error);
    tracing::info!(parity = %v.name, outcome = %info, "parity verify ended");
    *v.last_verify.lock() = Some(info);
    v.job.release();
}

async fn verify(v: &ParityVolume, job: &VerifyJob) -> Result<(), String> {
    if let Some(m) = v.members.lock().iter().find(|m| m.lost) {
        return Err(format!(
            "member {} is lost: rebuild it and add it again first",
            m.index
        ));
    }
    let members: Vec<_> = v
        .members
        .lock()
        .iter()
        .map(|m| (m.peer.clone(), coef(v.kind, m.index)))
        .collect();
    if members.is_empty() {
        return Err("the group has no data members".into());
    }
    let base = v.base.channel().map_err(|e| e.to_string())?;
    let mut chans = Vec::with_capacity(members.len());
    for (p, c) in &members {
        let ch = p.channel().map_err(|e| format!("member {}: {e}", p.name))?;
        chans.push((ch, p.num_blocks(), *c, p.name.clone()));
    }
    let coefs: Vec<u8> = chans.iter().map(|c| c.2).collect();
    let inputs: Vec<_> = chans.iter().map(|c| (c.0.clone(), c.1)).collect();
    let bs = v.block_size as u64;
    let piece_blocks = PIECE_BYTES / bs;
    let mut run = JobRun::new(&job.progress);
    let mut lba = 0;
    let io_err =
        |what: &str, lba: u64, st: IoStatus| format!("reading {what} at block {lba}: {st:?}");
    // P by checksums: CRC32C is affine over GF(2), so for members D_1..D_k of one length,
    // crc(D_1 ^ ... ^ D_k) = crc(D_1) ^ ... ^ crc(D_k) ^ (k + 1 mod 2)·crc(zeros). The
    // members and P each send one digest per piece; only a piece whose digests disagree is
    // read and compared (Q's GF scaling is not expressible in its members' digests).
    let digests = v.kind == Kind::P
        && v.base.supports(IoType::Checksum)
        && members.iter().all(|(p, _)| p.supports(IoType::Checksum));
    let mut zero_crc: Option<(u64, u32)> = None;
    while lba < v.num_blocks {
        let n = (v.num_blocks - lba).min(piece_blocks);
        if digests && inputs.iter().all(|(_, have)| *have >= lba + n) {
            let zero = match zero_crc {
                Some((len, c)) if len == n => c,
                _ => {
                    let c = kernels::crc32c(&vec![0u8; (n * bs) as usize]);
                    zero_crc = Some((n, c));
                    c
                }
            };
            if p_matches_by_digest(v, &base, &inputs, lba, n, zero).await {
                job.by_checksum.fetch_add(1, Ordering::Relaxed);
                lba += n;
                if run.step(n * bs, job.max_bandwidth_mb_sec).await.is_err() {
                    return Err("cancelled".into());
                }
                continue;
            }
        }
        let mut attempt = 0;
        loop {
            attempt += 1;
            if attempt > super::volume::MAX_ATTEMPTS {
                return Err(format!(
                    "blocks {lba}+{n} kept changing: the verify could not read them still"
                ));
            }
            ParityVolume::back_off(attempt).await;
            // The members first, then the parity; again if a delta moved in between.
            let before = v.stamp(lba, n);
            let data = piece::read_inputs(&inputs, lba, n)
                .await
                .map_err(|st| io_err("the data members", lba, st))?;
            let have = piece::read(&base, v.data_offset + lba, n)
                .await
                .map_err(|st| io_err(&v.name, lba, st))?;
            if v.stamp(lba, n) != before {
                continue;
            }
            let mut want = piece::buffer((n * bs) as usize)
                .await
                .map_err(|st| io_err("scratch", lba, st))?;
            let srcs: Vec<&[u8]> = data.iter().map(|b| b.as_slice()).collect();
            kernels::gf_combine(&coefs, &srcs, want.as_mut_slice()).map_err(|e| e.to_string())?;
            if have.as_slice() == want.as_slice() {
                break;
            }
            if attempt < ATTEMPTS {
                strata_reactor::sleep(Duration::from_millis(20)).await;
                continue;
            }
            let bad = (0..n as usize)
                .filter(|&b| {
                    let r = b * bs as usize..(b + 1) * bs as usize;
                    have.as_slice()[r.clone()] != want.as_slice()[r]
                })
                .count() as u64;
            job.mismatches.fetch_add(bad, Ordering::Relaxed);
            tracing::warn!(parity = %v.name, lba, blocks = n, mismatched = bad, "parity differs from the data members");
            if job.repair {
                // The difference is XORed in (a write of `want` would wipe out deltas that
                // landed since the read), and counted as a change like a delta.
                kernels::xor_into(want.as_mut_slice(), have.as_slice());
                drop(have);
                v.bump(lba, n);
                let fixed =
                    piece::write(&base, IoType::XorWrite, v.data_offset + lba, want, 1).await;
                v.bump(lba, n);
                fixed.map_err(|st| format!("repairing block {lba}: {st:?}"))?;
                job.repaired.fetch_add(bad, Ordering::Relaxed);
            }
            break;
        }
        lba += n;
        if run.step(n * bs, job.max_bandwidth_mb_sec).await.is_err() {
            return Err("cancelled".into());
        }
    }
    Ok(())
}
