//! The OpenSSL calls the `openssl` crate does not wrap: TLS 1.3 external PSKs through the
//! session callbacks (`SSL_CTX_set_psk_find_session_callback` on the server,
//! `SSL_CTX_set_psk_use_session_callback` on the client). The only `unsafe` of TLS lives
//! here. A callback finds its keys in the SSL object's extra data ([`ServerPsk`],
//! [`ClientPsk`]), set by safe code before the handshake starts.

use super::psk::{tls_psk, PskIdentity};
use super::{CipherSuite, TlsKey};
use foreign_types::ForeignTypeRef;
use openssl::ex_data::Index;
use openssl::ssl::{Ssl, SslContextBuilder, SslRef};
use openssl_sys::{EVP_MD, SSL, SSL_CIPHER, SSL_CTX, SSL_SESSION};
use std::os::raw::{c_int, c_uchar};
use std::sync::{Arc, Mutex, OnceLock};

/// What a server looks a PSK identity up with: the TLS key, or why there is none.
pub type PskLookup = Arc<dyn Fn(&PskIdentity) -> Result<TlsKey, String> + Send + Sync>;

/// The server side's extra data: the lookup and the identity the handshake chose.
pub(crate) struct ServerPsk {
    pub lookup: PskLookup,
    pub chosen: Mutex<Option<PskIdentity>>,
    pub refused: Mutex<Option<String>>,
}

/// The client side's extra data: the identity offered and its TLS key.
pub(crate) struct ClientPsk {
    pub identity: Vec<u8>,
    pub suite: CipherSuite,
    pub tls: zeroize::Zeroizing<Vec<u8>>,
}

/// The application traffic secrets of a session that will move to kernel TLS, caught from
/// OpenSSL's key log.
#[derive(Default)]
pub(crate) struct TrafficSecrets {
    pub client: Mutex<Option<zeroize::Zeroizing<Vec<u8>>>>,
    pub server: Mutex<Option<zeroize::Zeroizing<Vec<u8>>>>,
}

impl TrafficSecrets {
    /// Takes a key log line: `<LABEL> <client random> <secret hex>`.
    pub fn note(&self, line: &str) {
        let mut it = line.split(' ');
        let (Some(label), Some(_), Some(hex)) = (it.next(), it.next(), it.next()) else {
            return;
        };
        let slot = match label {
            "CLIENT_TRAFFIC_SECRET_0" => &self.client,
            "SERVER_TRAFFIC_SECRET_0" => &self.server,
            _ => return,
        };
        let bytes: Option<Vec<u8>> = (0..hex.len())
            .step_by(2)
            .map(|i| {
                hex.get(i..i + 2)
                    .and_then(|b| u8::from_str_radix(b, 16).ok())
            })
            .collect();
        if let (Some(b), Ok(mut s)) = (bytes, slot.lock()) {
            *s = Some(zeroize::Zeroizing::new(b));
        }
    }
}

pub(crate) fn secrets_index() -> Index<Ssl, TrafficSecrets> {
    static I: OnceLock<Index<Ssl, TrafficSecrets>> = OnceLock::new();
    *I.get_or_init(|| Ssl::new_ex_index().expect("OpenSSL ex_data index"))
}

type FindSessionCb =
    unsafe extern "C" fn(*mut SSL, *const c_uchar, usize, *mut *mut SSL_SESSION) -> c_int;
type UseSessionCb = unsafe extern "C" fn(
    *mut SSL,
    *const EVP_MD,
    *mut *const c_uchar,
    *mut usize,
    *mut *mut SSL_SESSION,
) -> c_int;

extern "C" {
    fn SSL_CTX_set_psk_find_session_callback(ctx: *mut SSL_CTX, cb: Option<FindSessionCb>);
    fn SSL_CTX_set_psk_use_session_callback(ctx: *mut SSL_CTX, cb: Option<UseSessionCb>);
    fn SSL_SESSION_new() -> *mut SSL_SESSION;
    fn SSL_SESSION_set1_master_key(s: *mut SSL_SESSION, key: *const c_uchar, len: usize) -> c_int;
    fn SSL_SESSION_set_cipher(s: *mut SSL_SESSION, cipher: *const SSL_CIPHER) -> c_int;
    fn SSL_SESSION_set_protocol_version(s: *mut SSL_SESSION, version: c_int) -> c_int;
    fn SSL_CIPHER_find(ssl: *mut SSL, id: *const c_uchar) -> *const SSL_CIPHER;
}

pub(crate) fn server_index() -> Index<Ssl, ServerPsk> {
    static I: OnceLock<Index<Ssl, ServerPsk>> = OnceLock::new();
    // Allocating an index fails only when OpenSSL is out of memory at start-up.
    *I.get_or_init(|| Ssl::new_ex_index().expect("OpenSSL ex_data index"))
}

