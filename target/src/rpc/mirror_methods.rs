//! Mirror methods (`bdev_mirror_*`): strata's own, in SPDK's naming style.

use super::bdev_methods::{ok, on_reactor};
use super::params::mirror::{
    MirrorAddLeg, MirrorBackup, MirrorCreate, MirrorGet, MirrorResolveSplitBrain, MirrorResume,
    MirrorSetOptions, MirrorSplit, MirrorVerify,
};
use super::params::ByName;
use super::MethodTable;
use serde_json::Value;
use strata_bdev::modules::mirror;

pub fn register(t: &mut MethodTable) {
    t.add("bdev_mirror_create", |_, p: MirrorCreate| {
        let o = p.options()?;
        let name = o.name.clone();
        on_reactor(move || async move { mirror::create(o).await.map(|_| ()) })?;
        Ok(Value::String(name))
    });
    t.add("bdev_mirror_delete", |_, p: ByName| {
        on_reactor(move || async move { mirror::delete(&p.name).await })?;
        ok()
    });
    t.add("bdev_mirror_get", |_, p: MirrorGet| {
        Ok(Value::Array(mirror::get(p.name.as_deref())?))
    });
    t.add("bdev_mirror_split", |_, p: MirrorSplit| {
        p.check()?;
        if p.snapshot {
            return on_reactor(move || async move {
                mirror::snapshot::split_snapshot(&p.name, p.image).await
            });
        }
        on_reactor(move || async move { mirror::split(&p.name).await })?;
        ok()
    });
    t.add("bdev_mirror_backup", |_, p: MirrorBackup| {
        let o = p.options()?;
        on_reactor(move || async move { mirror::backup::start(&p.name, o).await })
    });
    t.add("bdev_mirror_resume", |_, p: MirrorResume| {
        let mode = p.mode()?;
        on_reactor(move || async move { mirror::resume(&p.name, mode).await })?;
        ok()
    });
    t.add("bdev_mirror_verify", |_, p: MirrorVerify| {
        on_reactor(move || async move { mirror::verify(&p.name, p.repair).await })?;
        ok()
    });
    t.add("bdev_mirror_add_leg", |_, p: MirrorAddLeg| {
        on_reactor(move || async move { mirror::add_leg(&p.name, &p.base_bdev).await })?;
        ok()
    });
    t.add(
        "bdev_mirror_resolve_split_brain",
        |_, p: MirrorResolveSplitBrain| {
            on_reactor(move || async move { mirror::resolve_split_brain(&p.name, &p.keep).await })?;
            ok()
        },
    );
    t.add("bdev_mirror_set_options", |_, p: MirrorSetOptions| {
        let o = p.options()?;
        on_reactor(move || async move { mirror::set_options(&p.name, o).await })?;
        ok()
    });
}
