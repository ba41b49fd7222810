//! NVMe/TCP TLS pre-shared keys (TP 8011): the interchange format, the PSK identity, and the
//! two derivations from the configured PSK to the key TLS uses.
//!
//! configured PSK (`NVMeTLSkey-1:hh:...:`) → retained PSK (HKDF with the host NQN, unless
//! `hh` is 00) → TLS PSK (HKDF with the identity `NVMe0Rxx <hostnqn> <subnqn>`). Both steps
//! are HKDF-Extract with an empty salt and HKDF-Expand with a TLS 1.3 `HkdfLabel` info
//! (length, "tls13 " label, context), as nvme-cli, Linux and SPDK compute them.

use super::CipherSuite;
use base64::Engine;
use hkdf::Hkdf;
use sha2::{Sha256, Sha384};
use zeroize::Zeroizing;

/// Why a PSK interchange string was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PskError {
    #[error("not a TLS PSK in the interchange format NVMeTLSkey-1:<hh>:<base64>:")]
    Format,
    #[error("unknown PSK hash {0:02} (00 none, 01 SHA-256, 02 SHA-384)")]
    Hash(u8),
    #[error("a TLS PSK is 32 bytes (hash 01), 48 (hash 02) or either (00); this one is {0}")]
    Length(usize),
    #[error("the PSK's CRC-32 does not match (mistyped or truncated key)")]
    Crc,
}

/// The hash that turns a configured PSK into the retained PSK (the `hh` of the interchange
/// format).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetainedHash {
    /// The configured PSK is the retained PSK.
    None,
    Sha256,
    Sha384,
}

/// A configured PSK, as an operator's key file holds it.
#[derive(Clone, PartialEq, Eq)]
pub struct ConfiguredPsk {
    pub hash: RetainedHash,
    pub key: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for ConfiguredPsk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        write!(
            f,
            "ConfiguredPsk({:?}, {} bytes)",
            self.hash,
            self.key.len()
        )
    }
}

impl ConfiguredPsk {
    /// Parses `NVMeTLSkey-1:<hh>:<base64 of key || CRC-32 (little-endian)>:` (nvme-cli's
    /// `gen-tls-key` output, SPDK's key files).
    pub fn parse(s: &str) -> Result<ConfiguredPsk, PskError> {
        let s = s.trim();
        let rest = s.strip_prefix("NVMeTLSkey-1:").ok_or(PskError::Format)?;
        let (hh, b64) = rest.split_once(':').ok_or(PskError::Format)?;
        let b64 = b64.strip_suffix(':').ok_or(PskError::Format)?;
        let hash = match hh {
            "00" => RetainedHash::None,
            "01" => RetainedHash::Sha256,
            "02" => RetainedHash::Sha384,
            _ => return Err(PskError::Hash(u8::from_str_radix(hh, 16).unwrap_or(0xff))),
        };
        let raw = Zeroizing::new(
            base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map_err(|_| PskError::Format)?,
        );
        if raw.len() < 4 {
            return Err(PskError::Format);
        }
        let (key, crc) = raw.split_at(raw.len() - 4);
        // 01 (SHA-256) keys are 32 bytes, 02 (SHA-384) keys 48, as nvme-cli makes them;
        // an untransformed key may be either.
        let ok = match hash {
            RetainedHash::None => key.len() == 32 || key.len() == 48,
            RetainedHash::Sha256 => key.len() == 32,
            RetainedHash::Sha384 => key.len() == 48,
        };
        if !ok {
            return Err(PskError::Length(key.len()));
        }
        if crc32fast::hash(key).to_le_bytes() != crc {
            return Err(PskError::Crc);
        }
        Ok(ConfiguredPsk {
            hash,
            key: Zeroizing::new(key.to_vec()),
        })
    }

    /// The PSK in its interchange format.
    pub fn format(&self) -> String {
        let mut raw = Zeroizing::new(self.key.to_vec());
        raw.extend_from_slice(&crc32fast::hash(&self.key).to_le_bytes());
        let hh = match self.hash {
            RetainedHash::None => "00",
            RetainedHash::Sha256 => "01",
            RetainedHash::Sha384 => "02",
        };
        format!(
            "NVMeTLSkey-1:{hh}:{}:",
            base64::engine::general_purpose::STANDARD.encode(&*raw)
        )
    }

    /// The cipher suite this PSK is used with: its size decides (32 bytes: SHA-256, 48:
    /// SHA-384).
    pub fn suite(&self) -> CipherSuite {
        if self.key.len() == 48 {
            CipherSuite::Aes256GcmSha384
        } else {
            CipherSuite::Aes128GcmSha256
        }
    }

