//! The etcd cluster store (`strata-tgt --etcd http://HOST:PORT`): implements the bdev
//! layer's [`ClusterStore`] with a maintained etcd v3 client (`etcd-client`, gRPC). The
//! client runs on a thread of its own (a single-threaded tokio runtime); reactors hand it
//! requests and get the answers through callbacks, so no reactor ever blocks on etcd.

use std::sync::Arc;
use std::time::Duration;
use strata_bdev::volume::cluster::{ClusterStore, Done};

/// How long one etcd request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

enum Req {
    Put(String, Vec<u8>, Done<()>),
    Get(String, Done<Option<Vec<u8>>>),
    List(String, Done<Vec<(String, Vec<u8>)>>),
}

/// A connected etcd client.
pub struct EtcdStore {
    endpoint: String,
    tx: tokio::sync::mpsc::UnboundedSender<Req>,
}

#[derive(Debug, thiserror::Error)]
#[error("etcd at {endpoint}: {why}")]
pub struct EtcdError {
    endpoint: String,
    why: String,
}

impl EtcdStore {
    /// Connects (within a few seconds, or fails) and starts the client thread.
    pub fn connect(endpoint: &str) -> Result<Arc<EtcdStore>, EtcdError> {
        let err = |why: String| EtcdError {
            endpoint: endpoint.to_string(),
            why,
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| err(format!("runtime: {e}")))?;
        let opts = etcd_client::ConnectOptions::new()
            .with_connect_timeout(REQUEST_TIMEOUT)
            .with_timeout(REQUEST_TIMEOUT);
        let ep = endpoint.to_string();
        let mut client = rt
            .block_on(async {
                let mut c = etcd_client::Client::connect([ep.as_str()], Some(opts)).await?;
                // A first round trip: a wrong address fails here, not at the first volume.
                c.status().await?;
                Ok::<_, etcd_client::Error>(c)
            })
            .map_err(|e| err(e.to_string()))?;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Req>();
        std::thread::Builder::new()
            .name("etcd".into())
            .spawn(move || {
                rt.block_on(async move {
                    while let Some(req) = rx.recv().await {
                        serve(&mut client, req).await;
                    }
                })
            })
            .map_err(|e| err(format!("thread: {e}")))?;
        tracing::info!(endpoint, "cluster store: etcd connected");
        Ok(Arc::new(EtcdStore {
            endpoint: endpoint.to_string(),
            tx,
        }))
    }
}

async fn serve(c: &mut etcd_client::Client, req: Req) {
    let e = |x: etcd_client::Error| x.to_string();
    match req {
        Req::Put(k, v, done) => done(c.put(k, v, None).await.map(|_| ()).map_err(e)),
        Req::Get(k, done) => done(
            c.get(k, None)
                .await
                .map(|r| r.kvs().first().map(|kv| kv.value().to_vec()))
                .map_err(e),
        ),
        Req::List(p, done) => done(
            c.get(p, Some(etcd_client::GetOptions::new().with_prefix()))
                .await
                .map(|r| {
                    r.kvs()
                        .iter()
                        .map(|kv| {
                            (
                                String::from_utf8_lossy(kv.key()).into_owned(),
                                kv.value().to_vec(),
                            )
                        })
                        .collect()
                })
                .map_err(e),
        ),
    }
}

impl ClusterStore for EtcdStore {
    fn endpoint(&self) -> String {
        self.endpoint.clone()
    }
    fn put(&self, key: String, value: Vec<u8>, done: Done<()>) {
        if let Err(tokio::sync::mpsc::error::SendError(Req::Put(_, _, d))) =
            self.tx.send(Req::Put(key, value, done))
        {
            d(Err("etcd client stopped".into()));
        }
    }
    fn get(&self, key: String, done: Done<Option<Vec<u8>>>) {
        if let Err(tokio::sync::mpsc::error::SendError(Req::Get(_, d))) =
            self.tx.send(Req::Get(key, done))
        {
            d(Err("etcd client stopped".into()));
        }
    }
    fn list(&self, prefix: String, done: Done<Vec<(String, Vec<u8>)>>) {
        if let Err(tokio::sync::mpsc::error::SendError(Req::List(_, d))) =
            self.tx.send(Req::List(prefix, done))
        {
            d(Err("etcd client stopped".into()));
        }
    }
}
