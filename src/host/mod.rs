//! The only code that calls the proxy-wasm host ABI: [`abi::Wasm`] implements the core's host
//! traits over proxy-wasm, and the two contexts hand Envoy's callbacks to the core and carry out
//! its verdicts. Host calls go through `hostcalls` directly, never the SDK's trait helpers, which
//! `unwrap()` host errors into panics.

mod abi;
mod http;
mod root;

use std::cell::RefCell;
use std::rc::Rc;

use proxy_wasm::types::LogLevel;

use crate::core::Worker;

/// The worker shared by a thread's root context and its HTTP contexts.
type SharedWorker = Rc<RefCell<Worker<abi::Wasm>>>;

/// Registers the root context factory; called from `_initialize`.
pub fn start() {
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|context_id| Box::new(root::Root::new(context_id)));
}
