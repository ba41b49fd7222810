//! Remote parity methods (`bdev_parity_*`): strata's own, in SPDK's naming style. On a
//! parity node: the P/Q volume, its member list, rebuild sources and verify; on a data
//! node: the data member.

use super::bdev_methods::{ok, on_reactor};
use super::params::parity::{
    ParityAddMember, ParityCreate, ParityGet, ParityMemberCreate, ParityMemberRepair,
    ParityRemoveMember, ParitySourceCreate, ParityVerify,
};
use super::params::{invalid, ByName};
use super::MethodTable;
use serde_json::Value;
use strata_bdev::modules::parity;

pub fn register(t: &mut MethodTable) {
    t.add("bdev_parity_create", |_, p: ParityCreate| {
        let o = p.options()?;
        on_reactor(move || async move { parity::create_parity(o).await.map(|_| ()) })?;
        Ok(Value::String(p.name))
    });
    t.add("bdev_parity_delete", |_, p: ByName| {
        parity::delete(&p.name, false)?;
        ok()
    });
    t.add("bdev_parity_add_member", |_, p: ParityAddMember| {
        on_reactor(move || async move { parity::add_member(&p.name, p.index, &p.bdev).await })?;
        ok()
    });
    t.add("bdev_parity_remove_member", |_, p: ParityRemoveMember| {
        on_reactor(move || async move { parity::remove_member(&p.name, p.index).await })?;
        ok()
    });
    t.add("bdev_parity_source_create", |_, p: ParitySourceCreate| {
        let m = "bdev_parity_source_create";
        let also_lost = match (p.also_lost, p.partner.as_deref()) {
            (None, None) => None,
            (Some(b), Some(partner)) => Some((b, partner)),
            (Some(_), None) => return Err(invalid(m, "partner", "needed with also_lost")),
            (None, Some(_)) => return Err(invalid(m, "also_lost", "needed with partner")),
        };
        let name = parity::create_source(&p.name, p.index, p.source_name.as_deref(), also_lost)?;
        Ok(Value::String(name))
    });
    t.add("bdev_parity_verify", |_, p: ParityVerify| {
        parity::verify(&p.name, p.repair, p.max_bandwidth_mb_sec.unwrap_or(0))?;
        ok()
    });
    t.add("bdev_parity_member_create", |_, p: ParityMemberCreate| {
        let o = p.options()?;
        on_reactor(move || async move { parity::create_member(o).await.map(|_| ()) })?;
        Ok(Value::String(p.name))
    });
    t.add("bdev_parity_member_delete", |_, p: ByName| {
        parity::delete(&p.name, true)?;
        ok()
    });
    t.add("bdev_parity_member_repair", |_, p: ParityMemberRepair| {
        parity::member_repair(&p.name)?;
        ok()
    });
    t.add("bdev_parity_get", |_, p: ParityGet| {
        Ok(Value::Array(parity::get(p.name.as_deref())?))
    });
}
