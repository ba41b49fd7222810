//! Bdev methods, with SPDK's names and parameters.

use super::params::Params;
use super::{MethodTable, RpcError};
use serde_json::{json, Value};
use strata_bdev::modules::raid::{self, geometry::Level};
use strata_bdev::modules::{delay, error, malloc, null, uring};
use strata_bdev::{registry, BdevHandle, IoType};
use strata_reactor::clock;

pub(super) fn ok() -> Result<Value, RpcError> {
    Ok(Value::Bool(true))
}

fn delete_method(
    t: &mut MethodTable,
    method: &'static str,
    f: fn(&str) -> Result<(), strata_bdev::BdevError>,
) {
    t.add(method, move |_, p| {
        let p = Params::new(method, p, &["name"], &[])?;
        f(&p.str("name")?)?;
        ok()
    });
}

/// SPDK parameters of the create methods that strata accepts and ignores.
const MALLOC_IGNORED: &[&str] = &[
    "physical_block_size",
    "optimal_io_boundary",
    "md_size",
    "md_interleave",
    "dif_type",
    "dif_is_head_of_md",
    "dif_pi_format",
    "numa_id",
];

pub fn register(t: &mut MethodTable) {
    t.add("bdev_malloc_create", |_, p| {
        let p = Params::new(
            "bdev_malloc_create",
            p,
            &["name", "num_blocks", "block_size", "uuid"],
            MALLOC_IGNORED,
        )?;
        let block_size = p
            .block_size("block_size")?
            .ok_or_else(|| missing("bdev_malloc_create", "block_size"))?;
        let num_blocks = positive(&p, "bdev_malloc_create", "num_blocks")?;
        let name = p
            .opt_str("name")?
            .unwrap_or_else(|| registry::unused_name("Malloc"));
        let b = malloc::create(malloc::MallocOptions {
            name,
            num_blocks,
            block_size,
            uuid: p.opt_uuid("uuid")?,
        })?;
        Ok(Value::String(
            strata_bdev::Bdev::name(b.as_ref()).to_string(),
        ))
    });
    delete_method(t, "bdev_malloc_delete", malloc::delete);

    t.add("bdev_null_create", |_, p| {
        let p = Params::new(
            "bdev_null_create",
            p,
            &["name", "num_blocks", "block_size", "uuid"],
            MALLOC_IGNORED,
        )?;
        let name = p.str("name")?;
        let block_size = p
            .block_size("block_size")?
            .ok_or_else(|| missing("bdev_null_create", "block_size"))?;
        let num_blocks = positive(&p, "bdev_null_create", "num_blocks")?;
        null::create(null::NullOptions {
            name: name.clone(),
            num_blocks,
            block_size,
            uuid: p.opt_uuid("uuid")?,
        })?;
        Ok(Value::String(name))
    });
    delete_method(t, "bdev_null_delete", null::delete);

    for (method, module) in [("bdev_uring_create", "uring"), ("bdev_aio_create", "aio")] {
        t.add(method, move |_, p| {
            let p = Params::new(
                method,
                p,
                &["filename", "name", "block_size", "uuid"],
                &["readonly", "fallocate"],
            )?;
            let name = p.str("name")?;
            uring::create(uring::UringOptions {
                name: name.clone(),
                filename: p.str("filename")?,
                block_size: p.block_size("block_size")?,
                uuid: p.opt_uuid("uuid")?,
                module,
            })?;
            Ok(Value::String(name))
        });
    }
    delete_method(t, "bdev_uring_delete", |n| uring::delete(n, "uring"));
    delete_method(t, "bdev_aio_delete", |n| uring::delete(n, "aio"));

    t.add("bdev_error_create", |_, p| {
        let p = Params::new("bdev_error_create", p, &["base_name", "uuid"], &[])?;
        let b = error::create(&p.str("base_name")?, p.opt_uuid("uuid")?)?;
        Ok(Value::String(
            strata_bdev::Bdev::name(b.as_ref()).to_string(),
        ))
    });
    delete_method(t, "bdev_error_delete", error::delete);
    t.add("bdev_error_inject_error", |_, p| {
        let m = "bdev_error_inject_error";
        let p = Params::new(
            m,
            p,
            &["name", "io_type", "error_type", "num", "queue_depth", "corrupt_offset", "corrupt_value"],
            &[],
        )?;
        let name = p.str("name")?;
        let io_type = p.str("io_type")?;
        let target = error::Target::from_name(&io_type).ok_or_else(|| {
            RpcError::invalid_params(format!(
                "{m}: invalid parameter 'io_type': {io_type} (read, write, unmap, flush, write_zeroes, reset, xor_write, checksum, all, clear)"
            ))
        })?;
        let error_type = p.str("error_type")?;
        let kind = error::ErrorKind::from_name(&error_type).ok_or_else(|| {
            RpcError::invalid_params(format!(
                "{m}: invalid parameter 'error_type': {error_type} (failure, pending, corrupt_data, nomem)"
            ))
        })?;
        let value = p.opt_u64("corrupt_value")?.unwrap_or(0);
        let value = u8::try_from(value)
            .map_err(|_| RpcError::invalid_params(format!("{m}: invalid parameter 'corrupt_value': must be 0..255")))?;
        let kind_needs_value = kind == error::ErrorKind::CorruptData && target != error::Target::Clear;
        if kind_needs_value && value == 0 {
            return Err(RpcError::invalid_params(format!(
                "{m}: invalid parameter 'corrupt_value': corrupt_data needs a non-zero value"
            )));
        }
        error::inject(
            &name,
            target,
            kind,
            p.opt_u64("num")?.unwrap_or(1),
            p.opt_u64("corrupt_offset")?.unwrap_or(0),
            value,
        )?;
        ok()
    });

    t.add("bdev_delay_create", |_, p| {
        let m = "bdev_delay_create";
        let keys = [
            "base_bdev_name",
            "name",
            "avg_read_latency",
            "p99_read_latency",
            "avg_write_latency",
            "p99_write_latency",
            "uuid",
        ];
        let p = Params::new(m, p, &keys, &[])?;
        let name = p.str("name")?;
        delay::create(delay::DelayOptions {
            name: name.clone(),
            base_bdev_name: p.str("base_bdev_name")?,
            latencies_us: [
                p.u64("avg_read_latency")?,
                p.u64("p99_read_latency")?,
                p.u64("avg_write_latency")?,
                p.u64("p99_write_latency")?,
            ],
            uuid: p.opt_uuid("uuid")?,
        })?;
        Ok(Value::String(name))
    });
    delete_method(t, "bdev_delay_delete", delay::delete);
    t.add("bdev_delay_update_latency", |_, p| {
        let m = "bdev_delay_update_latency";
        let p = Params::new(m, p, &["delay_bdev_name", "latency_type", "latency_us"], &[])?;
        let lt = p.str("latency_type")?;
        let kind = delay::LatencyKind::from_name(&lt).ok_or_else(|| {
            RpcError::invalid_params(format!(
                "{m}: invalid parameter 'latency_type': {lt} (avg_read, p99_read, avg_write, p99_write)"
            ))
        })?;
        delay::update_latency(&p.str("delay_bdev_name")?, kind, p.u64("latency_us")?)?;
        ok()
    });

    t.add("bdev_get_bdevs", |_, p| {
        let p = Params::new("bdev_get_bdevs", p, &["name", "timeout"], &[])?;
        let list = match p.opt_str("name")? {
            Some(n) => vec![find(&n)?],
            None => registry::list(),
        };
        Ok(Value::Array(list.iter().map(bdev_json).collect()))
    });
    t.add("bdev_get_iostat", |_, p| {
        let p = Params::new("bdev_get_iostat", p, &["name"], &["per_channel"])?;
        let list = match p.opt_str("name")? {
            Some(n) => vec![find(&n)?],
            None => registry::list(),
        };
        Ok(json!({
            "tick_rate": clock::tick_rate(),
            "ticks": clock::ticks(),
            "bdevs": list.iter().map(iostat_json).collect::<Vec<_>>(),
        }))
    });
    t.add("bdev_wait_for_examine", |_, p| {
        Params::new("bdev_wait_for_examine", p, &[], &[])?;
        strata_bdev::modules::finish_examine();
        ok()
    });
    register_raid(t);
}