pub(crate) fn client_index() -> Index<Ssl, ClientPsk> {
    static I: OnceLock<Index<Ssl, ClientPsk>> = OnceLock::new();
    *I.get_or_init(|| Ssl::new_ex_index().expect("OpenSSL ex_data index"))
}

pub(crate) fn install_server_callback(b: &mut SslContextBuilder) {
    // SAFETY: `b.as_ptr()` is a live SSL_CTX owned by the builder; the callback has the
    // signature OpenSSL declares for SSL_psk_find_session_cb_func.
    unsafe { SSL_CTX_set_psk_find_session_callback(b.as_ptr(), Some(find_session)) }
}

pub(crate) fn install_client_callback(b: &mut SslContextBuilder) {
    // SAFETY: as above, for SSL_psk_use_session_cb_func.
    unsafe { SSL_CTX_set_psk_use_session_callback(b.as_ptr(), Some(use_session)) }
}

/// A TLS 1.3 session carrying `key` as the external PSK for `suite`, or null.
///
/// # Safety
/// `ssl` is the live SSL object of the running callback.
unsafe fn psk_session(ssl: *mut SSL, key: &[u8], suite: CipherSuite) -> *mut SSL_SESSION {
    // SAFETY: `ssl` is live (caller); the cipher id is two readable bytes; the session is
    // ours until returned, and freed on every failure path.
    unsafe {
        let cipher = SSL_CIPHER_find(ssl, suite.id().as_ptr());
        if cipher.is_null() {
            return std::ptr::null_mut();
        }
        let s = SSL_SESSION_new();
        if s.is_null() {
            return s;
        }
        if SSL_SESSION_set_cipher(s, cipher) != 1
            || SSL_SESSION_set_protocol_version(s, openssl_sys::TLS1_3_VERSION) != 1
            || SSL_SESSION_set1_master_key(s, key.as_ptr(), key.len()) != 1
        {
            openssl_sys::SSL_SESSION_free(s);
            return std::ptr::null_mut();
        }
        s
    }
}

/// The server's answer to the identity a ClientHello offers.
unsafe extern "C" fn find_session(
    ssl: *mut SSL,
    identity: *const c_uchar,
    identity_len: usize,
    sess: *mut *mut SSL_SESSION,
) -> c_int {
    // SAFETY: OpenSSL passes its live SSL object, an identity of `identity_len` bytes that
    // outlives the call, and a valid out pointer.
    let (ssl_ref, id) = unsafe {
        *sess = std::ptr::null_mut();
        (
            SslRef::from_ptr(ssl),
            std::slice::from_raw_parts(identity, identity_len),
        )
    };
    let Some(data) = ssl_ref.ex_data(server_index()) else {
        return 0;
    };
    let refuse = |why: String| {
        if let Ok(mut r) = data.refused.lock() {
            *r = Some(why);
        }
        // No session for this identity: the handshake fails (we hold no certificate).
        1
    };
    let Ok(text) = std::str::from_utf8(id) else {
        return refuse("PSK identity is not UTF-8".into());
    };
    // The peer's bytes go to the log escaped and cut short.
    let shown: String = text.chars().take(300).collect();
    let parsed = match PskIdentity::parse(text) {
        Ok(p) => p,
        Err(e) => return refuse(format!("PSK identity {shown:?}: {e}")),
    };
    let key = match (data.lookup)(&parsed) {
        Ok(k) => k,
        Err(e) => return refuse(format!("PSK identity {shown:?}: {e}")),
    };
    // SAFETY: `ssl` is the live SSL of this callback.
    let s = unsafe { psk_session(ssl, &tls_psk(&key.retained, text, key.suite), key.suite) };
    if s.is_null() {
        return 0;
    }
    if let Ok(mut c) = data.chosen.lock() {
        *c = Some(parsed);
    }
    // SAFETY: valid out pointer (above); OpenSSL takes ownership of the session.
    unsafe { *sess = s };
    1
}

/// The client's PSK for its ClientHello.
unsafe extern "C" fn use_session(
    ssl: *mut SSL,
    _md: *const EVP_MD,
    id: *mut *const c_uchar,
    idlen: *mut usize,
    sess: *mut *mut SSL_SESSION,
) -> c_int {
    // SAFETY: OpenSSL passes its live SSL object and valid out pointers.
    let ssl_ref = unsafe {
        *sess = std::ptr::null_mut();
        SslRef::from_ptr(ssl)
    };
    let Some(data) = ssl_ref.ex_data(client_index()) else {
        return 0;
    };
    // SAFETY: `ssl` is the live SSL of this callback.
    let s = unsafe { psk_session(ssl, &data.tls, data.suite) };
    if s.is_null() {
        return 0;
    }
    // SAFETY: valid out pointers; the identity lives in the SSL's extra data, so it
    // outlives the handshake; OpenSSL takes ownership of the session.
    unsafe {
        *id = data.identity.as_ptr();
        *idlen = data.identity.len();
        *sess = s;
    }
    1
}
