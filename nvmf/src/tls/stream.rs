//! A non-blocking TLS stream over a connection's socket, shaped like the socket for the
//! NVMe/TCP paths: `read` fills a buffer until the socket is empty, `write_vectored` takes a
//! gather list of PDUs. With kernel TLS both go straight to the socket. Otherwise plaintext
//! is sealed into full 16 KiB records (small PDUs are gathered into one record first) into an
//! output buffer that goes to the socket with one write, so a batch of responses costs one
//! send, as without TLS.

use super::ktls::{self, TrafficKeys};
use super::ossl::{self, ClientPsk, ServerPsk, TrafficSecrets};
use super::psk::{tls_psk, ConfiguredPsk, PskIdentity};
use super::{PskLookup, TlsError};
use openssl::ssl::{ErrorCode, Ssl, SslStream};
use std::io::{ErrorKind, IoSlice, Read, Write};
use std::net::TcpStream;
use std::sync::Mutex;

/// Plaintext per TLS record.
const RECORD: usize = 16 << 10;
/// Plaintext one `write_vectored` takes at most (bounds the ciphertext buffered).
const WRITE_BUDGET: usize = 256 << 10;

/// The socket under OpenSSL: reads come from the socket, writes collect in `out`.
struct Pipe {
    sock: TcpStream,
    out: Vec<u8>,
    sent: usize,
}

impl Read for Pipe {
    fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
        (&self.sock).read(b)
    }
}

impl Write for Pipe {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.out.extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsRole {
    Server,
    Client,
}

/// A TLS session on one connection.
pub struct TlsStream {
    ssl: SslStream<Pipe>,
    role: TlsRole,
    /// Small PDUs gathered into one record.
    plain: Vec<u8>,
    established: bool,
    /// Move the record layer to the kernel after the handshake, if it offers kTLS.
    want_kernel: bool,
    /// The kernel seals and opens the records: reads and writes go to the socket.
    kernel: bool,
}

impl std::fmt::Debug for TlsStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsStream")
            .field("role", &self.role)
            .field("established", &self.established)
            .field("kernel", &self.kernel)
            .finish()
    }
}

fn setup(e: impl std::fmt::Display) -> TlsError {
    TlsError::Setup(e.to_string())
}

impl TlsStream {
    /// The server side of a connection: the handshake runs as the socket becomes readable
    /// ([`TlsStream::handshake`]). `sock` is a handle to the connection's socket.
    /// With `kernel`, the record layer moves to the kernel after the handshake where it
    /// can.
    pub fn server(sock: TcpStream, lookup: PskLookup, kernel: bool) -> Result<TlsStream, TlsError> {
        let mut ssl = Ssl::new(super::server_context()?).map_err(setup)?;
        ssl.set_ex_data(
            ossl::server_index(),
            ServerPsk {
                lookup,
                chosen: Mutex::new(None),
                refused: Mutex::new(None),
            },
        );
        ssl.set_accept_state();
        Self::new(ssl, sock, TlsRole::Server, kernel)
    }

    /// The client side, offering the identity of `hostnqn` → `subnqn` with `psk`.
    pub fn client(
        sock: TcpStream,
        psk: &ConfiguredPsk,
        hostnqn: &str,
        subnqn: &str,
        kernel: bool,
    ) -> Result<TlsStream, TlsError> {
        let suite = psk.suite();
        let identity = PskIdentity::new(suite, hostnqn, subnqn).to_string();
        if identity.len() > 255 {
            return Err(TlsError::Setup(format!(
                "the PSK identity for {hostnqn} -> {subnqn} is {} bytes (at most 255)",
                identity.len()
            )));
        }
        let tls = tls_psk(&psk.retained(hostnqn), &identity, suite);
        let mut ssl = Ssl::new(super::client_context()?).map_err(setup)?;
        // Offer only the PSK's suite: a server preferring the other one would otherwise
        // pick it and find the PSK's hash does not match.
        ssl.set_ciphersuites(suite.name()).map_err(setup)?;
        ssl.set_ex_data(
            ossl::client_index(),
            ClientPsk {
                identity: identity.into_bytes(),
                suite,
                tls,
            },
        );
        ssl.set_connect_state();
        Self::new(ssl, sock, TlsRole::Client, kernel)
    }

