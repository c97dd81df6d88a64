//! The decision in the module's own cluster's load balancer (`upstream_handover:
//! load_balancer`): Envoy runs no HTTP filter per stream (the filter stays in the chain,
//! `disabled: true`, for its config: the leader, its timer and its calls), and asks the
//! cluster's load balancer for a host instead; the core decides there, on the worker's
//! follower worker, from the request headers Envoy hands the load balancer.
//!
//! `make bench` (setup `dynlb`) measures what this saves against the filter handing the pick
//! over (`dyncluster`). What it gives up is everything that needs the stream: local replies (a
//! request that cannot be routed gets Envoy's 503 `no healthy upstream`), rate limits,
//! breakers, the trace and the provider side (refused at config time), and the caller's
//! address (rules matching the caller's IP do not match). A service this worker does not know
//! goes on the watch list and the leader discovers it at once (a load balancer has no stream
//! to call Polaris from); the selection waits meanwhile.

use std::cell::RefCell;
use std::rc::Rc;

use polaris_wasm::core::host::{HostError, Stream};
use polaris_wasm::core::{Exchange, Verdict};

use crate::ffi::cluster::LbContext;
use crate::filter::{self, Local};
use crate::plugin;

thread_local! {
    /// This thread's worker of the balancing plugin, with the generation it was taken at.
    static CURRENT: RefCell<Option<(u64, Rc<Local>)>> = const { RefCell::new(None) };
}

/// The load balancer's answer for one request.
#[derive(Debug, PartialEq, Eq)]
pub enum Decided {
    /// The picked instance, `ip:port`.
    Host(String),
    /// Nothing to route to (Envoy answers 503): no balancing plugin, or the core refused the
    /// request (no destination, service not found, no instance).
    NoHost,
    /// The service is being discovered: decide again once the store has it.
    Wait,
}

/// Decides one request of this worker thread.
pub fn decide(context: LbContext) -> Decided {
    let Some(local) = current() else {
        return Decided::NoHost;
    };
    let Ok(mut w) = local.worker.try_borrow_mut() else {
        return Decided::NoHost;
    };
    local.tick_if_due(&mut w);
    let mut stream = LbStream {
        context,
        pick: None,
    };
    let verdict = Exchange::new(0).on_request(&mut w, &mut stream);
    w.counters().flush(w.host());
    match verdict {
        Verdict::Forward => stream.pick.map_or(Decided::NoHost, Decided::Host),
        Verdict::Reply(r) => {
            log::debug!("load balancer: no host: {} ({})", r.reason, r.body);
            Decided::NoHost
        }
        Verdict::Wait => Decided::Wait,
    }
}

/// This thread's worker of the plugin the load balancer serves, made on first use and again
/// when that plugin changes (a listener update).
fn current() -> Option<Rc<Local>> {
    let generation = plugin::balancing_generation();
    CURRENT.with(|c| {
        let mut c = c.borrow_mut();
        if let Some((g, local)) = c.as_ref() {
            if *g == generation {
                return Some(Rc::clone(local));
            }
        }
        *c = None;
        let (generation, plugin) = plugin::balancing();
        let local = filter::local(&plugin?)?;
        *c = Some((generation, Rc::clone(&local)));
        Some(local)
    })
}

/// A request as the load balancer sees it: its headers, and where the pick goes.
struct LbStream {
    context: LbContext,
    pick: Option<String>,
}

fn no_stream(what: &str) -> HostError {
    HostError(format!("{what}: the load balancer has no stream"))
}

impl Stream for LbStream {
    fn request_header(&mut self, name: &str) -> Option<String> {
        self.context
            .header_with(name, |v| String::from_utf8_lossy(v).into_owned())
    }

    fn set_request_header(&mut self, name: &str, _value: &str) -> Result<(), HostError> {
        Err(no_stream(name))
    }

    fn set_response_header(&mut self, name: &str, _value: &str) -> Result<(), HostError> {
        Err(no_stream(name))
    }

    /// Nothing reads a header after the load balancer.
    fn remove_request_header(&mut self, _name: &str) -> Result<(), HostError> {
        Ok(())
    }

    fn source_address(&mut self) -> Option<String> {
        None
    }

    fn response_header(&mut self, _name: &str) -> Option<String> {
        None
    }

    fn stream_property(&mut self, _path: &[&str]) -> Option<Vec<u8>> {
        None
    }

    fn destination_address(&mut self) -> Option<String> {
        None
    }

    fn set_override_host(&mut self, upstream: &str) -> Result<(), HostError> {
        self.pick = Some(upstream.to_owned());
        Ok(())
    }
}
