//! TLS for NVMe/TCP (TP 8011): TLS 1.3 with pre-shared keys only, ciphers
//! TLS_AES_128_GCM_SHA256 and TLS_AES_256_GCM_SHA384.
//!
//! [`psk`] holds the key formats and derivations (interchange string, retained PSK, TLS
//! PSK, identity); [`ossl`] the OpenSSL PSK session callbacks (the one `unsafe` corner);
//! [`stream`] a non-blocking TLS stream over a connection's socket that the NVMe/TCP
//! receive and transmit paths use in place of the socket. OpenSSL is used because TLS 1.3
//! external PSKs need it: rustls offers PSKs for resumption only.
//!
//! After the handshake, [`ktls`] hands the record layer to the kernel where it offers kTLS
//! (the `tls` ULP), so the data path reads and writes plaintext on the socket as without
//! TLS; where it does not, the records are sealed and opened in user space by OpenSSL.

pub mod ktls;
pub mod ossl;
pub mod psk;
pub mod stream;

pub use ossl::PskLookup;
pub use psk::{ConfiguredPsk, PskError, PskIdentity, RetainedHash};
pub use stream::{TlsRole, TlsStream};

use openssl::ssl::{SslContext, SslContextBuilder, SslMethod, SslMode, SslVersion};
use std::sync::OnceLock;
use zeroize::Zeroizing;

/// The two TLS 1.3 cipher suites NVMe/TCP uses, chosen by the PSK's hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CipherSuite {
    Aes128GcmSha256,
    Aes256GcmSha384,
}

impl CipherSuite {
    /// The suite's two-byte TLS identifier.
    pub fn id(self) -> [u8; 2] {
        match self {
            CipherSuite::Aes128GcmSha256 => [0x13, 0x01],
            CipherSuite::Aes256GcmSha384 => [0x13, 0x02],
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            CipherSuite::Aes128GcmSha256 => "TLS_AES_128_GCM_SHA256",
            CipherSuite::Aes256GcmSha384 => "TLS_AES_256_GCM_SHA384",
        }
    }
}

/// A host's key as the server finds it for an identity: the retained PSK and its suite
/// (the TLS PSK is derived from it with the identity).
pub struct TlsKey {
    pub suite: CipherSuite,
    pub retained: Zeroizing<Vec<u8>>,
}

/// What went wrong with TLS.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("TLS setup: {0}")]
    Setup(String),
    #[error("TLS handshake failed: {0}")]
    Handshake(String),
    #[error("TLS: {0}")]
    Io(#[from] std::io::Error),
}

const SUITES: &str = "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384";

fn context(method: SslMethod, server: bool) -> Result<SslContext, TlsError> {
    let e = |e: openssl::error::ErrorStack| TlsError::Setup(e.to_string());
    let mut b = SslContextBuilder::new(method).map_err(e)?;
    b.set_min_proto_version(Some(SslVersion::TLS1_3))
        .map_err(e)?;
    b.set_max_proto_version(Some(SslVersion::TLS1_3))
        .map_err(e)?;
    b.set_ciphersuites(SUITES).map_err(e)?;
    // No resumption: every connection proves the PSK afresh, and no post-handshake
    // tickets interleave with NVMe/TCP data.
    b.set_num_tickets(0).map_err(e)?;
    b.set_options(openssl::ssl::SslOptions::NO_TICKET);
    b.set_session_cache_mode(openssl::ssl::SslSessionCacheMode::OFF);
    // Read-ahead stays off (OpenSSL's default): OpenSSL then reads exactly one record at a
    // time, so at the end of the handshake nothing past the Finished is buffered and the
    // kernel can take over at record 0 (`ktls`).
    b.set_mode(SslMode::ENABLE_PARTIAL_WRITE);
    // The traffic secrets, for a session that will move to kernel TLS (kept only there).
    b.set_keylog_callback(|ssl, line| {
        if let Some(k) = ssl.ex_data(ossl::secrets_index()) {
            k.note(line);
        }
    });
    if server {
        ossl::install_server_callback(&mut b);
    } else {
        ossl::install_client_callback(&mut b);
    }
    Ok(b.build())
}

/// The process's server context (PSK-only TLS 1.3).
pub fn server_context() -> Result<&'static SslContext, TlsError> {
    static C: OnceLock<Result<SslContext, String>> = OnceLock::new();
    C.get_or_init(|| context(SslMethod::tls_server(), true).map_err(|e| e.to_string()))
        .as_ref()
        .map_err(|e| TlsError::Setup(e.clone()))
}

/// The process's client context.
pub fn client_context() -> Result<&'static SslContext, TlsError> {
    static C: OnceLock<Result<SslContext, String>> = OnceLock::new();
    C.get_or_init(|| context(SslMethod::tls_client(), false).map_err(|e| e.to_string()))
        .as_ref()
        .map_err(|e| TlsError::Setup(e.clone()))
}
