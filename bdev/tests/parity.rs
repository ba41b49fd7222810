//! Remote parity on one reactor, every node's part in one process (the module only sees
//! bdevs, so local ones stand in for the remote namespaces): data members over malloc
//! bases with data of their own, P and Q parity volumes, rebuild sources. Random writes
//! checked against a model race the initial fold-in, the online addition of a fourth
//! member, and the rebuild of a lost member (whose reads before the rebuild reaches them
//! are reconstructed through the parity); after each phase P must be the XOR of the
//! members and Q the sum of g^i times member i, block by block. A parity that fails a
//! delta leaves the group degraded, and the repair brings it back exact.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use strata_bdev::kernels;
use strata_bdev::modules::parity::{
    self, superblock::Kind, MemberMode, MemberOptions, ParityOptions,
};
use strata_bdev::modules::{error, malloc};
use strata_bdev::wait::{read_vec, write_slice};
use strata_bdev::{registry, IoType};
use uuid::Uuid;

mod common;
use common::{on_reactor, reactors, spawn_read, spawn_write, InFlight};

const BS: u32 = 512;
const MIB: u64 = 1 << 20;

fn mk_malloc(name: &str, bytes: u64, fill: Option<u64>) {
    malloc::create(malloc::MallocOptions {
        name: name.into(),
        num_blocks: bytes / BS as u64,
        block_size: BS,
        uuid: None,
    })
    .unwrap();
    if let Some(seed) = fill {
        let name = name.to_string();
        on_reactor(move || async move {
            let d = registry::open(&name, |_| {}).unwrap();
            let ch = d.channel().unwrap();
            let mut rng = SmallRng::seed_from_u64(seed);
            let n = ch.num_blocks();
            let mut b = 0;
            while b < n {
                let k = 1024.min(n - b);
                let mut data = vec![0u8; (k * BS as u64) as usize];
                rng.fill(&mut data[..]);
                write_slice(&ch, b, &data).await.unwrap();
                b += k;
            }
        });
    }
}

fn read_all(name: &str) -> Vec<u8> {
    let name = name.to_string();
    on_reactor(move || async move {
        let d = registry::open(&name, |_| {}).unwrap();
        let ch = d.channel().unwrap();
        let n = ch.num_blocks();
        let mut out = Vec::new();
        let mut b = 0;
        while b < n {
            let k = 1024.min(n - b);
            out.extend(read_vec(&ch, b, k).await.unwrap());
            b += k;
        }
        out
    })
}

fn create_parity(name: &str, base: &str, group: Uuid, role: Kind) {
    let o = ParityOptions {
        name: name.into(),
        base_bdev: base.into(),
        group_uuid: group,
        role,
    };
    on_reactor(move || async move { parity::create_parity(o).await.map(|_| ()) }).unwrap();
}

fn member_opts(
    name: &str,
    base: &str,
    group: Uuid,
    index: u32,
    p: &str,
    mode: MemberMode,
) -> MemberOptions {
    MemberOptions {
        name: name.into(),
        base_bdev: base.into(),
        group_uuid: group,
        index,
        p_bdev: Some(p.into()),
        p_source: Some(format!("P_src{index}")),
        q_bdev: Some("Q".into()),
        q_source: Some(format!("Q_src{index}")),
        mode,
        region_size_kb: 128,
        max_bandwidth_mb_sec: 0,
    }
}

fn create_member(o: MemberOptions) -> Result<(), String> {
    on_reactor(move || async move {
        parity::create_member(o)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    })
}

fn add_to_parities(index: u32, bdev: &str) {
    for p in ["P", "Q"] {
        let (p, bdev) = (p.to_string(), bdev.to_string());
        on_reactor(move || async move { parity::add_member(&p, index, &bdev).await }).unwrap();
    }
}

fn wait_member(name: &str) -> serde_json::Value {
    let n = name.to_string();
    on_reactor(move || async move { parity::wait_member_idle(&n).await });
    parity::get(Some(name)).unwrap().remove(0)
}

