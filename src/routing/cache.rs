//! A worker's compiled routing rules per service, re-compiled only when the service's shared
//! entry changes (its CAS).

use std::collections::HashMap;

use super::rule::{compile_routes, Caller, Route};
use crate::snapshot::{decode_routing, DecodeError, ServiceKey};

/// The compiled rules of one service.
#[derive(Clone, Debug, Default)]
pub struct Rules {
    pub inbound: Vec<Route>,
    pub outbound: Vec<Route>,
    cas: Option<u32>,
}

#[derive(Clone, Debug, Default)]
pub struct RuleCache {
    entries: HashMap<ServiceKey, Rules>,
}

impl RuleCache {
    pub fn get(&self, key: &ServiceKey) -> Option<&Rules> {
        self.entries.get(key)
    }

    pub fn cas(&self, key: &ServiceKey) -> Option<u32> {
        self.entries.get(key).and_then(|r| r.cas)
    }

    pub fn keys(&self) -> Vec<ServiceKey> {
        self.entries.keys().cloned().collect()
    }

    /// Compiles a stored ROUTING answer. Returns the rules that were skipped, for the log; a
    /// malformed answer leaves the last good rules in place.
    pub fn install(
        &mut self,
        key: &ServiceKey,
        bytes: &[u8],
        cas: Option<u32>,
        caller: &Caller,
    ) -> Result<Vec<String>, DecodeError> {
        if cas.is_some() && self.cas(key) == cas {
            return Ok(Vec::new());
        }
        let routing = decode_routing(key, bytes)?;
        let (inbound, mut errors) = compile_routes(&routing.inbounds, caller);
        let (outbound, outbound_errors) = compile_routes(&routing.outbounds, caller);
        errors.extend(outbound_errors);
        self.entries.insert(
            key.clone(),
            Rules {
                inbound,
                outbound,
                cas,
            },
        );
        Ok(errors)
    }
}
