//! NVM subsystems: NQN, identity strings, namespaces (claimed bdevs), the hosts allowed to
//! connect, the listeners it is reachable on, and the controllers connected to it.
//!
//! Namespace changes bump a generation number (I/O queues refresh their per-reactor channel
//! cache when it moves) and are announced to every controller (changed-namespace log and an
//! asynchronous event).
//!
//! Asymmetric Namespace Access (multipath): each namespace is in an ANA group (default: its
//! NSID), and each listener has a state per group (default optimized). Controllers read the
//! state of the listener they connected through; a change is announced to them (ANA log's
//! change count and an asynchronous event) and I/O to an inaccessible group is refused with
//! a path status, so the host moves it to another path.

use super::controller::Controller;
use super::TargetError;
use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use strata_bdev::{registry, BdevDesc};
use uuid::Uuid;

/// A transport address a subsystem is reachable on.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct ListenAddress {
    pub trtype: String,
    pub adrfam: String,
    pub traddr: String,
    pub trsvcid: String,
}

/// The ANA state of a group through one listener (the values of the ANA log page).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum AnaState {
    Optimized = 1,
    NonOptimized = 2,
    Inaccessible = 3,
}

impl AnaState {
    /// SPDK's RPC spelling.
    pub fn name(self) -> &'static str {
        match self {
            AnaState::Optimized => "optimized",
            AnaState::NonOptimized => "non_optimized",
            AnaState::Inaccessible => "inaccessible",
        }
    }

    pub fn parse(s: &str) -> Option<AnaState> {
        match s {
            "optimized" => Some(AnaState::Optimized),
            "non_optimized" => Some(AnaState::NonOptimized),
            "inaccessible" => Some(AnaState::Inaccessible),
            _ => None,
        }
    }

    pub fn from_u8(v: u8) -> AnaState {
        match v {
            2 => AnaState::NonOptimized,
            3 => AnaState::Inaccessible,
            _ => AnaState::Optimized,
        }
    }
}

/// One namespace: a claimed bdev plus its identifiers.
pub struct Namespace {
    pub nsid: u32,
    /// Its ANA group (1..=max_namespaces).
    pub anagrpid: u32,
    pub desc: Arc<BdevDesc>,
    pub uuid: Uuid,
    pub nguid: Option<[u8; 16]>,
    pub eui64: Option<[u8; 8]>,
}

impl std::fmt::Debug for Namespace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Namespace")
            .field("nsid", &self.nsid)
            .field("bdev", &self.desc.name())
            .finish()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubsystemKind {
    Nvme,
    Discovery,
}

pub struct SubsystemState {
    pub serial_number: String,
    pub model_number: String,
    pub allow_any_host: bool,
    pub hosts: Vec<String>,
    pub listeners: Vec<ListenAddress>,
    pub namespaces: BTreeMap<u32, Arc<Namespace>>,
    pub max_namespaces: u32,
    pub controllers: Vec<Weak<Controller>>,
    /// ANA reporting to hosts (SPDK's `ana_reporting`): Identify says so, and states other
    /// than optimized may be set.
    pub ana_reporting: bool,
    /// Per listener, the groups whose state is not optimized.
    pub ana: BTreeMap<ListenAddress, BTreeMap<u32, AnaState>>,
    /// Bumped at every ANA state change (the ANA log's change count).
    pub ana_change_count: u64,
    /// DH-HMAC-CHAP secrets per host NQN: such a host authenticates every queue.
    pub host_keys: BTreeMap<String, super::auth::HostKeys>,
    /// TLS PSKs per host NQN: such a host connects through secure-channel listeners only.
    pub host_psks: BTreeMap<String, super::tls::HostPsk>,
}

impl SubsystemState {
    /// The state of group `grp` through listener `l`.
    pub fn ana_state(&self, l: &ListenAddress, grp: u32) -> AnaState {
        self.ana
            .get(l)
            .and_then(|m| m.get(&grp))
            .copied()
            .unwrap_or(AnaState::Optimized)
    }
}

pub struct Subsystem {
    pub nqn: String,
    pub kind: SubsystemKind,
    pub state: Mutex<SubsystemState>,
    /// Bumped on every namespace change.
    pub ns_generation: AtomicU64,
}

impl std::fmt::Debug for Subsystem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subsystem").field("nqn", &self.nqn).finish()
    }
}

