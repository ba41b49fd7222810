//! A parity group's state in the cluster store (optional, `strata-tgt --etcd`), beside the
//! superblocks: each data member's state, fold/rebuild cursor and whether it owes the
//! parity a repair (`/strata/parity/<group>/data/<index>`), and each parity volume's member
//! list (`/strata/parity/<group>/<p|q>`). A member writes its record before its superblock
//! (with every metadata write that changes it). When a member is reopened and the record
//! is at least as new as the superblock, the record wins where it says more is owed: a
//! repair owed makes every region repaired (the bitmap that said otherwise was lost or
//! rolled back), and a fold or rebuild the superblock forgot is resumed from the record's
//! cursor.

use super::member::ParityMember;
use super::superblock::{Kind, MemberState};
use super::volume::ParityVolume;
use crate::volume::cluster;
use serde::{Deserialize, Serialize};
use std::sync::atomic::Ordering;
use uuid::Uuid;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MemberRecord {
    pub name: String,
    pub state: String,
    pub cursor: u64,
    /// The parity lacks some of this member's writes beyond the write-intent window (a
    /// parity was unreachable, or a repair failed).
    pub repair_owed: bool,
    pub generation: u64,
}

impl MemberRecord {
    pub fn of(m: &ParityMember, generation: u64) -> MemberRecord {
        MemberRecord {
            name: m.name.clone(),
            state: m.state().name().to_string(),
            cursor: m.cursor.load(Ordering::Acquire),
            repair_owed: m.degraded() || m.work_owed.load(Ordering::Acquire),
            generation,
        }
    }

    fn same_state(&self, o: &MemberRecord) -> bool {
        (&self.name, &self.state, self.cursor, self.repair_owed)
            == (&o.name, &o.state, o.cursor, o.repair_owed)
    }

    pub fn member_state(&self) -> Option<MemberState> {
        MemberState::from_name(&self.state)
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VolumeRecord {
    pub name: String,
    pub members: Vec<(u32, String)>,
    pub generation: u64,
}

pub fn member_key(group: Uuid, index: u32) -> String {
    format!("/strata/parity/{group}/data/{index}")
}

pub fn volume_key(group: Uuid, kind: Kind) -> String {
    format!("/strata/parity/{group}/{}", kind.name())
}

async fn put<T: Serialize>(key: String, rec: &T, what: &str) -> bool {
    let value = match serde_json::to_vec(rec) {
        Ok(v) => v,
        Err(e) => {
            tracing::error!(key, error = %e, "cannot encode the cluster record");
            return false;
        }
    };
    match cluster::put_record(key, value).await {
        Ok(written) => written,
        Err(e) => {
            tracing::error!(what, error = %e, "cluster store write failed; the superblocks carry the state (retried in 5 s)");
            false
        }
    }
}

/// Records the member's state if it changed since the last record (nothing to do without
/// a store).
pub async fn write_member(m: &ParityMember, generation: u64) {
    if cluster::store().is_none() {
        return;
    }
    let rec = MemberRecord::of(m, generation);
    if m.recorded
        .lock()
        .as_ref()
        .is_some_and(|r| r.same_state(&rec))
    {
        return;
    }
    if put(member_key(m.group_uuid, m.index), &rec, &m.name).await {
        tracing::info!(member = %m.name, generation, state = %rec.state, repair_owed = rec.repair_owed, "member state recorded in the cluster store");
        *m.recorded.lock() = Some(rec);
    }
}

/// Records a parity volume's member list.
pub async fn write_volume(v: &ParityVolume, generation: u64) {
    if cluster::store().is_none() {
        return;
    }
    let rec = VolumeRecord {
        name: v.name.clone(),
        members: v
            .members
            .lock()
            .iter()
            .map(|m| (m.index, m.recorded_name()))
            .collect(),
        generation,
    };
    put(volume_key(v.group_uuid, v.kind), &rec, &v.name).await;
}

/// Member `index`'s record. Err when a store is installed but does not answer (the member
/// must not come up from a superblock that may be stale).
pub async fn read_member(group: Uuid, index: u32) -> Result<Option<MemberRecord>, String> {
    match cluster::get(member_key(group, index)).await? {
        None => Ok(None),
        Some(v) => serde_json::from_slice(&v).map(Some).map_err(|e| {
            format!("cluster record of member {index} of group {group} is not readable: {e}")
        }),
    }
}
