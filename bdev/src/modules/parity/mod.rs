//! Remote parity: independent data nodes protected by parity nodes. Every data volume of a
//! group has the same block size and numbering; block b of the parity volume P holds the
//! XOR of block b of every data volume, and Q (optional) holds Σ g^i · D_i,b over GF(2^8)
//! (the RAID-6 code), so the group survives the loss of one node with P and of two with
//! P and Q.
//!
//! - [`volume`]: the parity volume (P or Q) on a parity node: XOR writes and GF XOR writes
//!   applied atomically per block, and the group's member list.
//! - [`source`]: the rebuild source of member i on the parity node (member i's data as the
//!   parity sees it), which a replacement node rebuilds from and a member repairs against.
//! - [`verify`]: the parity node's verify job (recompute and compare, optionally repair).
//! - [`member`], [`member_io`], [`member_jobs`]: the data member on a data node: local
//!   reads, read-modify-write with deltas to P and Q, intent bitmap, fold-in, rebuild and
//!   repair jobs.
//! - [`superblock`]: the on-disk format of both; [`record`]: the same state in the cluster
//!   store (optional); [`piece`] and [`peer`]: plumbing.
//!
//! Everything talks to the other nodes only through [`crate::Bdev`]s (remote NVMe/TCP
//! namespaces in a real deployment, local bdevs in the single-process tests), with the two
//! extension I/O types `xor_write` and `gf_xor_write`. State survives a restart in the
//! superblocks: creating a volume or member on a base that carries its superblock reopens
//! it (so `save_config` / `--json` bring a node back).

pub mod member;
pub mod member_io;
pub mod member_jobs;
pub mod peer;
pub mod piece;
pub mod record;
pub mod source;
pub mod superblock;
pub mod verify;
pub mod volume;

use crate::error::BdevError;
use crate::io::IoType;
use crate::modules::base::ClaimedBase;
use crate::registry::{self, BdevEvent};
use crate::volume::examine;
use crate::volume::intent::IntentBitmap;
use crate::volume::job::{JobSlot, Progress};
use crate::volume::locks::StripeLocks;
use member::{ParityMember, Target};
use parking_lot::Mutex;
use peer::Peer;
use serde_json::Value;
use source::RebuildSource;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64};
use std::sync::Arc;
use superblock::{Kind, MemberState, SbError, Superblock, MAX_MEMBERS};
use uuid::Uuid;
use verify::VerifyJob;
use volume::{GroupMember, ParityVolume};

static VOLUMES: Mutex<Vec<Arc<ParityVolume>>> = Mutex::new(Vec::new());
static MEMBERS: Mutex<Vec<Arc<ParityMember>>> = Mutex::new(Vec::new());

/// The parity volume `name`.
pub fn parity(name: &str) -> Option<Arc<ParityVolume>> {
    VOLUMES.lock().iter().find(|v| v.name == name).cloned()
}

/// The data member `name`.
pub fn member(name: &str) -> Option<Arc<ParityMember>> {
    MEMBERS.lock().iter().find(|m| m.name == name).cloned()
}

fn find_parity(name: &str) -> Result<Arc<ParityVolume>, BdevError> {
    parity(name).ok_or_else(|| BdevError::NotFound(name.to_string()))
}

pub(crate) fn forget(name: &str) {
    VOLUMES.lock().retain(|v| v.name != name);
    MEMBERS.lock().retain(|m| m.name != name);
}

fn invalid(msg: String) -> BdevError {
    BdevError::Invalid(msg)
}

fn check_new_name(name: &str) -> Result<(), BdevError> {
    if name.is_empty() {
        return Err(invalid("name must not be empty".into()));
    }
    if registry::get(name).is_some() {
        return Err(BdevError::Exists(name.to_string()));
    }
    Ok(())
}

