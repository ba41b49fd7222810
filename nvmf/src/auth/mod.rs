//! NVMe in-band authentication, DH-HMAC-CHAP (NVMe Base Specification 2.x §8.13, TP 8006):
//! the pieces both sides share. [`DhchapSecret`] parses the `DHHC-1:<hh>:<base64>:` secret
//! format and applies its key transformation; [`DhchapHash`] and [`DhGroup`] are the
//! negotiable hash functions and Diffie-Hellman groups (RFC 7919 ffdhe, generator 2);
//! the response functions compute what host and controller prove to each other; and
//! [`message`] encodes and decodes the AUTH_Send / AUTH_Receive payloads. The target's
//! per-queue state machine is in `target::auth`.
//!
//! Primitives come from maintained crates (sha2, hmac, num-bigint); nothing here is a
//! hand-written cipher or hash.

mod ffdhe_primes;
pub mod message;

use base64::Engine;
use hmac::{Hmac, Mac};
use num_bigint::{BigUint, RandBigInt};
use sha2::{Digest, Sha256, Sha384, Sha512};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

/// Why an authentication failed, as the AUTH_Failure1/2 reason code explanation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthFailure {
    #[error("authentication failed")]
    Failed = 0x01,
    #[error("authentication protocol unusable")]
    ProtocolUnusable = 0x02,
    #[error("secure channel concatenation mismatch")]
    ScMismatch = 0x03,
    #[error("hash function unusable")]
    HashUnusable = 0x04,
    #[error("DH group unusable")]
    DhGroupUnusable = 0x05,
    #[error("incorrect payload")]
    IncorrectPayload = 0x06,
    #[error("incorrect protocol message")]
    IncorrectMessage = 0x07,
}

/// A secret that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("a DH-HMAC-CHAP secret looks like DHHC-1:<00..03>:<base64 of key and CRC-32>:")]
    Format,
    #[error("the secret's key is {0} bytes; 32, 48 or 64 are allowed")]
    Length(usize),
    #[error("the secret's CRC-32 does not match its key")]
    Crc,
}

/// The hash functions DH-HMAC-CHAP negotiates (their protocol identifiers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum DhchapHash {
    Sha256 = 1,
    Sha384 = 2,
    Sha512 = 3,
}

impl DhchapHash {
    pub fn from_id(id: u8) -> Option<DhchapHash> {
        match id {
            1 => Some(DhchapHash::Sha256),
            2 => Some(DhchapHash::Sha384),
            3 => Some(DhchapHash::Sha512),
            _ => None,
        }
    }

    /// SPDK's names (`nvmf_set_config dhchap_digests`).
    pub fn from_name(s: &str) -> Option<DhchapHash> {
        match s {
            "sha256" => Some(DhchapHash::Sha256),
            "sha384" => Some(DhchapHash::Sha384),
            "sha512" => Some(DhchapHash::Sha512),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            DhchapHash::Sha256 => "sha256",
            DhchapHash::Sha384 => "sha384",
            DhchapHash::Sha512 => "sha512",
        }
    }

    /// Digest length (HL).
    pub fn digest_len(self) -> usize {
        match self {
            DhchapHash::Sha256 => 32,
            DhchapHash::Sha384 => 48,
            DhchapHash::Sha512 => 64,
        }
    }

    pub fn digest(self, data: &[u8]) -> Vec<u8> {
        match self {
            DhchapHash::Sha256 => Sha256::digest(data).to_vec(),
            DhchapHash::Sha384 => Sha384::digest(data).to_vec(),
            DhchapHash::Sha512 => Sha512::digest(data).to_vec(),
        }
    }

    /// HMAC over the concatenation of `parts`.
    pub fn hmac(self, key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
        fn run<M: Mac + hmac::digest::KeyInit>(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
            // HMAC takes keys of any length.
            let mut m = <M as hmac::digest::KeyInit>::new_from_slice(key)
                .unwrap_or_else(|_| unreachable!("HMAC accepts every key length"));
            for p in parts {
                m.update(p);
            }
            m.finalize().into_bytes().to_vec()
        }
        match self {
            DhchapHash::Sha256 => run::<Hmac<Sha256>>(key, parts),
            DhchapHash::Sha384 => run::<Hmac<Sha384>>(key, parts),
            DhchapHash::Sha512 => run::<Hmac<Sha512>>(key, parts),
        }
    }
}

