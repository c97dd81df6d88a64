//! The bench's reference wasm filter: one exported callback per request, which writes the plugin
//! configuration (an `ip:port`) as the ORIGINAL_DST upstream header. No SDK, no state: what any
//! wasm filter that picks an upstream pays at least (issue 13: ours within 0.03 of it).

use std::cell::RefCell;

const HEADER: &[u8] = b"x-polaris-upstream";
const REQUEST_HEADERS: u32 = 0;
const PLUGIN_CONFIGURATION: u32 = 7;

#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_replace_header_map_value(
        map: u32,
        key: *const u8,
        key_size: usize,
        value: *const u8,
        value_size: usize,
    ) -> u32;
    fn proxy_get_buffer_bytes(
        buffer: u32,
        start: usize,
        max: usize,
        data: *mut *mut u8,
        size: *mut usize,
    ) -> u32;
}

thread_local! {
    static UPSTREAM: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

#[no_mangle]
pub extern "C" fn proxy_abi_version_0_2_1() {}

#[no_mangle]
pub extern "C" fn proxy_on_memory_allocate(size: usize) -> *mut u8 {
    let mut buffer = Vec::<u8>::with_capacity(size);
    let ptr = buffer.as_mut_ptr();
    std::mem::forget(buffer);
    ptr
}

#[no_mangle]
pub extern "C" fn proxy_on_vm_start(_root: u32, _size: usize) -> bool {
    true
}

#[no_mangle]
pub extern "C" fn proxy_on_configure(_root: u32, size: usize) -> bool {
    let mut data = std::ptr::null_mut();
    let mut len = 0;
    // SAFETY: the host writes a buffer it allocated through proxy_on_memory_allocate.
    let status =
        unsafe { proxy_get_buffer_bytes(PLUGIN_CONFIGURATION, 0, size, &mut data, &mut len) };
    if status != 0 || data.is_null() {
        return false;
    }
    // SAFETY: `data` holds `len` bytes allocated as a Vec<u8> of capacity `len`.
    let value = unsafe { Vec::from_raw_parts(data, len, len) };
    UPSTREAM.with(|u| *u.borrow_mut() = value);
    true
}

#[no_mangle]
pub extern "C" fn proxy_on_request_headers(_context: u32, _headers: usize, _eos: bool) -> u32 {
    UPSTREAM.with(|u| {
        let value = u.borrow();
        // SAFETY: both slices outlive the call.
        unsafe {
            proxy_replace_header_map_value(
                REQUEST_HEADERS,
                HEADER.as_ptr(),
                HEADER.len(),
                value.as_ptr(),
                value.len(),
            );
        }
    });
    0
}
