//! The mirror's record in the cluster store ([`crate::volume::cluster`]): its state, which
//! leg is the primary and each leg's state, by leg (bdev) name. Written before a change of
//! leg states is acted on; at assembly it wins over the superblocks wherever it says a leg
//! is out of sync.

use super::superblock::{LegState, MirrorState};
use super::volume::Mirror;
use crate::volume::cluster;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordLeg {
    pub name: String,
    pub state: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub name: String,
    /// The metadata generation it was written with.
    pub generation: u64,
    pub state: String,
    pub primary: String,
    pub legs: Vec<RecordLeg>,
}

/// The key of mirror `uuid`'s record.
pub fn key(uuid: Uuid) -> String {
    format!("/strata/mirrors/{uuid}")
}

impl Record {
    pub fn of(m: &Mirror, generation: u64) -> Record {
        let c = m.ctl.lock();
        Record {
            name: m.name.clone(),
            generation,
            state: c.state.name().to_string(),
            primary: c.legs[c.primary].name.clone(),
            legs: c
                .legs
                .iter()
                .filter(|l| !l.name.is_empty())
                .map(|l| RecordLeg {
                    name: l.name.clone(),
                    state: l.state.name().to_string(),
                })
                .collect(),
        }
    }

    /// Same states (the generation aside).
    fn same_states(&self, o: &Record) -> bool {
        (&self.state, &self.primary, &self.legs) == (&o.state, &o.primary, &o.legs)
    }

    /// The state the record gives leg `name`, if it names it.
    pub fn leg_state(&self, name: &str) -> Option<LegState> {
        self.legs
            .iter()
            .find(|l| l.name == name)
            .and_then(|l| LegState::from_name(&l.state))
    }

    pub fn mirror_state(&self) -> Option<MirrorState> {
        MirrorState::from_name(&self.state)
    }
}

/// Writes the mirror's leg states to the cluster store if they changed since the last
/// write (nothing to do without a store). A failed write is logged and retried with the
/// next metadata write.
pub async fn write(m: &Mirror, generation: u64) {
    if cluster::store().is_none() {
        return;
    }
    let rec = Record::of(m, generation);
    if m.recorded
        .lock()
        .as_ref()
        .is_some_and(|r| r.same_states(&rec))
    {
        return;
    }
    let value = match serde_json::to_vec(&rec) {
        Ok(v) => v,
        Err(e) => {
            tracing::error!(mirror = %m.name, error = %e, "cannot encode the cluster record");
            return;
        }
    };
    match cluster::put_record(key(m.uuid), value).await {
        Ok(true) => {
            tracing::info!(mirror = %m.name, generation, state = %rec.state, "leg states recorded in the cluster store");
            *m.recorded.lock() = Some(rec);
        }
        Ok(false) => {}
        Err(e) => {
            tracing::error!(mirror = %m.name, error = %e, "cluster store write failed; the superblocks carry the state (retried in 5 s)")
        }
    }
}

/// Mirror `uuid`'s record. Err when a store is installed but does not answer (the mirror
/// must then not be assembled from superblocks that may be stale).
pub async fn read(uuid: Uuid) -> Result<Option<Record>, String> {
    match cluster::get(key(uuid)).await? {
        None => Ok(None),
        Some(v) => serde_json::from_slice(&v)
            .map(Some)
            .map_err(|e| format!("cluster record of mirror {uuid} is not readable: {e}")),
    }
}