/// The Diffie-Hellman groups (their protocol identifiers); `Null` is no exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum DhGroup {
    Null = 0,
    Ffdhe2048 = 1,
    Ffdhe3072 = 2,
    Ffdhe4096 = 3,
    Ffdhe6144 = 4,
    Ffdhe8192 = 5,
}

/// Every group, weakest first.
pub const DH_GROUPS: [DhGroup; 6] = [
    DhGroup::Null,
    DhGroup::Ffdhe2048,
    DhGroup::Ffdhe3072,
    DhGroup::Ffdhe4096,
    DhGroup::Ffdhe6144,
    DhGroup::Ffdhe8192,
];

impl DhGroup {
    pub fn from_id(id: u8) -> Option<DhGroup> {
        DH_GROUPS.get(id as usize).copied()
    }

    /// SPDK's names (`nvmf_set_config dhchap_dhgroups`).
    pub fn from_name(s: &str) -> Option<DhGroup> {
        DH_GROUPS.iter().copied().find(|g| g.name() == s)
    }

    pub fn name(self) -> &'static str {
        match self {
            DhGroup::Null => "null",
            DhGroup::Ffdhe2048 => "ffdhe2048",
            DhGroup::Ffdhe3072 => "ffdhe3072",
            DhGroup::Ffdhe4096 => "ffdhe4096",
            DhGroup::Ffdhe6144 => "ffdhe6144",
            DhGroup::Ffdhe8192 => "ffdhe8192",
        }
    }

    /// Bytes of a public value and of the shared secret (0 for `Null`).
    pub fn size(self) -> usize {
        match self {
            DhGroup::Null => 0,
            DhGroup::Ffdhe2048 => 256,
            DhGroup::Ffdhe3072 => 384,
            DhGroup::Ffdhe4096 => 512,
            DhGroup::Ffdhe6144 => 768,
            DhGroup::Ffdhe8192 => 1024,
        }
    }

    fn prime(self) -> Option<&'static BigUint> {
        static P: OnceLock<Vec<BigUint>> = OnceLock::new();
        let all = P.get_or_init(|| {
            [
                ffdhe_primes::FFDHE2048,
                ffdhe_primes::FFDHE3072,
                ffdhe_primes::FFDHE4096,
                ffdhe_primes::FFDHE6144,
                ffdhe_primes::FFDHE8192,
            ]
            .iter()
            .map(|h| {
                BigUint::parse_bytes(h.as_bytes(), 16)
                    .unwrap_or_else(|| unreachable!("the RFC 7919 primes are hex"))
            })
            .collect()
        });
        all.get((self as usize).checked_sub(1)?)
    }

    /// A private exponent and its public value g^x mod p (big-endian, padded to the group
    /// size). Exponents of 512 bits are well above each group's strength (SP 800-56A).
    pub fn keypair(self) -> Option<(BigUint, Vec<u8>)> {
        let p = self.prime()?;
        let x = rand::thread_rng().gen_biguint(512);
        let y = BigUint::from(2u32).modpow(&x, p);
        Some((x, pad(&y, self.size())))
    }

    /// The shared secret Z = peer^x mod p (big-endian, padded), after checking the peer's
    /// value is in 2..p-2.
    pub fn shared(self, x: &BigUint, peer: &[u8]) -> Result<Vec<u8>, AuthFailure> {
        let p = self.prime().ok_or(AuthFailure::DhGroupUnusable)?;
        if peer.len() != self.size() {
            return Err(AuthFailure::IncorrectPayload);
        }
        let y = BigUint::from_bytes_be(peer);
        let one = BigUint::from(1u32);
        if y <= one || y >= p - &one {
            return Err(AuthFailure::DhGroupUnusable);
        }
        Ok(pad(&y.modpow(x, p), self.size()))
    }
}