/// Reads the parity superblock at the start of `base`, if it carries one. `Ok(None)` for
/// a base without one (a new volume); an error for a damaged one.
async fn read_superblock(base: &ClaimedBase) -> Result<Option<(Superblock, Vec<u8>)>, BdevError> {
    let ch = base.channel()?;
    let bs = base.block_size as u64;
    let head_blocks = (superblock::AREA as u64).div_ceil(bs);
    if base.num_blocks < head_blocks {
        return Err(invalid(format!("{} is too small", base.name)));
    }
    let io_err = |st| BdevError::IoFailed(format!("reading {}'s superblock: {st:?}", base.name));
    let head = piece::read(&ch, 0, head_blocks).await.map_err(io_err)?;
    let sb = match Superblock::decode(head.as_slice()) {
        Ok(sb) => sb,
        Err(SbError::NoMagic) => return Ok(None),
        Err(e) => {
            return Err(invalid(format!(
                "{} carries a damaged parity superblock ({e}); wipe it to reuse the bdev",
                base.name
            )))
        }
    };
    let meta_blocks = sb.meta_blocks().min(base.num_blocks);
    let raw = crate::wait::read_vec(&ch, 0, meta_blocks)
        .await
        .map_err(io_err)?;
    Ok(Some((sb, raw)))
}

/// Refuses a superblock whose shape does not fit the base it was read from.
fn check_fits(sb: &Superblock, base: &ClaimedBase) -> Result<(), BdevError> {
    let end = sb.data_offset.checked_add(sb.num_blocks);
    if sb.block_size != base.block_size || end.is_none_or(|e| e > base.num_blocks) {
        return Err(invalid(format!(
            "{}'s parity superblock does not fit it ({} blocks of {} bytes from block {}; the bdev has {} of {})",
            base.name,
            sb.num_blocks,
            sb.block_size,
            sb.data_offset,
            base.num_blocks,
            base.block_size
        )));
    }
    if sb.generation == u64::MAX {
        return Err(invalid(format!(
            "{}'s superblock generation is exhausted",
            base.name
        )));
    }
    Ok(())
}

/// Parameters of `bdev_parity_create`.
#[derive(Clone, Debug)]
pub struct ParityOptions {
    pub name: String,
    pub base_bdev: String,
    pub group_uuid: Uuid,
    /// P or Q.
    pub role: Kind,
}

/// Creates the parity volume P or Q of a group on `base_bdev` (zeroing its data area), or
/// reopens the one the base carries. Runs on a reactor.
pub async fn create_parity(o: ParityOptions) -> Result<Arc<ParityVolume>, BdevError> {
    check_new_name(&o.name)?;
    check_name_len(&o.name, superblock::NAME_MAX)?;
    if o.role == Kind::Data {
        return Err(invalid("role must be p or q".into()));
    }
    let base = Arc::new(ClaimedBase::open(&o.base_bdev, &o.name)?);
    match open_parity(&o, &base).await {
        Ok(v) => Ok(v),
        Err(e) => {
            base.release();
            Err(e)
        }
    }
}

