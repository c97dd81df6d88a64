//! A tiny host for the filter's core: shared data in memory with Envoy's CAS rules, a fixed
//! clock, calls that are accepted and never answered, and counters that count nothing.
//! (The crate's own fake, `core::fake`, is test-only and records every call; fuzzing needs
//! neither.)

use std::cell::{Cell, RefCell};
use std::collections::HashMap;

use polaris_wasm::core::host::{
    Calls, Clock, GrpcCall, HostError, HttpCall, Metrics, Pacing, Properties, Store, StoreError,
};

#[derive(Default)]
pub struct FuzzHost {
    data: RefCell<HashMap<String, (Vec<u8>, u32)>>,
    next_token: Cell<u32>,
    pub now_ms: u64,
    /// Envoy's serialized node (`xds.node`), if the fuzz input supplies one.
    pub node: Option<Vec<u8>>,
}

impl FuzzHost {
    /// A host whose clock reads `now_ms`.
    pub fn at(now_ms: u64) -> FuzzHost {
        FuzzHost {
            now_ms,
            ..FuzzHost::default()
        }
    }

    fn token(&self) -> u32 {
        let t = self.next_token.get().wrapping_add(1);
        self.next_token.set(t);
        t
    }

    /// Puts a value into shared data as another VM would.
    pub fn put(&self, key: &str, value: &[u8]) {
        let mut data = self.data.borrow_mut();
        let cas = data.get(key).map_or(1, |(_, c)| c.wrapping_add(1));
        data.insert(key.to_string(), (value.to_vec(), cas));
    }
}

impl Store for FuzzHost {
    fn get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
        match self.data.borrow().get(key) {
            Some((v, cas)) => (Some(v.clone()), Some(*cas)),
            None => (None, None),
        }
    }

    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), StoreError> {
        let mut data = self.data.borrow_mut();
        let current = data.get(key).map(|(_, c)| *c);
        // Envoy checks a CAS only against an existing key, and 0 means "no check".
        if let (Some(want), Some(have)) = (cas.filter(|c| *c != 0), current) {
            if want != have {
                return Err(StoreError::CasMismatch);
            }
        }
        let next = current.map_or(1, |c| c.wrapping_add(1));
        data.insert(key.to_string(), (value.to_vec(), next));
        Ok(())
    }
}

impl Clock for FuzzHost {
    fn now_ms(&self) -> u64 {
        self.now_ms
    }
}

impl Calls for FuzzHost {
    fn grpc_unary(&self, _call: GrpcCall<'_>) -> Result<u32, HostError> {
        Ok(self.token())
    }

    fn grpc_stream_open(
        &self,
        _upstream: &str,
        _service: &str,
        _method: &str,
        _metadata: &[(&str, &[u8])],
    ) -> Result<u32, HostError> {
        Ok(self.token())
    }

    fn grpc_stream_send(&self, _token: u32, _message: &[u8], _end: bool) -> Result<(), HostError> {
        Ok(())
    }

    fn grpc_stream_close(&self, _token: u32) -> Result<(), HostError> {
        Ok(())
    }

    fn http_call(&self, _call: HttpCall<'_>) -> Result<u32, HostError> {
        Ok(self.token())
    }
}

impl Metrics for FuzzHost {
    fn define_counter(&self, _name: &str) -> Result<u32, HostError> {
        Ok(self.token())
    }

    fn add(&self, _id: u32, _n: u64) {}

    fn define_gauge(&self, _name: &str) -> Result<u32, HostError> {
        Ok(self.token())
    }

    fn set_gauge(&self, _id: u32, _value: u64) {}
}

impl Properties for FuzzHost {
    fn property(&self, _path: &[&str]) -> Option<Vec<u8>> {
        self.node.clone()
    }
}

impl Pacing for FuzzHost {
    fn resume_request(&self, _id: u32) -> Result<(), HostError> {
        Ok(())
    }

    fn set_tick_period(&self, _period: std::time::Duration) -> Result<(), HostError> {
        Ok(())
    }
}