    fn new(
        mut ssl: Ssl,
        sock: TcpStream,
        role: TlsRole,
        kernel: bool,
    ) -> Result<TlsStream, TlsError> {
        if kernel {
            ssl.set_ex_data(ossl::secrets_index(), TrafficSecrets::default());
        }
        let pipe = Pipe {
            sock,
            out: Vec::with_capacity(RECORD + 64),
            sent: 0,
        };
        Ok(TlsStream {
            ssl: SslStream::new(ssl, pipe).map_err(setup)?,
            role,
            plain: Vec::with_capacity(RECORD),
            established: false,
            want_kernel: kernel,
            kernel: false,
        })
    }

    /// The kernel seals and opens this session's records.
    pub fn is_kernel(&self) -> bool {
        self.kernel
    }

    /// Right after the handshake: hands the record layer to the kernel if it offers kTLS.
    /// Ok(()) either way, unless the socket was left half-configured.
    fn try_kernel(&mut self) -> Result<(), TlsError> {
        let secrets = self.ssl.ssl().ex_data(ossl::secrets_index()).map(|s| {
            (
                s.client.lock().ok().and_then(|mut c| c.take()),
                s.server.lock().ok().and_then(|mut c| c.take()),
            )
        });
        // Nothing may be left in OpenSSL's buffers: the kernel starts at record 0 of
        // each direction.
        if !self.want_kernel || self.pending_out() || self.ssl.ssl().pending() > 0 {
            return Ok(());
        }
        let Some((Some(client), Some(server))) = secrets else {
            return Ok(());
        };
        let suite = match self.ssl.ssl().current_cipher().map(|c| c.name()) {
            Some("TLS_AES_256_GCM_SHA384") => super::CipherSuite::Aes256GcmSha384,
            _ => super::CipherSuite::Aes128GcmSha256,
        };
        let (Some(c), Some(s)) = (
            TrafficKeys::derive(suite, &client),
            TrafficKeys::derive(suite, &server),
        ) else {
            return Ok(());
        };
        let (tx, rx) = match self.role {
            TlsRole::Server => (&s, &c),
            TlsRole::Client => (&c, &s),
        };
        match ktls::enable(&self.ssl.get_ref().sock, suite, tx, rx) {
            Ok(()) => {
                self.kernel = true;
                Ok(())
            }
            // No `tls` ULP here: the records stay in user space.
            Err((false, e)) => {
                tracing::debug!(error = %e, "no kernel TLS: records sealed in user space");
                Ok(())
            }
            Err((true, e)) => Err(TlsError::Handshake(format!("kernel TLS set-up: {e}"))),
        }
    }

    /// Advances the handshake with what the socket has. Ok(true): established.
    pub fn handshake(&mut self) -> Result<bool, TlsError> {
        if self.established {
            return Ok(true);
        }
        let r = self.ssl.do_handshake();
        // Our flight (ServerHello..Finished, or the ClientHello) goes out even when the
        // handshake then fails: an alert tells the peer why.
        let flushed = self.flush_out();
        match r {
            Ok(()) => {
                flushed?;
                self.established = true;
                self.try_kernel()?;
                Ok(true)
            }
            Err(e) if e.code() == ErrorCode::WANT_READ || e.code() == ErrorCode::WANT_WRITE => {
                flushed?;
                Ok(false)
            }
            Err(e) => Err(TlsError::Handshake(self.why(&e))),
        }
    }

