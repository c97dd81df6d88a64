//! The only code that calls the proxy-wasm host ABI: [`abi::Wasm`] implements the core's host
//! traits over proxy-wasm, and [`dispatch`] hands Envoy's callbacks to the core and carries out
//! its verdicts. Host calls go through `hostcalls` directly, never the SDK's trait helpers, which
//! `unwrap()` host errors into panics.

mod abi;
pub mod dispatch;
