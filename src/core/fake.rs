//! A fake host for unit tests: an in-memory shared-data store with Envoy's CAS rules, a settable
//! clock, and a record of every host call, so tests assert what the core asked of the host.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use std::time::Duration;

use super::host::{
    Calls, Clock, GrpcCall, HostError, HttpCall, Metrics, Pacing, Properties, Stream,
};
use super::host::{Store, StoreError};

/// One host call, as the fake saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Call {
    Get(String),
    Set {
        key: String,
        cas: Option<u32>,
    },
    /// A gRPC unary call: method and the request message.
    Grpc {
        method: String,
        message: Vec<u8>,
    },
    /// A gRPC stream opened: `service/method` and its initial metadata.
    StreamOpen {
        method: String,
        metadata: Vec<(String, String)>,
    },
    /// A message sent on a stream.
    StreamSend {
        token: u32,
        message: Vec<u8>,
    },
    StreamClose(u32),
    /// An HTTP callout: cluster and `:path`.
    /// An HTTP callout: the cluster, its `:path`, and every header sent.
    Http {
        cluster: String,
        path: String,
        headers: Vec<(String, String)>,
    },
    Now,
    Property(Vec<String>),
    DefineMetric(String),
    AddMetric {
        id: u32,
        n: u64,
    },
    SetGauge {
        id: u32,
        value: u64,
    },
    /// An HTTP callout: the cluster and its headers.
    ReadResponseHeader(String),
    StreamProperty(Vec<String>),
    ReadHeader(String),
    WriteHeader(String, String),
    /// The pick handed over as Envoy's override host.
    OverrideHost(String),
    WriteResponseHeader(String, String),
    RemoveHeader(String),
    SourceAddress,
    DestinationAddress,
    /// A paused stream resumed.
    Resume(u32),
    TickPeriod(Duration),
    /// The leader asked to tick now.
    WakeLeader,
}

/// Shared data: key -> (value, cas), one map for every VM of the Envoy.
pub type Data = Rc<RefCell<HashMap<String, (Vec<u8>, u32)>>>;

#[derive(Default)]
pub struct State {
    pub calls: Vec<Call>,
    pub data: Data,
    pub now_ms: u64,
    pub next_token: u32,
    pub node: Option<Vec<u8>>,
    /// The next gRPC dispatch fails with this.
    pub refuse_calls: Option<String>,
    /// Streams that are gone: resuming them fails.
    pub gone: Vec<u32>,
    /// The clock is as cheap as a native read (the default is the wasm host's: costly).
    pub cheap_clock: bool,
}

/// A shared handle: the worker owns one clone, the test keeps another.
#[derive(Clone, Default)]
pub struct FakeHost(pub Rc<RefCell<State>>);

impl FakeHost {
    pub fn new(now_ms: u64) -> FakeHost {
        let host = FakeHost::default();
        host.0.borrow_mut().now_ms = now_ms;
        host
    }

    /// Another VM of the same Envoy: same store, own call record.
    pub fn sibling(&self) -> FakeHost {
        let other = FakeHost::default();
        {
            let mine = self.0.borrow();
            let mut theirs = other.0.borrow_mut();
            theirs.now_ms = mine.now_ms;
            theirs.data = Rc::clone(&mine.data);
        }
        other
    }

    pub fn set_now(&self, now_ms: u64) {
        self.0.borrow_mut().now_ms = now_ms;
    }

    /// Takes the calls recorded so far.
    pub fn take_calls(&self) -> Vec<Call> {
        std::mem::take(&mut self.0.borrow_mut().calls)
    }

    /// The calls recorded so far that are not clock reads or metric hand-overs.
    pub fn take_effects(&self) -> Vec<Call> {
        self.take_calls()
            .into_iter()
            .filter(|c| !matches!(c, Call::Now | Call::AddMetric { .. }))
            .collect()
    }

    pub fn stored(&self, key: &str) -> Option<Vec<u8>> {
        self.0
            .borrow()
            .data
            .borrow()
            .get(key)
            .map(|(v, _)| v.clone())
    }

