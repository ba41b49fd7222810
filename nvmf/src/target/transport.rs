//! The TCP transport: listening sockets (accepted on reactor 0, handed round-robin to the
//! reactors) and, on each reactor, a socket group — an epoll set over that reactor's
//! connections, polled without blocking in poll mode and slept on in interrupt mode.

use super::conn::Connection;
use super::Target;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use strata_reactor::sys::Epoll;

/// A reactor's connections.
pub struct SockGroup {
    epoll: Epoll,
    conns: RefCell<HashMap<u64, Rc<Connection>>>,
    /// The connection-limit places the connections hold (released when they go).
    places: RefCell<HashMap<u64, ConnPlace>>,
    writers: RefCell<Vec<u64>>,
    events: RefCell<Vec<(u64, u32)>>,
    /// Connections with responses queued since the last flush.
    dirty: RefCell<Vec<u64>>,
    next_token: Cell<u64>,
    /// Reads sent straight from the bdev's memory (zcopy), for `nvmf_get_stats`.
    zcopy_reads: Cell<u64>,
    /// Of those, reads whose data went out in part and had the rest copied (freeze_view).
    zcopy_frozen: Cell<u64>,
}

thread_local! {
    static GROUP: RefCell<Option<Rc<SockGroup>>> = const { RefCell::new(None) };
}

const IN: u32 = (libc::EPOLLIN | libc::EPOLLRDHUP) as u32;
const OUT: u32 = libc::EPOLLOUT as u32;

impl SockGroup {
    /// This reactor's group, created (with its pollers) on first use.
    pub fn current() -> Option<Rc<SockGroup>> {
        if let Some(g) = GROUP.with(|g| g.borrow().clone()) {
            return Some(g);
        }
        let epoll = Epoll::new().ok()?;
        let fd = epoll.raw();
        let g = Rc::new(SockGroup {
            epoll,
            conns: RefCell::new(HashMap::new()),
            places: RefCell::new(HashMap::new()),
            writers: RefCell::new(Vec::new()),
            events: RefCell::new(Vec::with_capacity(64)),
            dirty: RefCell::new(Vec::with_capacity(64)),
            next_token: Cell::new(1),
            zcopy_reads: Cell::new(0),
            zcopy_frozen: Cell::new(0),
        });
        let g2 = g.clone();
        strata_reactor::register_fd_poller("nvmf_tcp_group", fd, move || g2.poll())
            .ok()?
            .detach();
        let g3 = Rc::downgrade(&g);
        strata_reactor::register_periodic_poller(
            "nvmf_tcp_tick",
            Duration::from_millis(200),
            move || {
                if let Some(g) = g3.upgrade() {
                    let conns: Vec<Rc<Connection>> = g.conns.borrow().values().cloned().collect();
                    for c in conns {
                        c.tick();
                    }
                }
                false
            },
        )
        .ok()?
        .detach();
        GROUP.with(|gr| *gr.borrow_mut() = Some(g.clone()));
        Some(g)
    }

    /// A connection of this reactor by token.
    pub fn connection(token: u64) -> Option<Rc<Connection>> {
        GROUP.with(|g| {
            g.borrow()
                .as_ref()
                .and_then(|g| g.conns.borrow().get(&token).cloned())
        })
    }

    /// Reads this reactor has answered straight from a bdev's memory (zcopy; counted when the
    /// data is queued for the host).
    pub fn zcopy_reads() -> u64 {
        GROUP.with(|g| g.borrow().as_ref().map_or(0, |g| g.zcopy_reads.get()))
    }

    /// Zero-copy reads whose data went out only in part and had the rest copied.
    pub fn zcopy_frozen() -> u64 {
        GROUP.with(|g| g.borrow().as_ref().map_or(0, |g| g.zcopy_frozen.get()))
    }

    pub(crate) fn count_zcopy_frozen(&self) {
        self.zcopy_frozen.set(self.zcopy_frozen.get() + 1);
    }

    pub(crate) fn count_zcopy_read(&self) {
        self.zcopy_reads.set(self.zcopy_reads.get() + 1);
    }

    /// All connections of this reactor.
    pub fn connections() -> Vec<Rc<Connection>> {
        GROUP.with(|g| {
            g.borrow()
                .as_ref()
                .map(|g| g.conns.borrow().values().cloned().collect())
                .unwrap_or_default()
        })
    }