fn missing(m: &str, k: &str) -> RpcError {
    RpcError::invalid_params(format!("{m}: missing required parameter '{k}'"))
}

fn positive(p: &Params, m: &str, k: &str) -> Result<u64, RpcError> {
    match p.u64(k)? {
        0 => Err(RpcError::invalid_params(format!(
            "{m}: invalid parameter '{k}': must be > 0"
        ))),
        v => Ok(v),
    }
}

fn find(name: &str) -> Result<BdevHandle, RpcError> {
    registry::get(name).ok_or_else(|| strata_bdev::BdevError::NotFound(name.to_string()).into())
}

/// One bdev in SPDK's `bdev_get_bdevs` shape.
pub fn bdev_json(h: &BdevHandle) -> Value {
    let b = &h.bdev;
    let mut io = serde_json::Map::new();
    for t in IoType::ALL {
        io.insert(t.name().to_string(), Value::Bool(b.supports(t)));
    }
    for spdk_only in [
        "compare",
        "compare_and_write",
        "abort",
        "nvme_admin",
        "nvme_io",
        "copy",
        "zcopy",
        "seek_hole",
        "seek_data",
    ] {
        io.insert(spdk_only.to_string(), Value::Bool(false));
    }
    let mut v = json!({
        "name": b.name(),
        "aliases": [],
        "product_name": b.product_name(),
        "block_size": b.block_size(),
        "num_blocks": b.num_blocks(),
        "uuid": b.uuid().to_string(),
        "assigned_rate_limits": {
            "rw_ios_per_sec": 0, "rw_mbytes_per_sec": 0, "r_mbytes_per_sec": 0, "w_mbytes_per_sec": 0
        },
        "claimed": h.claimed_by.is_some(),
        "zoned": false,
        "optimal_io_boundary": b.optimal_io_boundary(),
        "write_unit_size": b.write_unit_blocks(),
        "supported_io_types": io,
        "driver_specific": b.driver_specific(),
    });
    if let (Some(by), Some(obj)) = (&h.claimed_by, v.as_object_mut()) {
        obj.insert("claim_type".into(), json!("exclusive_write"));
        obj.insert("claimed_by".into(), json!(by));
    }
    v
}

