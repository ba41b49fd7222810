//! strata's userspace NVMe PCIe driver: reactors poll NVMe queues directly, as SPDK's `nvme`
//! driver does, instead of reaching devices through the kernel.
//!
//! [`vfio`] is the only code with ioctls and MMIO: a PCI function bound to vfio-pci, its
//! BARs, config space, MSI-X eventfds and IOMMU container, behind safe types. [`dma`] maps
//! memory for the device (every buffer pool, so I/O buffers go to the device as they are)
//! and owns the queues' memory. [`nvme`] is the controller driver: bring-up, the admin queue,
//! one I/O queue pair per reactor with PRP lists, completion polling, timeouts, failure and
//! reset. [`bdev`] serves each namespace as a bdev `<name>n<nsid>`. This file keeps the
//! attached controllers (`bdev_nvme_attach_controller -t PCIe`), each with a control thread
//! that watches for a fatal controller status and for the kernel asking for the device back
//! (hot removal).

pub mod bdev;
pub mod dma;
pub mod nvme;
pub mod vfio;

use nvme::ctrlr::{Controller, State};
use parking_lot::Mutex;
use serde_json::{json, Value};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use strata_bdev::module::BdevModule;
use strata_bdev::{BdevError, ConfigEntry};
use vfio::{Bdf, VfioError};

