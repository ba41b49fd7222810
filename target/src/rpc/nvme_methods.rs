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
        remote::detach(&p.name)?;
        ok()
    });
    t.add("bdev_nvme_get_controllers", |_, p: NvmeGetControllers| {
        Ok(Value::Array(remote::controllers(p.name.as_deref())?))
    });
    t.add("bdev_nvme_reset_controller", |_, p: NvmeReset| {
        remote::reset(&p.name)?;
        ok()
    });
    t.add("bdev_nvme_set_options", |_, p: NvmeSetOptions| {
        remote::set_options(p.options()?)?;
        ok()
    });
}