    fn add(
        self: &Rc<Self>,
        stream: TcpStream,
        target: &'static Target,
        place: ConnPlace,
        secure: bool,
    ) {
        let token = self.next_token.get();
        self.next_token.set(token + 1);
        let fd = stream.as_raw_fd();
        let host_r2t = place.host_r2t.clone();
        let conn =
            match Connection::new(stream, token, Rc::downgrade(self), target, host_r2t, secure) {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot set up an accepted connection");
                    return;
                }
            };
        if let Err(e) = self.epoll.add_events(fd, token, IN) {
            tracing::warn!(error = %e, "epoll add failed");
            return;
        }
        tracing::info!(peer = %conn.peer, local = %conn.local, reactor = strata_reactor::current_index(), tls = secure, "NVMe/TCP connection accepted");
        self.conns.borrow_mut().insert(token, conn);
        self.places.borrow_mut().insert(token, place);
    }

    pub(crate) fn remove(&self, token: u64) {
        if let Some(c) = self.conns.borrow_mut().remove(&token) {
            let _ = self.epoll.delete(c.stream.as_raw_fd());
        }
        self.places.borrow_mut().remove(&token);
        self.writers.borrow_mut().retain(|t| *t != token);
    }

    /// Asks for (or drops) writability events for a connection with queued output.
    pub(crate) fn want_write(&self, token: u64, stream: &TcpStream, want: bool) {
        let mut w = self.writers.borrow_mut();
        let has = w.contains(&token);
        if want && !has {
            w.push(token);
            let _ = self.epoll.modify(stream.as_raw_fd(), token, IN | OUT);
        } else if !want && has {
            w.retain(|t| *t != token);
            let _ = self.epoll.modify(stream.as_raw_fd(), token, IN);
        }
    }

    /// Queues a connection for the next flush (once per turn, after completions ran).
    pub(crate) fn mark_dirty(&self, token: u64) {
        let mut d = self.dirty.borrow_mut();
        if !d.contains(&token) {
            d.push(token);
        }
    }

    fn flush_dirty(&self) -> bool {
        let tokens: smallvec::SmallVec<[u64; 16]> = self.dirty.borrow_mut().drain(..).collect();
        let did = !tokens.is_empty();
        for t in tokens {
            let c = self.conns.borrow().get(&t).cloned();
            if let Some(c) = c {
                c.flush();
            }
        }
        did
    }

    fn poll(&self) -> bool {
        let flushed = self.flush_dirty();
        let n = {
            let mut ev = self.events.borrow_mut();
            self.epoll
                .wait_events(Some(Duration::ZERO), &mut ev)
                .unwrap_or(0)
        };
        if n == 0 {
            return flushed;
        }
        for i in 0..n {
            let (token, e) = self.events.borrow()[i];
            let conn = self.conns.borrow().get(&token).cloned();
            if let Some(c) = conn {
                let readable = e & (IN | libc::EPOLLERR as u32 | libc::EPOLLHUP as u32) != 0;
                c.on_event(readable, e & OUT != 0);
            }
        }
        self.flush_dirty();
        true
    }
}

/// A listening socket; dropping the handle stops accepting.
pub struct Listener {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl std::fmt::Debug for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listener")
            .field("addr", &self.addr)
            .finish()
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        let addr = self.addr;
        if let Some(f) = strata_reactor::framework() {
            let _ = f.send(0, move || {
                ACCEPTORS.with(|a| a.borrow_mut().remove(&addr));
            });
        }
    }
}

thread_local! {
    /// Accept pollers of reactor 0, by listening address.
    static ACCEPTORS: RefCell<HashMap<SocketAddr, strata_reactor::PollerHandle>> = RefCell::new(HashMap::new());
}