#[derive(Debug, thiserror::Error)]
pub enum PcieError {
    #[error(transparent)]
    Vfio(#[from] VfioError),
    #[error("{0}")]
    Controller(String),
    #[error("admin command {opcode:#04x} failed: status type {sct:#x}, code {sc:#04x}")]
    Status { opcode: u8, sct: u8, sc: u8 },
    #[error("controller '{0}' already exists")]
    Exists(String),
    #[error("no PCIe controller named '{0}'")]
    NotFound(String),
    #[error(transparent)]
    Bdev(#[from] BdevError),
}

struct Attached {
    name: String,
    ctrlr: Arc<Controller>,
    bdevs: Vec<String>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    io_queues: Option<u32>,
}

static CONTROLLERS: Mutex<Vec<Attached>> = Mutex::new(Vec::new());

/// `bdev_nvme_attach_controller -t PCIe -a <BDF>`: takes the controller through vfio,
/// registers a bdev per namespace and returns their names. Blocking: call it off the
/// reactors. `io_queues`: I/O queues to ask for (default: one per reactor).
pub fn attach(name: &str, traddr: &str, io_queues: Option<u32>) -> Result<Vec<String>, PcieError> {
    let bdf = Bdf::parse(traddr)?;
    {
        let list = CONTROLLERS.lock();
        if let Some(a) = list.iter().find(|a| a.name == name || a.ctrlr.bdf == bdf) {
            return Err(PcieError::Exists(format!(
                "{name} ({} already attaches {})",
                a.name, a.ctrlr.bdf
            )));
        }
    }
    let reactors = strata_reactor::framework().map_or(1, |f| f.len());
    let want = io_queues.unwrap_or(reactors as u32).clamp(1, 1023) as u16;
    let ctrlr = Arc::new(Controller::attach(name, &bdf, want)?);
    let removal = ctrlr.dev.removal_request_fd();
    let mut names: Vec<String> = Vec::new();
    for ns in &ctrlr.namespaces {
        let b = Arc::new(bdev::PcieBdev::new(&ctrlr, ns));
        let n = strata_bdev::Bdev::name(&*b).to_string();
        if let Err(e) = strata_bdev::registry::register(b) {
            for n in &names {
                let _ = strata_bdev::registry::unregister(n);
            }
            ctrlr.shutdown();
            ctrlr.release_memory();
            return Err(e.into());
        }
        names.push(n);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let thread = {
        let (c, s, n) = (ctrlr.clone(), stop.clone(), name.to_string());
        std::thread::Builder::new()
            .name(format!("nvme-{name}"))
            .spawn(move || control(n, c, s, removal))
            .map_err(|e| PcieError::Controller(format!("control thread: {e}")))?
    };
    CONTROLLERS.lock().push(Attached {
        name: name.to_string(),
        ctrlr,
        bdevs: names.clone(),
        stop,
        thread: Some(thread),
        io_queues,
    });
    Ok(names)
}

/// `bdev_nvme_detach_controller`: removes the bdevs, shuts the controller down and gives
/// the device back to the kernel.
pub fn detach(name: &str) -> Result<(), PcieError> {
    let a = {
        let mut list = CONTROLLERS.lock();
        let pos = list
            .iter()
            .position(|a| a.name == name)
            .ok_or_else(|| PcieError::NotFound(name.to_string()))?;
        list.remove(pos)
    };
    a.stop.store(true, Ordering::Release);
    if let Some(t) = a.thread {
        let _ = t.join();
    }
    take_down(&a.name, a.ctrlr, &a.bdevs, false);
    Ok(())
}

/// Whether a PCIe controller of this name is attached.
pub fn exists(name: &str) -> bool {
    CONTROLLERS.lock().iter().any(|a| a.name == name)
}

/// Unregisters the bdevs, gives the reactors a moment to drop their queue pairs (they
/// delete their queues on the way), shuts the controller down (or, when the device is going
/// away, just stops its DMA) and gives the device back to the kernel.
fn take_down(name: &str, ctrlr: Arc<Controller>, bdevs: &[String], removed: bool) {
    if removed {
        ctrlr.mark_removed();
    }
    for b in bdevs {
        let _ = strata_bdev::registry::unregister(b);
    }
    let deadline = Instant::now() + Duration::from_secs(if removed { 0 } else { 2 });
    while Arc::strong_count(&ctrlr) > 1 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    ctrlr.shutdown();
    ctrlr.release_memory();
    ctrlr.release_device();
    tracing::info!(ctrlr = name, bdf = %ctrlr.bdf, "NVMe PCIe controller detached");
}

/// The control thread's end for a controller that is gone (removed, or failed beyond
/// reset): out of the list, bdevs removed, DMA off, the device given back.
fn remove_and_take_down(name: &str, c: &Arc<Controller>) {
    let a = {
        let mut list = CONTROLLERS.lock();
        list.iter()
            .position(|a| a.name == name)
            .map(|p| list.remove(p))
    };
    match a {
        Some(a) => take_down(name, c.clone(), &a.bdevs, true),
        None => c.mark_removed(),
    }
}

/// Failed resets in a row after which a controller is given up (its bdevs removed).
const MAX_RESET_ATTEMPTS: u32 = 5;

/// The control thread: a fatal controller status or a reset request resets the controller;
/// the kernel's request for the device (hot removal) or a device that stopped answering
/// takes it down.
fn control(name: String, c: Arc<Controller>, stop: Arc<AtomicBool>, removal: Option<OwnedFd>) {
    let mut failures = 0u32;
    while !stop.load(Ordering::Acquire) {
        let asked = match &removal {
            Some(fd) => {
                let r = vfio::wait_readable(fd.as_fd(), 100);
                if r {
                    vfio::eventfd_drain(fd.as_fd());
                }
                r
            }
            None => {
                std::thread::sleep(Duration::from_millis(100));
                false
            }
        };
        let csts = c.status();
        if asked || csts.is_none() {
            tracing::error!(ctrlr = %name, bdf = %c.bdf,
                reason = if asked { "the kernel asks for the device back (hot removal)" } else { "the device no longer answers" },
                "controller removed: its bdevs go, I/O in flight fails");
            remove_and_take_down(&name, &c);
            // Our own reference goes with this thread; the device closes with the last one.
            return;
        }
        let cfs = csts.is_some_and(|s| s & nvme::regs::CSTS_CFS != 0);
        if cfs || c.reset_requested.load(Ordering::Acquire) {
            // A requested reset (RPC, a command that outlived its abort, a bad completion)
            // was logged where it was asked for.
            if cfs && c.state() == State::Live {
                c.fail("controller fatal status (CSTS.CFS)");
            }
            match c.reset() {
                Ok(()) => failures = 0,
                Err(e) => {
                    failures += 1;
                    tracing::error!(ctrlr = %name, error = %e, attempt = failures, "controller reset failed");
                    if failures >= MAX_RESET_ATTEMPTS {
                        tracing::error!(ctrlr = %name, "controller failed beyond reset: its bdevs go");
                        remove_and_take_down(&name, &c);
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(500 * failures as u64));
                }
            }
        }
    }
}

/// `bdev_nvme_reset_controller`: the control thread resets the controller (I/O in flight
/// fails, queues are made again); returns once it is live again.
pub fn reset(name: &str) -> Result<(), PcieError> {
    let c = CONTROLLERS
        .lock()
        .iter()
        .find(|a| a.name == name)
        .map(|a| a.ctrlr.clone())
        .ok_or_else(|| PcieError::NotFound(name.to_string()))?;
    let before = c.epoch();
    tracing::info!(ctrlr = name, "controller reset requested");
    c.reset_requested.store(true, Ordering::Release);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if c.state() == State::Live
            && c.epoch() > before
            && !c.reset_requested.load(Ordering::Acquire)
        {
            return Ok(());
        }
        if c.state() == State::Removed || Instant::now() > deadline {
            return Err(PcieError::Controller(format!(
                "reset of {name} did not finish"
            )));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `bdev_nvme_get_controllers` entries, in SPDK's shape.
pub fn controllers(name: Option<&str>) -> Vec<Value> {
    CONTROLLERS
        .lock()
        .iter()
        .filter(|a| name.is_none_or(|n| n == a.name))
        .map(|a| {
            let state = match a.ctrlr.state() {
                State::Live => "enabled",
                State::Failed => "resetting",
                State::Removed => "deleting",
            };
            json!({
                "name": a.name,
                "ctrlrs": [{
                    "state": state,
                    "trid": { "trtype": "PCIe", "traddr": a.ctrlr.bdf.as_str() },
                    "model_number": a.ctrlr.id.model,
                    "serial_number": a.ctrlr.id.serial,
                    "io_queues": a.ctrlr.id.io_queues,
                    "max_transfer_bytes": a.ctrlr.id.max_transfer,
                    "timeouts": a.ctrlr.timeouts.load(Ordering::Relaxed),
                    "aborts": a.ctrlr.aborts.load(Ordering::Relaxed),
                    "resets": a.ctrlr.resets.load(Ordering::Relaxed),
                    "sgl_commands": a.ctrlr.sgl_commands.load(Ordering::Relaxed),
                    "bounced_commands": a.ctrlr.bounced_commands.load(Ordering::Relaxed),
                    "bdevs": a.bdevs,
                }]
            })
        })
        .collect()
}

/// `save_config`: one attach per PCIe controller.
struct PcieModule;

impl BdevModule for PcieModule {
    fn name(&self) -> &'static str {
        "nvme_pcie"
    }
    fn config_entries(&self) -> Vec<ConfigEntry> {
        CONTROLLERS
            .lock()
            .iter()
            .map(|a| {
                let mut p = json!({
                    "name": a.name,
                    "trtype": "PCIe",
                    "traddr": a.ctrlr.bdf.as_str(),
                });
                if let Some(q) = a.io_queues {
                    p["num_io_queues"] = json!(q);
                }
                ConfigEntry {
                    method: "bdev_nvme_attach_controller",
                    params: p,
                }
            })
            .collect()
    }
}

/// Adds the module's hooks to the bdev layer (once, at start-up).
pub fn init() {
    strata_bdev::module::register(&PcieModule);
}

/// Detaches every controller (shutdown of the target).
pub fn detach_all() {
    let names: Vec<String> = CONTROLLERS.lock().iter().map(|a| a.name.clone()).collect();
    for n in names {
        let _ = detach(&n);
    }
}
