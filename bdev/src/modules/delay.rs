//! `delay`: a pass-through virtual bdev that adds latency to reads and writes, with SPDK's
//! `bdev_delay_*` RPCs. One I/O in a hundred gets the p99 latency instead of the average.
//! Latency counts from submission: an I/O completes at `submit + latency`, or when the base
//! completes it, whichever is later.

use crate::bdev::{Bdev, BdevChannel, ConfigEntry};
use crate::channel::IoChannel;
use crate::error::BdevError;
use crate::io::{BdevIo, IoSink, IoType};
use crate::modules::base::ClaimedBase;
use crate::registry;
use parking_lot::Mutex;
use serde_json::json;
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::{Rc, Weak};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use strata_reactor::clock;
use uuid::Uuid;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LatencyKind {
    AvgRead = 0,
    P99Read = 1,
    AvgWrite = 2,
    P99Write = 3,
}

impl LatencyKind {
    pub fn from_name(s: &str) -> Option<Self> {
        Some(match s {
            "avg_read" => LatencyKind::AvgRead,
            "p99_read" => LatencyKind::P99Read,
            "avg_write" => LatencyKind::AvgWrite,
            "p99_write" => LatencyKind::P99Write,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone)]
pub struct DelayOptions {
    pub name: String,
    pub base_bdev_name: String,
    /// Microseconds: avg_read, p99_read, avg_write, p99_write.
    pub latencies_us: [u64; 4],
    pub uuid: Option<Uuid>,
}

pub struct DelayBdev {
    name: String,
    uuid: Uuid,
    base: ClaimedBase,
    latencies_us: [AtomicU64; 4],
}

static DELAY_BDEVS: Mutex<Vec<Arc<DelayBdev>>> = Mutex::new(Vec::new());

pub fn create(opts: DelayOptions) -> Result<Arc<DelayBdev>, BdevError> {
    if registry::get(&opts.name).is_some() {
        return Err(BdevError::Exists(opts.name));
    }
    let [ar, pr, aw, pw] = opts.latencies_us;
    if pr < ar || pw < aw {
        return Err(BdevError::Invalid(
            "p99 latency must not be below the average latency".into(),
        ));
    }
    let b = Arc::new(DelayBdev {
        base: ClaimedBase::open(&opts.base_bdev_name, &opts.name)?,
        name: opts.name,
        uuid: opts.uuid.unwrap_or_else(Uuid::new_v4),
        latencies_us: opts.latencies_us.map(AtomicU64::new),
    });
    registry::register(b.clone())?;
    DELAY_BDEVS.lock().push(b.clone());
    Ok(b)
}

pub fn delete(name: &str) -> Result<(), BdevError> {
    super::delete_of_module(name, "delay")
}

/// Changes one latency of a delay bdev; applies to I/O submitted from now on.
pub fn update_latency(name: &str, kind: LatencyKind, latency_us: u64) -> Result<(), BdevError> {
    let b = DELAY_BDEVS
        .lock()
        .iter()
        .find(|b| b.name == name)
        .cloned()
        .ok_or_else(|| BdevError::NotFound(name.to_string()))?;
    let lat = |k: LatencyKind| b.latencies_us[k as usize].load(Ordering::Relaxed);
    let ok = match kind {
        LatencyKind::AvgRead => latency_us <= lat(LatencyKind::P99Read),
        LatencyKind::P99Read => latency_us >= lat(LatencyKind::AvgRead),
        LatencyKind::AvgWrite => latency_us <= lat(LatencyKind::P99Write),
        LatencyKind::P99Write => latency_us >= lat(LatencyKind::AvgWrite),
    };
    if !ok {
        return Err(BdevError::Invalid(
            "p99 latency must not be below the average latency".into(),
        ));
    }
    b.latencies_us[kind as usize].store(latency_us, Ordering::Relaxed);
    Ok(())
}

impl Bdev for DelayBdev {
    fn name(&self) -> &str {
        &self.name
    }
    fn product_name(&self) -> &'static str {
        "delay"
    }
    fn module(&self) -> &'static str {
        "delay"
    }
    fn uuid(&self) -> Uuid {
        self.uuid
    }
    fn block_size(&self) -> u32 {
        self.base.block_size
    }
    fn num_blocks(&self) -> u64 {
        self.base.num_blocks
    }
    fn supports(&self, t: IoType) -> bool {
        self.base.supports(t)
    }
    fn create_channel(self: Arc<Self>) -> Result<Rc<dyn BdevChannel>, BdevError> {
        let base = self.base.channel()?;
        Ok(Rc::new_cyclic(|me: &Weak<DelayChannel>| DelayChannel {
            bdev: self,
            base,
            waiting: RefCell::new(VecDeque::new()),
            counter: Cell::new(0),
            timer_at: Cell::new(None),
            me: me.clone(),
        }))
    }
    fn driver_specific(&self) -> serde_json::Value {
        let l = |i: usize| self.latencies_us[i].load(Ordering::Relaxed);
        json!({ "delay": {
            "base_bdev_name": self.base.name,
            "avg_read_latency": l(0), "p99_read_latency": l(1),
            "avg_write_latency": l(2), "p99_write_latency": l(3),
        }})
    }
    fn config(&self) -> Option<ConfigEntry> {
        let l = |i: usize| self.latencies_us[i].load(Ordering::Relaxed);
        Some(ConfigEntry {
            method: "bdev_delay_create",
            params: json!({
                "name": self.name,
                "base_bdev_name": self.base.name,
                "avg_read_latency": l(0), "p99_read_latency": l(1),
                "avg_write_latency": l(2), "p99_write_latency": l(3),
                "uuid": self.uuid.to_string(),
            }),
        })
    }
    fn on_unregister(&self) {
        self.base.release();
        DELAY_BDEVS.lock().retain(|b| b.name != self.name);
    }
}

