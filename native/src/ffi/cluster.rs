//! The upstream cluster side of Envoy 1.40's dynamic-module ABI (`envoy.clusters.dynamic_modules`):
//! our own declarations of the callbacks we call (each one's argument registers checked in the
//! 1.40 binary), safe handles over them, and the cluster hooks Envoy resolves, each catching
//! panics.
//!
//! The cluster holds Polaris's instances as hosts ([`crate::cluster`]); the filter hands each
//! request's pick over as Envoy's upstream override host, so no header is written and Envoy's
//! cluster manager finds the host in the cluster's own host map. The module's load balancer
//! is only asked when this worker does not hold that host yet: it waits for it (Envoy's
//! asynchronous host selection).

use std::ffi::c_void;

use super::abi::Buf;

extern "C" {
    #[allow(clippy::too_many_arguments)]
    fn envoy_dynamic_module_callback_cluster_add_hosts(
        cluster: *mut c_void,
        priority: u32,
        addresses: *const Buf,
        weights: *const u32,
        regions: *const Buf,
        zones: *const Buf,
        sub_zones: *const Buf,
        metadata: *const Buf,
        metadata_pairs_per_host: usize,
        count: usize,
        hosts_out: *mut *mut c_void,
    ) -> bool;
    fn envoy_dynamic_module_callback_cluster_remove_hosts(
        cluster: *mut c_void,
        hosts: *const *mut c_void,
        count: usize,
    ) -> usize;
    fn envoy_dynamic_module_callback_cluster_pre_init_complete(cluster: *mut c_void);
    fn envoy_dynamic_module_callback_cluster_scheduler_new(cluster: *mut c_void) -> *mut c_void;
    fn envoy_dynamic_module_callback_cluster_scheduler_commit(
        scheduler: *mut c_void,
        event_id: u64,
    );
    fn envoy_dynamic_module_callback_cluster_scheduler_delete(scheduler: *mut c_void);
    fn envoy_dynamic_module_callback_cluster_lb_find_host_by_address(
        lb: *mut c_void,
        address: Buf,
    ) -> *mut c_void;
    fn envoy_dynamic_module_callback_cluster_lb_context_get_override_host(
        context: *mut c_void,
        address_out: *mut Buf,
        strict_out: *mut bool,
    ) -> bool;
    fn envoy_dynamic_module_callback_cluster_lb_context_get_downstream_header(
        context: *mut c_void,
        key: Buf,
        result: *mut Buf,
        index: usize,
        optional_size: *mut usize,
    ) -> bool;
    fn envoy_dynamic_module_callback_cluster_lb_async_host_selection_complete(
        lb: *mut c_void,
        context: *mut c_void,
        host: *mut c_void,
        details: Buf,
    );
}

/// A host Envoy made for us (`add_hosts`): valid until we remove it or the cluster goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostPtr(*mut c_void);

// SAFETY: only an identity handed back to Envoy on the main thread (`remove_hosts`).
unsafe impl Send for HostPtr {}

/// Envoy's `DynamicModuleCluster`: lives until the cluster's destroy hook. Its host callbacks
/// run on the main thread only (Envoy checks and refuses elsewhere).
#[derive(Clone, Copy, Debug)]
pub struct ClusterHandle(*mut c_void);

impl ClusterHandle {
    /// Adds hosts (`ip:port`, weight 1, no locality) in one priority-set update; their handles
    /// in the same order, or `None` when Envoy refused the batch (then none was added).
    pub fn add_hosts(&self, addresses: &[String]) -> Option<Vec<HostPtr>> {
        let n = addresses.len();
        let bufs: Vec<Buf> = addresses.iter().map(|a| Buf::of(a.as_bytes())).collect();
        let weights = vec![1u32; n];
        let empty = vec![Buf::of(b""); n];
        let mut out = vec![std::ptr::null_mut(); n];
        // SAFETY: every array holds `n` elements living through the call; Envoy copies the
        // strings and writes `n` host pointers into `out`.
        let ok = unsafe {
            envoy_dynamic_module_callback_cluster_add_hosts(
                self.0,
                0,
                bufs.as_ptr(),
                weights.as_ptr(),
                empty.as_ptr(),
                empty.as_ptr(),
                empty.as_ptr(),
                std::ptr::null(),
                0,
                n,
                out.as_mut_ptr(),
            )
        };
        ok.then(|| out.into_iter().map(HostPtr).collect())
    }

    /// Removes hosts we added; how many Envoy found.
    pub fn remove_hosts(&self, hosts: &[HostPtr]) -> usize {
        let raw: Vec<*mut c_void> = hosts.iter().map(|h| h.0).collect();
        // SAFETY: pointers Envoy gave us for this cluster; the array lives through the call.
        unsafe {
            envoy_dynamic_module_callback_cluster_remove_hosts(self.0, raw.as_ptr(), raw.len())
        }
    }

    /// Lets Envoy finish the cluster's initialization (traffic may flow).
    pub fn pre_init_complete(&self) {
        // SAFETY: valid cluster pointer, main thread.
        unsafe { envoy_dynamic_module_callback_cluster_pre_init_complete(self.0) }
    }

