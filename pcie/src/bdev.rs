//! The bdev of one namespace of a PCIe controller, `<controller>n<nsid>`, and its channel: a
//! handle on the reactor's queue pair to the controller.

use crate::nvme::ctrlr::{Controller, Namespace};
use crate::nvme::qpair::{self, QueuePair};
use serde_json::{json, Value};
use std::rc::Rc;
use std::sync::Arc;
use strata_bdev::{Bdev, BdevChannel, BdevError, BdevIo, ConfigEntry, IoType};
use strata_nvmf::spec::identify::{ONCS_DSM, ONCS_WRITE_ZEROES};
use uuid::Uuid;

pub struct PcieBdev {
    name: String,
    ns: Namespace,
    uuid: Uuid,
    ctrlr: Arc<Controller>,
}

impl PcieBdev {
    pub fn new(ctrlr: &Arc<Controller>, ns: &Namespace) -> PcieBdev {
        // The namespace's own identity if it has one, else one derived from the controller's
        // serial number, so the UUID is the same after every attach.
        let uuid = if ns.nguid != [0; 16] {
            Uuid::from_bytes(ns.nguid)
        } else {
            let key = format!(
                "{}:{}:{}:{}",
                ctrlr.id.model,
                ctrlr.id.serial,
                ns.nsid,
                hex(&ns.eui64)
            );
            Uuid::new_v5(&Uuid::NAMESPACE_OID, key.as_bytes())
        };
        PcieBdev {
            name: format!("{}n{}", ctrlr.name, ns.nsid),
            ns: ns.clone(),
            uuid,
            ctrlr: ctrlr.clone(),
        }
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

impl Bdev for PcieBdev {
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
        self.ns.block_size
    }
    fn num_blocks(&self) -> u64 {
        self.ns.blocks
    }
    fn supports(&self, t: IoType) -> bool {
        match t {
            IoType::Read | IoType::Write | IoType::Flush => true,
            IoType::WriteZeroes => self.ctrlr.id.oncs & ONCS_WRITE_ZEROES != 0,
            IoType::Unmap => self.ctrlr.id.oncs & ONCS_DSM != 0,
            _ => false,
        }
    }
    fn create_channel(self: Arc<Self>) -> Result<Rc<dyn BdevChannel>, BdevError> {
        let q = qpair::get_or_create(&self.ctrlr)?;
        Ok(Rc::new(PcieChannel {
            q,
            nsid: self.ns.nsid,
        }))
    }
    fn driver_specific(&self) -> Value {
        json!({
            "nvme": [{
                "trid": { "trtype": "PCIe", "traddr": self.ctrlr.bdf.as_str() },
                "ctrlr_name": self.ctrlr.name,
                "nsid": self.ns.nsid,
                "ctrlr_data": {
                    "model_number": self.ctrlr.id.model,
                    "serial_number": self.ctrlr.id.serial,
                    "firmware_revision": self.ctrlr.id.firmware,
                },
                "max_transfer_bytes": self.ctrlr.id.max_transfer,
                "sgl": format!("{:?}", self.ctrlr.id.sgl),
            }]
        })
    }
    /// Recreated by the controller's `bdev_nvme_attach_controller` entry.
    fn config(&self) -> Option<ConfigEntry> {
        None
    }
}

struct PcieChannel {
    q: Rc<QueuePair>,
    nsid: u32,
}

impl BdevChannel for PcieChannel {
    fn submit(&self, io: BdevIo) {
        self.q.submit(self.nsid, io);
    }
    fn outstanding(&self) -> u64 {
        self.q.outstanding()
    }
}
