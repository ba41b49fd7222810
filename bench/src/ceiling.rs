//! The loopback ceiling: the fastest any NVMe/TCP target could answer on these cores.
//!
//! A minimal request/response loop over one kernel TCP connection, shaped like NVMe/TCP but
//! doing nothing else: a client thread keeps `qd` 72-byte commands outstanding; a server
//! thread answers reads with a 24-byte data header plus the payload (sent from one static
//! buffer, no copy, as a C2HData with the SUCCESS flag), and writes with a 24-byte response,
//! after an R2T round trip when the payload does not fit in the command capsule (like a
//! target whose in-capsule data size is 8 KiB). Both sides busy-poll non-blocking sockets,
//! receive into a 64 KiB staging buffer (large payloads straight into a sink), and gather
//! every answer ready in a turn into one `writev`. Whatever a real target does beyond this —
//! parsing, bdev work, copies — is what a target's figure loses against this one.

use std::io::{self, IoSlice, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use strata_reactor::clock;
use strata_reactor::sys::{set_thread_affinity, thread_cpu_nanos};

use crate::stats::JobStats;

/// PDU types (NVMe/TCP's numbers, for readability in a packet capture).
const CMD: u8 = 0x04;
const RESP: u8 = 0x05;
const H2C: u8 = 0x06;
const C2H: u8 = 0x07;
const R2T: u8 = 0x09;

const CMD_LEN: usize = 72;
const HDR_LEN: usize = 24;
/// Payloads up to this size travel inside the command capsule.
pub const IN_CAPSULE: usize = 8192;
const STAGING: usize = 64 << 10;
const MAX_IOV: usize = 512;

/// What one run does.
#[derive(Debug, Clone, Copy)]
pub struct CeilingSpec {
    pub qd: usize,
    pub io_size: usize,
    pub write: bool,
    pub seconds: f64,
    pub server_core: usize,
    pub client_core: usize,
    /// SO_SNDBUF/SO_RCVBUF on both ends (0: the kernel's autotuning).
    pub sock_buf: usize,
}

/// What one run measured: the client's view, and CPU time per I/O of each thread.
#[derive(Debug)]
pub struct CeilingResult {
    pub stats: JobStats,
    pub server_cpu_ns_per_io: f64,
    pub client_cpu_ns_per_io: f64,
}

fn header(ty: u8, hlen: usize, data: usize, tag: u16) -> [u8; HDR_LEN] {
    let mut h = [0u8; HDR_LEN];
    h[0] = ty;
    h[2] = hlen as u8;
    h[4..8].copy_from_slice(&((hlen + data) as u32).to_le_bytes());
    h[8..10].copy_from_slice(&tag.to_le_bytes());
    h
}

/// One PDU header parsed from the staging buffer.
struct Pdu {
    ty: u8,
    hlen: usize,
    plen: usize,
    tag: u16,
}

fn parse(b: &[u8]) -> io::Result<Pdu> {
    let plen = u32::from_le_bytes([b[4], b[5], b[6], b[7]]) as usize;
    let hlen = b[2] as usize;
    if hlen < 10 || plen < hlen || plen > hlen + (1 << 20) {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "bad PDU header"));
    }
    Ok(Pdu {
        ty: b[0],
        hlen,
        plen,
        tag: u16::from_le_bytes([b[8], b[9]]),
    })
}

/// The receive side both ends share: headers through a staging buffer, payload bytes that
/// did not arrive with their header read straight into a sink (a target's data buffer).
struct Rx {
    buf: Box<[u8]>,
    start: usize,
    end: usize,
    /// Payload bytes of the current PDU still to read into the sink.
    skip: usize,
    /// That PDU, handed on once its payload is all in.
    partial: Option<Pdu>,
    sink: Box<[u8]>,
}

impl Rx {
    fn new() -> Rx {
        Rx {
            buf: vec![0; STAGING].into_boxed_slice(),
            start: 0,
            end: 0,
            skip: 0,
            partial: None,
            sink: vec![0; 1 << 20].into_boxed_slice(),
        }
    }

