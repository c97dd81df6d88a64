//! The HTTP context: hands the stream's callbacks to the core's [`Exchange`] and carries out its
//! verdicts.

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;

use super::abi::{grpc_result, WasmStream};
use super::SharedWorker;
use crate::core::{Exchange, LocalReply, Verdict};

pub struct Http {
    context_id: u32,
    worker: SharedWorker,
    exchange: Exchange,
}

impl Http {
    pub fn new(context_id: u32, worker: SharedWorker) -> Http {
        Http {
            context_id,
            worker,
            exchange: Exchange::default(),
        }
    }

    fn send(&self, reply: &LocalReply) {
        let mut headers = vec![("x-polaris-reason", reply.reason)];
        if !reply.headers.iter().any(|(k, _)| k == "content-type") {
            headers.push(("content-type", "text/plain"));
        }
        headers.extend(reply.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        if let Err(e) =
            hostcalls::send_http_response(reply.status, headers, Some(reply.body.as_bytes()))
        {
            log::warn!(
                "cannot send local reply on context {}: {e:?}",
                self.context_id
            );
        }
    }
}

impl Context for Http {
    fn on_grpc_call_response(&mut self, token_id: u32, status_code: u32, response_size: usize) {
        let result = grpc_result(status_code, response_size);
        let verdict = self.exchange.on_call_result(
            &mut self.worker.borrow_mut(),
            &mut WasmStream,
            token_id,
            result,
        );
        match verdict {
            Some(Verdict::Forward) => {
                if let Err(e) = hostcalls::resume_http_request() {
                    log::warn!(
                        "cannot resume request on context {}: {e:?}",
                        self.context_id
                    );
                }
            }
            Some(Verdict::Reply(reply)) => self.send(&reply),
            Some(Verdict::Wait) | None => {}
        }
    }
}

impl HttpContext for Http {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        #[cfg(feature = "crash-hook")]
        crash_if_asked();
        let verdict = self
            .exchange
            .on_request(&mut self.worker.borrow_mut(), &mut WasmStream);
        match verdict {
            Verdict::Forward => Action::Continue,
            Verdict::Reply(reply) => {
                self.send(&reply);
                Action::Pause
            }
            Verdict::Wait => Action::Pause,
        }
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        self.exchange
            .on_response(&mut self.worker.borrow_mut(), &mut WasmStream);
        Action::Continue
    }
}

/// Test builds only (feature `crash-hook`): aborts the VM when the request asks for it.
#[cfg(feature = "crash-hook")]
fn crash_if_asked() {
    let asked = hostcalls::get_map_value(
        proxy_wasm::types::MapType::HttpRequestHeaders,
        "x-polaris-test-crash",
    );
    if let Ok(Some(v)) = asked {
        if v == "1" {
            log::error!("x-polaris-test-crash: aborting this VM (crash-hook build)");
            std::process::abort();
        }
    }
}