    /// The retained PSK of `hostnqn`.
    pub fn retained(&self, hostnqn: &str) -> Zeroizing<Vec<u8>> {
        let len = self.key.len();
        match self.hash {
            RetainedHash::None => self.key.clone(),
            RetainedHash::Sha256 => {
                expand_label(false, &self.key, len, "HostNQN", hostnqn.as_bytes())
            }
            RetainedHash::Sha384 => {
                expand_label(true, &self.key, len, "HostNQN", hostnqn.as_bytes())
            }
        }
    }
}

/// The TLS PSK for `identity`, from a retained PSK.
pub fn tls_psk(retained: &[u8], identity: &str, suite: CipherSuite) -> Zeroizing<Vec<u8>> {
    let len = retained.len();
    let id = identity.as_bytes();
    match suite {
        CipherSuite::Aes128GcmSha256 => expand_label(false, retained, len, "nvme-tls-psk", id),
        CipherSuite::Aes256GcmSha384 => expand_label(true, retained, len, "nvme-tls-psk", id),
    }
}

/// HKDF-Extract(salt = "", ikm) then HKDF-Expand with the info
/// `u16 be(len_field) || u8 len || "tls13 " label || u8 len || context`, to the hash's
/// length. (The length field carries the input key's size, as the reference
/// implementations do; for the sizes TP 8011 allows it equals the output size.)
fn expand_label(
    sha384: bool,
    ikm: &[u8],
    len_field: usize,
    label: &str,
    context: &[u8],
) -> Zeroizing<Vec<u8>> {
    let label = format!("tls13 {label}");
    let context = &context[..context.len().min(255)];
    let mut info = Vec::with_capacity(4 + label.len() + context.len());
    info.extend_from_slice(&(len_field as u16).to_be_bytes());
    info.push(label.len() as u8);
    info.extend_from_slice(label.as_bytes());
    info.push(context.len() as u8);
    info.extend_from_slice(context);
    // 32 or 48 bytes: far below HKDF's 255 × hash-length limit, so expand cannot fail.
    if sha384 {
        let mut okm = Zeroizing::new(vec![0u8; 48]);
        let _ = Hkdf::<Sha384>::new(Some(&[]), ikm).expand(&info, &mut okm);
        okm
    } else {
        let mut okm = Zeroizing::new(vec![0u8; 32]);
        let _ = Hkdf::<Sha256>::new(Some(&[]), ikm).expand(&info, &mut okm);
        okm
    }
}

/// A TLS PSK identity: `NVMe0R<hh> <hostnqn> <subnqn>` (version 0, no PSK digest), `hh`
/// the suite's hash (01 SHA-256, 02 SHA-384).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PskIdentity {
    pub suite: CipherSuite,
    pub hostnqn: String,
    pub subnqn: String,
}

impl PskIdentity {
    pub fn new(suite: CipherSuite, hostnqn: &str, subnqn: &str) -> PskIdentity {
        PskIdentity {
            suite,
            hostnqn: hostnqn.to_string(),
            subnqn: subnqn.to_string(),
        }
    }

    pub fn parse(s: &str) -> Result<PskIdentity, String> {
        // The identity is the HKDF context of the TLS PSK: at most 255 bytes.
        if s.len() > 255 {
            return Err(format!("identity of {} bytes (at most 255)", s.len()));
        }
        let rest = if let Some(r) = s.strip_prefix("NVMe0R") {
            r
        } else if s.starts_with("NVMe1R") {
            return Err("identity version 1 (with a PSK digest, from secure channel concatenation) is not supported".into());
        } else {
            return Err("not an NVMe PSK identity (NVMe0R<hh> <hostnqn> <subnqn>)".into());
        };
        let mut parts = rest.splitn(3, ' ');
        let suite = match parts.next() {
            Some("01") => CipherSuite::Aes128GcmSha256,
            Some("02") => CipherSuite::Aes256GcmSha384,
            _ => return Err("unknown hash in the identity (01 or 02 expected)".into()),
        };
        let (Some(h), Some(n)) = (parts.next(), parts.next()) else {
            return Err("the identity lacks the host or subsystem NQN".into());
        };
        if h.is_empty() || n.is_empty() || n.contains(' ') {
            return Err("malformed NQNs in the identity".into());
        }
        Ok(PskIdentity::new(suite, h, n))
    }
}