    pub fn put(&self, key: &str, value: &[u8]) {
        let s = self.0.borrow();
        let mut data = s.data.borrow_mut();
        let cas = data.get(key).map_or(1, |(_, c)| c + 1);
        data.insert(key.to_string(), (value.to_vec(), cas));
    }

    fn record(&self, call: Call) {
        self.0.borrow_mut().calls.push(call);
    }
}

impl Store for FakeHost {
    fn get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
        self.record(Call::Get(key.to_string()));
        match self.0.borrow().data.borrow().get(key) {
            Some((v, cas)) => (Some(v.clone()), Some(*cas)),
            None => (None, None),
        }
    }

    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), StoreError> {
        self.record(Call::Set {
            key: key.to_string(),
            cas,
        });
        let s = self.0.borrow();
        let mut data = s.data.borrow_mut();
        let current = data.get(key).map(|(_, c)| *c);
        // Envoy checks a CAS only against an existing key, and 0 means "no check".
        if let (Some(want), Some(have)) = (cas.filter(|c| *c != 0), current) {
            if want != have {
                return Err(StoreError::CasMismatch);
            }
        }
        data.insert(
            key.to_string(),
            (value.to_vec(), current.map_or(1, |c| c + 1)),
        );
        Ok(())
    }
}

impl Clock for FakeHost {
    fn reads_are_costly(&self) -> bool {
        !self.0.borrow().cheap_clock
    }

    fn now_ms(&self) -> u64 {
        self.record(Call::Now);
        self.0.borrow().now_ms
    }
}

impl Calls for FakeHost {
    fn grpc_unary(&self, call: GrpcCall<'_>) -> Result<u32, HostError> {
        self.record(Call::Grpc {
            method: format!("{}/{}", call.service, call.method),
            message: call.message.to_vec(),
        });
        let mut s = self.0.borrow_mut();
        if let Some(e) = s.refuse_calls.take() {
            return Err(HostError(e));
        }
        s.next_token += 1;
        Ok(s.next_token)
    }

    fn grpc_stream_open(
        &self,
        _upstream: &str,
        service: &str,
        method: &str,
        metadata: &[(&str, &[u8])],
    ) -> Result<u32, HostError> {
        self.record(Call::StreamOpen {
            method: format!("{service}/{method}"),
            metadata: metadata
                .iter()
                .map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v).into_owned()))
                .collect(),
        });
        let mut s = self.0.borrow_mut();
        if let Some(e) = s.refuse_calls.take() {
            return Err(HostError(e));
        }
        s.next_token += 1;
        Ok(s.next_token)
    }

    fn grpc_stream_send(&self, token: u32, message: &[u8], _end: bool) -> Result<(), HostError> {
        self.record(Call::StreamSend {
            token,
            message: message.to_vec(),
        });
        Ok(())
    }

    fn grpc_stream_close(&self, token: u32) -> Result<(), HostError> {
        self.record(Call::StreamClose(token));
        Ok(())
    }

    fn http_call(&self, call: HttpCall<'_>) -> Result<u32, HostError> {
        let path = call
            .headers
            .iter()
            .find(|(k, _)| *k == ":path")
            .map_or("", |(_, v)| v);
        self.record(Call::Http {
            cluster: call.cluster.to_string(),
            path: path.to_string(),
            headers: call
                .headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        });
        let mut s = self.0.borrow_mut();
        if let Some(e) = s.refuse_calls.take() {
            return Err(HostError(e));
        }
        s.next_token += 1;
        Ok(s.next_token)
    }
}

impl Metrics for FakeHost {
    fn define_counter(&self, name: &str) -> Result<u32, HostError> {
        self.record(Call::DefineMetric(name.to_string()));
        let mut s = self.0.borrow_mut();
        s.next_token += 1;
        Ok(s.next_token)
    }

    fn add(&self, id: u32, n: u64) {
        self.record(Call::AddMetric { id, n });
    }

    fn define_gauge(&self, name: &str) -> Result<u32, HostError> {
        self.define_counter(name)
    }