/// P and Q as the members' data says they must be, against what they hold.
fn check_parity(members: &[(u32, &str)], what: &str) {
    let p = read_all("P");
    let q = read_all("Q");
    let mut want_p = vec![0u8; p.len()];
    let mut want_q = vec![0u8; q.len()];
    for &(index, name) in members {
        let mut d = read_all(name);
        d.resize(p.len(), 0);
        let c = kernels::gf_pow2(index as usize);
        let mut scaled = vec![0u8; d.len()];
        kernels::gf_combine(&[c], &[&d], &mut scaled).unwrap();
        kernels::xor_into(&mut want_p, &d);
        kernels::xor_into(&mut want_q, &scaled);
    }
    let first_bad = |a: &[u8], b: &[u8]| {
        a.chunks(BS as usize)
            .zip(b.chunks(BS as usize))
            .position(|(x, y)| x != y)
    };
    assert_eq!(first_bad(&p, &want_p), None, "{what}: P differs at block");
    assert_eq!(first_bad(&q, &want_q), None, "{what}: Q differs at block");
}

/// The models of the members' data.
struct Models(Vec<(String, Vec<u8>)>);

impl Models {
    fn take(name: &str) -> (String, Vec<u8>) {
        (name.to_string(), read_all(name))
    }
}

/// `ops` random writes and reads (not overlapping while in flight) to the members, checked
/// against the models.
fn random_io(models: &mut Models, seed: u64, ops: usize) {
    eprintln!("random I/O, seed {seed}");
    let mut m = std::mem::take(&mut models.0);
    let out = on_reactor(move || async move {
        let mut rng = SmallRng::seed_from_u64(seed);
        let descs: Vec<_> = m
            .iter()
            .map(|(n, _)| registry::open(n, |_| {}).unwrap())
            .collect();
        let chans: Vec<_> = descs.iter().map(|d| d.channel().unwrap()).collect();
        let mut inflight: Vec<InFlight> = m.iter().map(|(n, _)| InFlight::new(n)).collect();
        for _ in 0..ops {
            let k = rng.gen_range(0..m.len());
            let blocks = m[k].1.len() as u64 / BS as u64;
            let n = rng.gen_range(1..=64u64).min(blocks);
            let off = rng.gen_range(0..=blocks - n);
            if inflight[k].overlaps(off, n) || inflight[k].len() >= 8 {
                inflight[k].retire_oldest().await;
                if inflight[k].overlaps(off, n) {
                    inflight[k].drain().await;
                }
            }
            let r = (off * BS as u64) as usize..((off + n) * BS as u64) as usize;
            if rng.gen_bool(0.6) {
                let mut data = vec![0u8; r.len()];
                rng.fill(&mut data[..]);
                m[k].1[r].copy_from_slice(&data);
                inflight[k].push(off, n, spawn_write(&chans[k], off, data), None);
            } else {
                let want = m[k].1[r].to_vec();
                inflight[k].push(off, n, spawn_read(&chans[k], off, n), Some(want));
            }
        }
        for f in inflight.iter_mut() {
            f.drain().await;
        }
        m
    });
    models.0 = out;
}