fn pad(v: &BigUint, size: usize) -> Vec<u8> {
    let b = v.to_bytes_be();
    let mut out = vec![0u8; size.saturating_sub(b.len())];
    out.extend_from_slice(&b);
    out
}

/// A DH-HMAC-CHAP secret: the key, and the hash (if any) that transforms it with an NQN.
#[derive(Clone, PartialEq, Eq)]
pub struct DhchapSecret {
    /// 0: used as is; 1..3: HMAC-SHA-256/384/512 transformation.
    pub transform: u8,
    pub key: Vec<u8>,
}

impl Drop for DhchapSecret {
    fn drop(&mut self) {
        // Key material does not outlive its use in freed memory.
        zeroize::Zeroize::zeroize(&mut self.key);
    }
}

impl std::fmt::Debug for DhchapSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        write!(
            f,
            "DhchapSecret(DHHC-1:{:02}, {} bytes)",
            self.transform,
            self.key.len()
        )
    }
}

impl DhchapSecret {
    /// Parses `DHHC-1:<hh>:<base64 of key || CRC-32 (little-endian)>:` (as `nvme
    /// gen-dhchap-key` writes it).
    pub fn parse(s: &str) -> Result<DhchapSecret, SecretError> {
        let s = s.trim();
        let rest = s.strip_prefix("DHHC-1:").ok_or(SecretError::Format)?;
        let (hh, b64) = rest.split_once(':').ok_or(SecretError::Format)?;
        let b64 = b64.strip_suffix(':').unwrap_or(b64);
        let transform: u8 = match hh {
            "00" => 0,
            "01" => 1,
            "02" => 2,
            "03" => 3,
            _ => return Err(SecretError::Format),
        };
        let raw = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|_| SecretError::Format)?;
        if raw.len() < 4 {
            return Err(SecretError::Format);
        }
        let (key, crc) = raw.split_at(raw.len() - 4);
        if ![32, 48, 64].contains(&key.len()) {
            return Err(SecretError::Length(key.len()));
        }
        let want = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
        if crc32fast::hash(key) != want {
            return Err(SecretError::Crc);
        }
        Ok(DhchapSecret {
            transform,
            key: key.to_vec(),
        })
    }

    /// The secret in its interchange format.
    pub fn format(&self) -> String {
        let mut raw = self.key.clone();
        raw.extend_from_slice(&crc32fast::hash(&self.key).to_le_bytes());
        format!(
            "DHHC-1:{:02}:{}:",
            self.transform,
            base64::engine::general_purpose::STANDARD.encode(raw)
        )
    }

    /// The key the responses are computed with: as is, or HMAC(key, NQN ||
    /// "NVMe-over-Fabrics") with the secret's hash (the host NQN for a host key, the
    /// subsystem NQN for a controller key).
    pub fn transformed(&self, nqn: &str) -> Vec<u8> {
        match DhchapHash::from_id(self.transform) {
            None => self.key.clone(),
            Some(h) => h.hmac(&self.key, &[nqn.as_bytes(), b"NVMe-over-Fabrics"]),
        }
    }
}

/// The challenge a response is computed over: as sent, or with a DH exchange
/// HMAC(H(Z), challenge).
pub fn augmented_challenge(hash: DhchapHash, shared: Option<&[u8]>, challenge: &[u8]) -> Vec<u8> {
    match shared {
        None => challenge.to_vec(),
        Some(z) => hash.hmac(&hash.digest(z), &[challenge]),
    }
}

/// One side's proof: HMAC(key, challenge || seqnum || T_ID || SC_C (0) || role || own NQN ||
/// 0 || peer NQN).
fn response(
    hash: DhchapHash,
    key: &[u8],
    challenge: &[u8],
    (seqnum, tid): (u32, u16),
    role: &[u8],
    own: &str,
    peer: &str,
) -> Vec<u8> {
    hash.hmac(
        key,
        &[
            challenge,
            &seqnum.to_le_bytes(),
            &tid.to_le_bytes(),
            &[0],
            role,
            own.as_bytes(),
            &[0],
            peer.as_bytes(),
        ],
    )
}

