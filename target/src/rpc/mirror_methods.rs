//! Mirror methods (`bdev_mirror_*`): strata's own, in SPDK's naming style.

use super::bdev_methods::{ok, on_reactor};
use super::params::Params;
use super::{MethodTable, RpcError};
use serde_json::Value;
use strata_bdev::modules::mirror::{self, volume::ReadPolicy, CreateOptions, ResumeMode};
use strata_bdev::ChecksumAlg;

fn bad(m: &str, key: &str, v: &str, allowed: &str) -> RpcError {
    RpcError::invalid_params(format!("{m}: invalid parameter '{key}': {v} ({allowed})"))
}

fn read_policy(m: &str, p: &Params) -> Result<Option<ReadPolicy>, RpcError> {
    p.opt_str("read_policy")?
        .map(|v| {
            ReadPolicy::from_name(&v).ok_or_else(|| bad(m, "read_policy", &v, "primary, balance"))
        })
        .transpose()
}

pub fn register(t: &mut MethodTable) {
    t.add("bdev_mirror_create", |_, p| {
        let m = "bdev_mirror_create";
        let p = Params::new(
            m,
            p,
            &[
                "name",
                "primary",
                "secondary",
                "region_size_kb",
                "scan_chunk_kb",
                "read_policy",
                "checksum",
                "scrub_interval_s",
                "max_bandwidth_mb_sec",
                "uuid",
                "initial_sync",
            ],
            &[],
        )?;
        let mut o = CreateOptions::new(&p.str("name")?, &p.str("primary")?, &p.str("secondary")?);
        // Sizes are checked (and named in the error) by mirror::create.
        if let Some(r) = p.opt_u64("region_size_kb")? {
            o.region_size_kb = r;
        }
        if let Some(c) = p.opt_u64("scan_chunk_kb")? {
            o.scan_chunk_kb = c;
        }
        if let Some(r) = read_policy(m, &p)? {
            o.read_policy = r;
        }
        if let Some(c) = p.opt_str("checksum")? {
            o.checksum = ChecksumAlg::from_name(&c)
                .ok_or_else(|| bad(m, "checksum", &c, "crc32c, sha256"))?;
        }
        o.scrub_interval_s = p.opt_u32("scrub_interval_s")?.unwrap_or(0);
        o.max_bandwidth_mb_sec = p.opt_u32("max_bandwidth_mb_sec")?.unwrap_or(0);
        o.uuid = p.opt_uuid("uuid")?;
        o.initial_sync = p.opt_bool("initial_sync")?.unwrap_or(true);
        let name = o.name.clone();
        on_reactor(move || async move { mirror::create(o).await.map(|_| ()) })?;
        Ok(Value::String(name))
    });
    t.add("bdev_mirror_delete", |_, p| {
        let p = Params::new("bdev_mirror_delete", p, &["name"], &[])?;
        let name = p.str("name")?;
        on_reactor(move || async move { mirror::delete(&name).await })?;
        ok()
    });
    t.add("bdev_mirror_get", |_, p| {
        let p = Params::new("bdev_mirror_get", p, &["name"], &[])?;
        let name = p.opt_str("name")?;
        Ok(Value::Array(mirror::get(name.as_deref())?))
    });
    t.add("bdev_mirror_split", |_, p| {
        let p = Params::new("bdev_mirror_split", p, &["name"], &[])?;
        let name = p.str("name")?;
        on_reactor(move || async move { mirror::split(&name).await })?;
        ok()
    });
    t.add("bdev_mirror_resume", |_, p| {
        let m = "bdev_mirror_resume";
        let p = Params::new(m, p, &["name", "mode"], &[])?;
        let name = p.str("name")?;
        let mode = match p.opt_str("mode")? {
            None => ResumeMode::Auto,
            Some(v) => ResumeMode::from_name(&v)
                .ok_or_else(|| bad(m, "mode", &v, "auto, bitmap, checksum"))?,
        };
        on_reactor(move || async move { mirror::resume(&name, mode).await })?;
        ok()
    });
    t.add("bdev_mirror_verify", |_, p| {
        let p = Params::new("bdev_mirror_verify", p, &["name", "repair"], &[])?;
        let name = p.str("name")?;
        let repair = p.opt_bool("repair")?.unwrap_or(false);
        on_reactor(move || async move { mirror::verify(&name, repair).await })?;
        ok()
    });
    t.add("bdev_mirror_add_leg", |_, p| {
        let p = Params::new("bdev_mirror_add_leg", p, &["name", "base_bdev"], &[])?;
        let (name, base) = (p.str("name")?, p.str("base_bdev")?);
        on_reactor(move || async move { mirror::add_leg(&name, &base).await })?;
        ok()
    });
    t.add("bdev_mirror_set_options", |_, p| {
        let m = "bdev_mirror_set_options";
        let p = Params::new(
            m,
            p,
            &[
                "name",
                "read_policy",
                "scrub_interval_s",
                "max_bandwidth_mb_sec",
            ],
            &[],
        )?;
        let name = p.str("name")?;
        let o = mirror::SetOptions {
            read_policy: read_policy(m, &p)?,
            scrub_interval_s: p.opt_u32("scrub_interval_s")?,
            max_bandwidth_mb_sec: p.opt_u32("max_bandwidth_mb_sec")?,
        };
        on_reactor(move || async move { mirror::set_options(&name, o).await })?;
        ok()
    });
}
