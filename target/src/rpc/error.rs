//! JSON-RPC error objects, and the one place bdev errors become JSON-RPC error codes.

use serde_json::{json, Value};
use strata_bdev::BdevError;

pub const PARSE_ERROR: i64 = -32700;
pub const INVALID_REQUEST: i64 = -32600;
pub const METHOD_NOT_FOUND: i64 = -32601;
pub const INVALID_PARAMS: i64 = -32602;
pub const INTERNAL_ERROR: i64 = -32603;

#[derive(Debug, Clone, thiserror::Error)]
#[error("{message} ({code})")]
pub struct RpcError {
    pub code: i64,
    pub message: String,
}

impl RpcError {
    pub fn new(code: i64, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
    pub fn parse(msg: impl Into<String>) -> Self {
        Self::new(PARSE_ERROR, msg)
    }
    pub fn invalid_request(msg: impl Into<String>) -> Self {
        Self::new(INVALID_REQUEST, msg)
    }
    pub fn method_not_found(m: &str) -> Self {
        Self::new(METHOD_NOT_FOUND, format!("Method not found: {m}"))
    }
    pub fn invalid_params(msg: impl Into<String>) -> Self {
        Self::new(INVALID_PARAMS, msg)
    }
    pub fn internal(msg: impl Into<String>) -> Self {
        Self::new(INTERNAL_ERROR, msg)
    }
    pub fn to_json(&self) -> Value {
        json!({ "code": self.code, "message": self.message })
    }
}

impl From<BdevError> for RpcError {
    fn from(e: BdevError) -> Self {
        let code = match &e {
            BdevError::Invalid(_) => INVALID_PARAMS,
            other => other.errno() as i64,
        };
        RpcError::new(code, e.to_string())
    }
}

impl From<strata_nvmf::remote::RemoteError> for RpcError {
    fn from(e: strata_nvmf::remote::RemoteError) -> Self {
        use strata_nvmf::remote::RemoteError;
        let code = match &e {
            RemoteError::Invalid(_) => INVALID_PARAMS,
            RemoteError::Bdev(BdevError::Invalid(_)) => INVALID_PARAMS,
            other => other.errno() as i64,
        };
        RpcError::new(code, e.to_string())
    }
}

impl From<strata_pcie::PcieError> for RpcError {
    fn from(e: strata_pcie::PcieError) -> Self {
        use strata_pcie::vfio::VfioError;
        use strata_pcie::PcieError;
        let code = match &e {
            PcieError::Vfio(
                VfioError::BadAddress(_)
                | VfioError::NotNvme(..)
                | VfioError::NotBound(..)
                | VfioError::SharedGroup(..)
                | VfioError::NoIommuGroup(_),
            ) => INVALID_PARAMS,
            PcieError::Vfio(VfioError::NoDevice(_)) | PcieError::NotFound(_) => {
                -(libc::ENODEV as i64)
            }
            PcieError::Exists(_) => -(libc::EEXIST as i64),
            PcieError::Bdev(b) => b.errno() as i64,
            _ => -(libc::EIO as i64),
        };
        RpcError::new(code, e.to_string())
    }
}