/// What the host proves: "HostHost", host NQN first.
pub fn host_response(
    hash: DhchapHash,
    key: &[u8],
    challenge: &[u8],
    seqnum: u32,
    tid: u16,
    hostnqn: &str,
    subnqn: &str,
) -> Vec<u8> {
    response(
        hash,
        key,
        challenge,
        (seqnum, tid),
        b"HostHost",
        hostnqn,
        subnqn,
    )
}

/// What the controller proves (bidirectional): "Controller", subsystem NQN first.
pub fn ctrl_response(
    hash: DhchapHash,
    key: &[u8],
    challenge: &[u8],
    seqnum: u32,
    tid: u16,
    hostnqn: &str,
    subnqn: &str,
) -> Vec<u8> {
    response(
        hash,
        key,
        challenge,
        (seqnum, tid),
        b"Controller",
        subnqn,
        hostnqn,
    )
}

/// A fresh sequence number: one counter from a random start, never 0.
pub fn next_seqnum() -> u32 {
    static SEQ: OnceLock<AtomicU32> = OnceLock::new();
    let c = SEQ.get_or_init(|| AtomicU32::new(rand::random()));
    loop {
        let v = c.fetch_add(1, Ordering::Relaxed);
        if v != 0 {
            return v;
        }
    }
}

/// `count` random bytes (challenges).
pub fn random_bytes(count: usize) -> Vec<u8> {
    let mut v = vec![0u8; count];
    rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut v);
    v
}

