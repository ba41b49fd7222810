//! DH-HMAC-CHAP on the host side: after a Connect whose answer asks for it (AUTHREQ ATR), the
//! queue runs one transaction — Negotiate (every hash and DH group), Challenge, Reply
//! (with a challenge to the controller when a controller key is set), Success1, Success2 —
//! before anything else is sent on it. A controller that cannot prove itself gets
//! AUTH_Failure2 and the connection fails.

use super::{DataDir, HostError, IoBuf, QueuePair};
use crate::auth::message::{self, Challenge, Negotiate, Reply};
use crate::auth::{self, AuthFailure, DhchapSecret, DH_GROUPS};
use crate::spec::fabrics;
use crate::spec::Sqe;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

/// A host's DH-HMAC-CHAP secrets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DhchapKeys {
    pub key: DhchapSecret,
    /// Set: the controller must prove itself too (bidirectional).
    pub ctrl_key: Option<DhchapSecret>,
}

/// AUTH_Receive buffer: enough for ffdhe8192.
const RECV_LEN: usize = 4096;

fn auth_sqe(fctype: u8, len: usize) -> Sqe {
    Sqe {
        opcode: crate::spec::cmd::admin::FABRICS,
        flags: super::cmd::PSDT_SGL,
        nsid: fctype as u32,
        cdw10: ((message::SECP_NVME_AUTH as u32) << 24)
            | ((message::SPSP as u32) << 16)
            | ((message::SPSP as u32) << 8),
        cdw11: len as u32,
        ..Default::default()
    }
}

fn send(qp: &mut QueuePair, msg: Vec<u8>, timeout: Duration) -> Result<(), HostError> {
    let sqe = auth_sqe(fabrics::FCTYPE_AUTH_SEND, msg.len());
    qp.exec(sqe, DataDir::ToController(IoBuf::Heap(msg)), timeout)?
        .into_result()
        .map(|_| ())
}

fn receive(qp: &mut QueuePair, timeout: Duration) -> Result<Vec<u8>, HostError> {
    let sqe = auth_sqe(fabrics::FCTYPE_AUTH_RECV, RECV_LEN);
    let c = qp
        .exec_before_close(
            sqe,
            DataDir::FromController(IoBuf::Heap(vec![0; RECV_LEN])),
            timeout,
        )?
        .into_result()?;
    let mut d = c.data.map(IoBuf::into_vec).unwrap_or_default();
    d.truncate(c.transferred as usize);
    if let Some((message::TYPE_COMMON, message::ID_FAILURE1, _)) = message::header(&d) {
        return Err(HostError::Auth(format!(
            "the controller refused the authentication (explanation {:#04x})",
            d.get(7).copied().unwrap_or(0)
        )));
    }
    Ok(d)
}

fn fail(qp: &mut QueuePair, tid: u16, why: AuthFailure, timeout: Duration) -> HostError {
    let _ = send(
        qp,
        message::failure(message::ID_FAILURE2, tid, why),
        timeout,
    );
    HostError::Auth(why.to_string())
}

/// Runs the transaction on a just-connected queue.
pub fn authenticate(
    qp: &mut QueuePair,
    keys: &DhchapKeys,
    hostnqn: &str,
    subnqn: &str,
    timeout: Duration,
) -> Result<(), HostError> {
    static TID: AtomicU16 = AtomicU16::new(0);
    let tid = TID.fetch_add(1, Ordering::Relaxed);
    let n = Negotiate {
        tid,
        sc_c: 0,
        hashes: vec![1, 2, 3],
        dhgroups: DH_GROUPS.iter().map(|g| *g as u8).collect(),
    };
    send(qp, n.encode(), timeout)?;
    let got = receive(qp, timeout)?;
    let c = match Challenge::decode(&got) {
        Ok(c) if c.tid == tid => c,
        Ok(_) => return Err(fail(qp, tid, AuthFailure::IncorrectPayload, timeout)),
        Err(why) => return Err(fail(qp, tid, why, timeout)),
    };
    let (dh_value, shared) = match c.group.keypair() {
        Some((y, pubv)) => match c.group.shared(&y, &c.dh_value) {
            Ok(z) => (pubv, Some(z)),
            Err(why) => return Err(fail(qp, tid, why, timeout)),
        },
        None => (Vec::new(), None),
    };
    let ch = auth::augmented_challenge(c.hash, shared.as_deref(), &c.challenge);
    let response = auth::host_response(
        c.hash,
        &keys.key.transformed(hostnqn),
        &ch,
        c.seqnum,
        tid,
        hostnqn,
        subnqn,
    );
    let bidi = keys.ctrl_key.as_ref().map(|k| {
        let c2 = auth::random_bytes(c.hash.digest_len());
        let s2 = auth::next_seqnum();
        let cc = auth::augmented_challenge(c.hash, shared.as_deref(), &c2);
        let want = auth::ctrl_response(
            c.hash,
            &k.transformed(subnqn),
            &cc,
            s2,
            tid,
            hostnqn,
            subnqn,
        );
        (c2, s2, want)
    });
    let r = Reply {
        tid,
        response,
        ctrl_challenge: bidi.as_ref().map(|(c2, s2, _)| (c2.clone(), *s2)),
        dh_value,
    };
    send(qp, r.encode(), timeout)?;
    let s1 = receive(qp, timeout)?;
    match message::header(&s1) {
        Some((message::TYPE_DHCHAP, message::ID_SUCCESS1, t)) if t == tid && s1.len() >= 16 => {}
        _ => return Err(fail(qp, tid, AuthFailure::IncorrectMessage, timeout)),
    }
    if let Some((_, _, want)) = bidi {
        let hl = c.hash.digest_len();
        let ok = s1[8] == 1 && s1.len() >= 16 + hl && auth::same(&s1[16..16 + hl], &want);
        if !ok {
            return Err(fail(qp, tid, AuthFailure::Failed, timeout));
        }
        send(qp, message::success2(tid), timeout)?;
    }
    tracing::debug!(
        qid = qp.qid(),
        hash = c.hash.name(),
        dhgroup = c.group.name(),
        "queue authenticated"
    );
    Ok(())
}
