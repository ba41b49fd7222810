//! An optional cluster store for volume state (Mayastor keeps nexus child state in etcd the
//! same way): a key-value service outside the nodes that says which members of a volume are
//! in sync. When one is installed, a volume writes its member states there before it acts
//! on a change (before the superblocks, before a write waiting on the change is
//! acknowledged), and at assembly the record wins over the superblocks: a member it marks
//! out of sync is never promoted, even if the superblock that said so was lost.
//!
//! The bdev layer only defines the interface ([`ClusterStore`]); the daemon installs an
//! implementation (etcd, `strata-tgt --etcd URL`). Without one, volumes work from their
//! superblocks alone.

use parking_lot::RwLock;
use std::sync::Arc;

/// Callback of a store operation (called once, on any thread).
pub type Done<T> = Box<dyn FnOnce(Result<T, String>) + Send>;

/// A key-value store shared by the nodes.
pub trait ClusterStore: Send + Sync {
    /// Where it is (for logs and `framework_get_cluster_store`).
    fn endpoint(&self) -> String;
    /// Stores `value` under `key`, durably, then calls `done`.
    fn put(&self, key: String, value: Vec<u8>, done: Done<()>);
    /// The value under `key`, if any.
    fn get(&self, key: String, done: Done<Option<Vec<u8>>>);
    /// Every (key, value) whose key starts with `prefix`.
    fn list(&self, prefix: String, done: Done<Vec<(String, Vec<u8>)>>);
}

static STORE: RwLock<Option<Arc<dyn ClusterStore>>> = RwLock::new(None);

/// Installs the store (at start-up, before any volume is assembled).
pub fn install(store: Arc<dyn ClusterStore>) {
    *STORE.write() = Some(store);
}

/// The installed store, if any.
pub fn store() -> Option<Arc<dyn ClusterStore>> {
    STORE.read().clone()
}

/// The longest a volume waits for the store on one operation: a store that does not answer
/// must not hold host I/O (the superblocks still carry the state).
pub const DEADLINE: std::time::Duration = std::time::Duration::from_secs(2);

/// Awaits a store operation from a reactor task, at most [`DEADLINE`].
async fn call<T: Send + 'static>(op: impl FnOnce(Done<T>)) -> Result<T, String> {
    use futures_util::future::{select, Either};
    let (tx, rx) = strata_reactor::oneshot::channel();
    op(Box::new(move |r| tx.send(r)));
    let timer = strata_reactor::sleep(DEADLINE);
    match select(std::pin::pin!(rx), std::pin::pin!(timer)).await {
        Either::Left((r, _)) => r.map_err(|_| "cluster store dropped the request".to_string())?,
        Either::Right(_) => Err(format!("cluster store did not answer within {DEADLINE:?}")),
    }
}

/// `put` from a reactor task. Ok(()) also when no store is installed.
pub async fn put(key: String, value: Vec<u8>) -> Result<(), String> {
    match store() {
        Some(s) => call(|d| s.put(key, value, d)).await,
        None => Ok(()),
    }
}

/// How long state records are not written after a failed write: a store that is down must
/// not cost every metadata write (and the host writes waiting on it) the full deadline.
pub const BACK_OFF: std::time::Duration = std::time::Duration::from_secs(5);

/// When a record write last failed (one store for every volume).
static LAST_FAILURE: parking_lot::Mutex<Option<std::time::Instant>> = parking_lot::Mutex::new(None);

/// `put` of a state record that the superblocks carry as well: Ok(true) written, Ok(false)
/// skipped (a write failed less than [`BACK_OFF`] ago), Err after a failure (which starts
/// the back-off). The caller retries with its next metadata write.
pub async fn put_record(key: String, value: Vec<u8>) -> Result<bool, String> {
    if LAST_FAILURE.lock().is_some_and(|t| t.elapsed() < BACK_OFF) {
        return Ok(false);
    }
    match put(key, value).await {
        Ok(()) => Ok(true),
        Err(e) => {
            *LAST_FAILURE.lock() = Some(std::time::Instant::now());
            Err(e)
        }
    }
}

/// `get` from a reactor task; Ok(None) when no store is installed.
pub async fn get(key: String) -> Result<Option<Vec<u8>>, String> {
    match store() {
        Some(s) => call(|d| s.get(key, d)).await,
        None => Ok(None),
    }
}