/// Compares two responses in time independent of where they differ.
pub fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOSTNQN: &str = "nqn.2014-08.org.nvmexpress:uuid:00000000-0000-0000-0000-000000000001";
    const SUBNQN: &str = "nqn.2024-01.io.example:sub1";

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    #[test]
    fn secrets_parse_check_their_crc_and_round_trip() {
        let s = DhchapSecret::parse("DHHC-1:00:ia6zGodOr4SEG0Zzaw398rpY0wqipUWj4jWjUh4HWUz6aQ2n:")
            .unwrap();
        assert_eq!((s.transform, s.key.len()), (0, 32));
        assert_eq!(
            s.format(),
            "DHHC-1:00:ia6zGodOr4SEG0Zzaw398rpY0wqipUWj4jWjUh4HWUz6aQ2n:"
        );
        assert!(matches!(
            DhchapSecret::parse("DHHC-1:00:ia6zGodOr4SEG0Zzaw398rpY0wqipUWj4jWjUh4HWUz6aQ2m:"),
            Err(SecretError::Crc)
        ));
        assert!(
            DhchapSecret::parse("DHHC-1:04:ia6zGodOr4SEG0Zzaw398rpY0wqipUWj4jWjUh4HWUz6aQ2n:")
                .is_err()
        );
        assert!(DhchapSecret::parse("DHHC-2:00:abc:").is_err());
        assert!(matches!(
            DhchapSecret::parse("DHHC-1:00:AAAAAAAAAAAAAAAA:"),
            Err(SecretError::Length(8))
        ));
    }

    /// Known answers computed from the formulas of Linux 6.1's drivers/nvme (see the
    /// issue notes): they pin byte order and field order.
    #[test]
    fn responses_match_known_answers() {
        let host =
            DhchapSecret::parse("DHHC-1:00:ia6zGodOr4SEG0Zzaw398rpY0wqipUWj4jWjUh4HWUz6aQ2n:")
                .unwrap();
        let c1: Vec<u8> = (0..32).collect();
        let r1 = host_response(
            DhchapHash::Sha256,
            &host.transformed(HOSTNQN),
            &c1,
            0x1234_5678,
            0,
            HOSTNQN,
            SUBNQN,
        );
        assert_eq!(
            hex(&r1),
            "b8794952d0ccc6c1242ee75272d4a7bc45452a51a0abaccaf040c51a5b377f63"
        );
        let ctrl =
            DhchapSecret::parse("DHHC-1:01:QEFCQ0RFRkdISUpLTE1OT1BRUlNUVVZXWFlaW1xdXl9YjiZe:")
                .unwrap();
        let kc = ctrl.transformed(SUBNQN);
        assert_eq!(
            hex(&kc),
            "385f7a89effda7af258cd89718774db27a9ab6ed989c159540d9a750637ea165"
        );
        let c2: Vec<u8> = (0..32).map(|i| 0xff - i as u8).collect();
        let r2 = ctrl_response(
            DhchapHash::Sha256,
            &kc,
            &c2,
            0x0102_0304,
            3,
            HOSTNQN,
            SUBNQN,
        );
        assert_eq!(
            hex(&r2),
            "348c517f7f9665639f845d784713136aa78cd14d8bbefd1aafda2c135f093ab8"
        );
    }

    #[test]
    fn ffdhe2048_known_answer_and_agreement() {
        let g = DhGroup::Ffdhe2048;
        let p = g.prime().unwrap();
        let x = BigUint::from_bytes_be(&[0x11; 28]);
        let y = BigUint::from_bytes_be(&[0x22; 28]);
        let cpub = pad(&BigUint::from(2u32).modpow(&x, p), 256);
        let hpub = pad(&BigUint::from(2u32).modpow(&y, p), 256);
        assert_eq!(
            hex(&Sha256::digest(&cpub)),
            "21585ae0cdd18f9f03a57eac384d25adf72f9d4f7094028a2e5e89aa289acc9b"
        );
        assert_eq!(
            hex(&Sha256::digest(&hpub)),
            "e2b1e52d9614e9564cd268572a91d6cea42c088147fb5878134143a84a376f0f"
        );
        let z = g.shared(&x, &hpub).unwrap();
        assert_eq!(z, g.shared(&y, &cpub).unwrap());
        assert_eq!(
            hex(&Sha256::digest(&z)),
            "a1c592c07deb9dada1bc05c9783aaa55b71094f4a06b7797a15b41f068204f64"
        );
        let c1: Vec<u8> = (0..32).collect();
        let ca = augmented_challenge(DhchapHash::Sha256, Some(&z), &c1);
        assert_eq!(
            hex(&ca),
            "49dda049a6ea0a95d8dc76261a3efbbfcd1c48b0713802038eed610723df5705"
        );
        let host =
            DhchapSecret::parse("DHHC-1:00:ia6zGodOr4SEG0Zzaw398rpY0wqipUWj4jWjUh4HWUz6aQ2n:")
                .unwrap();
        let r1 = host_response(
            DhchapHash::Sha256,
            &host.transformed(HOSTNQN),
            &ca,
            0x1234_5678,
            0,
            HOSTNQN,
            SUBNQN,
        );
        assert_eq!(
            hex(&r1),
            "2fc7eb7b4d82a23484ab33eb16b50829f30fd6763c12a915e0aff90f7614dbb9"
        );
        // Values outside 2..p-2 are refused.
        assert_eq!(
            g.shared(&x, &pad(&BigUint::from(1u32), 256)),
            Err(AuthFailure::DhGroupUnusable)
        );
        assert_eq!(g.shared(&x, &[1; 10]), Err(AuthFailure::IncorrectPayload));
    }

    #[test]
    fn every_group_is_a_safe_prime_group_of_its_size() {
        for g in &DH_GROUPS[1..] {
            let p = g.prime().unwrap();
            assert_eq!(p.bits() as usize, g.size() * 8, "{g:?}");
            let h = p.to_str_radix(16).to_uppercase();
            assert!(h.starts_with("FFFFFFFFFFFFFFFFADF85458A2BB4A9AAFDC5620273D3CF1"));
            assert!(h.ends_with("FFFFFFFFFFFFFFFF"));
            // 2 is a quadratic residue mod a safe prime p = 7 mod 8: 2^((p-1)/2) = 1.
            let q = (p - 1u32) >> 1;
            assert_eq!(
                BigUint::from(2u32).modpow(&q, p),
                BigUint::from(1u32),
                "{g:?}"
            );
        }
    }
}
