//! One HTTP stream: hands its hooks to the core's [`Exchange`] with this thread's worker, and
//! carries out the verdicts (continue, hold and resume, or a local reply).
//!
//! Each Envoy worker thread has one follower worker per plugin, made on its first stream. It
//! ticks lazily at the start of a request when a tick is due (resync, breaker windows): the
//! ABI gives a worker thread no timer without a stream. Counts are flushed after each request,
//! so the stats are current when traffic stops.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use polaris_wasm::core::host::Clock;
use polaris_wasm::core::{Exchange, LocalReply, Verdict, Worker};

use crate::ffi::abi::{Answer, FilterHandle};
use crate::grpc;
use crate::host::{CallKind, Native, NativeStream};
use crate::plugin::Plugin;

/// A worker thread's follower worker of one plugin.
struct Local {
    worker: RefCell<Worker<Native>>,
    period: Duration,
    next_tick: Cell<Instant>,
}

/// A thread's followers, by plugin id (with the plugin, to drop those of plugins gone).
type Locals = HashMap<u64, (Weak<Plugin>, Rc<Local>)>;

thread_local! {
    static LOCALS: RefCell<Locals> = RefCell::new(HashMap::new());
}

/// This thread's worker of `plugin`, made on first use (dropping those of plugins gone).
fn local(plugin: &Arc<Plugin>) -> Option<Rc<Local>> {
    LOCALS.with(|locals| {
        let mut locals = locals.borrow_mut();
        if let Some((_, l)) = locals.get(&plugin.id()) {
            return Some(Rc::clone(l));
        }
        locals.retain(|_, (p, _)| p.strong_count() > 0);
        let host = Native::requests(Arc::clone(plugin.shared()));
        let thread = std::thread::current().id();
        let seed = host.now_ms() ^ (plugin.id() << 40) ^ hash(&thread);
        let worker = match Worker::new(host, plugin.config().clone(), seed) {
            Ok(w) => w,
            Err(e) => {
                log::error!("{}", e.0);
                return None;
            }
        };
        let l = Rc::new(Local {
            period: worker.tick_period(),
            worker: RefCell::new(worker),
            next_tick: Cell::new(Instant::now()),
        });
        locals.insert(plugin.id(), (Arc::downgrade(plugin), Rc::clone(&l)));
        Some(l)
    })
}

fn hash<T: std::hash::Hash>(t: &T) -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(t)
}

pub struct Filter {
    plugin: Arc<Plugin>,
    local: Option<Rc<Local>>,
    handle: FilterHandle,
    exchange: RefCell<Exchange>,
    /// The core is running for this stream: an answer arriving now (inline) waits in `inbox`.
    busy: Cell<bool>,
    inbox: RefCell<VecDeque<(u64, Answer)>>,
    /// The request is held until its calls are answered.
    held: Cell<bool>,
}

impl Filter {
    pub fn new(plugin: &Arc<Plugin>, handle: FilterHandle) -> Filter {
        Filter {
            plugin: Arc::clone(plugin),
            local: local(plugin),
            handle,
            exchange: RefCell::new(Exchange::default()),
            busy: Cell::new(false),
            inbox: RefCell::new(VecDeque::new()),
            held: Cell::new(false),
        }
    }

    /// The request headers: true to let the request go on now.
    pub fn on_request_headers(&self, h: FilterHandle) -> bool {
        let Some(local) = &self.local else {
            self.send(h, &unavailable("no_worker"));
            return false;
        };
        self.busy.set(true);
        let verdict = {
            let mut w = local.worker.borrow_mut();
            if let Some(name) = self.plugin.panic_header() {
                injected_panic(h, name);
            }
            let now = Instant::now();
            if now >= local.next_tick.get() {
                local.next_tick.set(now + local.period);
                w.on_follower_tick();
            }
            w.host().enter(Some(h));
            let v = self
                .exchange
                .borrow_mut()
                .on_request(&mut w, &mut NativeStream(h));
            w.host().enter(None);
            w.counters().flush(w.host());
            v
        };
        self.busy.set(false);
        let go = self.apply(h, verdict, true);
        match self.drain(h, true) {
            Some(go_now) => go_now,
            None => go,
        }
    }

