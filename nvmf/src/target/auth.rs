//! DH-HMAC-CHAP on the target: the keys a subsystem holds for a host, the digests and DH
//! groups the target allows, and one queue's authentication transaction. Every queue of a
//! host with a key authenticates on its own (as Linux does): its Connect answer says so
//! (AUTHREQ ATR), and until the transaction succeeds only Fabrics commands run on it.
//!
//! A protocol failure is not a command error: AUTH_Send completes successfully, and the
//! next AUTH_Receive returns AUTH_Failure1 with the reason, after which the connection
//! closes (the controller with it, for the admin queue).

use crate::auth::message::{self, Challenge, Negotiate, Reply};
use crate::auth::{self, AuthFailure, DhGroup, DhchapHash, DhchapSecret, DH_GROUPS};
use num_bigint::BigUint;
use std::sync::Arc;
use zeroize::Zeroizing;

/// The secrets a subsystem holds for one host, with their keyring names.
#[derive(Debug, Clone)]
pub struct HostKeys {
    pub key_name: String,
    pub key: Arc<DhchapSecret>,
    /// For bidirectional authentication (the controller proves itself too).
    pub ctrlr_key: Option<(String, Arc<DhchapSecret>)>,
}

/// The digests and DH groups the target may choose (SPDK's `nvmf_set_config`
/// `dhchap_digests` / `dhchap_dhgroups`); the strongest the host offers is taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthPolicy {
    pub digests: Vec<DhchapHash>,
    pub dhgroups: Vec<DhGroup>,
}

impl Default for AuthPolicy {
    fn default() -> Self {
        AuthPolicy {
            digests: vec![DhchapHash::Sha256, DhchapHash::Sha384, DhchapHash::Sha512],
            dhgroups: DH_GROUPS.to_vec(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// Waiting for AUTH_Negotiate.
    Negotiate,
    /// The host reads the Challenge next.
    Challenge,
    /// Waiting for the Reply.
    Reply,
    /// The host reads Success1 next.
    Success1,
    /// Waiting for Success2 (bidirectional).
    Success2,
    /// The host reads Failure1 next; then the connection closes.
    Failure1(AuthFailure),
    Done,
}

/// What AUTH_Receive returns.
#[derive(Debug)]
pub struct Received {
    pub message: Vec<u8>,
    /// The transaction failed: close the connection after this answer.
    pub close: bool,
}

/// One queue's authentication.
pub struct QueueAuth {
    hostnqn: String,
    subnqn: String,
    host_key: Zeroizing<Vec<u8>>,
    ctrl_key: Option<Zeroizing<Vec<u8>>>,
    policy: AuthPolicy,
    step: Step,
    tid: u16,
    hash: DhchapHash,
    group: DhGroup,
    dh_private: Option<BigUint>,
    challenge: Vec<u8>,
    seqnum: u32,
    ctrl_response: Option<Vec<u8>>,
    /// Transactions started while not authenticated (each costs a DH key pair).
    attempts: u32,
    /// The queue has authenticated (it stays so while a re-authentication runs).
    pub authenticated: bool,
}

/// Transactions a queue may start before it has authenticated once.
const MAX_ATTEMPTS: u32 = 3;

impl std::fmt::Debug for QueueAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueueAuth")
            .field("hostnqn", &self.hostnqn)
            .field("step", &self.step)
            .field("authenticated", &self.authenticated)
            .finish()
    }
}

impl QueueAuth {
    pub fn new(keys: &HostKeys, hostnqn: &str, subnqn: &str, policy: AuthPolicy) -> QueueAuth {
        QueueAuth {
            hostnqn: hostnqn.to_string(),
            subnqn: subnqn.to_string(),
            host_key: Zeroizing::new(keys.key.transformed(hostnqn)),
            ctrl_key: keys
                .ctrlr_key
                .as_ref()
                .map(|(_, k)| Zeroizing::new(k.transformed(subnqn))),
            policy,
            step: Step::Negotiate,
            tid: 0,
            hash: DhchapHash::Sha256,
            group: DhGroup::Null,
            dh_private: None,
            challenge: Vec::new(),
            seqnum: 0,
            ctrl_response: None,
            attempts: 0,
            authenticated: false,
        }
    }