#[test]
fn deltas_fold_in_add_online_rebuild_and_repair_keep_p_and_q_exact() {
    reactors().install_global();
    let group = Uuid::new_v4();
    // Parity bases: 5 MiB (4 MiB of parity after the metadata); data bases of 4, 4 and
    // 3 MiB, already holding data of their own.
    mk_malloc("pbase", 5 * MIB, None);
    mk_malloc("qbase", 5 * MIB, None);
    create_parity("P", "pbase", group, Kind::P);
    create_parity("Q", "qbase", group, Kind::Q);
    for i in 0..4 {
        for p in ["P", "Q"] {
            let p = p.to_string();
            parity::create_source(&p, i, None, None).unwrap();
        }
    }
    let sizes = [4 * MIB, 4 * MIB, 3 * MIB];
    for (i, &size) in sizes.iter().enumerate() {
        mk_malloc(&format!("b{i}"), size, Some(i as u64 + 1));
        create_member(member_opts(
            &format!("D{i}"),
            &format!("b{i}"),
            group,
            i as u32,
            "P",
            MemberMode::Fold,
        ))
        .unwrap();
        add_to_parities(i as u32, &format!("D{i}"));
    }
    let mut models = Models((0..3).map(|i| Models::take(&format!("D{i}"))).collect());
    // Host writes race the three folds.
    random_io(&mut models, 11, 1500);
    for i in 0..3 {
        let info = wait_member(&format!("D{i}"));
        assert_eq!(info["state"], "active", "D{i}: {info}");
    }
    check_parity(&[(0, "D0"), (1, "D1"), (2, "D2")], "after the initial fold");

    // Bad input: an index taken, a wrong group, a parity that is not one.
    let e = create_member(member_opts("Dx", "b0", group, 0, "P", MemberMode::Fold)).unwrap_err();
    assert!(e.contains("exists") || e.contains("claimed"), "{e}");
    mk_malloc("bx", 4 * MIB, None);
    let e = create_member(member_opts("Dx", "bx", group, 1, "P", MemberMode::Fold)).unwrap_err();
    assert!(e.contains("exists"), "index taken: {e}");
    let e = create_member(member_opts("Dx", "bx", group, 3, "D0", MemberMode::Fold)).unwrap_err();
    assert!(e.contains("does not take xor_write"), "{e}");
    let other = Uuid::new_v4();
    let e = on_reactor(move || async move {
        parity::create_parity(ParityOptions {
            name: "P2".into(),
            base_bdev: "pbase".into(),
            group_uuid: other,
            role: Kind::P,
        })
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
    })
    .unwrap_err();
    assert!(e.contains("claimed"), "{e}");

    // A fourth member joins online, under load on all four.
    mk_malloc("b3", 4 * MIB, Some(99));
    create_member(member_opts("D3", "b3", group, 3, "P", MemberMode::Fold)).unwrap();
    add_to_parities(3, "D3");
    models.0.push(Models::take("D3"));
    random_io(&mut models, 12, 1500);
    assert_eq!(wait_member("D3")["state"], "active");
    check_parity(
        &[(0, "D0"), (1, "D1"), (2, "D2"), (3, "D3")],
        "after adding D3",
    );

    // D1 is lost: a replacement on an empty base rebuilds from P while its host reads
    // and writes (reads of regions not yet rebuilt are reconstructed through P).
    registry::unregister("D1").unwrap();
    for p in ["P", "Q"] {
        let p = p.to_string();
        on_reactor(move || async move { parity::remove_member(&p, 1).await }).unwrap();
    }
    // While D1 is lost, the parity can reconstruct D1 and nothing else.
    let lost = on_reactor(|| async {
        let d = registry::open("P_src0", |_| {}).unwrap();
        read_vec(&d.channel().unwrap(), 0, 1).await
    });
    assert!(lost.is_err(), "P_src0 read while member 1 is lost");
    mk_malloc("b1new", 4 * MIB, None);
    create_member(member_opts(
        "D1",
        "b1new",
        group,
        1,
        "P",
        MemberMode::Rebuild,
    ))
    .unwrap();
    random_io(&mut models, 13, 1500);
    let info = wait_member("D1");
    assert_eq!(info["state"], "active", "{info}");
    add_to_parities(1, "D1");
    for (name, model) in &models.0 {
        assert!(
            read_all(name) == *model,
            "{name}: data differs from the model"
        );
    }
    check_parity(
        &[(0, "D0"), (1, "D1"), (2, "D2"), (3, "D3")],
        "after rebuilding D1",
    );

    // D2's path to P fails one delta: D2 keeps serving, the group is degraded, the region
    // stays marked; the repair (through P's rebuild source) makes P exact again.
    registry::unregister("D2").unwrap();
    error::create("P", None).unwrap();
    create_member(member_opts("D2", "b2", group, 2, "EE_P", MemberMode::Fold)).unwrap();
    assert_eq!(
        wait_member("D2")["state"],
        "active",
        "reopened from its superblock"
    );
    for p in ["P", "Q"] {
        let p = p.to_string();
        on_reactor(move || async move {
            parity::remove_member(&p, 2).await?;
            parity::add_member(&p, 2, "D2").await
        })
        .unwrap();
    }
    error::inject(
        "EE_P",
        error::Target::One(IoType::XorWrite),
        error::ErrorKind::Failure,
        1,
        0,
        0,
    )
    .unwrap();
    random_io(&mut models, 14, 400);
    let info = parity::get(Some("D2")).unwrap().remove(0);
    assert_eq!(info["group_state"], "degraded", "{info}");
    assert!(info["dirty_regions"].as_u64().unwrap() > 0, "{info}");
    parity::member_repair("D2").unwrap();
    let info = wait_member("D2");
    assert_eq!(info["group_state"], "ok", "{info}");
    check_parity(
        &[(0, "D0"), (1, "D1"), (2, "D2"), (3, "D3")],
        "after the repair",
    );

    // D0 and D3 are lost together: P and Q rebuild both (the sources on the Q node read P
    // as their partner), while the survivors keep writing.
    for lost in ["D0", "D3"] {
        registry::unregister(lost).unwrap();
    }
    for p in ["P", "Q"] {
        let p = p.to_string();
        on_reactor(move || async move {
            parity::remove_member(&p, 0).await?;
            parity::remove_member(&p, 3).await
        })
        .unwrap();
    }
    parity::create_source("Q", 0, Some("Q_src0_3"), Some((3, "P"))).unwrap();
    parity::create_source("Q", 3, Some("Q_src3_0"), Some((0, "P"))).unwrap();
    let bad = parity::create_source("Q", 3, Some("Qx"), Some((3, "P"))).unwrap_err();
    assert!(bad.to_string().contains("another index"), "{bad}");
    for (name, index, other) in [("D0", 0u32, 3u32), ("D3", 3, 0)] {
        let base = format!("b{index}again");
        mk_malloc(&base, 4 * MIB, None);
        let mut o = member_opts(name, &base, group, index, "P", MemberMode::Rebuild);
        // The one-member sources cannot serve while two are lost: the pair source does.
        o.p_source = None;
        o.q_source = Some(format!("Q_src{index}_{other}"));
        create_member(o).unwrap();
    }
    random_io(&mut models, 15, 1500);
    for (name, index) in [("D0", 0u32), ("D3", 3)] {
        let info = wait_member(name);
        assert_eq!(info["state"], "active", "{info}");
        add_to_parities(index, name);
        // Back on the one-member sources (a pair source only serves while both are lost):
        // the member is re-created on its base, which reopens it.
        registry::unregister(name).unwrap();
        let base = format!("b{index}again");
        create_member(member_opts(
            name,
            &base,
            group,
            index,
            "P",
            MemberMode::Fold,
        ))
        .unwrap();
        assert_eq!(wait_member(name)["state"], "active");
    }
    for (name, model) in &models.0 {
        assert!(
            read_all(name) == *model,
            "{name}: data differs after the double rebuild"
        );
    }
    check_parity(
        &[(0, "D0"), (1, "D1"), (2, "D2"), (3, "D3")],
        "after rebuilding D0 and D3 together",
    );

    // D1 and P are lost together: D1 rebuilds from Q alone; a new P on an empty base is
    // computed from the data members by verify with repair; the members, which kept writing
    // with P gone (degraded), repair their marked regions against the new P.
    registry::unregister("D1").unwrap();
    registry::unregister("P").unwrap();
    assert!(registry::get("P_src0").is_none(), "P's sources go with it");
    for (name, _) in &models.0 {
        if name != "D1" {
            let info = parity::get(Some(name)).unwrap().remove(0);
            assert!(
                info["targets"][0]["state"] != "ok" || info["targets"][0]["bdev"] != "P",
                "{info}"
            );
        }
    }
    mk_malloc("b1third", 4 * MIB, None);
    let mut o = member_opts("D1", "b1third", group, 1, "P", MemberMode::Rebuild);
    let e = create_member(o.clone()).unwrap_err();
    assert!(
        e.contains("no bdev named 'P'"),
        "a new member needs its parity: {e}"
    );
    o.p_bdev = None;
    o.p_source = None;
    create_member(o).unwrap();
    random_io(&mut models, 16, 600);
    assert_eq!(wait_member("D1")["state"], "active");
    on_reactor(|| async { parity::remove_member("Q", 1).await }).unwrap();
    on_reactor(|| async { parity::add_member("Q", 1, "D1").await }).unwrap();
    // Reopened from its superblock with P back in its targets: P is not there yet, so it
    // comes up degraded, and finds P once P is created again.
    registry::unregister("D1").unwrap();
    create_member(member_opts(
        "D1",
        "b1third",
        group,
        1,
        "P",
        MemberMode::Fold,
    ))
    .unwrap();
    assert_eq!(
        parity::get(Some("D1")).unwrap()[0]["group_state"],
        "degraded"
    );
    mk_malloc("pbase2", 5 * MIB, None);
    create_parity("P", "pbase2", group, Kind::P);
    // D2 reaches P through an error bdev, which went with the old P.
    error::create("P", None).unwrap();
    for i in 0..4 {
        parity::create_source("P", i, None, None).unwrap();
        let d = format!("D{i}");
        on_reactor(move || async move { parity::add_member("P", i, &d).await }).unwrap();
    }
    parity::verify("P", true, 0).unwrap();
    on_reactor(|| async { parity::wait_parity_idle("P").await });
    let v = parity::get(Some("P")).unwrap().remove(0);
    assert_eq!(v["last_verify"]["result"], "done", "{v}");
    assert!(
        v["last_verify"]["repaired_blocks"].as_u64().unwrap() > 0,
        "{v}"
    );
    for (name, _) in &models.0 {
        parity::member_repair(name).unwrap();
        let info = wait_member(name);
        assert_eq!(info["group_state"], "ok", "{info}");
        assert_eq!(info["dirty_regions"], 0, "{info}");
    }
    for (name, model) in &models.0 {
        assert!(
            read_all(name) == *model,
            "{name}: data differs after losing D1 and P"
        );
    }
    check_parity(
        &[(0, "D0"), (1, "D1"), (2, "D2"), (3, "D3")],
        "after rebuilding D1 and P",
    );

    // A member cannot be reopened without a parity it updates (that parity would go
    // stale), and a name the superblock cannot keep is refused.
    registry::unregister("D3").unwrap();
    let mut o = member_opts("D3", "b3again", group, 3, "P", MemberMode::Fold);
    o.q_bdev = None;
    let e = create_member(o).unwrap_err();
    assert!(e.contains("reopen it with those parity bdevs"), "{e}");
    create_member(member_opts(
        "D3",
        "b3again",
        group,
        3,
        "P",
        MemberMode::Fold,
    ))
    .unwrap();
    let long = "x".repeat(120);
    let e = create_member(member_opts(&long, "bx", group, 5, "P", MemberMode::Fold)).unwrap_err();
    assert!(e.contains("longer than"), "{e}");

    // A replacement for D2 is being rebuilt (slowly) when its host writes far ahead of the
    // rebuild while P misses the delta; the node restarts before the rebuild gets there.
    // The region was rebuilt on demand and holds an acknowledged write: after the restart
    // it is not rebuilt again from P (which lacks the write) but repaired into P.
    registry::unregister("D2").unwrap();
    for p in ["P", "Q"] {
        let p = p.to_string();
        on_reactor(move || async move { parity::remove_member(&p, 2).await }).unwrap();
    }
    mk_malloc("b2r", 4 * MIB, None);
    let mut o = member_opts("D2", "b2r", group, 2, "EE_P", MemberMode::Rebuild);
    o.max_bandwidth_mb_sec = 1;
    create_member(o).unwrap();
    error::inject(
        "EE_P",
        error::Target::One(IoType::XorWrite),
        error::ErrorKind::Failure,
        1,
        0,
        0,
    )
    .unwrap();
    let k = models.0.iter().position(|(n, _)| n == "D2").unwrap();
    let len = models.0[k].1.len();
    let tail = len - 64 * 1024;
    let data: Vec<u8> = (0..64 * 1024).map(|i| (i * 31 % 251) as u8).collect();
    models.0[k].1[tail..].copy_from_slice(&data);
    let at = (tail / BS as usize) as u64;
    on_reactor(move || async move {
        let d = registry::open("D2", |_| {}).unwrap();
        write_slice(&d.channel().unwrap(), at, &data).await.unwrap();
    });
    let info = parity::get(Some("D2")).unwrap().remove(0);
    assert_eq!(info["state"], "rebuilding", "{info}");
    assert_eq!(info["group_state"], "degraded", "{info}");
    // The "restart": the member goes, its job winds down, it is opened again.
    let old = parity::member("D2").unwrap();
    registry::unregister("D2").unwrap();
    on_reactor(move || async move {
        while old.job.is_busy() {
            strata_reactor::sleep(std::time::Duration::from_millis(5)).await;
        }
    });
    create_member(member_opts("D2", "b2r", group, 2, "EE_P", MemberMode::Fold)).unwrap();
    assert_eq!(wait_member("D2")["state"], "active");
    let got = read_all("D2");
    let bad = got
        .chunks(BS as usize)
        .zip(models.0[k].1.chunks(BS as usize))
        .position(|(a, b)| a != b);
    assert_eq!(
        bad, None,
        "D2 after the restart during its rebuild (tail at block {at})"
    );
    add_to_parities(2, "D2");
    check_parity(
        &[(0, "D0"), (1, "D1"), (2, "D2"), (3, "D3")],
        "after a restart during a rebuild",
    );

    // The parity node's own verify agrees.
    for p in ["P", "Q"] {
        parity::verify(p, false, 0).unwrap();
        let name = p.to_string();
        on_reactor(move || async move { parity::wait_parity_idle(&name).await });
        let v = parity::get(Some(p)).unwrap().remove(0);
        assert_eq!(v["last_verify"]["result"], "done", "{v}");
        assert_eq!(v["last_verify"]["mismatched_blocks"], 0, "{v}");
        // P is checked by digests where every member covers the piece (D2 is smaller);
        // Q always by its data.
        let by_digest = v["last_verify"]["pieces_by_checksum"].as_u64().unwrap();
        match p {
            "P" => assert!(by_digest > 0, "{v}"),
            _ => assert_eq!(by_digest, 0, "{v}"),
        }
    }
    // A block of P changed behind the members' backs is found (its digest differs, then
    // its data) and repaired.
    on_reactor(|| async {
        let d = registry::open("pbase2", |_| {}).unwrap();
        let ch = d.channel().unwrap();
        let at = 2048 + 5; // a block inside the data area, where every member has data
        let mut b = read_vec(&ch, at, 1).await.unwrap();
        b[100] ^= 0x5a;
        write_slice(&ch, at, &b).await.unwrap();
    });
    parity::verify("P", true, 0).unwrap();
    on_reactor(|| async { parity::wait_parity_idle("P").await });
    let v = parity::get(Some("P")).unwrap().remove(0);
    assert_eq!(v["last_verify"]["mismatched_blocks"], 1, "{v}");
    assert_eq!(v["last_verify"]["repaired_blocks"], 1, "{v}");
    check_parity(
        &[(0, "D0"), (1, "D1"), (2, "D2"), (3, "D3")],
        "after the verify repair",
    );
}