async fn open_parity(
    o: &ParityOptions,
    base: &Arc<ClaimedBase>,
) -> Result<Arc<ParityVolume>, BdevError> {
    if !base.supports(IoType::XorWrite) {
        return Err(invalid(format!(
            "{} does not support XOR writes: it cannot hold parity",
            o.base_bdev
        )));
    }
    let bs = base.block_size;
    let found = read_superblock(base).await?;
    let (data_offset, num_blocks, generation, members, reopened) = match found {
        Some((sb, _)) => {
            if sb.group_uuid != o.group_uuid || sb.kind != o.role {
                return Err(invalid(format!(
                    "{} holds the {} of group {}, not the {} of group {}",
                    o.base_bdev,
                    sb.kind.name(),
                    sb.group_uuid,
                    o.role.name(),
                    o.group_uuid
                )));
            }
            check_fits(&sb, base)?;
            (
                sb.data_offset,
                sb.num_blocks,
                sb.generation,
                sb.members,
                true,
            )
        }
        None => {
            let off = superblock::data_offset(0, bs);
            let n = base.num_blocks.saturating_sub(off);
            if n == 0 {
                return Err(invalid(format!(
                    "{} is too small: no room after {off} blocks of metadata",
                    o.base_bdev
                )));
            }
            (off, n, 0, Vec::new(), false)
        }
    };
    let v = Arc::new(ParityVolume {
        name: o.name.clone(),
        uuid: volume::volume_uuid(o.group_uuid, o.role),
        group_uuid: o.group_uuid,
        kind: o.role,
        base: base.clone(),
        block_size: bs,
        num_blocks,
        data_offset,
        members: Mutex::new(Vec::new()),
        generation: AtomicU64::new(generation),
        meta_lock: StripeLocks::default(),
        job: JobSlot::default(),
        last_verify: Mutex::new(None),
        changes: ParityVolume::new_counters(),
        sources: Mutex::new(Vec::new()),
    });
    for (index, bdev) in members {
        let m = if bdev.is_empty() {
            GroupMember {
                index,
                peer: Arc::new(Peer::absent("", bs, |_| {})),
                lost: true,
            }
        } else {
            open_group_member(&v, index, &bdev).unwrap_or_else(|e| {
                // Its remote bdev is attached later (or comes back): found at its next use.
                tracing::warn!(parity = %o.name, index, bdev = %bdev, error = %e, "group member not there yet");
                GroupMember {
                    index,
                    peer: Arc::new(Peer::absent(&bdev, bs, |_| {})),
                    lost: false,
                }
            })
        };
        v.members.lock().push(m);
    }
    if !reopened {
        // A new parity starts as the XOR of no data: zero.
        let ch = base.channel()?;
        crate::wait::no_data(&ch, IoType::WriteZeroes, data_offset, num_blocks)
            .await
            .map_err(|st| BdevError::IoFailed(format!("zeroing {}: {st:?}", o.base_bdev)))?;
    }
    v.write_meta().await?;
    registry::register(v.clone())?;
    VOLUMES.lock().push(v.clone());
    tracing::info!(parity = %v.name, role = v.kind.name(), group = %v.group_uuid, num_blocks, reopened, "parity volume up");
    Ok(v)
}

fn open_group_member(v: &ParityVolume, index: u32, bdev: &str) -> Result<GroupMember, BdevError> {
    let peer = Peer::open(bdev, |_| {})?;
    if peer.block_size != v.block_size {
        return Err(invalid(format!(
            "{bdev} has {}-byte blocks, the parity {}",
            peer.block_size, v.block_size
        )));
    }
    if peer.num_blocks() > v.num_blocks {
        return Err(invalid(format!(
            "{bdev} has {} blocks, more than the parity's {}",
            peer.num_blocks(),
            v.num_blocks
        )));
    }
    Ok(GroupMember {
        index,
        peer: Arc::new(peer),
        lost: false,
    })
}

/// `bdev_parity_add_member`: tells a parity volume which bdev reaches data member `index`
/// (used by rebuild sources and verify), or which bdev now reaches a lost one. Add a
/// member once its data is in the parity (its fold has ended, or it was rebuilt): the
/// parity node cannot see a member's fold.
pub async fn add_member(name: &str, index: u32, bdev: &str) -> Result<(), BdevError> {
    let v = find_parity(name)?;
    if index as usize >= MAX_MEMBERS {
        return Err(invalid(format!(
            "index {index} is out of range (0..{MAX_MEMBERS})"
        )));
    }
    check_name_len(bdev, superblock::MEMBER_NAME_MAX)?;
    {
        let members = v.members.lock();
        if let Some(m) = members.iter().find(|m| m.index == index && !m.lost) {
            if m.peer.name == bdev {
                return Ok(());
            }
            return Err(BdevError::Exists(format!(
                "index {index} of {name} (held by {})",
                m.peer.name
            )));
        }
        if members.iter().any(|m| !m.lost && m.peer.name == bdev) {
            return Err(BdevError::Exists(format!("{bdev} as a member of {name}")));
        }
    }
    let m = open_group_member(&v, index, bdev)?;
    {
        let mut members = v.members.lock();
        members.retain(|x| x.index != index);
        members.push(m);
    }
    v.write_meta().await?;
    tracing::info!(parity = %name, index, bdev, "group member added");
    Ok(())
}

/// `bdev_parity_remove_member`: the member's node is lost. The index stays, marked lost:
/// the parity still holds its data, so only its own reconstruction (its rebuild source)
/// can run until a bdev is added for it again.
pub async fn remove_member(name: &str, index: u32) -> Result<(), BdevError> {
    let v = find_parity(name)?;
    {
        let mut members = v.members.lock();
        let m = members
            .iter_mut()
            .find(|m| m.index == index && !m.lost)
            .ok_or_else(|| BdevError::NotFound(format!("member {index} of {name}")))?;
        m.lost = true;
        m.peer.close();
    }
    tracing::info!(parity = %name, index, "group member marked lost");
    v.write_meta().await
}

