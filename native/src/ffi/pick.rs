//! Handing the pick to the upstream cluster without a header: Envoy's upstream override host
//! (`envoy_dynamic_module_callback_http_set_upstream_override_host`, Envoy 1.40).

use std::ffi::c_void;

use super::abi::{Buf, FilterHandle};

extern "C" {
    fn envoy_dynamic_module_callback_http_set_upstream_override_host(
        filter: *mut c_void,
        host: Buf,
        strict: bool,
    ) -> bool;
}

impl FilterHandle {
    /// Asks the cluster for the host at `address` (`ip:port`); with `strict`, no other host is
    /// picked when the cluster has none there. False when Envoy refused (not an IP address).
    pub fn set_override_host(&self, address: &str, strict: bool) -> bool {
        // SAFETY: valid filter pointer during its hooks; Envoy copies the buffer.
        unsafe {
            envoy_dynamic_module_callback_http_set_upstream_override_host(
                self.ptr(),
                Buf::of(address.as_bytes()),
                strict,
            )
        }
    }
}