    /// Takes the keys in force now (a Negotiate starts with them, so a rotation or a removal
    /// reaches re-authentication); None: the host has no key any more.
    pub fn reload(&mut self, keys: Option<&HostKeys>) {
        match keys {
            Some(k) => {
                self.host_key = Zeroizing::new(k.key.transformed(&self.hostnqn));
                self.ctrl_key = k
                    .ctrlr_key
                    .as_ref()
                    .map(|(_, c)| Zeroizing::new(c.transformed(&self.subnqn)));
            }
            None => {
                self.host_key.clear();
                self.ctrl_key = None;
            }
        }
    }

    /// The hash and DH group of the last negotiation.
    pub fn chosen(&self) -> (DhchapHash, DhGroup) {
        (self.hash, self.group)
    }

    /// Takes an AUTH_Send payload. Errors become the Failure1 the host reads next; the
    /// result says whether the host gave up (Failure2: close the connection).
    pub fn send(&mut self, msg: &[u8]) -> Result<bool, AuthFailure> {
        let Some((ty, id, tid)) = message::header(msg) else {
            return self.fail(AuthFailure::IncorrectPayload);
        };
        match (ty, id) {
            // A Negotiate restarts the transaction at any time (re-authentication).
            (message::TYPE_COMMON, message::ID_NEGOTIATE) => {
                self.tid = tid;
                self.dh_private = None;
                if !self.authenticated {
                    self.attempts += 1;
                    if self.attempts > MAX_ATTEMPTS {
                        return self.fail(AuthFailure::IncorrectMessage);
                    }
                }
                if self.host_key.is_empty() {
                    return self.fail(AuthFailure::Failed);
                }
                match self.negotiate(msg) {
                    Ok(()) => {
                        self.step = Step::Challenge;
                        Ok(false)
                    }
                    Err(e) => self.fail(e),
                }
            }
            (message::TYPE_COMMON, message::ID_FAILURE2) => {
                self.authenticated = false;
                self.dh_private = None;
                self.step = Step::Negotiate;
                Ok(true)
            }
            (message::TYPE_DHCHAP, message::ID_REPLY) if self.step == Step::Reply => {
                if tid != self.tid {
                    return self.fail(AuthFailure::IncorrectPayload);
                }
                match self.reply(msg) {
                    Ok(()) => Ok(false),
                    Err(e) => self.fail(e),
                }
            }
            (message::TYPE_DHCHAP, message::ID_SUCCESS2) if self.step == Step::Success2 => {
                if tid != self.tid || msg.len() < 16 {
                    return self.fail(AuthFailure::IncorrectPayload);
                }
                self.authenticated = true;
                self.step = Step::Done;
                Ok(false)
            }
            _ => self.fail(AuthFailure::IncorrectMessage),
        }
    }

    /// A failed transaction: nothing runs on the queue any more (it closes after the
    /// host reads Failure1).
    fn fail(&mut self, why: AuthFailure) -> Result<bool, AuthFailure> {
        self.step = Step::Failure1(why);
        self.authenticated = false;
        self.dh_private = None;
        Err(why)
    }

    fn negotiate(&mut self, msg: &[u8]) -> Result<(), AuthFailure> {
        let n = Negotiate::decode(msg)?;
        if n.sc_c != 0 {
            return Err(AuthFailure::ScMismatch);
        }
        self.hash = self
            .policy
            .digests
            .iter()
            .copied()
            .filter(|h| n.hashes.contains(&(*h as u8)))
            .max()
            .ok_or(AuthFailure::HashUnusable)?;
        self.group = self
            .policy
            .dhgroups
            .iter()
            .copied()
            .filter(|g| n.dhgroups.contains(&(*g as u8)))
            .max()
            .ok_or(AuthFailure::DhGroupUnusable)?;
        Ok(())
    }