/// Refuses a name the superblock cannot keep whole.
fn check_name_len(name: &str, max: usize) -> Result<(), BdevError> {
    if name.len() > max {
        return Err(invalid(format!(
            "name '{name}' is longer than {max} bytes (the superblock keeps it)"
        )));
    }
    Ok(())
}

/// `bdev_parity_source_create`: the rebuild source of member `index` (default name
/// `<parity>_src<index>`), or with `also_lost` (a second lost member and `partner`, the
/// bdev of the group's other parity volume) the two-member RAID-6 reconstruction. Returns
/// its name.
pub fn create_source(
    name: &str,
    index: u32,
    source_name: Option<&str>,
    also_lost: Option<(u32, &str)>,
) -> Result<String, BdevError> {
    let v = find_parity(name)?;
    // The member itself need not be known yet: a data node attaches its sources before it
    // creates its member, and a lost member is what the source stands in for.
    if index as usize >= MAX_MEMBERS {
        return Err(invalid(format!(
            "index {index} is out of range (0..{MAX_MEMBERS})"
        )));
    }
    let also_lost = match also_lost {
        None => None,
        Some((b, _)) if b == index || b as usize >= MAX_MEMBERS => {
            return Err(invalid(format!(
                "also_lost {b} must be another index below {MAX_MEMBERS}"
            )))
        }
        Some((b, partner)) => {
            let p = Peer::open(partner, |_| {})?;
            if p.block_size != v.block_size || p.num_blocks() < v.num_blocks {
                return Err(invalid(format!(
                    "partner {partner} ({} blocks of {} bytes) does not match {name} ({} of {})",
                    p.num_blocks(),
                    p.block_size,
                    v.num_blocks,
                    v.block_size
                )));
            }
            Some(source::AlsoLost {
                index: b,
                partner: Arc::new(p),
            })
        }
    };
    let sname = source_name
        .map(str::to_string)
        .unwrap_or_else(|| match &also_lost {
            Some(l) => format!("{name}_src{index}_{}", l.index),
            None => format!("{name}_src{index}"),
        });
    check_new_name(&sname)?;
    let s = Arc::new(RebuildSource {
        uuid: Uuid::new_v5(&v.uuid, sname.as_bytes()),
        name: sname.clone(),
        v: v.clone(),
        index,
        also_lost,
    });
    registry::register(s)?;
    v.sources.lock().push(sname.clone());
    Ok(sname)
}

/// `bdev_parity_verify`: starts the verify job.
pub fn verify(name: &str, repair: bool, max_bandwidth_mb_sec: u64) -> Result<(), BdevError> {
    let v = find_parity(name)?;
    let job = v
        .job
        .reserve(|| VerifyJob {
            progress: Progress::new("verify", None, v.num_blocks * v.block_size as u64),
            repair,
            max_bandwidth_mb_sec,
            mismatches: AtomicU64::new(0),
            repaired: AtomicU64::new(0),
            by_checksum: AtomicU64::new(0),
        })
        .ok_or_else(|| BdevError::Claimed {
            name: name.to_string(),
            by: "a running verify".into(),
        })?;
    *v.last_verify.lock() = None;
    examine::on_a_reactor(move || verify::run(v, job));
    Ok(())
}

/// What a new data member's base holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemberMode {
    /// Data that is not in the parity yet: fold it in (a new group, a node added online).
    Fold,
    /// Nothing: rebuild it from the parity (a replacement for a lost node).
    Rebuild,
    /// Data already in the parity (both known zero): active at once.
    Clean,
}

impl MemberMode {
    pub fn from_name(s: &str) -> Option<MemberMode> {
        match s {
            "fold" => Some(MemberMode::Fold),
            "rebuild" => Some(MemberMode::Rebuild),
            "clean" => Some(MemberMode::Clean),
            _ => None,
        }
    }
}

