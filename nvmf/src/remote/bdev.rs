//! The bdev of one remote namespace, `<controller>n<nsid>`, and its per-reactor channel
//! (a handle on the reactor's [`IoQueue`] to the controller).

use super::ctrlr::{namespace_identity, namespace_uuid, Shared};
use super::queue::{self, IoQueue};
use crate::host::NamespaceInfo;
use serde_json::{json, Value};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use strata_bdev::{Bdev, BdevChannel, BdevError, BdevIo, ConfigEntry, IoType};
use uuid::Uuid;

/// ONCS bits (Identify Controller): optional NVM commands.
const ONCS_DSM: u16 = 1 << 2;
const ONCS_WRITE_ZEROES: u16 = 1 << 3;

/// A namespace of a remote controller as a bdev.
pub struct RemoteBdev {
    pub name: String,
    pub nsid: u32,
    pub block_size: u32,
    /// The namespace's identity when the bdev was made (descriptor UUID, NGUID or EUI-64):
    /// after a reconnect, an NSID with another identity is another device.
    pub identity: Option<[u8; 16]>,
    num_blocks: AtomicU64,
    uuid: Uuid,
    oncs: u16,
    ctrlr: Arc<Shared>,
}

impl RemoteBdev {
    pub(crate) fn new(ctrlr: &Arc<Shared>, ns: &NamespaceInfo, oncs: u16) -> RemoteBdev {
        RemoteBdev {
            name: format!("{}n{}", ctrlr.name, ns.nsid),
            nsid: ns.nsid,
            block_size: ns.block_size,
            identity: namespace_identity(ns),
            num_blocks: AtomicU64::new(ns.nsze),
            uuid: namespace_uuid(&ctrlr.opts.subnqn, ns),
            oncs,
            ctrlr: ctrlr.clone(),
        }
    }

    /// The namespace's size changed on the remote side.
    pub(crate) fn resize(&self, blocks: u64) {
        let old = self.num_blocks.swap(blocks, Ordering::AcqRel);
        if old != blocks {
            tracing::warn!(bdev = %self.name, old, new = blocks, "remote namespace resized");
        }
    }
}

impl Bdev for RemoteBdev {
    fn name(&self) -> &str {
        &self.name
    }
    fn product_name(&self) -> &'static str {
        "NVMe disk"
    }
    fn module(&self) -> &'static str {
        "nvme"
    }
    fn uuid(&self) -> Uuid {
        self.uuid
    }
    fn block_size(&self) -> u32 {
        self.block_size
    }
    fn num_blocks(&self) -> u64 {
        self.num_blocks.load(Ordering::Acquire)
    }
    fn supports(&self, t: IoType) -> bool {
        match t {
            IoType::Read | IoType::Write | IoType::Flush => true,
            IoType::WriteZeroes => self.oncs & ONCS_WRITE_ZEROES != 0,
            IoType::Unmap => self.oncs & ONCS_DSM != 0,
            IoType::XorWrite | IoType::Checksum => self.ctrlr.vendor.load(Ordering::Acquire),
            IoType::GfXorWrite => self.ctrlr.gf_xor.load(Ordering::Acquire),
            IoType::Reset => false,
        }
    }
    fn create_channel(self: Arc<Self>) -> Result<Rc<dyn BdevChannel>, BdevError> {
        let q = queue::get_or_create(&self.ctrlr)?;
        Ok(Rc::new(RemoteChannel { q, nsid: self.nsid }))
    }
    fn driver_specific(&self) -> Value {
        json!({
            "nvme": [{
                "trid": {
                    "trtype": "TCP",
                    "adrfam": self.ctrlr.opts.adrfam,
                    "traddr": self.ctrlr.opts.traddr,
                    "trsvcid": self.ctrlr.opts.trsvcid,
                    "subnqn": self.ctrlr.opts.subnqn,
                },
                "ctrlr_name": self.ctrlr.name,
                "nsid": self.nsid,
                "vendor_commands": self.ctrlr.vendor.load(Ordering::Relaxed),
            }]
        })
    }
    /// Recreated by the controller's `bdev_nvme_attach_controller` entry, not per bdev.
    fn config(&self) -> Option<ConfigEntry> {
        None
    }
}

struct RemoteChannel {
    q: Rc<IoQueue>,
    nsid: u32,
}

impl BdevChannel for RemoteChannel {
    fn submit(&self, io: BdevIo) {
        self.q.submit(self.nsid, io);
    }
}
