//! A service's compiled routing rules, built once per change of its shared entry (kept in a
//! `snapshot::Cache<Rules>`).

use super::rule::{compile_routes, Caller, Route};
use crate::model::ServiceKey;
use crate::snapshot::{decode_routing, DecodeError};

/// The compiled rules of one service.
#[derive(Clone, Debug, Default)]
pub struct Rules {
    pub inbound: Vec<Route>,
    pub outbound: Vec<Route>,
}

impl Rules {
    /// Compiles a stored ROUTING answer. Rules that cannot be compiled are skipped and logged by
    /// name; a malformed answer is an error (the caller keeps the last good rules).
    pub fn compile(key: &ServiceKey, bytes: &[u8], caller: &Caller) -> Result<Rules, DecodeError> {
        let routing = decode_routing(key, bytes)?;
        let (inbound, mut skipped) = compile_routes(&routing.inbounds, caller);
        let (outbound, outbound_skipped) = compile_routes(&routing.outbounds, caller);
        skipped.extend(outbound_skipped);
        for e in skipped {
            log::warn!("routing of {key}: {e}");
        }
        Ok(Rules { inbound, outbound })
    }
}