/// Parameters of `bdev_parity_member_create`.
#[derive(Clone, Debug)]
pub struct MemberOptions {
    pub name: String,
    pub base_bdev: String,
    pub group_uuid: Uuid,
    pub index: u32,
    pub p_bdev: Option<String>,
    pub p_source: Option<String>,
    pub q_bdev: Option<String>,
    pub q_source: Option<String>,
    pub mode: MemberMode,
    pub region_size_kb: u64,
    /// Rate limit of the fold and the rebuild (0: none).
    pub max_bandwidth_mb_sec: u64,
}

fn target_event(member_name: String) -> impl Fn(BdevEvent) + Send + Sync + 'static {
    move |ev| {
        let Some(m) = member(&member_name) else {
            return;
        };
        match ev {
            BdevEvent::Remove => {
                for k in 0..m.targets.len() {
                    if m.targets[k].peer.is_removed() {
                        m.fail_target(k, "parity bdev removed");
                    }
                }
            }
            BdevEvent::PathRestored => {
                tracing::info!(member = %m.name, "a parity path came back: repairing");
                member_jobs::start(&m);
            }
        }
    }
}

/// Opens a member's parity `bdev` (and its rebuild source). A member reopened from its
/// superblock comes up even when they are not there (the parity node is down, or its
/// remote bdevs are attached later): they count as unreachable and are found at their next
/// use. A new member needs them.
fn open_target(
    o: &MemberOptions,
    kind: Kind,
    bdev: &str,
    source: Option<&str>,
    num_blocks: u64,
    bs: u32,
    reopened: bool,
) -> Result<Target, BdevError> {
    let open = |name: &str| match Peer::open(name, target_event(o.name.clone())) {
        Err(BdevError::NotFound(_)) if reopened => {
            tracing::warn!(member = %o.name, bdev = %name, "parity bdev not there: the member starts degraded");
            let p = Peer::absent(name, bs, target_event(o.name.clone()));
            p.fail();
            Ok((p, false))
        }
        r => r.map(|p| (p, true)),
    };
    // A parity volume of this node can be checked for its role and group (a remote one
    // cannot: its superblock is behind the other node's export).
    if let Some(v) = parity(bdev) {
        if v.kind != kind || v.group_uuid != o.group_uuid {
            return Err(invalid(format!(
                "{bdev} is the {} of group {}, not the {} of group {}",
                v.kind.name(),
                v.group_uuid,
                kind.name(),
                o.group_uuid
            )));
        }
    }
    let (peer, present) = open(bdev)?;
    let op = if kind == Kind::Q {
        IoType::GfXorWrite
    } else {
        IoType::XorWrite
    };
    if present && !peer.supports(op) {
        return Err(invalid(format!(
            "{bdev} does not take {} (is it a parity volume, or a remote one whose target lacks strata's vendor commands?)",
            op.name()
        )));
    }
    let fits = |p: &Peer, what: &str| {
        if p.block_size != bs {
            return Err(invalid(format!(
                "{what} {} has {}-byte blocks, the member {bs}",
                p.name, p.block_size
            )));
        }
        if p.num_blocks() < num_blocks {
            return Err(invalid(format!(
                "{what} {} has {} blocks, fewer than the member's {num_blocks}",
                p.name,
                p.num_blocks()
            )));
        }
        Ok(())
    };
    if present {
        fits(&peer, "parity")?;
    }
    let source = match source {
        Some(s) => {
            let (p, present) = open(s)?;
            if present {
                fits(&p, "rebuild source")?;
            }
            Some(Arc::new(p))
        }
        None => None,
    };
    Ok(Target {
        kind,
        peer: Arc::new(peer),
        source,
    })
}