struct DelayChannel {
    bdev: Arc<DelayBdev>,
    base: IoChannel,
    /// Completed by the base, waiting for their deadline (ticks), in completion order.
    waiting: RefCell<VecDeque<(u64, BdevIo)>>,
    counter: Cell<u64>,
    timer_at: Cell<Option<u64>>,
    me: Weak<DelayChannel>,
}

impl DelayChannel {
    fn latency_us(&self, t: IoType) -> u64 {
        let n = self.counter.get();
        self.counter.set(n + 1);
        let p99 = n % 100 == 99;
        let k = match (t, p99) {
            (IoType::Read, false) => LatencyKind::AvgRead,
            (IoType::Read, true) => LatencyKind::P99Read,
            (IoType::Write | IoType::XorWrite | IoType::WriteZeroes, false) => {
                LatencyKind::AvgWrite
            }
            (IoType::Write | IoType::XorWrite | IoType::WriteZeroes, true) => LatencyKind::P99Write,
            _ => return 0,
        };
        self.bdev.latencies_us[k as usize].load(Ordering::Relaxed)
    }

    fn release_due(&self) {
        let now = clock::ticks();
        loop {
            let io = {
                let mut w = self.waiting.borrow_mut();
                match w.front() {
                    Some((d, _)) if *d <= now => w.pop_front().map(|(_, io)| io),
                    _ => None,
                }
            };
            match io {
                Some(io) => io.done(),
                None => break,
            }
        }
        self.arm();
    }

    /// Keeps a timer armed for the earliest deadline among waiting I/O.
    fn arm(&self) {
        let earliest = self.waiting.borrow().iter().map(|(d, _)| *d).min();
        let Some(d) = earliest else { return };
        if self.timer_at.get().is_some_and(|t| t <= d) {
            return;
        }
        self.timer_at.set(Some(d));
        let me = self.me.clone();
        let wait = clock::ticks_to_duration(d.saturating_sub(clock::ticks()));
        if let Ok(t) = strata_reactor::after(wait.max(Duration::from_micros(1)), move || {
            if let Some(c) = me.upgrade() {
                c.timer_at.set(None);
                c.release_due();
            }
        }) {
            t.detach();
        }
    }
}

impl BdevChannel for DelayChannel {
    fn submit(&self, mut io: BdevIo) {
        let us = self.latency_us(io.io_type);
        if us > 0 {
            if let Some(me) = self.me.upgrade() {
                let deadline = clock::ticks()
                    .saturating_add(clock::duration_to_ticks(Duration::from_micros(us)));
                io.push_completion(me, deadline);
            }
        }
        self.base.submit(io);
    }

    fn outstanding(&self) -> u64 {
        self.waiting.borrow().len() as u64
    }
}

impl IoSink for DelayChannel {
    fn io_done(self: Rc<Self>, io: BdevIo, deadline: u64) {
        if clock::ticks() >= deadline {
            io.done();
            return;
        }
        self.waiting.borrow_mut().push_back((deadline, io));
        self.arm();
    }
}
