//! Writing a volume's metadata: the one loop every volume type uses to make the on-disk
//! superblocks and bitmap as new as a generation of the in-memory [`IntentBitmap`]. The
//! module says how to write a snapshot to its members ([`MetaWriter`]); a member whose
//! write fails is failed by the module, which changes the metadata again, so the loop
//! writes until nothing more changed or no member is left.

use super::intent::{IntentBitmap, Snapshot};
use std::future::{poll_fn, Future};

/// The outcome of writing one snapshot to a volume's members.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MetaWrite {
    /// The snapshot is durable: on every member still serving.
    pub durable: bool,
    /// A member failed under the write (and was failed: the metadata changed again).
    pub member_failed: bool,
}

/// How a volume type writes its metadata.
pub trait MetaWriter {
    /// Writes `snap` (superblock and bitmap) to every member that should hold it, failing
    /// each member whose write fails.
    fn write_meta(&self, snap: &Snapshot) -> impl Future<Output = MetaWrite>;
    /// No member serves any more: nothing is left to write to.
    fn is_offline(&self) -> bool;
}

/// Makes the on-disk metadata at least as new as generation `want`.
pub async fn sync_meta(intent: &IntentBitmap, w: &impl MetaWriter, want: u64) {
    let mut want = want;
    loop {
        let Some(snap) = poll_fn(|cx| intent.try_start_sync(want, cx.waker())).await else {
            return;
        };
        let r = w.write_meta(&snap).await;
        intent.finish_sync(if r.durable { snap.generation } else { 0 });
        if !r.member_failed || !r.durable || w.is_offline() {
            return;
        }
        // The failure changed the member states: write them too.
        want = want.max(intent.generation());
    }
}

/// Makes the member states on disk as new as in memory (no-op when they are).
pub async fn persist(intent: &IntentBitmap, w: &impl MetaWriter) {
    sync_meta(intent, w, intent.state_generation()).await;
}

/// Writes the whole in-memory metadata, bitmap included, if the disk is behind.
pub async fn persist_all(intent: &IntentBitmap, w: &impl MetaWriter) {
    sync_meta(intent, w, intent.generation()).await;
}