/// Creates a data member over `base_bdev`, or reopens the one it carries. Runs on a reactor.
pub async fn create_member(o: MemberOptions) -> Result<Arc<ParityMember>, BdevError> {
    check_new_name(&o.name)?;
    check_name_len(&o.name, superblock::NAME_MAX)?;
    if o.index as usize >= MAX_MEMBERS {
        return Err(invalid(format!(
            "index {} is out of range (0..{MAX_MEMBERS})",
            o.index
        )));
    }
    if o.p_bdev.is_none() && o.q_bdev.is_none() {
        return Err(invalid("a member needs p_bdev, q_bdev or both".into()));
    }
    if o.p_bdev.is_some() && o.p_bdev == o.q_bdev {
        return Err(invalid("p_bdev and q_bdev are the same bdev".into()));
    }
    if !o.region_size_kb.is_power_of_two() || !(128..=65536).contains(&o.region_size_kb) {
        return Err(invalid(format!(
            "region_size_kb {} is not a power of two between 128 and 65536",
            o.region_size_kb
        )));
    }
    if MEMBERS
        .lock()
        .iter()
        .any(|m| m.group_uuid == o.group_uuid && m.index == o.index)
    {
        return Err(BdevError::Exists(format!(
            "index {} of group {} on this node",
            o.index, o.group_uuid
        )));
    }
    let base = Arc::new(ClaimedBase::open(&o.base_bdev, &o.name)?);
    match open_member(&o, &base).await {
        Ok(m) => Ok(m),
        Err(e) => {
            base.release();
            Err(e)
        }
    }
}

