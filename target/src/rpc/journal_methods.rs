//! Dual-redundancy methods (`bdev_journal_*`): strata's own, in SPDK's naming style.
//! Protected volume groups (a mirrored journal drained to a backup repository) and the
//! protected volumes in them (a base, usually a RAID, plus the journal).

use super::bdev_methods::{ok, on_reactor};
use super::params::journal::{
    JournalGroupCreate, JournalGroupDrain, JournalGroupGet, JournalGroupRecover,
    JournalGroupReplaceLeg, JournalGroupSetOptions, JournalVolumeCreate, JournalVolumeGet,
    JournalVolumeRebuild, JournalVolumeSetAttributes,
};
use super::params::ByName;
use super::MethodTable;
use serde_json::Value;
use strata_bdev::modules::journal;

pub fn register(t: &mut MethodTable) {
    t.add("bdev_journal_group_create", |_, p: JournalGroupCreate| {
        let o = p.options()?;
        on_reactor(move || async move { journal::create_group(o).await })?;
        Ok(Value::String(p.name))
    });
    t.add("bdev_journal_group_delete", |_, p: ByName| {
        on_reactor(move || async move { journal::delete_group(&p.name).await })?;
        ok()
    });
    t.add("bdev_journal_group_get", |_, p: JournalGroupGet| {
        Ok(Value::Array(journal::get(p.name.as_deref())?))
    });
    t.add("bdev_journal_group_drain", |_, p: JournalGroupDrain| {
        journal::drain::start(&p.name)?;
        ok()
    });
    t.add(
        "bdev_journal_group_set_options",
        |_, p: JournalGroupSetOptions| {
            journal::set_policy(
                &p.name,
                p.drain_fill_percent,
                p.drain_age_sec,
                p.max_bandwidth_mb_sec,
            )?;
            ok()
        },
    );
    t.add(
        "bdev_journal_group_replace_leg",
        |_, p: JournalGroupReplaceLeg| {
            on_reactor(move || async move { journal::replace_leg(&p.name, &p.new_bdev).await })?;
            ok()
        },
    );
    t.add("bdev_journal_group_recover", |_, p: JournalGroupRecover| {
        let legs = p.legs()?;
        on_reactor(
            move || async move { journal::recover_group(&p.name, legs, &p.repository).await },
        )?;
        ok()
    });
    t.add("bdev_journal_volume_create", |_, p: JournalVolumeCreate| {
        let attrs = p.attributes()?;
        let name = p.name.clone();
        on_reactor(move || async move {
            journal::create_volume(&p.group, &p.name, &p.base_bdev, attrs).await
        })?;
        Ok(Value::String(name))
    });
    t.add("bdev_journal_volume_delete", |_, p: ByName| {
        on_reactor(move || async move { journal::delete_volume(&p.name).await })?;
        ok()
    });
    t.add("bdev_journal_volume_get", |_, p: JournalVolumeGet| {
        Ok(Value::Array(journal::get_volumes(p.name.as_deref())?))
    });
    t.add(
        "bdev_journal_volume_set_attributes",
        |_, p: JournalVolumeSetAttributes| {
            let attrs = p.attributes()?;
            on_reactor(move || async move { journal::set_attributes(&p.name, attrs).await })?;
            ok()
        },
    );
    t.add(
        "bdev_journal_volume_rebuild",
        |_, p: JournalVolumeRebuild| {
            let target = p.target()?;
            on_reactor(move || async move { journal::rebuild::start(&p.name, target).await })?;
            ok()
        },
    );
}