fn iostat_json(h: &BdevHandle) -> Value {
    let s = h.stats.snapshot();
    let t = |x: IoType| s.by_type[x as usize];
    json!({
        "name": h.bdev.name(),
        "bytes_read": t(IoType::Read).bytes,
        "num_read_ops": t(IoType::Read).ops,
        "bytes_written": t(IoType::Write).bytes,
        "num_write_ops": t(IoType::Write).ops,
        "bytes_unmapped": t(IoType::Unmap).bytes,
        "num_unmap_ops": t(IoType::Unmap).ops,
        "num_write_zeroes_ops": t(IoType::WriteZeroes).ops,
        "bytes_write_zeroes": t(IoType::WriteZeroes).bytes,
        "num_flush_ops": t(IoType::Flush).ops,
        "num_xor_write_ops": t(IoType::XorWrite).ops,
        "bytes_xor_written": t(IoType::XorWrite).bytes,
        "num_checksum_ops": t(IoType::Checksum).ops,
        "bytes_checksummed": t(IoType::Checksum).bytes,
        "read_latency_ticks": t(IoType::Read).latency_ticks,
        "write_latency_ticks": t(IoType::Write).latency_ticks,
        "unmap_latency_ticks": t(IoType::Unmap).latency_ticks,
        "xor_write_latency_ticks": t(IoType::XorWrite).latency_ticks,
        "checksum_latency_ticks": t(IoType::Checksum).latency_ticks,
        "num_io_errors": s.errors,
        "queue_depth": s.outstanding,
    })
}