/// Checks the NQN format: `nqn.yyyy-mm.reverse.domain:anything`, or the UUID form, ≤ 223 bytes.
pub fn validate_nqn(nqn: &str) -> Result<(), TargetError> {
    let bad = |why: &str| Err(TargetError::Invalid(format!("invalid NQN '{nqn}': {why}")));
    if nqn.len() > 223 {
        return bad("longer than 223 bytes");
    }
    if !nqn.is_ascii() || nqn.chars().any(|c| c.is_control() || c == ' ') {
        return bad("must be printable ASCII without spaces");
    }
    if let Some(u) = nqn.strip_prefix("nqn.2014-08.org.nvmexpress:uuid:") {
        return if Uuid::parse_str(u).is_ok() {
            Ok(())
        } else {
            bad("bad UUID")
        };
    }
    let Some(rest) = nqn.strip_prefix("nqn.") else {
        return bad("must start with 'nqn.'");
    };
    let date_ok = rest.len() > 8
        && rest.as_bytes()[..4].iter().all(u8::is_ascii_digit)
        && rest.as_bytes()[4] == b'-'
        && rest.as_bytes()[5..7].iter().all(u8::is_ascii_digit)
        && rest.as_bytes()[7] == b'.';
    if !date_ok {
        return bad("expected nqn.yyyy-mm.<reverse domain>[:<name>]");
    }
    Ok(())
}

impl Subsystem {
    pub fn new(
        nqn: &str,
        kind: SubsystemKind,
        serial: &str,
        model: &str,
        allow_any_host: bool,
        max_ns: u32,
    ) -> Arc<Self> {
        Arc::new(Subsystem {
            nqn: nqn.to_string(),
            kind,
            state: Mutex::new(SubsystemState {
                serial_number: serial.to_string(),
                model_number: model.to_string(),
                allow_any_host,
                hosts: Vec::new(),
                listeners: Vec::new(),
                namespaces: BTreeMap::new(),
                max_namespaces: max_ns,
                controllers: Vec::new(),
                ana_reporting: false,
                ana: BTreeMap::new(),
                ana_change_count: 0,
                host_keys: BTreeMap::new(),
                host_psks: BTreeMap::new(),
            }),
            ns_generation: AtomicU64::new(0),
        })
    }

    pub fn host_allowed(&self, hostnqn: &str) -> bool {
        let s = self.state.lock();
        s.allow_any_host || s.hosts.iter().any(|h| h == hostnqn)
    }

    pub fn namespace(&self, nsid: u32) -> Option<Arc<Namespace>> {
        self.state.lock().namespaces.get(&nsid).cloned()
    }

    pub fn namespaces(&self) -> Vec<Arc<Namespace>> {
        self.state.lock().namespaces.values().cloned().collect()
    }

    /// Adds `bdev_name` as a namespace (nsid 0: the lowest free one; ANA group 0: its
    /// nsid). Claims the bdev.
    #[allow(clippy::too_many_arguments)]
    pub fn add_namespace(
        self: &Arc<Self>,
        bdev_name: &str,
        nsid: u32,
        uuid: Option<Uuid>,
        nguid: Option<[u8; 16]>,
        eui64: Option<[u8; 8]>,
        anagrpid: u32,
    ) -> Result<u32, TargetError> {
        if self.kind == SubsystemKind::Discovery {
            return Err(TargetError::Invalid(
                "the discovery subsystem has no namespaces".into(),
            ));
        }
        let nsid = {
            let s = self.state.lock();
            let nsid = if nsid == 0 {
                (1..=s.max_namespaces)
                    .find(|n| !s.namespaces.contains_key(n))
                    .ok_or_else(|| {
                        TargetError::Invalid(format!(
                            "{} already has {} namespaces",
                            self.nqn, s.max_namespaces
                        ))
                    })?
            } else {
                nsid
            };
            if nsid == 0 || nsid > s.max_namespaces || nsid == u32::MAX {
                return Err(TargetError::Invalid(format!(
                    "nsid {nsid} out of range 1..={}",
                    s.max_namespaces
                )));
            }
            if s.namespaces.contains_key(&nsid) {
                return Err(TargetError::Exists(format!("nsid {nsid} in {}", self.nqn)));
            }
            if anagrpid > s.max_namespaces {
                return Err(TargetError::Invalid(format!(
                    "anagrpid {anagrpid} out of range 1..={}",
                    s.max_namespaces
                )));
            }
            nsid
        };
        let anagrpid = if anagrpid == 0 { nsid } else { anagrpid };
        let me = Arc::downgrade(self);
        let desc = registry::open(bdev_name, move |ev| {
            // The bdev is going away: take the namespace out (hot remove).
            if ev == strata_bdev::BdevEvent::Remove {
                if let Some(s) = me.upgrade() {
                    let _ = s.remove_namespace(nsid);
                }
            }
        })?;
        desc.claim(&format!("NVMe-oF target {}", self.nqn))?;
        let uuid = uuid.unwrap_or_else(|| desc.bdev().uuid());
        let ns = Arc::new(Namespace {
            nsid,
            anagrpid,
            desc: Arc::new(desc),
            uuid,
            nguid,
            eui64,
        });
        {
            let mut s = self.state.lock();
            if s.namespaces.contains_key(&nsid) {
                return Err(TargetError::Exists(format!("nsid {nsid} in {}", self.nqn)));
            }
            s.namespaces.insert(nsid, ns);
        }
        tracing::info!(nqn = %self.nqn, nsid, bdev = bdev_name, "namespace added");
        self.namespaces_changed(nsid);
        Ok(nsid)
    }

