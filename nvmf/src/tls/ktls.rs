//! Kernel TLS: after the handshake, the record layer moves into the kernel (`TCP_ULP`
//! "tls", then `TLS_TX`/`TLS_RX` with the traffic keys), and the connection reads and
//! writes plaintext on its socket as before — no user-space encryption pass, no copy
//! through a record buffer. The `setsockopt` calls are the only `unsafe` here.
//!
//! The traffic secrets come from OpenSSL's key log callback (the TLS 1.3
//! `*_TRAFFIC_SECRET_0` lines); key and IV are derived from them as RFC 8446 §7.3 says.

use super::CipherSuite;
use hkdf::Hkdf;
use sha2::{Sha256, Sha384};
use std::os::fd::{AsRawFd, RawFd};
use zeroize::Zeroizing;

const TCP_ULP: libc::c_int = 31;
const TLS_TX: libc::c_int = 1;
const TLS_RX: libc::c_int = 2;
const TLS_1_3_VERSION: u16 = 0x0304;
const TLS_CIPHER_AES_GCM_128: u16 = 51;
const TLS_CIPHER_AES_GCM_256: u16 = 52;

/// `struct tls12_crypto_info_aes_gcm_{128,256}` of `<linux/tls.h>` (the 128-bit one uses
/// the first 16 bytes of `key` and its own, shorter layout).
#[repr(C)]
struct CryptoInfo<const K: usize> {
    version: u16,
    cipher_type: u16,
    iv: [u8; 8],
    key: [u8; K],
    salt: [u8; 4],
    rec_seq: [u8; 8],
}

impl<const K: usize> Drop for CryptoInfo<K> {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.key);
        zeroize::Zeroize::zeroize(&mut self.iv);
        zeroize::Zeroize::zeroize(&mut self.salt);
    }
}

/// The key and IV of one direction.
pub struct TrafficKeys {
    key: Zeroizing<Vec<u8>>,
    iv: Zeroizing<Vec<u8>>,
}

/// HKDF-Expand-Label(secret, label, "", len) (RFC 8446 §7.1).
fn expand_label(
    suite: CipherSuite,
    secret: &[u8],
    label: &str,
    len: usize,
) -> Option<Zeroizing<Vec<u8>>> {
    let label = format!("tls13 {label}");
    let mut info = Vec::with_capacity(4 + label.len());
    info.extend_from_slice(&(len as u16).to_be_bytes());
    info.push(label.len() as u8);
    info.extend_from_slice(label.as_bytes());
    info.push(0);
    let mut out = Zeroizing::new(vec![0u8; len]);
    match suite {
        CipherSuite::Aes128GcmSha256 => Hkdf::<Sha256>::from_prk(secret)
            .ok()?
            .expand(&info, &mut out)
            .ok()?,
        CipherSuite::Aes256GcmSha384 => Hkdf::<Sha384>::from_prk(secret)
            .ok()?
            .expand(&info, &mut out)
            .ok()?,
    }
    Some(out)
}

impl TrafficKeys {
    /// The keys of a traffic secret.
    pub fn derive(suite: CipherSuite, secret: &[u8]) -> Option<TrafficKeys> {
        let key_len = match suite {
            CipherSuite::Aes128GcmSha256 => 16,
            CipherSuite::Aes256GcmSha384 => 32,
        };
        Some(TrafficKeys {
            key: expand_label(suite, secret, "key", key_len)?,
            iv: expand_label(suite, secret, "iv", 12)?,
        })
    }
}

fn setsockopt<T>(
    fd: RawFd,
    level: libc::c_int,
    name: libc::c_int,
    v: &T,
    len: usize,
) -> std::io::Result<()> {
    // SAFETY: `v` points to `len` readable bytes (a repr(C) struct or a byte string of that
    // size) for the duration of the call; the kernel copies them.
    let r = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (v as *const T).cast(),
            len as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Installs one direction's key (`install::<16>` or `install::<32>`).
type Install = fn(RawFd, libc::c_int, u16, &TrafficKeys) -> std::io::Result<()>;

fn install<const K: usize>(
    fd: RawFd,
    dir: libc::c_int,
    cipher: u16,
    k: &TrafficKeys,
) -> std::io::Result<()> {
    let mut ci = CryptoInfo::<K> {
        version: TLS_1_3_VERSION,
        cipher_type: cipher,
        iv: [0; 8],
        key: [0; K],
        salt: [0; 4],
        // The first application record of each direction: sequence number 0.
        rec_seq: [0; 8],
    };
    ci.salt.copy_from_slice(&k.iv[..4]);
    ci.iv.copy_from_slice(&k.iv[4..12]);
    ci.key.copy_from_slice(&k.key[..K]);
    setsockopt(
        fd,
        libc::SOL_TLS,
        dir,
        &ci,
        std::mem::size_of::<CryptoInfo<K>>(),
    )
}

/// Hands both directions of `sock`'s TLS session to the kernel. Err((false, _)): nothing was
/// handed over and the socket works as before (the caller keeps the user-space record
/// layer); Err((true, _)): the transmit side already went, so the connection cannot continue.
pub fn enable(
    sock: &impl AsRawFd,
    suite: CipherSuite,
    tx: &TrafficKeys,
    rx: &TrafficKeys,
) -> Result<(), (bool, std::io::Error)> {
    let fd = sock.as_raw_fd();
    setsockopt(fd, libc::IPPROTO_TCP, TCP_ULP, b"tls\0", 4).map_err(|e| (false, e))?;
    // The ULP without keys passes bytes through: a kernel that cannot take this suite's
    // transmit key (no TLS 1.3, no AES-256-GCM) leaves the socket usable as before.
    let (install_key, cipher): (Install, u16) = match suite {
        CipherSuite::Aes128GcmSha256 => (install::<16>, TLS_CIPHER_AES_GCM_128),
        CipherSuite::Aes256GcmSha384 => (install::<32>, TLS_CIPHER_AES_GCM_256),
    };
    install_key(fd, TLS_TX, cipher, tx).map_err(|e| (false, e))?;
    install_key(fd, TLS_RX, cipher, rx).map_err(|e| (true, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crypto_info_layouts_match_the_kernel() {
        // sizeof(struct tls12_crypto_info_aes_gcm_128) == 40, _256 == 56.
        assert_eq!(std::mem::size_of::<CryptoInfo<16>>(), 40);
        assert_eq!(std::mem::size_of::<CryptoInfo<32>>(), 56);
    }

    /// RFC 8448 §3 (simple 1-RTT handshake): the server's application traffic secret and
    /// the write key and IV derived from it.
    #[test]
    fn traffic_keys_match_rfc8448() {
        let h = |s: &str| -> Vec<u8> {
            let s: String = s.split_whitespace().collect();
            (0..s.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
                .collect()
        };
        let secret = h("a1 1a f9 f0 55 31 f8 56 ad 47 11 6b 45 a9 50 32 82 04 b4 f4 4b fb 6b 3a 4b 4f 1f 3f cb 63 16 43");
        let k = TrafficKeys::derive(CipherSuite::Aes128GcmSha256, &secret).unwrap();
        assert_eq!(*k.key, h("9f 02 28 3b 6c 9c 07 ef c2 6b b9 f2 ac 92 e3 56"));
        assert_eq!(*k.iv, h("cf 78 2b 88 dd 83 54 9a ad f1 e9 84"));
    }
}
