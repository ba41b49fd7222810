//! `error`: a pass-through virtual bdev (`EE_<base>`) that injects faults on command, with
//! SPDK's `bdev_error_inject_error` semantics: `failure` fails I/O, `nomem` returns
//! out-of-resources (the layer retries), `corrupt_data` flips a byte of the payload (writes:
//! before it is written; reads: after it was read), `pending` holds I/O until the injection is
//! cleared.

use crate::bdev::{Bdev, BdevChannel, ConfigEntry};
use crate::channel::IoChannel;
use crate::error::BdevError;
use crate::io::{BdevIo, IoSink, IoStatus, IoType};
use crate::modules::base::ClaimedBase;
use crate::registry;
use parking_lot::Mutex;
use serde_json::json;
use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use uuid::Uuid;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    Failure,
    Pending,
    CorruptData,
    NoMemory,
}

impl ErrorKind {
    pub fn from_name(s: &str) -> Option<Self> {
        Some(match s {
            "failure" => ErrorKind::Failure,
            "pending" => ErrorKind::Pending,
            "corrupt_data" => ErrorKind::CorruptData,
            "nomem" => ErrorKind::NoMemory,
            _ => return None,
        })
    }
}

/// Which I/O an injection applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    One(IoType),
    All,
    /// Removes every injection (and releases pending I/O).
    Clear,
}

