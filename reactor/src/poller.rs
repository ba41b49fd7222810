//! Pollers: closures a reactor calls on every turn (or every period) that report whether they
//! found work. A reactor whose pollers all report idle may sleep (interrupt mode).

use serde::Serialize;
use std::cell::{Cell, RefCell};
use std::os::fd::RawFd;
use std::rc::{Rc, Weak};

pub(crate) struct PollerEntry {
    pub name: String,
    pub f: RefCell<Box<dyn FnMut() -> bool>>,
    /// Period in ticks; 0 means "every turn".
    pub period_ticks: u64,
    pub next_due: Cell<u64>,
    pub run_count: Cell<u64>,
    pub busy_count: Cell<u64>,
    pub alive: Cell<bool>,
    pub fd: Option<RawFd>,
}

/// What `framework_get_reactors` shows of a poller.
#[derive(Debug, Clone, Serialize)]
pub struct PollerInfo {
    pub name: String,
    pub state: &'static str,
    pub run_count: u64,
    pub busy_count: u64,
    pub period_ticks: u64,
}

impl PollerEntry {
    pub fn info(&self) -> PollerInfo {
        PollerInfo {
            name: self.name.clone(),
            state: if self.alive.get() {
                "running"
            } else {
                "unregistered"
            },
            run_count: self.run_count.get(),
            busy_count: self.busy_count.get(),
            period_ticks: self.period_ticks,
        }
    }
}

/// Owner of a registered poller: dropping it unregisters the poller, `detach` keeps it forever.
#[must_use = "dropping a PollerHandle unregisters the poller"]
pub struct PollerHandle {
    pub(crate) entry: Weak<PollerEntry>,
}

impl std::fmt::Debug for PollerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = self.entry.upgrade().map(|e| e.name.clone());
        f.debug_struct("PollerHandle").field("name", &name).finish()
    }
}

impl PollerHandle {
    pub fn unregister(self) {
        drop(self)
    }

    /// Leaves the poller registered for the life of its reactor.
    pub fn detach(self) {
        std::mem::forget(self)
    }
}

impl Drop for PollerHandle {
    fn drop(&mut self) {
        if let Some(e) = self.entry.upgrade() {
            e.alive.set(false);
        }
    }
}

pub(crate) fn new_entry(
    name: &str,
    period_ticks: u64,
    fd: Option<RawFd>,
    f: Box<dyn FnMut() -> bool>,
    now: u64,
) -> Rc<PollerEntry> {
    Rc::new(PollerEntry {
        name: name.to_string(),
        f: RefCell::new(f),
        period_ticks,
        next_due: Cell::new(now + period_ticks),
        run_count: Cell::new(0),
        busy_count: Cell::new(0),
        alive: Cell::new(true),
        fd,
    })
}
