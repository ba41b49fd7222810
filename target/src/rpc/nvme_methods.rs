//! Remote-bdev methods (`bdev_nvme_*`, SPDK's): namespaces of other NVMe/TCP targets as
//! bdevs. Connecting blocks, so these run on the RPC thread, not on a reactor.

use super::bdev_methods::ok;
use super::keyring_methods::dhchap_secret;
use super::params::nvme::{NvmeAttach, NvmeDetach, NvmeGetControllers, NvmeReset, NvmeSetOptions};
use super::{MethodTable, RpcError};
use serde_json::Value;
use strata_nvmf::remote;

pub fn register(t: &mut MethodTable) {
    t.add("bdev_nvme_attach_controller", |_, p: NvmeAttach| {
        if let Some((name, traddr, queues)) = p.pcie()? {
            if remote::controllers(Some(&name)).is_ok() {
                return Err(RpcError::new(
                    -libc::EEXIST as i64,
                    format!("controller '{name}' already exists"),
                ));
            }
            return Ok(Value::from(strata_pcie::attach(&name, &traddr, queues)?));
        }
        if strata_pcie::exists(&p.name) {
            return Err(RpcError::new(
                -libc::EEXIST as i64,
                format!("controller '{}' already exists", p.name),
            ));
        }
        let mut o = p.options()?;
        o.dhchap = match &o.dhchap_key_names {
            (None, None) => None,
            (None, Some(_)) => {
                return Err(RpcError::invalid_params(
                    "dhchap_ctrlr_key needs dhchap_key",
                ))
            }
            (Some(k), c) => Some(std::sync::Arc::new(strata_nvmf::host::auth::DhchapKeys {
                key: dhchap_secret(k)?,
                ctrl_key: c.as_deref().map(dhchap_secret).transpose()?,
            })),
        };
        o.tls_psk = o
            .psk_key_name
            .as_deref()
            .map(super::keyring_methods::tls_psk)
            .transpose()?
            .map(std::sync::Arc::new);
        let names = remote::attach(o)?;
        Ok(Value::from(names))
    });
    t.add("bdev_nvme_detach_controller", |_, p: NvmeDetach| {
        if strata_pcie::exists(&p.name) {
            strata_pcie::detach(&p.name)?;
            return ok();
        }
        remote::detach(&p.name)?;
        ok()
    });
    t.add("bdev_nvme_get_controllers", |_, p: NvmeGetControllers| {
        let mut v = strata_pcie::controllers(p.name.as_deref());
        if p.name.is_none() || v.is_empty() {
            v.extend(remote::controllers(p.name.as_deref())?);
        }
        Ok(Value::Array(v))
    });
    t.add("bdev_nvme_reset_controller", |_, p: NvmeReset| {
        if strata_pcie::exists(&p.name) {
            strata_pcie::reset(&p.name)?;
            return ok();
        }
        remote::reset(&p.name)?;
        ok()
    });
    t.add("bdev_nvme_set_options", |_, p: NvmeSetOptions| {
        remote::set_options(p.options()?)?;
        ok()
    });
}
