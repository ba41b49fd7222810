//! TLS on the target: the PSKs a subsystem holds for its hosts, the lookup the TLS
//! handshake makes for the identity a host offers, and the checks at Connect that tie a
//! queue's TLS identity to the NQNs it connects with.
//!
//! A listener is opened as a secure channel (`nvmf_subsystem_add_listener ...
//! secure_channel`) or not, for all the subsystems on it: on a secure one every connection
//! starts with a TLS 1.3 handshake and a plain ICReq fails it. A host given a PSK
//! (`nvmf_subsystem_add_host ... psk`) may connect over TLS only.

use super::Target;
use crate::tls::{ConfiguredPsk, PskIdentity, PskLookup, TlsKey};
use std::sync::Arc;

/// A host's configured PSK, with the keyring name it came from.
#[derive(Debug, Clone)]
pub struct HostPsk {
    pub key_name: String,
    pub psk: Arc<ConfiguredPsk>,
}

impl Target {
    /// The key for the identity a ClientHello offers: the subsystem it names (an NVM
    /// subsystem, or the discovery subsystem for a host that discovers over TLS) must exist
    /// and hold a PSK for the host it names, of the identity's cipher suite.
    pub fn psk_lookup(&'static self) -> PskLookup {
        Arc::new(move |id: &PskIdentity| {
            let s = self
                .find_subsystem(&id.subnqn)
                .ok_or_else(|| format!("no subsystem {}", id.subnqn))?;
            let hp = s
                .state
                .lock()
                .host_psks
                .get(&id.hostnqn)
                .cloned()
                .ok_or_else(|| format!("host {} has no PSK for {}", id.hostnqn, id.subnqn))?;
            if hp.psk.suite() != id.suite {
                return Err(format!(
                    "the identity asks for {} and the host's PSK ({}) is for {}",
                    id.suite.name(),
                    hp.key_name,
                    hp.psk.suite().name()
                ));
            }
            Ok(TlsKey {
                suite: id.suite,
                retained: hp.psk.retained(&id.hostnqn),
            })
        })
    }
}

/// Whether a Connect for `hostnqn` → `subnqn` may run on a queue whose TLS identity is
/// `tls` (None: a plain connection). Err: the reason to refuse it (Connect Invalid Host).
pub fn check_connect(
    tls: Option<&PskIdentity>,
    host_has_psk: bool,
    hostnqn: &str,
    subnqn: &str,
) -> Result<(), String> {
    match tls {
        Some(id) if id.hostnqn != hostnqn || id.subnqn != subnqn => Err(format!(
            "Connect names {hostnqn} -> {subnqn}, the TLS PSK identity is {} -> {}",
            id.hostnqn, id.subnqn
        )),
        Some(_) => Ok(()),
        None if host_has_psk => Err(format!(
            "host {hostnqn} has a TLS PSK for {subnqn}: it must connect through a secure_channel listener"
        )),
        None => Ok(()),
    }
}