    fn set_gauge(&self, id: u32, value: u64) {
        self.record(Call::SetGauge { id, value });
    }
}

impl Properties for FakeHost {
    fn property(&self, path: &[&str]) -> Option<Vec<u8>> {
        self.record(Call::Property(path.iter().map(|p| p.to_string()).collect()));
        self.0.borrow().node.clone()
    }
}

impl Pacing for FakeHost {
    fn resume_request(&self, id: u32) -> Result<(), HostError> {
        self.record(Call::Resume(id));
        if self.0.borrow().gone.contains(&id) {
            return Err(HostError("BadArgument".into()));
        }
        Ok(())
    }

    fn set_tick_period(&self, period: Duration) -> Result<(), HostError> {
        self.record(Call::TickPeriod(period));
        Ok(())
    }

    fn wake_leader(&self) {
        self.record(Call::WakeLeader);
    }
}

/// One request's headers and peer, recording what the core reads and writes.
#[derive(Default)]
pub struct FakeStream {
    pub headers: Vec<(String, String)>,
    pub source: Option<String>,
    pub destination: Option<String>,
    pub calls: Vec<Call>,
    pub response_headers: Vec<(String, String)>,
    /// Stream properties the host answers (`response.code_details`).
    pub properties: Vec<(Vec<String>, Vec<u8>)>,
}

impl FakeStream {
    pub fn with(headers: &[(&str, &str)]) -> FakeStream {
        FakeStream {
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            source: Some("10.0.0.9:5555".into()),
            destination: Some("10.0.0.1:10001".into()),
            ..Default::default()
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

impl Stream for FakeStream {
    fn request_header(&mut self, name: &str) -> Option<String> {
        self.calls.push(Call::ReadHeader(name.to_string()));
        self.header(name).map(str::to_string)
    }

    fn set_override_host(&mut self, upstream: &str) -> Result<(), HostError> {
        self.calls.push(Call::OverrideHost(upstream.to_string()));
        Ok(())
    }

    fn set_request_header(&mut self, name: &str, value: &str) -> Result<(), HostError> {
        self.calls
            .push(Call::WriteHeader(name.to_string(), value.to_string()));
        self.headers.retain(|(k, _)| k != name);
        self.headers.push((name.to_string(), value.to_string()));
        Ok(())
    }

    fn set_response_header(&mut self, name: &str, value: &str) -> Result<(), HostError> {
        self.calls.push(Call::WriteResponseHeader(
            name.to_string(),
            value.to_string(),
        ));
        self.response_headers
            .push((name.to_string(), value.to_string()));
        Ok(())
    }

    fn remove_request_header(&mut self, name: &str) -> Result<(), HostError> {
        self.calls.push(Call::RemoveHeader(name.to_string()));
        self.headers.retain(|(k, _)| k != name);
        Ok(())
    }

    fn source_address(&mut self) -> Option<String> {
        self.calls.push(Call::SourceAddress);
        self.source.clone()
    }

    fn destination_address(&mut self) -> Option<String> {
        self.calls.push(Call::DestinationAddress);
        self.destination.clone()
    }

    fn response_header(&mut self, name: &str) -> Option<String> {
        self.calls.push(Call::ReadResponseHeader(name.to_string()));
        self.response_headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    }

    fn stream_property(&mut self, path: &[&str]) -> Option<Vec<u8>> {
        let path: Vec<String> = path.iter().map(|p| p.to_string()).collect();
        self.calls.push(Call::StreamProperty(path.clone()));
        self.properties
            .iter()
            .find(|(p, _)| *p == path)
            .map(|(_, v)| v.clone())
    }
}

impl FakeStream {
    /// The upstream answered with `status`; `details` is Envoy's `response.code_details`.
    pub fn respond(&mut self, status: u32, details: &str) {
        self.response_headers = vec![(":status".into(), status.to_string())];
        self.properties = vec![(
            vec!["response".into(), "code_details".into()],
            details.as_bytes().to_vec(),
        )];
    }
}