/// Runs a RAID management operation on reactor 0 (it does I/O to the members).
/// Runs a bdev operation on reactor 0 and maps its error once, for every bdev method.
pub(super) fn on_reactor<F, Fut, R>(f: F) -> Result<R, RpcError>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<R, strata_bdev::BdevError>> + 'static,
    R: Send + 'static,
{
    let fw = strata_reactor::framework()
        .ok_or_else(|| RpcError::internal("reactors are not running".to_string()))?;
    fw.block_on(0, f)
        .map_err(|e| RpcError::internal(e.to_string()))?
        .map_err(RpcError::from)
}

fn register_raid(t: &mut MethodTable) {
    t.add("bdev_raid_create", |_, p| {
        let m = "bdev_raid_create";
        let p = Params::new(
            m,
            p,
            &["name", "raid_level", "strip_size_kb", "base_bdevs", "uuid", "superblock"],
            &["strip_size"],
        )?;
        let name = p.str("name")?;
        let lv = p.str("raid_level")?;
        let level = Level::from_name(&lv).ok_or_else(|| {
            RpcError::invalid_params(format!(
                "{m}: invalid parameter 'raid_level': {lv} (raid0, raid1, raid5, raid5f, raid6, concat)"
            ))
        })?;
        let base_bdevs = p.str_list("base_bdevs")?;
        let opts = raid::CreateOptions {
            name: name.clone(),
            level,
            strip_size_kb: p.opt_u64("strip_size_kb")?.unwrap_or(0),
            base_bdevs,
            uuid: p.opt_uuid("uuid")?,
            superblock: p.opt_bool("superblock")?.unwrap_or(false),
        };
        on_reactor(move || async move { raid::create(opts).await.map(|_| ()) })?;
        Ok(Value::String(name))
    });
    t.add("bdev_raid_delete", |_, p| {
        let p = Params::new("bdev_raid_delete", p, &["name"], &[])?;
        let name = p.str("name")?;
        on_reactor(move || async move { raid::delete(&name).await })?;
        ok()
    });
    t.add("bdev_raid_get_bdevs", |_, p| {
        let p = Params::new("bdev_raid_get_bdevs", p, &["category"], &[])?;
        let c = p.opt_str("category")?.unwrap_or_else(|| "all".into());
        raid::get_bdevs(&c).map(Value::Array).map_err(|_| {
            RpcError::invalid_params(format!(
                "bdev_raid_get_bdevs: invalid parameter 'category': {c} (all, online, configuring, offline)"
            ))
        })
    });
    t.add("bdev_raid_add_base_bdev", |_, p| {
        let p = Params::new(
            "bdev_raid_add_base_bdev",
            p,
            &["raid_bdev", "base_bdev"],
            &[],
        )?;
        let (r, b) = (p.str("raid_bdev")?, p.str("base_bdev")?);
        on_reactor(move || async move { raid::add_base_bdev(&r, &b).await })?;
        ok()
    });
    t.add("bdev_raid_remove_base_bdev", |_, p| {
        let p = Params::new("bdev_raid_remove_base_bdev", p, &["name"], &[])?;
        let name = p.str("name")?;
        on_reactor(move || async move { raid::remove_base_bdev(&name).await })?;
        ok()
    });
    t.add("bdev_raid_set_options", |_, p| {
        let p = Params::new(
            "bdev_raid_set_options",
            p,
            &["process_window_size_kb", "process_max_bandwidth_mb_sec"],
            &[],
        )?;
        let mut o = raid::options();
        if let Some(w) = p.opt_u64("process_window_size_kb")? {
            if w == 0 {
                return Err(RpcError::invalid_params(
                    "bdev_raid_set_options: invalid parameter 'process_window_size_kb': must be > 0".to_string(),
                ));
            }
            o.process_window_size_kb = w;
        }
        if let Some(b) = p.opt_u64("process_max_bandwidth_mb_sec")? {
            o.process_max_bandwidth_mb_sec = b;
        }
        raid::set_options(o);
        ok()
    });
}
