//! JSON-RPC: the server ([`server`]), the methods' parameter structs ([`params`]), errors
//! ([`error`]) and the method table, filled by one module per area ([`bdev_methods`],
//! [`framework_methods`], [`mirror_methods`], [`parity_methods`], [`backup_methods`],
//! [`journal_methods`], [`nvme_methods`], [`nvmf_methods`]).

pub mod backup_methods;
pub mod bdev_methods;
pub mod error;
pub mod framework_methods;
pub mod journal_methods;
pub mod keyring_methods;
pub mod mirror_methods;
pub mod nvme_methods;
pub mod nvmf_methods;
pub mod params;
pub mod parity_methods;
pub mod server;

pub use error::RpcError;

use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Arc;
use strata_reactor::ReactorSet;

/// What method handlers may reach of the running application.
pub struct AppContext {
    pub reactors: ReactorSet,
    /// Sending on it asks the daemon to shut down (`spdk_kill_instance`).
    pub shutdown: crossbeam_channel::Sender<&'static str>,
}

type Handler = Box<dyn Fn(&AppContext, Option<Value>) -> Result<Value, RpcError> + Send + Sync>;

/// Methods by name.
pub struct MethodTable {
    ctx: AppContext,
    methods: BTreeMap<&'static str, Handler>,
}

impl MethodTable {
    /// The table with every method strata serves.
    pub fn new(ctx: AppContext) -> Arc<Self> {
        let mut t = MethodTable {
            ctx,
            methods: BTreeMap::new(),
        };
        framework_methods::register(&mut t);
        bdev_methods::register(&mut t);
        mirror_methods::register(&mut t);
        parity_methods::register(&mut t);
        backup_methods::register(&mut t);
        journal_methods::register(&mut t);
        nvme_methods::register(&mut t);
        nvmf_methods::register(&mut t);
        keyring_methods::register(&mut t);
        Arc::new(t)
    }

    /// Adds `name`, whose handler gets its params decoded into `P` (decoding errors are the
    /// -32602 naming the parameter).
    pub fn add<P: params::SpdkParams>(
        &mut self,
        name: &'static str,
        f: impl Fn(&AppContext, P) -> Result<Value, RpcError> + Send + Sync + 'static,
    ) {
        self.methods.insert(
            name,
            Box::new(move |ctx, p| f(ctx, params::decode(name, p)?)),
        );
    }

    pub fn names(&self) -> Vec<&'static str> {
        let mut v: Vec<&'static str> = self.methods.keys().copied().collect();
        v.push("rpc_get_methods");
        v.sort_unstable();
        v
    }

    pub fn contains(&self, name: &str) -> bool {
        name == "rpc_get_methods" || self.methods.contains_key(name)
    }

    pub fn call(&self, method: &str, params: Option<Value>) -> Result<Value, RpcError> {
        if method == "rpc_get_methods" {
            params::decode::<params::framework::GetMethods>("rpc_get_methods", params)?;
            return Ok(Value::from(self.names()));
        }
        match self.methods.get(method) {
            Some(h) => h(&self.ctx, params),
            None => Err(RpcError::method_not_found(method)),
        }
    }
}