    /// The reason a handshake failed, for the log.
    fn why(&self, e: &openssl::ssl::Error) -> String {
        if let Some(r) = self
            .ssl
            .ssl()
            .ex_data(ossl::server_index())
            .and_then(|d| d.refused.lock().ok().and_then(|r| r.clone()))
        {
            return r;
        }
        match (e.io_error(), e.ssl_error()) {
            (Some(io), _) => io.to_string(),
            (None, Some(stack)) => stack.to_string(),
            (None, None) if e.code() == ErrorCode::SYSCALL => "peer closed the connection".into(),
            _ => format!("OpenSSL error code {:?}", e.code()),
        }
    }

    /// The identity the server accepted (server side, after the handshake).
    pub fn peer_identity(&self) -> Option<PskIdentity> {
        self.ssl
            .ssl()
            .ex_data(ossl::server_index())
            .and_then(|d| d.chosen.lock().ok().and_then(|c| c.clone()))
    }

    /// The negotiated cipher suite's name.
    pub fn cipher(&self) -> &'static str {
        self.ssl
            .ssl()
            .current_cipher()
            .map(|c| c.name())
            .unwrap_or("none")
    }

    /// Writes buffered ciphertext. Ok(true): all of it went out.
    pub fn flush_out(&mut self) -> std::io::Result<bool> {
        if self.kernel {
            return Ok(true);
        }
        let p = self.ssl.get_mut();
        while p.sent < p.out.len() {
            match (&p.sock).write(&p.out[p.sent..]) {
                Ok(0) => return Err(ErrorKind::WriteZero.into()),
                Ok(n) => p.sent += n,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(false),
                Err(e) => return Err(e),
            }
        }
        p.out.clear();
        p.sent = 0;
        Ok(true)
    }

    /// Ciphertext waits for the socket.
    pub fn pending_out(&self) -> bool {
        let p = self.ssl.get_ref();
        p.sent < p.out.len()
    }

    /// Decrypted bytes are buffered inside the session (a read would return them without
    /// touching the socket).
    pub fn pending_in(&self) -> bool {
        self.ssl.ssl().pending() > 0
    }

    /// Seals the gathered small PDUs into one record.
    fn seal_plain(&mut self) -> std::io::Result<()> {
        if self.plain.is_empty() {
            return Ok(());
        }
        let plain = std::mem::take(&mut self.plain);
        let r = self.seal(&plain);
        self.plain = plain;
        self.plain.clear();
        r
    }

    fn seal(&mut self, b: &[u8]) -> std::io::Result<()> {
        let mut off = 0;
        while off < b.len() {
            // The pipe takes every byte, so a write only fails on a broken session.
            match self.ssl.ssl_write(&b[off..]) {
                Ok(n) => off += n,
                Err(e) => return Err(std::io::Error::other(e.to_string())),
            }
        }
        Ok(())
    }

    /// Encrypts what fits of `iov` and sends it. Returns the plaintext bytes taken; `Err`
    /// `WouldBlock` when earlier ciphertext still waits for the socket.
    pub fn write_vectored(&mut self, iov: &[IoSlice<'_>]) -> std::io::Result<usize> {
        if self.kernel {
            return (&self.ssl.get_ref().sock).write_vectored(iov);
        }
        if !self.flush_out()? {
            return Err(ErrorKind::WouldBlock.into());
        }
        let mut taken = 0;
        'all: for s in iov {
            let mut rest: &[u8] = s;
            while !rest.is_empty() {
                if taken >= WRITE_BUDGET {
                    break 'all;
                }
                if self.plain.is_empty() && rest.len() >= RECORD {
                    // A full record straight from the caller's buffer.
                    self.seal(&rest[..RECORD])?;
                    rest = &rest[RECORD..];
                    taken += RECORD;
                    continue;
                }
                let n = (RECORD - self.plain.len()).min(rest.len());
                self.plain.extend_from_slice(&rest[..n]);
                rest = &rest[n..];
                taken += n;
                if self.plain.len() == RECORD {
                    self.seal_plain()?;
                }
            }
        }
        self.seal_plain()?;
        self.flush_out()?;
        Ok(taken)
    }

    /// Reads decrypted bytes into `b` until it is full or the socket is empty. Ok(0): the
    /// peer closed; `Err` `WouldBlock`: nothing yet.
    pub fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
        if self.kernel {
            // A record other than data (an alert, a close_notify, a KeyUpdate) fails the
            // read with EIO: the connection ends, as it would on a broken stream.
            return (&self.ssl.get_ref().sock).read(b);
        }
        let mut n = 0;
        while n < b.len() {
            match self.ssl.ssl_read(&mut b[n..]) {
                Ok(k) => n += k,
                Err(e) if e.code() == ErrorCode::WANT_READ => {
                    // A post-handshake message (a KeyUpdate) may have produced an answer.
                    let _ = self.flush_out();
                    if n > 0 {
                        break;
                    }
                    return Err(ErrorKind::WouldBlock.into());
                }
                Err(e) if e.code() == ErrorCode::ZERO_RETURN => break,
                Err(e) => {
                    if n > 0 {
                        break;
                    }
                    return match e.into_io_error() {
                        Ok(io) if io.kind() == ErrorKind::WouldBlock => Err(io),
                        Ok(io) => Err(io),
                        Err(e) => Err(std::io::Error::other(e.to_string())),
                    };
                }
            }
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::super::{psk::RetainedHash, CipherSuite, TlsKey};
    use super::*;
    use std::net::TcpListener;
    use std::sync::Arc;
    use zeroize::Zeroizing;

    const HOST: &str = "nqn.2014-08.org.nvmexpress:uuid:f81d4fae-7dec-11d0-a765-00a0c91e6bf6";
    const SUB: &str = "nqn.2024-01.io.strata:tls";

    fn psk(len: usize, seed: u8, hash: RetainedHash) -> ConfiguredPsk {
        ConfiguredPsk {
            hash,
            key: Zeroizing::new((0..len as u8).map(|i| i ^ seed).collect()),
        }
    }

    fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (s, _) = l.accept().unwrap();
        s.set_nonblocking(true).unwrap();
        c.set_nonblocking(true).unwrap();
        (s, c)
    }

    fn lookup(server_psk: ConfiguredPsk) -> PskLookup {
        Arc::new(move |id: &PskIdentity| {
            if id.hostnqn != HOST || id.subnqn != SUB {
                return Err("unknown host".into());
            }
            if id.suite != server_psk.suite() {
                return Err("wrong suite".into());
            }
            Ok(TlsKey {
                suite: server_psk.suite(),
                retained: server_psk.retained(&id.hostnqn),
            })
        })
    }

    /// Runs both handshakes to the end; the results of each side.
    fn handshake(s: &mut TlsStream, c: &mut TlsStream) -> (Result<(), String>, Result<(), String>) {
        let (mut sr, mut cr) = (None, None);
        for _ in 0..10_000 {
            if cr.is_none() {
                match c.handshake() {
                    Ok(true) => cr = Some(Ok(())),
                    Ok(false) => {}
                    Err(e) => cr = Some(Err(e.to_string())),
                }
            }
            if sr.is_none() {
                match s.handshake() {
                    Ok(true) => sr = Some(Ok(())),
                    Ok(false) => {}
                    Err(e) => sr = Some(Err(e.to_string())),
                }
            }
            if sr.is_some() && cr.is_some() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_micros(100));
        }
        (
            sr.unwrap_or(Err("server stuck".into())),
            cr.unwrap_or(Err("client stuck".into())),
        )
    }

    fn read_exact(t: &mut TlsStream, n: usize) -> Vec<u8> {
        let mut v = vec![0u8; n];
        let mut got = 0;
        let end = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while got < n && std::time::Instant::now() < end {
            match t.read(&mut v[got..]) {
                Ok(0) => break,
                Ok(k) => got += k,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    std::thread::sleep(std::time::Duration::from_micros(50))
                }
                Err(e) => panic!("read: {e}"),
            }
        }
        v.truncate(got);
        v
    }

    #[test]
    fn both_suites_handshake_and_move_gathered_data() {
        for (len, hash) in [
            (32, RetainedHash::Sha256),
            (48, RetainedHash::Sha384),
            (32, RetainedHash::None),
        ] {
            let k = psk(len, 7, hash);
            let (ss, cs) = pair();
            let mut s = TlsStream::server(ss, lookup(k.clone()), true).unwrap();
            let mut c = TlsStream::client(cs, &k, HOST, SUB, true).unwrap();
            let (sr, cr) = handshake(&mut s, &mut c);
            assert_eq!((sr, cr), (Ok(()), Ok(())), "len {len} {hash:?}");
            let want = if len == 48 {
                CipherSuite::Aes256GcmSha384
            } else {
                CipherSuite::Aes128GcmSha256
            };
            assert_eq!(s.cipher(), want.name());
            assert_eq!(s.peer_identity().unwrap().hostnqn, HOST);
            // A gather list of small and large pieces arrives in order.
            let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
            let parts: [&[u8]; 4] = [b"hdr-8byt", &big, b"x", &big[..5000]];
            let iov: Vec<IoSlice<'_>> = parts.iter().map(|p| IoSlice::new(p)).collect();
            let mut want_bytes = Vec::new();
            for p in parts {
                want_bytes.extend_from_slice(p);
            }
            let mut sent = 0;
            let total = want_bytes.len();
            let reader = std::thread::spawn(move || read_exact(&mut s, total));
            while sent < total {
                let mut skip = sent;
                let rest: Vec<IoSlice<'_>> = parts
                    .iter()
                    .filter_map(|p| {
                        if skip >= p.len() {
                            skip -= p.len();
                            None
                        } else {
                            let r = IoSlice::new(&p[skip..]);
                            skip = 0;
                            Some(r)
                        }
                    })
                    .collect();
                match c.write_vectored(&rest) {
                    Ok(n) => sent += n,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => std::thread::yield_now(),
                    Err(e) => panic!("write: {e}"),
                }
            }
            while c.pending_out() {
                let _ = c.flush_out();
            }
            drop(iov);
            assert!(reader.join().unwrap() == want_bytes, "data differs");
        }
    }

    #[test]
    fn wrong_psk_unknown_identity_and_garbage_fail_the_handshake() {
        let k = psk(32, 1, RetainedHash::Sha256);
        // Wrong key: binder check fails on the server.
        let (ss, cs) = pair();
        let mut s = TlsStream::server(ss, lookup(k.clone()), false).unwrap();
        let mut c =
            TlsStream::client(cs, &psk(32, 2, RetainedHash::Sha256), HOST, SUB, false).unwrap();
        let (sr, cr) = handshake(&mut s, &mut c);
        assert!(sr.is_err() && cr.is_err(), "{sr:?} {cr:?}");
        // Identity of another host.
        let (ss, cs) = pair();
        let mut s = TlsStream::server(ss, lookup(k.clone()), false).unwrap();
        let mut c = TlsStream::client(cs, &k, "nqn.2024-01.io.other:host", SUB, false).unwrap();
        let (sr, _) = handshake(&mut s, &mut c);
        assert!(sr.unwrap_err().contains("unknown host"));
        // Plain NVMe/TCP bytes (an ICReq) instead of a ClientHello.
        let (ss, cs) = pair();
        let mut s = TlsStream::server(ss, lookup(k), false).unwrap();
        (&cs).write_all(&[0u8, 0, 128, 0, 128, 0, 0, 0]).unwrap();
        (&cs).write_all(&[0u8; 120]).unwrap();
        let mut r = Ok(false);
        for _ in 0..1000 {
            r = s.handshake();
            if !matches!(r, Ok(false)) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_micros(100));
        }
        assert!(r.is_err(), "{r:?}");
    }
}