    /// Whether request data must be buffered (the request is held).
    pub fn holding(&self) -> bool {
        self.held.get()
    }

    pub fn on_response_headers(&self, h: FilterHandle) {
        if !self.exchange.borrow().wants_response() {
            return;
        }
        let Some(local) = &self.local else {
            return;
        };
        let mut w = local.worker.borrow_mut();
        self.exchange
            .borrow_mut()
            .on_response(&mut w, &mut NativeStream(h));
        w.counters().flush(w.host());
    }

    /// One of this stream's callouts has its answer.
    pub fn on_callout_done(&self, h: FilterHandle, id: u64, answer: Answer) {
        self.inbox.borrow_mut().push_back((id, answer));
        if !self.busy.get() {
            self.drain(h, false);
        }
    }

    /// A hook panicked: count it, and answer 503 if the request was still ours to decide.
    pub fn on_panic(&self, h: FilterHandle) {
        self.count_panic();
        if let Some(local) = &self.local {
            if let Ok(w) = local.worker.try_borrow() {
                w.host().enter(None);
            }
        }
        self.busy.set(false);
        self.held.set(false);
        self.send(h, &unavailable("internal_error"));
    }

    pub fn count_panic(&self) {
        self.plugin.count_panic();
    }

    /// Carries out a verdict; true when the request goes on from the headers hook itself.
    fn apply(&self, h: FilterHandle, verdict: Verdict, in_headers: bool) -> bool {
        match verdict {
            Verdict::Forward => {
                let was_held = self.held.replace(false);
                if !in_headers && was_held {
                    h.continue_decoding();
                }
                in_headers
            }
            Verdict::Reply(r) => {
                self.held.set(false);
                self.send(h, &r);
                false
            }
            Verdict::Wait => {
                self.held.set(true);
                false
            }
        }
    }

    /// Hands queued answers to the core; `Some` once one decided the request.
    fn drain(&self, h: FilterHandle, in_headers: bool) -> Option<bool> {
        let local = self.local.as_ref()?;
        loop {
            let (id, answer) = self.inbox.borrow_mut().pop_front()?;
            self.busy.set(true);
            let verdict = {
                let mut w = local.worker.borrow_mut();
                let Some((token, kind)) = w.host().take_call(Some(h), id) else {
                    self.busy.set(false);
                    continue;
                };
                let result = match kind {
                    CallKind::Grpc => grpc::unary_result(&answer),
                    CallKind::Http => Err(polaris_wasm::polaris::CallError {
                        status: 0,
                        message: Some("unexpected HTTP answer on a stream".into()),
                    }),
                };
                w.host().enter(Some(h));
                let v = self.exchange.borrow_mut().on_call_result(
                    &mut w,
                    &mut NativeStream(h),
                    token,
                    result,
                );
                w.host().enter(None);
                w.counters().flush(w.host());
                v
            };
            self.busy.set(false);
            if let Some(v) = verdict {
                return Some(self.apply(h, v, in_headers));
            }
        }
    }

    fn send(&self, h: FilterHandle, reply: &LocalReply) {
        let mut headers = vec![("x-polaris-reason", reply.reason)];
        if !reply.headers.iter().any(|(k, _)| k == "content-type") {
            headers.push(("content-type", "text/plain"));
        }
        headers.extend(reply.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        h.send_response(
            reply.status,
            &headers,
            reply.body.as_bytes(),
            "polaris_local_reply",
        );
    }
}

impl Drop for Filter {
    fn drop(&mut self) {
        if let Some(local) = &self.local {
            if let Ok(w) = local.worker.try_borrow() {
                w.host().forget(self.handle);
            }
        }
    }
}

/// The fault injection of [`Plugin::panic_header`]: proves a panic in a hook answers 503.
#[allow(clippy::panic)]
fn injected_panic(h: FilterHandle, name: &str) {
    if h.header(crate::ffi::abi::HeaderMap::Request, name)
        .is_some()
    {
        panic!("injected panic ({name})");
    }
}

fn unavailable(reason: &'static str) -> LocalReply {
    LocalReply {
        status: 503,
        reason,
        body: format!("polaris: {reason}"),
        headers: Vec::new(),
    }
}