async fn open_member(
    o: &MemberOptions,
    base: &Arc<ClaimedBase>,
) -> Result<Arc<ParityMember>, BdevError> {
    let bs = base.block_size;
    let found = read_superblock(base).await?;
    let reopened = found.is_some();
    let mut rebuilt = Vec::new();
    let (state, cursor, region_blocks, num_blocks, data_offset, bits, bitmap, generation) =
        match found {
            Some((sb, raw)) => {
                if sb.kind != Kind::Data || sb.group_uuid != o.group_uuid || sb.index != o.index {
                    return Err(invalid(format!(
                        "{} holds {} {} of group {}, not data member {} of group {}",
                        o.base_bdev,
                        sb.kind.name(),
                        sb.index,
                        sb.group_uuid,
                        o.index,
                        o.group_uuid
                    )));
                }
                check_fits(&sb, base)?;
                let want = member::roles_of(
                    [(Kind::P, &o.p_bdev), (Kind::Q, &o.q_bdev)]
                        .into_iter()
                        .filter(|(_, b)| b.is_some())
                        .map(|(k, _)| k),
                );
                let names = |r: u8| match r {
                    superblock::ROLE_P => "P",
                    superblock::ROLE_Q => "Q",
                    _ => "P and Q",
                };
                if sb.roles & !want != 0 {
                    return Err(invalid(format!(
                        "member {} sends its deltas to {}: reopen it with those parity bdevs (a parity it stopped updating would go stale), not {}",
                        o.name,
                        names(sb.roles),
                        names(want)
                    )));
                }
                // A damaged bitmap: every region may differ from the parity.
                if sb.state == MemberState::Rebuilding {
                    rebuilt = sb.decode_rebuilt(&raw).unwrap_or_else(|| {
                        tracing::warn!(member = %o.name, "rebuilt-region bitmap damaged: regions past the cursor will be rebuilt again");
                        Vec::new()
                    });
                }
                let mut bitmap = sb.decode_bitmap(&raw).unwrap_or_else(|| {
                    tracing::warn!(member = %o.name, "bitmap damaged: every region will be repaired");
                    every_region(sb.bits)
                });
                // (0: written before the roles were kept; the given parities are taken.)
                if sb.roles != 0 && want & !sb.roles != 0 {
                    // A parity this member did not update: every region is repaired into it
                    // (through its rebuild source) before it is counted on.
                    tracing::warn!(member = %o.name, was = names(sb.roles), now = names(want), "a parity was added to the member: every region will be repaired");
                    bitmap = every_region(sb.bits);
                }
                (
                    sb.state,
                    sb.cursor,
                    sb.region_blocks,
                    sb.num_blocks,
                    sb.data_offset,
                    sb.bits,
                    bitmap,
                    sb.generation,
                )
            }
            None => {
                let region_blocks = o.region_size_kb * 1024 / bs as u64;
                let max_bits = base.num_blocks.div_ceil(region_blocks);
                let off = superblock::data_offset(max_bits, bs);
                let n = base.num_blocks.saturating_sub(off);
                if n == 0 {
                    return Err(invalid(format!(
                        "{} is too small: no room after {off} blocks of metadata",
                        o.base_bdev
                    )));
                }
                let bits = n.div_ceil(region_blocks);
                if superblock::bitmap_bytes(bits) > superblock::MAX_BITMAP_BYTES {
                    return Err(invalid(format!(
                        "region_size_kb {} is too small for {n} blocks (the bitmap would exceed {} KiB)",
                        o.region_size_kb,
                        superblock::MAX_BITMAP_BYTES / 1024
                    )));
                }
                let state = match o.mode {
                    MemberMode::Fold => MemberState::Folding,
                    MemberMode::Rebuild => MemberState::Rebuilding,
                    MemberMode::Clean => MemberState::Active,
                };
                (state, 0, region_blocks, n, off, bits, Vec::new(), 0)
            }
        };
    let (state, cursor, bitmap) = if reopened {
        apply_record(o, state, cursor, bitmap, bits, generation).await?
    } else {
        (state, cursor, bitmap)
    };
    let mut targets = Vec::new();
    if let Some(p) = &o.p_bdev {
        targets.push(open_target(
            o,
            Kind::P,
            p,
            o.p_source.as_deref(),
            num_blocks,
            bs,
            reopened,
        )?);
    }
    if let Some(q) = &o.q_bdev {
        targets.push(open_target(
            o,
            Kind::Q,
            q,
            o.q_source.as_deref(),
            num_blocks,
            bs,
            reopened,
        )?);
    }
    if state == MemberState::Rebuilding && targets.iter().all(|t| t.source.is_none()) {
        return Err(invalid(
            "a member to rebuild needs a rebuild source (p_source or q_source)".into(),
        ));
    }
    let intent = IntentBitmap::new(generation + 1, generation, 1, bits, bitmap);
    let degraded = targets.iter().any(|t| t.peer.is_failed());
    if intent.dirty_count() > 0 || degraded {
        // Kept until the repair has closed them.
        intent.hold_bits(true);
    }
    let m = Arc::new(ParityMember {
        name: o.name.clone(),
        uuid: Uuid::new_v5(&o.group_uuid, format!("data{}", o.index).as_bytes()),
        group_uuid: o.group_uuid,
        index: o.index,
        coef_q: member::coef_q(o.index),
        base: base.clone(),
        block_size: bs,
        num_blocks,
        data_offset,
        region_blocks,
        bits,
        lock_blocks: piece::PIECE_BYTES / bs as u64,
        targets,
        state: Mutex::new(state),
        cursor: AtomicU64::new(cursor),
        rebuilt: Mutex::new(rebuilt),
        intent,
        locks: StripeLocks::default(),
        seqs: (0..bits).map(|_| AtomicU32::new(0)).collect(),
        rebuild_slots: StripeLocks::default(),
        hold_epoch: AtomicU64::new(0),
        job: JobSlot::default(),
        last_job: Mutex::new(None),
        repair_wanted: AtomicBool::new(false),
        work_owed: AtomicBool::new(degraded),
        recorded: Mutex::new(None),
        max_bandwidth_mb_sec: AtomicU64::new(o.max_bandwidth_mb_sec),
        deleted: AtomicBool::new(false),
    });
    member_jobs::persist_all(&m).await;
    if !m.intent.is_durable(m.intent.generation()) {
        return Err(BdevError::IoFailed(format!(
            "cannot write the member superblock to {}",
            o.base_bdev
        )));
    }
    registry::register(m.clone())?;
    MEMBERS.lock().push(m.clone());
    tracing::info!(member = %m.name, group = %m.group_uuid, index = m.index, state = state.name(), cursor, dirty = m.intent.dirty_count(), num_blocks, "parity group data member up");
    let hk = m.clone();
    examine::on_a_reactor(move || member_jobs::housekeeping(hk));
    if state != MemberState::Active || m.intent.dirty_count() > 0 {
        member_jobs::start(&m);
    }
    Ok(m)
}

/// A bitmap with the bits of all `bits` regions set (and none past them).
fn every_region(bits: u64) -> Vec<u64> {
    let mut w = vec![u64::MAX; bits.div_ceil(64) as usize];
    if let Some(last) = w.last_mut() {
        if !bits.is_multiple_of(64) {
            *last = (1u64 << (bits % 64)) - 1;
        }
    }
    w
}