    fn reply(&mut self, msg: &[u8]) -> Result<(), AuthFailure> {
        let r = Reply::decode(msg, self.hash.digest_len())?;
        let shared = match (&self.dh_private, self.group) {
            (None, DhGroup::Null) if r.dh_value.is_empty() => None,
            (Some(x), g) if g != DhGroup::Null => Some(g.shared(x, &r.dh_value)?),
            _ => return Err(AuthFailure::IncorrectPayload),
        };
        let ch = auth::augmented_challenge(self.hash, shared.as_deref(), &self.challenge);
        let want = auth::host_response(
            self.hash,
            &self.host_key,
            &ch,
            self.seqnum,
            self.tid,
            &self.hostnqn,
            &self.subnqn,
        );
        if !auth::same(&want, &r.response) {
            return Err(AuthFailure::Failed);
        }
        self.ctrl_response = match (&r.ctrl_challenge, &self.ctrl_key) {
            (None, _) => None,
            // The host wants the controller to prove itself, and it has no key to.
            (Some(_), None) => return Err(AuthFailure::Failed),
            (Some((c2, s2)), Some(kc)) => {
                let cc = auth::augmented_challenge(self.hash, shared.as_deref(), c2);
                Some(auth::ctrl_response(
                    self.hash,
                    kc,
                    &cc,
                    *s2,
                    self.tid,
                    &self.hostnqn,
                    &self.subnqn,
                ))
            }
        };
        if self.ctrl_response.is_none() {
            self.authenticated = true;
        }
        self.dh_private = None;
        self.step = Step::Success1;
        Ok(())
    }

