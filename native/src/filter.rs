//! One HTTP stream: hands its hooks to the core's [`Exchange`] with this thread's worker, and
//! carries out the verdicts (continue, hold and resume, or a local reply).
//!
//! Each Envoy worker thread has one follower worker per plugin, made on its first stream. It
//! ticks when a tick is due, at the start of a request or when the plugin's timer wakes a held
//! stream of the thread (through the stream's Envoy scheduler): the ABI gives a worker thread
//! no timer of its own. Counts are flushed after each request, so the stats are current when
//! traffic stops.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Instant;

use polaris_wasm::core::host::Clock;
use polaris_wasm::core::{Exchange, LocalReply, Verdict, Worker};
use rustc_hash::FxHashMap;

use crate::ffi::abi::{Answer, FilterHandle};
use crate::grpc;
use crate::host::{lock, CallKind, Native, NativeStream, Streams};
use crate::plugin::Plugin;

/// A worker thread's follower worker of one plugin.
pub struct Local {
    pub worker: RefCell<Worker<Native>>,
    /// When the last follower tick ran (the next is due a tick period later, whatever the
    /// period is by then).
    last_tick: Cell<Option<Instant>>,
    /// The thread's live streams (shared with the host, which resumes them).
    streams: Streams,
    next_id: Cell<u32>,
    /// Stream ends that came while the worker was busy (inline, from a resume in a tick).
    ended: RefCell<Vec<Exchange>>,
}

static FOLLOWERS: AtomicU64 = AtomicU64::new(1);

impl Local {
    /// An exchange id no live stream of this thread has.
    fn next_id(&self) -> u32 {
        loop {
            let id = self.next_id.get();
            self.next_id.set(id.wrapping_add(1).max(1));
            if !self.streams.borrow().contains_key(&id) {
                return id;
            }
        }
    }

    /// The follower tick, when due; then the stream ends that waited for the worker.
    pub fn tick_if_due(&self, w: &mut Worker<Native>) {
        let now = Instant::now();
        let due = self
            .last_tick
            .get()
            .is_none_or(|last| now >= last + w.host().tick_period());
        if due {
            self.last_tick.set(Some(now));
            w.on_follower_tick();
        }
        let ended = std::mem::take(&mut *self.ended.borrow_mut());
        for mut exchange in ended {
            exchange.on_end(w);
        }
    }
}

/// A thread's followers, by plugin id (with the plugin, to drop those of plugins gone).
type Locals = FxHashMap<u64, (Weak<Plugin>, Rc<Local>)>;

thread_local! {
    static LOCALS: RefCell<Locals> = RefCell::new(FxHashMap::default());
}

/// This thread's worker of `plugin`, made on first use (dropping those of plugins gone).
pub fn local(plugin: &Arc<Plugin>) -> Option<Rc<Local>> {
    LOCALS.with(|locals| {
        let mut locals = locals.borrow_mut();
        if let Some((_, l)) = locals.get(&plugin.id()) {
            return Some(Rc::clone(l));
        }
        locals.retain(|_, (p, _)| p.strong_count() > 0);
        let host = Native::requests(
            Arc::clone(plugin.shared()),
            FOLLOWERS.fetch_add(1, Ordering::Relaxed),
        );
        let thread = std::thread::current().id();
        let seed = host.now_ms() ^ (plugin.id() << 40) ^ hash(&thread);
        let worker = match Worker::new(host, plugin.config().clone(), seed) {
            Ok(w) => w,
            Err(e) => {
                log::error!("{}", e.0);
                return None;
            }
        };
        let period = worker.tick_period();
        if let Err(e) = polaris_wasm::core::host::Pacing::set_tick_period(worker.host(), period) {
            log::warn!("{e}");
        }
        let l = Rc::new(Local {
            streams: Rc::clone(worker.host().streams()),
            worker: RefCell::new(worker),
            last_tick: Cell::new(None),
            next_id: Cell::new(1),
            ended: RefCell::new(Vec::new()),
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
    /// This stream's id among its thread's (the core's queue names it).
    id: u32,
    exchange: RefCell<Exchange>,
    /// The core is running for this stream: an answer arriving now (inline) waits in `inbox`.
    busy: Cell<bool>,
    inbox: RefCell<VecDeque<(u64, Answer)>>,
    /// The request is held until its calls are answered or its queue turn comes (shared with
    /// the thread's stream list, through which a tick resumes it).
    held: Rc<Cell<bool>>,
}

impl Filter {
    pub fn new(plugin: &Arc<Plugin>, handle: FilterHandle) -> Filter {
        let local = local(plugin);
        let held = Rc::new(Cell::new(false));
        let id = local.as_ref().map_or(0, |l| {
            let id = l.next_id();
            l.streams
                .borrow_mut()
                .insert(id, (handle, Rc::clone(&held)));
            id
        });
        Filter {
            plugin: Arc::clone(plugin),
            local,
            handle,
            id,
            exchange: RefCell::new(Exchange::new(id)),
            busy: Cell::new(false),
            inbox: RefCell::new(VecDeque::new()),
            held,
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
            local.tick_if_due(&mut w);
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

    /// The plugin's timer woke this held stream: its thread's worker ticks if due (which may
    /// resume this or another queued stream of the thread).
    pub fn on_wake(&self, h: FilterHandle) {
        let Some(local) = &self.local else {
            return;
        };
        let Ok(mut w) = local.worker.try_borrow_mut() else {
            return;
        };
        w.host().enter(Some(h));
        local.tick_if_due(&mut w);
        w.host().enter(None);
    }

    /// The stream ended: the core releases what it holds for it (a queue place, concurrency).
    pub fn on_end(&self) {
        if !self.exchange.borrow().wants_end() {
            return;
        }
        let Some(local) = &self.local else {
            return;
        };
        let mut exchange = self.exchange.replace(Exchange::new(self.id));
        match local.worker.try_borrow_mut() {
            Ok(mut w) => {
                exchange.on_end(&mut w);
                w.counters().flush(w.host());
            }
            Err(_) => local.ended.borrow_mut().push(exchange),
        }
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
                if let std::collections::hash_map::Entry::Vacant(slot) =
                    lock(&self.plugin.shared().wakers).entry(h.key())
                {
                    if let Some(s) = h.scheduler() {
                        slot.insert(s);
                    }
                }
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
        lock(&self.plugin.shared().wakers).remove(&self.handle.key());
        if let Some(local) = &self.local {
            local.streams.borrow_mut().remove(&self.id);
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