/// A reopened member's state after its cluster record (when a store is installed): the
/// record, written before each superblock, wins when it is at least as new; a repair it
/// says is owed makes every region repaired, whatever its age (the cost of a needless one
/// is time, of a missed one the parity). Err when the store does not answer.
async fn apply_record(
    o: &MemberOptions,
    state: MemberState,
    cursor: u64,
    bitmap: Vec<u64>,
    bits: u64,
    sb_generation: u64,
) -> Result<(MemberState, u64, Vec<u64>), BdevError> {
    let rec = record::read_member(o.group_uuid, o.index)
        .await
        .map_err(|e| {
            BdevError::IoFailed(format!(
                "{e}: member {} is not brought up from its superblock alone (restart without --etcd to do that)",
                o.name
            ))
        })?;
    let Some(rec) = rec else {
        return Ok((state, cursor, bitmap));
    };
    let (mut state, mut cursor, mut bitmap) = (state, cursor, bitmap);
    if rec.generation > sb_generation {
        // The superblock was rolled back: the write holes of the generations it lost are
        // not in its bitmap. Every region in the parity is repaired (a member being
        // rebuilt repairs only what it rebuilt).
        tracing::warn!(member = %o.name, record = rec.generation, superblock = sb_generation, "the superblock is older than the cluster record: every region will be repaired");
        bitmap = every_region(bits);
    }
    if rec.generation >= sb_generation {
        if let Some(s) = rec.member_state() {
            if (s, rec.cursor) != (state, cursor) {
                tracing::warn!(member = %o.name, superblock = state.name(), sb_cursor = cursor, record = s.name(), record_cursor = rec.cursor, "the cluster record is newer than the superblock: its state wins");
                state = s;
                cursor = rec.cursor.min(bits);
            }
        }
    }
    if rec.repair_owed {
        tracing::warn!(member = %o.name, "the cluster record says the parity is owed a repair: every region will be repaired");
        bitmap = every_region(bits);
    }
    Ok((state, cursor, bitmap))
}

/// `bdev_parity_member_repair`: runs the repair (and any owed fold or rebuild) now.
pub fn member_repair(name: &str) -> Result<(), BdevError> {
    let m = member(name).ok_or_else(|| BdevError::NotFound(name.to_string()))?;
    member_jobs::start(&m);
    Ok(())
}

/// `bdev_parity_delete` / `bdev_parity_member_delete`: stops the volume or member and
/// releases its bdevs (the superblock stays: creating it again on the base reopens it).
pub fn delete(name: &str, kind_is_member: bool) -> Result<(), BdevError> {
    let found = if kind_is_member {
        member(name).is_some()
    } else {
        parity(name).is_some() || is_source(name)
    };
    if !found {
        return Err(BdevError::NotFound(name.to_string()));
    }
    registry::unregister(name)
}

fn is_source(name: &str) -> bool {
    registry::get(name).is_some_and(|h| {
        h.bdev.module() == "parity" && h.bdev.product_name() == "Parity rebuild source"
    })
}

/// `bdev_parity_get`: parity volumes and data members (all, or the one named).
pub fn get(name: Option<&str>) -> Result<Vec<Value>, BdevError> {
    let mut out: Vec<Value> = VOLUMES
        .lock()
        .iter()
        .filter(|v| name.is_none_or(|n| n == v.name))
        .map(|v| v.info())
        .collect();
    out.extend(
        MEMBERS
            .lock()
            .iter()
            .filter(|m| name.is_none_or(|n| n == m.name))
            .map(|m| m.info()),
    );
    if let (Some(n), true) = (name, out.is_empty()) {
        return Err(BdevError::NotFound(n.to_string()));
    }
    Ok(out)
}

/// Waits until the member's job (fold, rebuild, repair) has ended.
pub async fn wait_member_idle(name: &str) {
    while member(name).is_some_and(|m| m.job.is_busy()) {
        strata_reactor::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// Waits until the parity volume's verify has ended.
pub async fn wait_parity_idle(name: &str) {
    while parity(name).is_some_and(|v| v.job.is_busy()) {
        strata_reactor::sleep(std::time::Duration::from_millis(10)).await;
    }
}
