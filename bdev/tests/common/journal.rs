//! Helpers of the journal (dual redundancy) tests: malloc bdevs, a group and its volumes,
//! waiting for drains and volume states, random writes checked against a model, restarts.
#![allow(clippy::unwrap_used, dead_code)]

pub use super::read_all;
use super::{on_reactor, reactors};
use rand::rngs::SmallRng;
use rand::Rng;
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::Duration;
use strata_bdev::modules::journal::{self, catalog::DrainPolicy, GroupOptions};
use strata_bdev::modules::raid;
use strata_bdev::wait::{no_data, write_slice};
use strata_bdev::{registry, BdevError, IoType};

pub const BS: u32 = 512;

pub fn mk_malloc(name: &str, kib: u64) {
    super::malloc_kib(name, kib, BS);
}

pub fn setup() {
    reactors().install_global();
}

pub fn mk_raid5(name: &str, members: &[&str]) {
    let o = raid::CreateOptions {
        name: name.into(),
        level: raid::geometry::Level::Raid5,
        strip_size_kb: 16,
        base_bdevs: members.iter().map(|s| s.to_string()).collect(),
        uuid: None,
        superblock: true,
    };
    on_reactor(move || async move { raid::create(o).await.map(|_| ()) }).unwrap();
}

pub fn group_opts(name: &str, legs: [&str; 2], repo: &str) -> GroupOptions {
    GroupOptions {
        name: name.into(),
        journal_bdevs: [legs[0].into(), legs[1].into()],
        repository: repo.into(),
        drain: DrainPolicy {
            fill_percent: 0,
            max_age_secs: 0,
            chunk_size: 64 * 1024,
            max_bandwidth_mb_sec: 0,
        },
        create_repository: true,
    }
}

pub fn create_group(o: GroupOptions) -> Result<(), BdevError> {
    on_reactor(move || async move { journal::create_group(o).await })
}

pub fn create_volume(group: &str, name: &str, base: &str) -> Result<(), BdevError> {
    let (g, n, b) = (group.to_string(), name.to_string(), base.to_string());
    on_reactor(move || async move { journal::create_volume(&g, &n, &b, BTreeMap::new()).await })
}

pub fn info(group: &str) -> Value {
    journal::get(Some(group)).unwrap().remove(0)
}

pub fn vol_info(group: &str, vol: &str) -> Value {
    info(group)["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == vol)
        .cloned()
        .unwrap_or(Value::Null)
}

/// Waits until no drain runs and `drains_done` reached `at_least`; returns the last drain.
pub fn wait_drain(group: &str, at_least: u64) -> Value {
    for _ in 0..3000 {
        let i = info(group);
        if i["drain"].is_null() && i["drains_done"].as_u64().unwrap() >= at_least {
            return i["last_drain"].clone();
        }
        if i["drain"].is_null() && i["last_drain"]["result"] == "failed" {
            panic!("drain failed: {}", i["last_drain"]);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("drain did not end: {}", info(group));
}

pub fn drain(group: &str) -> Value {
    let before = info(group)["drains_done"].as_u64().unwrap();
    // A drain the volume's creation started may run: wait for it, then start ours.
    loop {
        match journal::drain::start(group) {
            Ok(()) => break,
            Err(BdevError::Claimed { .. }) => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => panic!("{e}"),
        }
    }
    wait_drain(group, before + 1)
}

/// Waits until the running drain of `group` is copying volume `vol`.
pub fn wait_drain_copying(group: &str, vol: &str) {
    let want = format!("volume {vol}");
    for _ in 0..2000 {
        if info(group)["drain"]["phase"] == want.as_str() {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    panic!("the drain never copied {vol}: {}", info(group));
}

pub fn wait_state(group: &str, vol: &str, state: &str) -> Value {
    for _ in 0..3000 {
        let v = vol_info(group, vol);
        if v["state"] == state {
            return v;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("{vol} never {state}: {}", vol_info(group, vol));
}

pub fn size_of(name: &str) -> usize {
    let h = registry::get(name).unwrap();
    (h.bdev.num_blocks() * h.bdev.block_size() as u64) as usize
}

/// A batch of random writes (some write_zeroes) to `vol`, issued together, applied to the
/// model. Writes in one batch never overlap, so the model's order is the device's.
pub fn random_writes(vol: &str, model: &mut [u8], rng: &mut SmallRng, count: usize) {
    let bs = BS as usize;
    let blocks = model.len() / bs;
    let mut ops: Vec<(u64, Option<Vec<u8>>, u64)> = Vec::new();
    let mut taken: Vec<(usize, usize)> = Vec::new();
    while ops.len() < count {
        let n = rng.gen_range(1..=24usize);
        let off = rng.gen_range(0..blocks - n);
        if taken.iter().any(|&(o, l)| off < o + l && o < off + n) {
            continue;
        }
        taken.push((off, n));
        if rng.gen_bool(0.1) {
            model[off * bs..(off + n) * bs].fill(0);
            ops.push((off as u64, None, n as u64));
        } else {
            let data: Vec<u8> = (0..n * bs).map(|_| rng.gen()).collect();
            model[off * bs..(off + n) * bs].copy_from_slice(&data);
            ops.push((off as u64, Some(data), n as u64));
        }
    }
    let nm = vol.to_string();
    on_reactor(move || async move {
        let d = registry::open(&nm, |_| {}).unwrap();
        let ch = d.channel().unwrap();
        let hs: Vec<_> = ops
            .into_iter()
            .map(|(off, data, n)| {
                let ch = ch.clone();
                strata_reactor::spawn_local(async move {
                    match data {
                        Some(d) => write_slice(&ch, off, &d).await,
                        None => no_data(&ch, IoType::WriteZeroes, off, n).await,
                    }
                })
            })
            .collect();
        for h in hs {
            h.await.expect("write to a protected volume failed");
        }
    });
}

pub fn check(vol: &str, model: &[u8], what: &str) {
    let got = read_all(vol);
    if got != model {
        let bs = BS as usize;
        let first = (0..model.len() / bs)
            .find(|&b| got[b * bs..(b + 1) * bs] != model[b * bs..(b + 1) * bs])
            .unwrap();
        panic!("{what}: {vol} differs from the model from block {first}");
    }
}

/// The group goes away as at a crash (its legs and bases stay as they are) and
/// re-assembles when its legs are examined again.
pub fn restart(group: &str, legs: &[&str]) {
    journal::stop_group(group).unwrap();
    for l in legs {
        registry::examine(l).unwrap();
    }
    for _ in 0..1000 {
        if journal::group(group).is_some() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("{group} did not re-assemble");
}
