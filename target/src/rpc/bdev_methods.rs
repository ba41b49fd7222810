//! Bdev methods, with SPDK's names and parameters.

use super::params::bdev::{
    DelayCreate, DelayUpdateLatency, ErrorCreate, ErrorInject, FileCreate, GetBdevs, GetIostat,
    MallocCreate, NullCreate, RaidAddBaseBdev, RaidCreate, RaidGetBdevs, RaidSetOptions,
};
use super::params::{ByName, NoParams};
use super::{MethodTable, RpcError};
use serde_json::{json, Value};
use strata_bdev::modules::raid;
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
    t.add(method, move |_, p: ByName| {
        f(&p.name)?;
        ok()
    });
}

pub fn register(t: &mut MethodTable) {
    t.add("bdev_malloc_create", |_, p: MallocCreate| {
        let b = malloc::create(p.options()?)?;
        Ok(Value::String(
            strata_bdev::Bdev::name(b.as_ref()).to_string(),
        ))
    });
    delete_method(t, "bdev_malloc_delete", malloc::delete);

    t.add("bdev_null_create", |_, p: NullCreate| {
        let o = p.options()?;
        let name = o.name.clone();
        null::create(o)?;
        Ok(Value::String(name))
    });
    delete_method(t, "bdev_null_delete", null::delete);

    for (method, module) in [("bdev_uring_create", "uring"), ("bdev_aio_create", "aio")] {
        t.add(method, move |_, p: FileCreate| {
            let o = p.options(method, module)?;
            let name = o.name.clone();
            uring::create(o)?;
            Ok(Value::String(name))
        });
    }
    delete_method(t, "bdev_uring_delete", |n| uring::delete(n, "uring"));
    delete_method(t, "bdev_aio_delete", |n| uring::delete(n, "aio"));

    t.add("bdev_error_create", |_, p: ErrorCreate| {
        let b = error::create(&p.base_name, p.uuid()?)?;
        Ok(Value::String(
            strata_bdev::Bdev::name(b.as_ref()).to_string(),
        ))
    });
    delete_method(t, "bdev_error_delete", error::delete);
    t.add("bdev_error_inject_error", |_, p: ErrorInject| {
        let i = p.injection()?;
        error::inject(
            &p.name,
            i.target,
            i.kind,
            i.num,
            i.corrupt_offset,
            i.corrupt_value,
        )?;
        ok()
    });

    t.add("bdev_delay_create", |_, p: DelayCreate| {
        let o = p.options()?;
        let name = o.name.clone();
        delay::create(o)?;
        Ok(Value::String(name))
    });
    delete_method(t, "bdev_delay_delete", delay::delete);
    t.add("bdev_delay_update_latency", |_, p: DelayUpdateLatency| {
        delay::update_latency(&p.delay_bdev_name, p.kind()?, p.latency_us)?;
        ok()
    });

    t.add("bdev_get_bdevs", |_, p: GetBdevs| {
        let list = match &p.name {
            Some(n) => vec![find(n)?],
            None => registry::list(),
        };
        Ok(Value::Array(list.iter().map(bdev_json).collect()))
    });
    t.add("bdev_get_iostat", |_, p: GetIostat| {
        let list = match &p.name {
            Some(n) => vec![find(n)?],
            None => registry::list(),
        };
        Ok(json!({
            "tick_rate": clock::tick_rate(),
            "ticks": clock::ticks(),
            "bdevs": list.iter().map(iostat_json).collect::<Vec<_>>(),
        }))
    });
    t.add(
        "bdev_set_options",
        |_, p: super::params::bdev::BdevSetOptions| {
            registry::set_auto_examine(p.bdev_auto_examine);
            ok()
        },
    );
    t.add("bdev_examine", |_, p: ByName| {
        registry::examine(&p.name)?;
        ok()
    });
    t.add("bdev_wait_for_examine", |_, _: NoParams| {
        strata_bdev::module::finish_examine();
        ok()
    });
    register_raid(t);
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
    t.add("bdev_raid_create", |_, p: RaidCreate| {
        let opts = p.options()?;
        let name = opts.name.clone();
        on_reactor(move || async move { raid::create(opts).await.map(|_| ()) })?;
        Ok(Value::String(name))
    });
    t.add("bdev_raid_delete", |_, p: ByName| {
        on_reactor(move || async move { raid::delete(&p.name).await })?;
        ok()
    });
    t.add("bdev_raid_get_bdevs", |_, p: RaidGetBdevs| {
        let c = p.category;
        raid::get_bdevs(&c).map(Value::Array).map_err(|_| {
            super::params::invalid(
                "bdev_raid_get_bdevs",
                "category",
                format!("{c} (all, online, configuring, offline)"),
            )
        })
    });
    t.add("bdev_raid_add_base_bdev", |_, p: RaidAddBaseBdev| {
        on_reactor(move || async move { raid::add_base_bdev(&p.raid_bdev, &p.base_bdev).await })?;
        ok()
    });
    t.add("bdev_raid_remove_base_bdev", |_, p: ByName| {
        on_reactor(move || async move { raid::remove_base_bdev(&p.name).await })?;
        ok()
    });
    t.add("bdev_raid_set_options", |_, p: RaidSetOptions| {
        raid::set_options(p.apply(raid::options())?);
        ok()
    });
}