    /// Produces the AUTH_Receive payload for the transaction's step; None when the host
    /// reads when nothing is due (a protocol error: Failure1 is returned and the
    /// connection closes).
    pub fn receive(&mut self) -> Received {
        match self.step {
            Step::Challenge => {
                self.challenge = auth::random_bytes(self.hash.digest_len());
                self.seqnum = auth::next_seqnum();
                let dh_value = match self.group.keypair() {
                    Some((x, y)) => {
                        self.dh_private = Some(x);
                        y
                    }
                    None => {
                        self.dh_private = None;
                        Vec::new()
                    }
                };
                let c = Challenge {
                    tid: self.tid,
                    hash: self.hash,
                    group: self.group,
                    seqnum: self.seqnum,
                    challenge: self.challenge.clone(),
                    dh_value,
                };
                self.step = Step::Reply;
                Received {
                    message: c.encode(),
                    close: false,
                }
            }
            Step::Success1 => {
                let m = message::success1(
                    self.tid,
                    self.hash.digest_len(),
                    self.ctrl_response.as_deref(),
                );
                self.step = if self.ctrl_response.is_some() {
                    Step::Success2
                } else {
                    Step::Done
                };
                Received {
                    message: m,
                    close: false,
                }
            }
            Step::Failure1(why) => {
                self.authenticated = false;
                self.step = Step::Negotiate;
                Received {
                    message: message::failure(message::ID_FAILURE1, self.tid, why),
                    close: true,
                }
            }
            _ => {
                self.authenticated = false;
                self.step = Step::Negotiate;
                Received {
                    message: message::failure(
                        message::ID_FAILURE1,
                        self.tid,
                        AuthFailure::IncorrectMessage,
                    ),
                    close: true,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOST: &str = "nqn.2014-08.org.nvmexpress:uuid:00000000-0000-0000-0000-000000000001";
    const SUB: &str = "nqn.2026-12.io.strata:auth";

    fn keys(ctrl: bool) -> HostKeys {
        HostKeys {
            key_name: "k".into(),
            key: Arc::new(DhchapSecret {
                transform: 1,
                key: vec![7; 32],
            }),
            ctrlr_key: ctrl.then(|| {
                (
                    "c".into(),
                    Arc::new(DhchapSecret {
                        transform: 0,
                        key: vec![9; 48],
                    }),
                )
            }),
        }
    }

    fn host_reply(
        c: &Challenge,
        host: &HostKeys,
        bidi: Option<(&[u8], u32)>,
    ) -> (Vec<u8>, Option<Vec<u8>>) {
        let (dh_value, z) = match c.group.keypair() {
            Some((y, pubv)) => (pubv, Some(c.group.shared(&y, &c.dh_value).unwrap())),
            None => (Vec::new(), None),
        };
        let ch = auth::augmented_challenge(c.hash, z.as_deref(), &c.challenge);
        let r1 = auth::host_response(
            c.hash,
            &host.key.transformed(HOST),
            &ch,
            c.seqnum,
            c.tid,
            HOST,
            SUB,
        );
        let want_r2 = match (bidi, &host.ctrlr_key) {
            (Some((c2, s2)), Some((_, kc))) => {
                let cc = auth::augmented_challenge(c.hash, z.as_deref(), c2);
                Some(auth::ctrl_response(
                    c.hash,
                    &kc.transformed(SUB),
                    &cc,
                    s2,
                    c.tid,
                    HOST,
                    SUB,
                ))
            }
            _ => None,
        };
        let r = Reply {
            tid: c.tid,
            response: r1,
            ctrl_challenge: bidi.map(|(c2, s2)| (c2.to_vec(), s2)),
            dh_value,
        };
        (r.encode(), want_r2)
    }

    fn negotiate(q: &mut QueueAuth, groups: &[u8]) -> Challenge {
        let n = Negotiate {
            tid: 4,
            sc_c: 0,
            hashes: vec![1, 2, 3],
            dhgroups: groups.to_vec(),
        };
        q.send(&n.encode()).unwrap();
        Challenge::decode(&q.receive().message).unwrap()
    }

    #[test]
    fn one_way_and_bidirectional_transactions_succeed() {
        for (groups, bidi) in [(vec![0u8], false), (vec![0, 1], true)] {
            let k = keys(bidi);
            let mut q = QueueAuth::new(&k, HOST, SUB, AuthPolicy::default());
            let c = negotiate(&mut q, &groups);
            assert_eq!(c.hash, DhchapHash::Sha512, "the strongest hash offered");
            assert_eq!(c.group as u8, *groups.iter().max().unwrap());
            let c2 = [3u8; 64];
            let (reply, want_r2) = host_reply(&c, &k, bidi.then_some((&c2[..], 77)));
            assert_eq!(q.send(&reply), Ok(false));
            let s1 = q.receive().message;
            assert_eq!((s1[1], s1[6]), (message::ID_SUCCESS1, 64));
            match want_r2 {
                Some(r2) => {
                    assert_eq!(s1[8], 1);
                    assert_eq!(&s1[16..], &r2[..]);
                    assert!(!q.authenticated, "not before Success2");
                    q.send(&message::success2(c.tid)).unwrap();
                }
                None => assert_eq!(s1[8], 0),
            }
            assert!(q.authenticated);
        }
    }

    #[test]
    fn a_wrong_key_or_a_bad_message_gets_failure1_and_a_close() {
        let k = keys(false);
        let mut q = QueueAuth::new(&k, HOST, SUB, AuthPolicy::default());
        let c = negotiate(&mut q, &[0]);
        let mut wrong = keys(false);
        wrong.key = Arc::new(DhchapSecret {
            transform: 1,
            key: vec![8; 32],
        });
        let (reply, _) = host_reply(&c, &wrong, None);
        assert_eq!(q.send(&reply), Err(AuthFailure::Failed));
        let f = q.receive();
        assert!(f.close);
        assert_eq!((f.message[1], f.message[6], f.message[7]), (0xf1, 1, 1));
        assert!(!q.authenticated);
        // A Reply replayed into a new transaction has the old challenge: refused.
        let c = negotiate(&mut q, &[0]);
        let (reply, _) = host_reply(&c, &k, None);
        q.send(&reply).unwrap();
        assert!(q.authenticated);
        let _ = negotiate(&mut q, &[0]);
        assert_eq!(q.send(&reply), Err(AuthFailure::Failed));
        // Out of order, unknown hash or group, bidirectional without a controller key.
        let mut q = QueueAuth::new(&k, HOST, SUB, AuthPolicy::default());
        assert_eq!(q.send(&reply), Err(AuthFailure::IncorrectMessage));
        assert!(q.receive().close);
        let mut n = Negotiate {
            tid: 1,
            sc_c: 0,
            hashes: vec![9],
            dhgroups: vec![0],
        };
        assert_eq!(q.send(&n.encode()), Err(AuthFailure::HashUnusable));
        n.hashes = vec![1];
        n.dhgroups = vec![7];
        assert_eq!(q.send(&n.encode()), Err(AuthFailure::DhGroupUnusable));
        let c = negotiate(&mut q, &[0]);
        let (reply, _) = host_reply(&c, &keys(true), Some((&[3u8; 64], 5)));
        assert_eq!(q.send(&reply), Err(AuthFailure::Failed));
        // Nothing due: reading gets Failure1.
        let mut q = QueueAuth::new(&k, HOST, SUB, AuthPolicy::default());
        let f = q.receive();
        assert!(f.close);
        assert_eq!(f.message[7], AuthFailure::IncorrectMessage as u8);
    }

    /// What the fuzz target (nvmf/fuzz auth_messages) checks, on random input here: no
    /// panic, and nothing comes out authenticated without the key.
    #[test]
    fn random_message_sequences_never_panic_or_authenticate() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::SmallRng::seed_from_u64(11);
        let policy = AuthPolicy {
            digests: AuthPolicy::default().digests,
            dhgroups: vec![DhGroup::Null, DhGroup::Ffdhe2048],
        };
        for _ in 0..300 {
            let mut q = QueueAuth::new(&keys(true), HOST, SUB, policy.clone());
            for _ in 0..8 {
                if rng.gen_bool(0.3) {
                    let _ = q.receive();
                    continue;
                }
                let len = rng.gen_range(0..200);
                let mut m: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
                // Often a plausible header, so the decoders behind it run too.
                if len >= 8 && rng.gen_bool(0.7) {
                    m[0] = rng.gen_range(0..2);
                    m[1] = [0, 2, 4, 0xf0][rng.gen_range(0..4)];
                    if m[1] == 0 && len >= 72 {
                        m[7] = 1;
                        m[8] = 1;
                        m[10] = rng.gen_range(0..4);
                        m[11] = rng.gen_range(0..4);
                    }
                }
                let _ = q.send(&m);
                assert!(!q.authenticated);
            }
        }
    }

    #[test]
    fn removed_keys_and_endless_negotiation_end_the_transaction() {
        let k = keys(false);
        let mut q = QueueAuth::new(&k, HOST, SUB, AuthPolicy::default());
        q.reload(None);
        let n = Negotiate {
            tid: 1,
            sc_c: 0,
            hashes: vec![1],
            dhgroups: vec![0],
        };
        assert_eq!(q.send(&n.encode()), Err(AuthFailure::Failed));
        let mut q = QueueAuth::new(&k, HOST, SUB, AuthPolicy::default());
        for _ in 0..3 {
            q.send(&n.encode()).unwrap();
            let _ = q.receive();
        }
        assert_eq!(q.send(&n.encode()), Err(AuthFailure::IncorrectMessage));
        // Rotation: a transaction after reload uses the new key.
        let mut q = QueueAuth::new(&k, HOST, SUB, AuthPolicy::default());
        let mut k2 = keys(false);
        k2.key = Arc::new(DhchapSecret {
            transform: 0,
            key: vec![3; 64],
        });
        q.reload(Some(&k2));
        let c = negotiate(&mut q, &[0]);
        let (old, _) = host_reply(&c, &k, None);
        assert_eq!(q.send(&old), Err(AuthFailure::Failed));
        let _ = q.receive();
        let c = negotiate(&mut q, &[0]);
        let (new, _) = host_reply(&c, &k2, None);
        q.send(&new).unwrap();
        assert!(q.authenticated);
    }
}
