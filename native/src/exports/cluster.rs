//! The cluster hooks Envoy resolves (`envoy.clusters.dynamic_modules`), each catching panics;
//! the declarations and handles they use are [`crate::ffi::cluster`].

use std::ffi::c_void;
use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::cluster::{Choice, Cluster, ClusterConfig, WorkerLb};
use crate::ffi::abi::Buf;
use crate::ffi::cluster::{ClusterHandle, LbContext, LbHandle};

fn guard<T>(fallback: T, f: impl FnOnce() -> T) -> T {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or(fallback)
}

/// # Safety
/// `ptr` is null or our pointer from `cluster_config_new`, not yet destroyed.
unsafe fn config<'a>(ptr: *const c_void) -> Option<&'a ClusterConfig> {
    // SAFETY: the caller's contract.
    unsafe { ptr.cast::<ClusterConfig>().as_ref() }
}

/// # Safety
/// `ptr` is null or our pointer from `cluster_new`, not yet destroyed.
unsafe fn cluster<'a>(ptr: *const c_void) -> Option<&'a Cluster> {
    // SAFETY: the caller's contract.
    unsafe { ptr.cast::<Cluster>().as_ref() }
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_cluster_config_new(
    _config_envoy: *mut c_void,
    name: Buf,
    config: Buf,
) -> *const c_void {
    guard(std::ptr::null(), || {
        // SAFETY: Envoy's buffers live through this hook; we copy what we keep.
        let (name, config) = unsafe { (name.bytes(), config.bytes()) };
        match ClusterConfig::new(name, config) {
            Some(c) => Box::into_raw(Box::new(c)).cast_const().cast(),
            None => std::ptr::null(),
        }
    })
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_cluster_config_destroy(config_module: *const c_void) {
    guard((), || {
        if !config_module.is_null() {
            // SAFETY: our own pointer from config_new, destroyed once.
            drop(unsafe { Box::from_raw(config_module.cast::<ClusterConfig>().cast_mut()) });
        }
    })
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_cluster_new(
    config_module: *const c_void,
    _cluster_envoy: *mut c_void,
) -> *const c_void {
    guard(std::ptr::null(), || {
        // SAFETY: Envoy hands back the config pointer we returned.
        if unsafe { config(config_module) }.is_none() {
            return std::ptr::null();
        }
        let c = Cluster::new();
        Box::into_raw(Box::new(c)).cast_const().cast()
    })
}

/// The first sync, then Envoy may go on (whatever happened: it would wait forever), then the
/// thread that keeps the hosts in sync starts.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_cluster_init(
    cluster_envoy: *mut c_void,
    cluster_module: *const c_void,
) {
    // SAFETY: Envoy's cluster, handed to this hook.
    let handle = unsafe { ClusterHandle::new(cluster_envoy) };
    // SAFETY: our own pointer from cluster_new.
    let c = guard(None, || unsafe { cluster(cluster_module) });
    if let Some(c) = c {
        guard((), || c.sync(handle));
    }
    handle.pre_init_complete();
    if let Some(c) = c {
        guard((), || c.watch(handle));
    }
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_cluster_destroy(cluster_module: *const c_void) {
    guard((), || {
        if !cluster_module.is_null() {
            // SAFETY: our own pointer from cluster_new, destroyed once.
            let c = unsafe { Box::from_raw(cluster_module.cast::<Cluster>().cast_mut()) };
            c.shutdown();
        }
    })
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_cluster_scheduled(
    cluster_envoy: *mut c_void,
    cluster_module: *const c_void,
    _event_id: u64,
) {
    guard((), || {
        // SAFETY: our own pointer from cluster_new.
        if let Some(c) = unsafe { cluster(cluster_module) } {
            // SAFETY: Envoy's cluster, handed to this hook.
            c.sync(unsafe { ClusterHandle::new(cluster_envoy) });
        }
    })
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_cluster_server_initialized(
    _cluster_envoy: *mut c_void,
    _cluster_module: *const c_void,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_cluster_drain_started(
    _cluster_envoy: *mut c_void,
    _cluster_module: *const c_void,
) {
}

/// Nothing to flush: we tell Envoy at once that we are done.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_cluster_shutdown(
    _cluster_envoy: *mut c_void,
    _cluster_module: *const c_void,
    completion: Option<extern "C" fn(*mut c_void)>,
    context: *mut c_void,
) {
    if let Some(done) = completion {
        done(context);
    }
}

/// The cluster makes no callouts.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_cluster_http_callout_done(
    _cluster_envoy: *mut c_void,
    _cluster_module: *const c_void,
    _callout_id: u64,
    _result: u32,
    _headers: *const c_void,
    _headers_size: usize,
    _chunks: *const c_void,
    _chunks_size: usize,
) {
}

/// The cluster never fans out to workers, keeps no worker slots and sets no worker timers.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_cluster_worker_event(
    _cluster_envoy: *mut c_void,
    _cluster_module: *const c_void,
    _event_id: u64,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_cluster_worker_slot_data_destroy(_data: *mut c_void) {}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_cluster_worker_timer_fired(
    _cluster_envoy: *mut c_void,
    _cluster_module: *const c_void,
    _timer: *mut c_void,
) {
}

/// # Safety
/// `ptr` is null or our pointer from `cluster_lb_new`, not yet destroyed; Envoy calls a worker's
/// load balancer on that worker only, one hook at a time.
unsafe fn worker_lb<'a>(ptr: *const c_void) -> Option<&'a WorkerLb> {
    // SAFETY: the caller's contract.
    unsafe { ptr.cast::<WorkerLb>().as_ref() }
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_cluster_lb_new(
    cluster_module: *const c_void,
    lb_envoy: *mut c_void,
) -> *const c_void {
    guard(std::ptr::null(), || {
        // SAFETY: our own pointer from cluster_new.
        let Some(c) = (unsafe { cluster(cluster_module) }) else {
            return std::ptr::null();
        };
        // SAFETY: Envoy's load balancer, handed to this hook.
        let lb = c.worker_lb(unsafe { LbHandle::new(lb_envoy) });
        Box::into_raw(Box::new(lb)).cast_const().cast()
    })
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_cluster_lb_destroy(lb_module: *const c_void) {
    guard((), || {
        if !lb_module.is_null() {
            // SAFETY: our own pointer from lb_new, destroyed once.
            drop(unsafe { Box::from_raw(lb_module.cast::<WorkerLb>().cast_mut()) });
        }
    })
}

/// Reached when the filter's pick is not among this worker's hosts (Envoy found no override
/// host): the host if it has arrived meanwhile, else a pending selection ended by
/// [`envoy_dynamic_module_on_cluster_lb_on_host_membership_update`] once it arrives.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_cluster_lb_choose_host(
    lb_module: *const c_void,
    context: *mut c_void,
    host_out: *mut *mut c_void,
    async_out: *mut *mut c_void,
) {
    let choice = guard(Choice::NoHost, || {
        // SAFETY: our own pointer from lb_new, on its worker.
        match unsafe { worker_lb(lb_module) } {
            // SAFETY: the selection's context, handed to this hook.
            Some(lb) => lb.choose(unsafe { LbContext::new(context) }),
            None => Choice::NoHost,
        }
    });
    let (host, pending) = match choice {
        Choice::Host(h) => (h.as_ptr(), std::ptr::null_mut()),
        Choice::NoHost => (std::ptr::null_mut(), std::ptr::null_mut()),
        // A non-null handle Envoy gives back to `cancel_host_selection`: the selection's id.
        Choice::Pending(id) => (std::ptr::null_mut(), id as usize as *mut c_void),
    };
    // SAFETY: Envoy's out-pointers for this call (checked for null).
    unsafe {
        if let Some(h) = host_out.as_mut() {
            *h = host;
        }
        if let Some(a) = async_out.as_mut() {
            *a = pending;
        }
    }
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_cluster_lb_cancel_host_selection(
    lb_module: *const c_void,
    async_handle: *mut c_void,
) {
    guard((), || {
        // SAFETY: our own pointer from lb_new, on its worker.
        if let Some(lb) = unsafe { worker_lb(lb_module) } {
            lb.cancel(async_handle as usize as u64);
        }
    })
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_cluster_lb_on_host_membership_update(
    _lb_envoy: *mut c_void,
    lb_module: *const c_void,
    _added: usize,
    _removed: usize,
) {
    guard((), || {
        // SAFETY: our own pointer from lb_new, on its worker.
        if let Some(lb) = unsafe { worker_lb(lb_module) } {
            lb.hosts_changed();
        }
    })
}