    pub fn remove_namespace(&self, nsid: u32) -> Result<(), TargetError> {
        let ns = self.state.lock().namespaces.remove(&nsid);
        let ns = ns.ok_or_else(|| TargetError::NotFound(format!("nsid {nsid} in {}", self.nqn)))?;
        ns.desc.release_claim();
        tracing::info!(nqn = %self.nqn, nsid, "namespace removed");
        self.namespaces_changed(nsid);
        Ok(())
    }

    fn namespaces_changed(&self, nsid: u32) {
        self.ns_generation.fetch_add(1, Ordering::AcqRel);
        let ctrls: Vec<Arc<Controller>> = {
            let mut s = self.state.lock();
            s.controllers.retain(|c| c.strong_count() > 0);
            s.controllers.iter().filter_map(Weak::upgrade).collect()
        };
        for c in ctrls {
            c.namespace_changed(nsid);
        }
    }

    /// Sets the ANA state of group `grp` (None: every group) through listener `l`, and
    /// tells the controllers connected through it.
    pub fn set_ana_state(
        &self,
        l: &ListenAddress,
        grp: Option<u32>,
        state: AnaState,
    ) -> Result<(), TargetError> {
        let ctrls = {
            let mut s = self.state.lock();
            if !s.listeners.contains(l) {
                return Err(TargetError::NotFound(format!(
                    "listener {}:{} of {}",
                    l.traddr, l.trsvcid, self.nqn
                )));
            }
            if !s.ana_reporting && state != AnaState::Optimized {
                return Err(TargetError::Invalid(format!(
                    "ANA reporting is disabled on {} (nvmf_create_subsystem ana_reporting)",
                    self.nqn
                )));
            }
            let max = s.max_namespaces;
            if let Some(g) = grp {
                if g == 0 || g > max {
                    return Err(TargetError::Invalid(format!(
                        "anagrpid {g} out of range 1..={max}"
                    )));
                }
            }
            let groups = s.ana.entry(l.clone()).or_default();
            let grps: Vec<u32> = match grp {
                Some(g) => vec![g],
                None => (1..=max).collect(),
            };
            for g in &grps {
                if state == AnaState::Optimized {
                    groups.remove(g);
                } else {
                    groups.insert(*g, state);
                }
            }
            s.ana_change_count += 1;
            s.controllers.retain(|c| c.strong_count() > 0);
            s.controllers
                .iter()
                .filter_map(Weak::upgrade)
                .filter(|c| c.listener.as_ref() == Some(l))
                .collect::<Vec<_>>()
        };
        tracing::info!(nqn = %self.nqn, listener = %format!("{}:{}", l.traddr, l.trsvcid), group = ?grp, state = state.name(), controllers = ctrls.len(), "ANA state set");
        for c in ctrls {
            c.ana_changed(grp, state);
        }
        Ok(())
    }

    pub fn controllers(&self) -> Vec<Arc<Controller>> {
        let mut s = self.state.lock();
        s.controllers.retain(|c| c.strong_count() > 0);
        s.controllers.iter().filter_map(Weak::upgrade).collect()
    }
}