    /// Reads what the socket has; calls `on_pdu` for each PDU whose payload is all in.
    /// Returns false at end of stream.
    fn poll(&mut self, s: &mut TcpStream, mut on_pdu: impl FnMut(&Pdu)) -> io::Result<bool> {
        loop {
            if self.skip > 0 {
                let want = self.skip.min(self.sink.len());
                match s.read(&mut self.sink[..want]) {
                    Ok(0) => return Ok(false),
                    Ok(k) => {
                        self.skip -= k;
                        if self.skip == 0 {
                            if let Some(p) = self.partial.take() {
                                on_pdu(&p);
                            }
                        }
                        // A short read means the socket is drained: no second read to learn so.
                        if k < want {
                            return Ok(true);
                        }
                        continue;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(true),
                    Err(e) => return Err(e),
                }
            }
            if self.start == self.end {
                self.start = 0;
                self.end = 0;
            } else if self.start > self.buf.len() / 2 || self.end == self.buf.len() {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            let want = self.buf.len() - self.end;
            let n = match s.read(&mut self.buf[self.end..]) {
                Ok(0) => return Ok(false),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(true),
                Err(e) => return Err(e),
            };
            self.end += n;
            // Every header is at least HDR_LEN bytes; parse reads the first 10.
            while self.end - self.start >= HDR_LEN {
                let b = &self.buf[self.start..self.end];
                let p = parse(b)?;
                if b.len() < p.hlen {
                    break;
                }
                let here = b.len().min(p.plen);
                self.start += here;
                self.skip = p.plen - here;
                if self.skip > 0 {
                    self.partial = Some(p);
                    break;
                }
                on_pdu(&p);
            }
            if n < want && self.skip == 0 {
                return Ok(true);
            }
        }
    }
}

/// PDUs queued for one gathered write: headers plus slices of one static payload.
struct Tx {
    /// Each PDU's header (a command's 72 bytes, or 24) and payload length.
    pdus: Vec<([u8; CMD_LEN], usize, usize)>,
    /// Bytes of the first unsent PDU already written.
    sent: usize,
    head: usize,
    payload: Box<[u8]>,
}

impl Tx {
    fn new(payload: usize) -> Tx {
        Tx {
            pdus: Vec::with_capacity(4096),
            sent: 0,
            head: 0,
            payload: vec![0x5a; payload.max(1)].into_boxed_slice(),
        }
    }

    fn push(&mut self, hdr: [u8; HDR_LEN], hlen: usize, data: usize) {
        let mut h = [0u8; CMD_LEN];
        h[..HDR_LEN].copy_from_slice(&hdr);
        self.pdus.push((h, hlen, data));
    }

    /// One `writev` of everything queued (up to MAX_IOV slices); keeps what did not fit.
    fn flush(&mut self, s: &mut TcpStream) -> io::Result<()> {
        while self.head < self.pdus.len() {
            let mut iov: [IoSlice<'_>; MAX_IOV] = [IoSlice::new(&[]); MAX_IOV];
            let mut n = 0;
            let mut skip = self.sent;
            for (h, hlen, data) in &self.pdus[self.head..] {
                if n + 2 > MAX_IOV {
                    break;
                }
                for part in [&h[..*hlen], &self.payload[..*data]] {
                    if part.len() > skip {
                        iov[n] = IoSlice::new(&part[skip..]);
                        n += 1;
                        skip = 0;
                    } else {
                        skip -= part.len();
                    }
                }
            }
            let mut w = match s.write_vectored(&iov[..n]) {
                Ok(0) => return Err(io::Error::from(io::ErrorKind::WriteZero)),
                Ok(w) => w,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e),
            };
            while let Some((_, hlen, data)) = self.pdus.get(self.head) {
                let left = hlen + data - self.sent;
                if w < left {
                    self.sent += w;
                    return Ok(());
                }
                w -= left;
                self.sent = 0;
                self.head += 1;
            }
        }
        self.pdus.clear();
        self.head = 0;
        Ok(())
    }
}

fn thread_cpu_ns() -> u64 {
    thread_cpu_nanos().unwrap_or(0)
}

fn tune(s: &TcpStream, spec: &CeilingSpec) -> io::Result<()> {
    s.set_nodelay(true)?;
    if spec.sock_buf > 0 {
        let r = socket2::SockRef::from(s);
        r.set_send_buffer_size(spec.sock_buf)?;
        r.set_recv_buffer_size(spec.sock_buf)?;
    }
    Ok(())
}

fn server(l: TcpListener, spec: CeilingSpec) -> io::Result<(u64, u64)> {
    let _ = set_thread_affinity(&[spec.server_core]);
    let (mut s, _) = l.accept()?;
    tune(&s, &spec)?;
    s.set_nonblocking(true)?;
    let cpu0 = thread_cpu_ns();
    let mut rx = Rx::new();
    let mut tx = Tx::new(spec.io_size);
    let mut answered = 0u64;
    let size = spec.io_size;
    loop {
        let open = rx.poll(&mut s, |p| match p.ty {
            CMD if !spec.write => {
                tx.push(header(C2H, HDR_LEN, size, p.tag), HDR_LEN, size);
                answered += 1;
            }
            // A capsule with its data, or the H2CData an R2T asked for: done.
            CMD if p.plen > p.hlen || size == 0 => {
                tx.push(header(RESP, HDR_LEN, 0, p.tag), HDR_LEN, 0);
                answered += 1;
            }
            CMD => tx.push(header(R2T, HDR_LEN, 0, p.tag), HDR_LEN, 0),
            H2C => {
                tx.push(header(RESP, HDR_LEN, 0, p.tag), HDR_LEN, 0);
                answered += 1;
            }
            _ => {}
        })?;
        tx.flush(&mut s)?;
        if !open {
            return Ok((answered, thread_cpu_ns().saturating_sub(cpu0)));
        }
    }
}

fn client(mut s: TcpStream, spec: CeilingSpec) -> io::Result<(JobStats, u64)> {
    let _ = set_thread_affinity(&[spec.client_core]);
    tune(&s, &spec)?;
    s.set_nonblocking(true)?;
    let cpu0 = thread_cpu_ns();
    let mut rx = Rx::new();
    let mut tx = Tx::new(spec.io_size);
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)
        .map_err(|e| io::Error::other(e.to_string()))?;
    let in_capsule = spec.write && spec.io_size <= IN_CAPSULE;
    let cmd_data = if in_capsule { spec.io_size } else { 0 };
    let mut started = vec![0u64; spec.qd];
    let now = clock::ticks();
    for (tag, st) in started.iter_mut().enumerate() {
        *st = now;
        tx.push(
            header(CMD, CMD_LEN, cmd_data, tag as u16),
            CMD_LEN,
            cmd_data,
        );
    }
    let t0 = Instant::now();
    let end = t0 + Duration::from_secs_f64(spec.seconds);
    let mut ios = 0u64;
    let mut outstanding = spec.qd;
    let mut stopping = false;
    let mut done: Vec<(u16, bool)> = Vec::with_capacity(spec.qd);
    while outstanding > 0 {
        tx.flush(&mut s)?;
        done.clear();
        let open = rx.poll(&mut s, |p| match p.ty {
            R2T => done.push((p.tag, false)),
            C2H | RESP => done.push((p.tag, true)),
            _ => {}
        })?;
        if !open {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "server closed",
            ));
        }
        if done.is_empty() {
            continue;
        }
        let now = clock::ticks();
        if !stopping && Instant::now() >= end {
            stopping = true;
        }
        for &(tag, complete) in &done {
            let i = tag as usize % spec.qd;
            if !complete {
                tx.push(
                    header(H2C, HDR_LEN, spec.io_size, tag),
                    HDR_LEN,
                    spec.io_size,
                );
                continue;
            }
            ios += 1;
            let _ = hist.record(clock::ticks_to_nanos(started[i], now).max(1));
            if stopping {
                outstanding -= 1;
            } else {
                started[i] = now;
                tx.push(header(CMD, CMD_LEN, cmd_data, tag), CMD_LEN, cmd_data);
            }
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    let cpu = thread_cpu_ns().saturating_sub(cpu0);
    let bytes = ios * spec.io_size as u64;
    Ok((JobStats::new(ios, 0, bytes, secs, None, hist), cpu))
}

/// Runs server and client on their cores over 127.0.0.1 for `spec.seconds`.
pub fn run(spec: CeilingSpec) -> io::Result<CeilingResult> {
    if spec.qd == 0 || spec.qd > u16::MAX as usize || spec.io_size > 1 << 20 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "queue depth must be 1..=65535 and the I/O size at most 1 MiB",
        ));
    }
    let l = TcpListener::bind("127.0.0.1:0")?;
    let addr = l.local_addr()?;
    let srv = std::thread::spawn(move || server(l, spec));
    let c = TcpStream::connect(addr)?;
    let issued = client(c, spec);
    let served = srv
        .join()
        .map_err(|_| io::Error::other("server thread panicked"))?;
    // The first side to fail explains the other's failure (a reset, an end of stream).
    let (answered, server_cpu) = match (&issued, served) {
        (Ok(_), Ok(s)) => s,
        (Err(c), Err(e)) => {
            return Err(io::Error::new(
                c.kind(),
                format!("client: {c}; server: {e}"),
            ))
        }
        (Ok(_), Err(e)) => return Err(io::Error::new(e.kind(), format!("server: {e}"))),
        (Err(_), Ok(s)) => s,
    };
    let (stats, client_cpu) =
        issued.map_err(|e| io::Error::new(e.kind(), format!("client: {e}")))?;
    let per = |cpu: u64| cpu as f64 / stats.ios.max(1) as f64;
    if answered < stats.ios {
        return Err(io::Error::other(
            "client counted answers the server never sent",
        ));
    }
    Ok(CeilingResult {
        server_cpu_ns_per_io: per(server_cpu),
        client_cpu_ns_per_io: per(client_cpu),
        stats,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(qd: usize, io_size: usize, write: bool) -> CeilingSpec {
        CeilingSpec {
            qd,
            io_size,
            write,
            seconds: 0.2,
            server_core: 0,
            client_core: 1,
            sock_buf: 0,
        }
    }

    #[test]
    fn every_shape_completes_and_counts_its_bytes() {
        for (qd, size, write) in [
            (1, 4096, false),
            (32, 4096, false),
            (16, 131072, false),
            (32, 4096, true),
            (16, 131072, true),
        ] {
            let r = run(spec(qd, size, write)).expect("ceiling run");
            assert!(r.stats.ios > 0, "{qd} {size} {write}");
            assert_eq!(r.stats.bytes, r.stats.ios * size as u64);
        }
    }

    #[test]
    fn bad_parameters_are_refused() {
        assert!(run(spec(0, 4096, false)).is_err());
        assert!(run(spec(1, 4 << 20, false)).is_err());
    }
}