/// Binds `addr` now (so errors reach the caller) and accepts on reactor 0.
/// On a `secure` listener every connection starts with a TLS handshake.
pub fn listen(
    addr: SocketAddr,
    target: &'static Target,
    secure: bool,
) -> std::io::Result<Listener> {
    let l = TcpListener::bind(addr)?;
    l.set_nonblocking(true)?;
    let bound = l.local_addr()?;
    let stop = Arc::new(AtomicBool::new(false));
    let st = stop.clone();
    let f = strata_reactor::framework()
        .ok_or_else(|| std::io::Error::other("reactors are not running"))?;
    let reactors = f.len();
    let next = Arc::new(AtomicUsize::new(0));
    let live = Arc::new(AtomicUsize::new(0));
    f.send(0, move || {
        let fd = l.as_raw_fd();
        // In poll mode every poller runs every turn; new connections are rare, so try
        // accept() at most once a millisecond instead of a failing syscall per turn.
        let min_gap = strata_reactor::clock::duration_to_ticks(Duration::from_millis(1));
        let mut last = 0u64;
        let h = strata_reactor::register_fd_poller(
            &format!("nvmf_tcp_accept_{bound}"),
            fd,
            move || {
                if st.load(Ordering::Acquire) {
                    return false;
                }
                let now = strata_reactor::clock::ticks();
                if now.saturating_sub(last) < min_gap {
                    return false;
                }
                last = now;
                let mut did = false;
                loop {
                    match l.accept() {
                        Ok((stream, peer)) => {
                            did = true;
                            let Some(place) = ConnPlace::take(&live, peer.ip(), bound, target)
                            else {
                                drop(stream); // refused: closed at once
                                continue;
                            };
                            let idx = next.fetch_add(1, Ordering::Relaxed) % reactors;
                            hand_over(idx, stream, target, place, secure);
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                        Err(e) => {
                            tracing::warn!(error = %e, "accept failed");
                            break;
                        }
                    }
                }
                did
            },
        );
        match h {
            Ok(h) => ACCEPTORS.with(|a| {
                a.borrow_mut().insert(bound, h);
            }),
            Err(e) => tracing::error!(error = %e, "cannot register the accept poller"),
        }
    })
    .map_err(|e| std::io::Error::other(e.to_string()))?;
    tracing::info!(%bound, "NVMe/TCP listening");
    Ok(Listener { addr: bound, stop })
}

fn hand_over(
    idx: usize,
    stream: TcpStream,
    target: &'static Target,
    place: ConnPlace,
    secure: bool,
) {
    let here = strata_reactor::current_index();
    if here == Some(idx) {
        if let Some(g) = SockGroup::current() {
            g.add(stream, target, place, secure);
        }
        return;
    }
    if let Some(f) = strata_reactor::framework() {
        let _ = f.send(idx, move || {
            if let Some(g) = SockGroup::current() {
                g.add(stream, target, place, secure);
            }
        });
    }
}

/// Connections per host (peer IP address), over all listeners.
static PER_HOST: parking_lot::Mutex<Option<HashMap<std::net::IpAddr, HostCounts>>> =
    parking_lot::Mutex::new(None);

/// A connection's place under the listener's and its host's connection limits; dropping it
/// (when the connection goes) gives the place back.
pub(crate) struct ConnPlace {
    listener: Arc<AtomicUsize>,
    host: std::net::IpAddr,
    /// Buffers the host's connections hold for writes awaiting their data.
    pub(crate) host_r2t: Arc<AtomicUsize>,
}

/// Per host (IP address): its connections, and the R2T buffers they hold.
#[derive(Default)]
pub(crate) struct HostCounts {
    conns: usize,
    r2t: Arc<AtomicUsize>,
}

impl ConnPlace {
    /// A place for a new connection from `host` on the listener whose count is `live`, or
    /// None (logged) when either limit is reached: the connection is then closed at once,
    /// and the ones already there are not affected.
    fn take(
        live: &Arc<AtomicUsize>,
        host: std::net::IpAddr,
        bound: SocketAddr,
        target: &'static Target,
    ) -> Option<ConnPlace> {
        let o = target.options();
        let mut hosts = PER_HOST.lock();
        let per_host = hosts.get_or_insert_with(HashMap::new);
        let from_host = per_host.get(&host).map_or(0, |h| h.conns);
        let on_listener = live.load(Ordering::Acquire);
        if o.max_connections_per_host > 0 && from_host >= o.max_connections_per_host as usize {
            tracing::warn!(%host, listener = %bound, connections = from_host, limit = o.max_connections_per_host, "NVMe/TCP connection refused: too many connections from this host");
            return None;
        }
        if o.max_connections_per_listener > 0
            && on_listener >= o.max_connections_per_listener as usize
        {
            tracing::warn!(%host, listener = %bound, connections = on_listener, limit = o.max_connections_per_listener, "NVMe/TCP connection refused: too many connections on this listener");
            return None;
        }
        let h = per_host.entry(host).or_default();
        h.conns += 1;
        let host_r2t = h.r2t.clone();
        live.fetch_add(1, Ordering::AcqRel);
        Some(ConnPlace {
            listener: live.clone(),
            host,
            host_r2t,
        })
    }
}

impl Drop for ConnPlace {
    fn drop(&mut self) {
        self.listener.fetch_sub(1, Ordering::AcqRel);
        let mut hosts = PER_HOST.lock();
        if let Some(m) = hosts.as_mut() {
            if let Some(h) = m.get_mut(&self.host) {
                h.conns = h.conns.saturating_sub(1);
                if h.conns == 0 {
                    m.remove(&self.host);
                }
            }
        }
    }
}
