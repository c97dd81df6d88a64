//! Sending calls to Polaris (`Discover`, and the provider's unary calls): the one place that
//! builds them.

use std::time::Duration;

use super::host::{Calls, GrpcCall, HostError};
use super::metrics::{Counter, Counters};
use crate::config::Config;
use crate::model::{Kind, ServiceKey};
use crate::polaris::client;

/// How this VM reaches Polaris.
pub struct Link {
    /// What the host needs to reach the cluster (an encoded `GrpcService`).
    upstream: String,
    cluster: String,
    token: Option<String>,
}

/// A call the host would not send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DispatchError {
    pub cluster: String,
    pub error: HostError,
}

impl std::fmt::Display for DispatchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "cannot call Polaris through cluster {}: {}",
            self.cluster, self.error
        )
    }
}

impl Link {
    /// `None` when the cluster name cannot be encoded (config validation keeps those out).
    pub fn new(config: &Config) -> Option<Link> {
        Some(Link {
            upstream: client::envoy_grpc_service(&config.polaris_cluster)?,
            cluster: config.polaris_cluster.clone(),
            token: config.token.clone(),
        })
    }

    /// Sends `Discover` of `kind` for `key`; the answer arrives in the calling context.
    pub fn discover<C: Calls + ?Sized>(
        &self,
        host: &C,
        counters: &Counters,
        (kind, key): (Kind, &ServiceKey),
        revision: &str,
        timeout: Duration,
    ) -> Result<u32, DispatchError> {
        let message = client::discover_request(kind, key, revision);
        counters.inc(Counter::DiscoverRequests);
        self.unary(host, client::DISCOVER_METHOD, &message, timeout)
    }

    /// Sends one `v1.PolarisGRPC` call; the answer arrives in the calling context.
    pub fn unary<C: Calls + ?Sized>(
        &self,
        host: &C,
        method: &str,
        message: &[u8],
        timeout: Duration,
    ) -> Result<u32, DispatchError> {
        let token;
        let metadata: &[(&str, &[u8])] = match &self.token {
            Some(t) => {
                token = [(client::TOKEN_METADATA, t.as_bytes())];
                &token
            }
            None => &[],
        };
        host.grpc_unary(GrpcCall {
            upstream: &self.upstream,
            service: client::GRPC_SERVICE,
            method,
            metadata,
            message,
            timeout,
        })
        .map_err(|error| DispatchError {
            cluster: self.cluster.clone(),
            error,
        })
    }
}
