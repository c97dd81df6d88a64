//! The root context: configuration and the timer, handed to the core's [`Worker`].

use std::cell::RefCell;
use std::rc::Rc;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{BufferType, ContextType, MapType};

use super::abi::{grpc_result, Wasm};
use super::http::Http;
use super::SharedWorker;
use crate::config::Config;
use crate::core::host::Clock;
use crate::core::Worker;

pub struct Root {
    context_id: u32,
    worker: Option<SharedWorker>,
}

impl Root {
    pub fn new(context_id: u32) -> Root {
        Root {
            context_id,
            worker: None,
        }
    }
}

impl Context for Root {
    fn on_grpc_call_response(&mut self, token_id: u32, status_code: u32, response_size: usize) {
        if let Some(worker) = &self.worker {
            let result = grpc_result(status_code, response_size);
            let mut worker = worker.borrow_mut();
            worker.on_call_result(token_id, result);
            if worker.done_leaving(token_id) {
                if let Err(e) = hostcalls::done() {
                    log::warn!("root context {}: done() refused: {e:?}", self.context_id);
                }
            }
        }
    }

    /// A message on a polaris-limiter stream (the leader's global rate limits).
    fn on_grpc_stream_message(&mut self, token_id: u32, message_size: usize) {
        if let Some(worker) = &self.worker {
            let message = hostcalls::get_buffer(BufferType::GrpcReceiveBuffer, 0, message_size)
                .ok()
                .flatten()
                .unwrap_or_default();
            worker.borrow_mut().on_stream_message(token_id, &message);
        }
    }

    fn on_grpc_stream_close(&mut self, token_id: u32, status_code: u32) {
        if let Some(worker) = &self.worker {
            let message = hostcalls::get_grpc_status()
                .ok()
                .and_then(|(_, m)| m)
                .filter(|m| !m.is_empty());
            worker
                .borrow_mut()
                .on_stream_close(token_id, status_code, message);
        }
    }

    /// Envoy is done with this root context: on a listener update that keeps the VM, after the
    /// drain time, once per thread. Returning false keeps it alive until the provider's
    /// deregistration is answered; `done()` then ends it. On shutdown (SIGTERM,
    /// `/quitquitquit`) Envoy does not wait and nothing sent here leaves Envoy: the offline
    /// trigger is the way to deregister before stopping.
    fn on_done(&mut self) -> bool {
        match &self.worker {
            Some(worker) => worker.borrow_mut().on_done(),
            None => true,
        }
    }

    fn on_http_call_response(
        &mut self,
        token_id: u32,
        _num_headers: usize,
        body_size: usize,
        _num_trailers: usize,
    ) {
        let Some(worker) = &self.worker else {
            return;
        };
        let status = hostcalls::get_map_value(MapType::HttpCallResponseHeaders, ":status")
            .ok()
            .flatten()
            .and_then(|s| s.trim().parse::<u32>().ok());
        // Only Envoy's own 503 needs its body read (it names why the connection failed).
        let body = if status == Some(503) {
            hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, body_size.min(4096))
                .ok()
                .flatten()
                .unwrap_or_default()
        } else {
            Vec::new()
        };
        worker
            .borrow_mut()
            .on_http_call_result(token_id, status, &body);
    }
}

impl RootContext for Root {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let bytes = hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX)
            .ok()
            .flatten()
            .unwrap_or_default();
        let config = match Config::parse(&bytes) {
            Ok(c) => c,
            Err(e) => {
                log::error!("{e}");
                return false;
            }
        };
        let here = &config.nearby.location;
        log::info!(
            "configured: Polaris cluster {}, namespace {}, refresh every {:?}, location {}/{}/{}",
            config.polaris_cluster,
            config.namespace,
            config.refresh_interval,
            here.region,
            here.zone,
            here.campus
        );
        let seed = Wasm.now_ms() ^ (u64::from(self.context_id) << 32) ^ 0x9e37_79b9_7f4a_7c15;
        let worker = match Worker::new(Wasm, config, seed) {
            Ok(w) => w,
            Err(e) => {
                log::error!("{}", e.0);
                return false;
            }
        };
        if let Err(e) = hostcalls::set_tick_period(worker.tick_period()) {
            log::error!("cannot start the refresh timer: {e:?}");
            return false;
        }
        self.worker = Some(Rc::new(RefCell::new(worker)));
        true
    }

    fn on_tick(&mut self) {
        if let Some(worker) = &self.worker {
            worker.borrow_mut().on_tick();
        }
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        let worker = self.worker.clone()?;
        Some(Box::new(Http::new(context_id, worker)))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}