impl Target {
    pub fn from_name(s: &str) -> Option<Self> {
        match s {
            "all" => Some(Target::All),
            "clear" => Some(Target::Clear),
            other => IoType::from_name(other).map(Target::One),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Injection {
    kind: ErrorKind,
    remaining: u64,
    corrupt_offset: u64,
    corrupt_value: u8,
}

pub struct ErrorBdev {
    name: String,
    uuid: Uuid,
    base: ClaimedBase,
    injections: Mutex<[Option<Injection>; IoType::COUNT]>,
    /// Number of armed injections: the fast path reads only this.
    armed: AtomicU64,
    /// Bumped by `clear`: channels release pending I/O when they see a new value.
    clear_gen: AtomicU64,
}

/// Creates `EE_<base_name>` over `base_name` and claims the base.
pub fn create(base_name: &str, uuid: Option<Uuid>) -> Result<Arc<ErrorBdev>, BdevError> {
    let name = format!("EE_{base_name}");
    if registry::get(&name).is_some() {
        return Err(BdevError::Exists(name));
    }
    let b = Arc::new(ErrorBdev {
        base: ClaimedBase::open(base_name, &name)?,
        name,
        uuid: uuid.unwrap_or_else(Uuid::new_v4),
        injections: Mutex::new([None; IoType::COUNT]),
        armed: AtomicU64::new(0),
        clear_gen: AtomicU64::new(0),
    });
    registry::register(b.clone())?;
    ERROR_BDEVS.lock().push(b.clone());
    Ok(b)
}

pub fn delete(name: &str) -> Result<(), BdevError> {
    super::delete_of_module(name, "error")
}

/// Arms an injection on the error bdev `name` for the next `num` matching I/Os.
pub fn inject(
    name: &str,
    target: Target,
    kind: ErrorKind,
    num: u64,
    corrupt_offset: u64,
    corrupt_value: u8,
) -> Result<(), BdevError> {
    let b = ERROR_BDEVS
        .lock()
        .iter()
        .find(|b| b.name == name)
        .cloned()
        .ok_or_else(|| BdevError::NotFound(name.to_string()))?;
    if kind == ErrorKind::CorruptData && corrupt_value == 0 {
        return Err(BdevError::Invalid(
            "corrupt_value must be non-zero for corrupt_data".into(),
        ));
    }
    let mut inj = b.injections.lock();
    let types: Vec<IoType> = match target {
        Target::One(t) => vec![t],
        Target::All | Target::Clear => IoType::ALL.to_vec(),
    };
    for t in types {
        inj[t as usize] = match target {
            Target::Clear => None,
            _ => Some(Injection {
                kind,
                remaining: num.max(1),
                corrupt_offset,
                corrupt_value,
            }),
        };
    }
    let armed = inj.iter().filter(|i| i.is_some()).count() as u64;
    b.armed.store(armed, Ordering::Release);
    if target == Target::Clear {
        b.clear_gen.fetch_add(1, Ordering::AcqRel);
    }
    tracing::info!(bdev = name, ?target, ?kind, num, "error injection set");
    Ok(())
}

/// Error bdevs by name, for `inject` (the registry hands out `dyn Bdev`).
static ERROR_BDEVS: Mutex<Vec<Arc<ErrorBdev>>> = Mutex::new(Vec::new());

impl ErrorBdev {
    /// Consumes one injection matching `t`, if armed.
    fn take(&self, t: IoType) -> Option<Injection> {
        if self.armed.load(Ordering::Acquire) == 0 {
            return None;
        }
        let mut inj = self.injections.lock();
        let slot = &mut inj[t as usize];
        let i = (*slot)?;
        if i.remaining <= 1 {
            *slot = None;
            self.armed.fetch_sub(1, Ordering::AcqRel);
        } else if let Some(s) = slot.as_mut() {
            s.remaining -= 1;
        }
        Some(i)
    }
}

impl Bdev for ErrorBdev {
    fn name(&self) -> &str {
        &self.name
    }
    fn product_name(&self) -> &'static str {
        "Error Injection Disk"
    }
    fn module(&self) -> &'static str {
        "error"
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
        let gen = self.clear_gen.load(Ordering::Acquire);
        Ok(Rc::new_cyclic(|me: &std::rc::Weak<ErrorChannel>| {
            ErrorChannel {
                bdev: self,
                base,
                pending: RefCell::new(VecDeque::new()),
                seen_gen: std::cell::Cell::new(gen),
                me: me.clone(),
            }
        }))
    }
    fn driver_specific(&self) -> serde_json::Value {
        json!({ "error": { "base_bdev": self.base.name } })
    }
    fn config(&self) -> Option<ConfigEntry> {
        Some(ConfigEntry {
            method: "bdev_error_create",
            params: json!({ "base_name": self.base.name, "uuid": self.uuid.to_string() }),
        })
    }
    fn on_unregister(&self) {
        self.base.release();
        ERROR_BDEVS.lock().retain(|b| b.name != self.name);
    }
}

struct ErrorChannel {
    bdev: Arc<ErrorBdev>,
    base: IoChannel,
    pending: RefCell<VecDeque<BdevIo>>,
    seen_gen: std::cell::Cell<u64>,
    me: std::rc::Weak<ErrorChannel>,
}

/// Flips `value` into the byte at `offset` (modulo the transfer length) of the payload.
fn corrupt(io: &mut BdevIo, offset: u64, value: u8) {
    let len = io.xfer_len();
    if len == 0 {
        return;
    }
    let at = (offset as usize) % len;
    io.for_each_segment_mut(len, |o, s| {
        if at >= o && at < o + s.len() {
            s[at - o] ^= value;
        }
    });
}

impl ErrorChannel {
    fn release_pending_if_cleared(&self) {
        let g = self.bdev.clear_gen.load(Ordering::Acquire);
        if g != self.seen_gen.get() {
            self.seen_gen.set(g);
            let held: Vec<BdevIo> = self.pending.borrow_mut().drain(..).collect();
            for io in held {
                self.base.submit(io);
            }
        }
    }
}

impl BdevChannel for ErrorChannel {
    fn submit(&self, mut io: BdevIo) {
        self.release_pending_if_cleared();
        let Some(inj) = self.bdev.take(io.io_type) else {
            self.base.submit(io);
            return;
        };
        match inj.kind {
            ErrorKind::Failure => io.complete_deferred(IoStatus::Failed),
            ErrorKind::NoMemory => io.complete_deferred(IoStatus::NoMemory),
            ErrorKind::Pending => self.pending.borrow_mut().push_back(io),
            ErrorKind::CorruptData => {
                if io.io_type == IoType::Read {
                    if let Some(me) = self.me.upgrade() {
                        io.push_completion(
                            me,
                            (inj.corrupt_offset << 8) | inj.corrupt_value as u64,
                        );
                    }
                } else if io.io_type.carries_blocks() {
                    corrupt(&mut io, inj.corrupt_offset, inj.corrupt_value);
                }
                self.base.submit(io);
            }
        }
    }

    fn outstanding(&self) -> u64 {
        self.pending.borrow().len() as u64
    }
}

impl IoSink for ErrorChannel {
    fn io_done(self: Rc<Self>, mut io: BdevIo, tag: u64) {
        if io.status.is_success() {
            corrupt(&mut io, tag >> 8, (tag & 0xff) as u8);
        }
        io.done();
    }
}
