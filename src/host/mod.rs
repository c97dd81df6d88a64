//! The only code that calls the proxy-wasm host ABI. It reads facts from Envoy, hands them to the
//! pure modules, and carries their decisions out. Host calls go through `hostcalls` directly,
//! never the SDK's trait helpers, which `unwrap()` host errors into panics.

mod facts;
mod http;
mod metrics;
mod root;
mod store;
mod worker;

use proxy_wasm::types::LogLevel;

/// Registers the root context factory; called from `_initialize`.
pub fn start() {
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|context_id| Box::new(root::Root::new(context_id)));
}

/// Milliseconds since the epoch by the host clock (0 if the host cannot tell).
fn now_ms() -> u64 {
    proxy_wasm::hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}