    /// A way to run the cluster's scheduled hook on the main thread from another thread.
    pub fn scheduler(&self) -> Option<ClusterScheduler> {
        // SAFETY: valid cluster pointer.
        let ptr = unsafe { envoy_dynamic_module_callback_cluster_scheduler_new(self.0) };
        (!ptr.is_null()).then_some(ClusterScheduler(ptr))
    }
}

/// Envoy's cluster scheduler: `commit` from any thread runs `on_cluster_scheduled` on the main
/// thread. Deleted on drop.
pub struct ClusterScheduler(*mut c_void);

// SAFETY: Envoy documents the scheduler for use from threads the module manages.
unsafe impl Send for ClusterScheduler {}
// SAFETY: as above.
unsafe impl Sync for ClusterScheduler {}

impl ClusterScheduler {
    pub fn commit(&self, event_id: u64) {
        // SAFETY: the scheduler lives until drop.
        unsafe { envoy_dynamic_module_callback_cluster_scheduler_commit(self.0, event_id) }
    }
}

impl Drop for ClusterScheduler {
    fn drop(&mut self) {
        // SAFETY: created by scheduler_new, deleted once.
        unsafe { envoy_dynamic_module_callback_cluster_scheduler_delete(self.0) }
    }
}

/// A worker's view of the cluster (`DynamicModuleLoadBalancer`): lives as long as our
/// [`WorkerLb`], used on its worker thread only.
#[derive(Clone, Copy, Debug)]
pub struct LbHandle(*mut c_void);

/// A host of this worker's view of the cluster, for one host selection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WorkerHost(*mut c_void);

/// One request's load-balancing context: valid from `choose_host` until its selection is
/// completed or cancelled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LbContext(*mut c_void);

impl LbContext {
    /// The override host the filter set (`ip:port`), if any.
    pub fn override_host(&self) -> Option<String> {
        if self.0.is_null() {
            return None;
        }
        let mut out = Buf::NULL;
        let mut strict = false;
        // SAFETY: valid context during its selection; `out` is written by Envoy.
        let found = unsafe {
            envoy_dynamic_module_callback_cluster_lb_context_get_override_host(
                self.0,
                &mut out,
                &mut strict,
            )
        };
        // SAFETY: Envoy's buffer, copied now.
        let bytes = if found { unsafe { out.bytes() } } else { &[] };
        std::str::from_utf8(bytes)
            .ok()
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
    }
}

impl LbContext {
    /// The first value of the downstream request header `name`, borrowed from Envoy.
    pub fn header_with<R>(&self, name: &str, f: impl FnOnce(&[u8]) -> R) -> Option<R> {
        if self.0.is_null() {
            return None;
        }
        let mut out = Buf::NULL;
        // SAFETY: valid context during its selection; Envoy reads the key during the call.
        let found = unsafe {
            envoy_dynamic_module_callback_cluster_lb_context_get_downstream_header(
                self.0,
                Buf::of(name.as_bytes()),
                &mut out,
                0,
                std::ptr::null_mut(),
            )
        };
        // SAFETY: Envoy's buffer, valid during this selection.
        found.then(|| f(unsafe { out.bytes() }))
    }
}

impl LbHandle {
    /// The host at `address` this worker holds now.
    pub fn find_host(&self, address: &str) -> Option<WorkerHost> {
        // SAFETY: valid LB pointer on its worker; Envoy reads the buffer during the call.
        let ptr = unsafe {
            envoy_dynamic_module_callback_cluster_lb_find_host_by_address(
                self.0,
                Buf::of(address.as_bytes()),
            )
        };
        (!ptr.is_null()).then_some(WorkerHost(ptr))
    }

    /// Ends a selection we answered as pending: `None` means no host (Envoy answers 503).
    pub fn complete(&self, context: LbContext, host: Option<WorkerHost>, details: &str) {
        let host = host.map_or(std::ptr::null_mut(), |h| h.0);
        // SAFETY: a context whose selection is pending (neither completed nor cancelled).
        unsafe {
            envoy_dynamic_module_callback_cluster_lb_async_host_selection_complete(
                self.0,
                context.0,
                host,
                Buf::of(details.as_bytes()),
            )
        }
    }
}

impl ClusterHandle {
    /// # Safety
    /// `ptr` is the one Envoy handed to the hook that makes this handle.
    pub(crate) unsafe fn new(ptr: *mut c_void) -> ClusterHandle {
        ClusterHandle(ptr)
    }
}

impl LbHandle {
    /// # Safety
    /// `ptr` is the one Envoy handed to the hook that makes this handle.
    pub(crate) unsafe fn new(ptr: *mut c_void) -> LbHandle {
        LbHandle(ptr)
    }
}

impl LbContext {
    /// # Safety
    /// `ptr` is the one Envoy handed to the hook that makes this handle.
    pub(crate) unsafe fn new(ptr: *mut c_void) -> LbContext {
        LbContext(ptr)
    }
}

impl WorkerHost {
    /// The host as Envoy knows it, to hand back from a selection.
    pub(crate) fn as_ptr(self) -> *mut c_void {
        self.0
    }
}