impl std::fmt::Display for PskIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hh = match self.suite {
            CipherSuite::Aes128GcmSha256 => "01",
            CipherSuite::Aes256GcmSha384 => "02",
        };
        write!(f, "NVMe0R{hh} {} {}", self.hostnqn, self.subnqn)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    #[test]
    fn interchange_round_trip_and_refusals() {
        let p = ConfiguredPsk {
            hash: RetainedHash::Sha256,
            key: Zeroizing::new((0..32).collect()),
        };
        let s = p.format();
        assert!(s.starts_with("NVMeTLSkey-1:01:"));
        assert_eq!(ConfiguredPsk::parse(&s).unwrap(), p);
        assert_eq!(ConfiguredPsk::parse(&format!("{s}\n")).unwrap(), p);
        assert_eq!(
            ConfiguredPsk::parse("DHHC-1:00:abc:"),
            Err(PskError::Format)
        );
        assert_eq!(
            ConfiguredPsk::parse(&s.replace(":01:", ":07:")),
            Err(PskError::Hash(7))
        );
        assert_eq!(
            ConfiguredPsk::parse(&s[..s.len() - 1]),
            Err(PskError::Format)
        );
        // A flipped key byte fails the CRC.
        let mut raw = base64::engine::general_purpose::STANDARD
            .decode(&s[16..s.len() - 1])
            .unwrap();
        raw[0] ^= 1;
        let bad = format!(
            "NVMeTLSkey-1:01:{}:",
            base64::engine::general_purpose::STANDARD.encode(&raw)
        );
        assert_eq!(ConfiguredPsk::parse(&bad), Err(PskError::Crc));
        let short = ConfiguredPsk {
            hash: RetainedHash::None,
            key: Zeroizing::new(vec![1; 16]),
        };
        assert_eq!(
            ConfiguredPsk::parse(&short.format()),
            Err(PskError::Length(16))
        );
        // The hash fixes the size: 01 is 32 bytes, 02 is 48.
        let mismatched = ConfiguredPsk {
            hash: RetainedHash::Sha384,
            key: Zeroizing::new(vec![5; 32]),
        };
        assert_eq!(
            ConfiguredPsk::parse(&mismatched.format()),
            Err(PskError::Length(32))
        );
    }

    /// The example key of the NVMe TCP transport specification / nvme-cli's test suite.
    const SPEC_KEY: &str = "NVMeTLSkey-1:01:VRLbtnN9AQb2WXW3c9+wEf/DRLz0QuLdbYvEhwtdWwNf9LrZ:";

    #[test]
    fn identity_format_and_parse() {
        let id = PskIdentity::new(
            CipherSuite::Aes128GcmSha256,
            "nqn.2014-08.org.nvmexpress:uuid:f81d4fae-7dec-11d0-a765-00a0c91e6bf6",
            "nqn.2024-01.io.strata:disk",
        );
        let s = id.to_string();
        assert_eq!(
            s,
            "NVMe0R01 nqn.2014-08.org.nvmexpress:uuid:f81d4fae-7dec-11d0-a765-00a0c91e6bf6 nqn.2024-01.io.strata:disk"
        );
        assert_eq!(PskIdentity::parse(&s).unwrap(), id);
        assert!(PskIdentity::parse("NVMe1R01 a b digest").is_err());
        assert!(PskIdentity::parse("NVMe0R03 a b").is_err());
        assert!(PskIdentity::parse("NVMe0R01 onlyhost").is_err());
        assert!(PskIdentity::parse("psk.spdk.io").is_err());
        // The identity is an HKDF context: 255 bytes at most.
        let long = format!(
            "NVMe0R01 nqn.2024-01.io.x:{} nqn.2024-01.io.y:z",
            "h".repeat(240)
        );
        assert!(PskIdentity::parse(&long)
            .unwrap_err()
            .contains("at most 255"));
    }

    /// Known answers computed independently with OpenSSL's command-line HKDF (`openssl kdf
    /// -keylen N -kdfopt digest:SHA2-256 -kdfopt hexkey:<key> -kdfopt salt: -kdfopt
    /// hexinfo:<HkdfLabel> HKDF`), the same primitive SPDK's derivations call.
    #[test]
    fn derivations_match_openssl_hkdf() {
        let p = ConfiguredPsk::parse(SPEC_KEY).unwrap();
        assert_eq!(p.suite(), CipherSuite::Aes128GcmSha256);
        let host = "nqn.2014-08.org.nvmexpress:uuid:f81d4fae-7dec-11d0-a765-00a0c91e6bf6";
        let retained = p.retained(host);
        assert_eq!(hex(&retained), RETAINED_KAT);
        let id = PskIdentity::new(p.suite(), host, "nqn.2024-01.io.strata:disk").to_string();
        assert_eq!(hex(&tls_psk(&retained, &id, p.suite())), TLS_PSK_KAT);
    }

    const RETAINED_KAT: &str = "f0af1bc718d4f23bdd7c1683a3d79bd953ea789d106a0f5207bb574bbe5446ce";
    const TLS_PSK_KAT: &str = "90901145a26e7d3d057da7fb215d6ab52cff29d26d844dad5f284cfbf16bd68c";
}
