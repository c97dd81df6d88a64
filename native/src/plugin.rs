//! One Envoy filter config (one plugin JSON): parsed and checked at config time, its leading
//! worker on Envoy's main thread, and the timer thread that ticks it.
//!
//! The leading worker is the only one that ticks in full: it holds the refresh lease (no other
//! worker contends: request threads' workers run [`Worker::on_follower_tick`]), refreshes from
//! Polaris, registers the provider, leads breakers and probes. Its calls are Envoy callouts from
//! the filter config; their answers come back on the main thread.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use polaris_wasm::config::{Config, Handover};
use polaris_wasm::core::host::Clock;
use polaris_wasm::core::Worker;

use crate::ffi::abi::{Answer, ConfigHandle, Scheduler};
use crate::grpc;
use crate::grpc_stream::{Delivery, StreamEvent};
use crate::host::{lock, CallKind, Native, Shared};

/// The config scheduler's event: the leader's tick.
const TICK: u64 = 1;
/// A held stream's scheduler event: its thread's worker ticks if due.
const WAKE: u64 = 2;

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// The newest live plugin with `upstream_handover: load_balancer`: the one the cluster's load
/// balancer decides with ([`crate::balancer`]).
static BALANCING: Mutex<Option<Weak<Plugin>>> = Mutex::new(None);
/// Moves whenever [`BALANCING`] changes, so a worker thread notices with one atomic read.
static BALANCING_GEN: AtomicU64 = AtomicU64::new(0);

/// The plugin the load balancer decides with, and the generation it was read at.
pub fn balancing() -> (u64, Option<Arc<Plugin>>) {
    let plugin = lock(&BALANCING);
    let generation = BALANCING_GEN.load(Ordering::Acquire);
    (generation, plugin.as_ref().and_then(Weak::upgrade))
}

pub fn balancing_generation() -> u64 {
    BALANCING_GEN.load(Ordering::Acquire)
}

thread_local! {
    /// The leading worker of each live plugin (Envoy's main thread only).
    static LEADERS: RefCell<HashMap<u64, Worker<Native>>> = RefCell::new(HashMap::new());
    /// Callout answers and stream events that arrived while a leader was busy (Envoy may
    /// answer inline), by plugin.
    static INBOX: RefCell<VecDeque<(u64, Inbound)>> = const { RefCell::new(VecDeque::new()) };
    /// Leaders of destroyed configs, each with the live plugin whose config sends their
    /// `on_done` calls (a provider's isolation and deregistration) from its next tick on.
    static ORPHANS: RefCell<Vec<Orphan>> = const { RefCell::new(Vec::new()) };
}

/// A destroyed config's leader, adopted by another live plugin.
struct Orphan {
    via: u64,
    worker: Worker<Native>,
    /// `on_done` ran (on the adopter's tick): its calls are out.
    leaving: bool,
}

/// What the main thread hands a leader.
enum Inbound {
    Callout(u64, Answer),
    Stream(u64, StreamEvent),
}

pub struct Plugin {
    id: u64,
    config: Config,
    shared: Arc<Shared>,
    panics: Option<usize>,
    /// Fault injection for the e2e test of the panic path: a request carrying this header
    /// panics in the request hook (`POLARIS_NATIVE_PANIC_HEADER`, read at config time).
    panic_header: Option<String>,
    timer: Mutex<Option<Timer>>,
}

/// Wakes the main thread every leader tick through Envoy's config scheduler, and every held
/// stream through its own scheduler, at the shortest period any follower wants (short while
/// requests are queued), so worker threads tick without traffic of their own.
struct Timer {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

fn ms(d: &AtomicU64) -> Duration {
    Duration::from_millis(d.load(Ordering::Relaxed).max(1))
}

impl Timer {
    fn start(scheduler: Scheduler, tick_ms: Arc<AtomicU64>, shared: Arc<Shared>) -> Option<Timer> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let shared_for_wake = Arc::clone(&shared);
        let thread = thread::Builder::new()
            .name("polaris-tick".into())
            .spawn(move || {
                let mut next_tick = Instant::now() + ms(&tick_ms);
                while !flag.load(Ordering::Acquire) {
                    let leader = ms(&tick_ms);
                    let fastest = lock(&shared.periods)
                        .values()
                        .min()
                        .map_or(leader, |m| Duration::from_millis((*m).max(1)));
                    let until_tick = next_tick.saturating_duration_since(Instant::now());
                    thread::park_timeout(until_tick.min(fastest).max(Duration::from_millis(1)));
                    if flag.load(Ordering::Acquire) {
                        break;
                    }
                    let now = Instant::now();
                    if shared.tick_now.swap(false, Ordering::AcqRel) || now >= next_tick {
                        scheduler.commit(TICK);
                        next_tick = now + leader;
                    }
                    for waker in lock(&shared.wakers).values() {
                        waker.commit(WAKE);
                    }
                }
            })
            .ok()?;
        *lock(&shared_for_wake.timer) = Some(thread.thread().clone());
        Some(Timer { stop, thread })
    }

    fn stop(self) {
        self.stop.store(true, Ordering::Release);
        self.thread.thread().unpark();
        let _ = self.thread.join();
    }
}

impl Plugin {
    /// The plugin of `bytes` (the same plugin JSON as the wasm filter's); `None`, with the
    /// reason logged naming the field, when it cannot run.
    pub fn new(handle: ConfigHandle, bytes: &[u8]) -> Option<Arc<Plugin>> {
        let config = match Config::parse(bytes) {
            Ok(c) => c,
            Err(e) => {
                log::error!("{e}");
                return None;
            }
        };
        let here = &config.nearby.location;
        log::info!(
            "configured: Polaris cluster {}, namespace {}, refresh every {:?}, location {}/{}/{}",
            config.polaris_cluster,
            config.namespace,
            config.refresh_interval,
            here.region,
            here.zone,
            here.campus
        );
        let shared = Arc::new(Shared::new(handle, config.polaris_cluster.clone()));
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let tick_ms = Arc::new(AtomicU64::new(0));
        let host = Native::main(Arc::clone(&shared), Arc::clone(&tick_ms));
        let seed = host.now_ms() ^ (id << 40) ^ 0x9e37_79b9_7f4a_7c15;
        let leader = match Worker::new(host, config.clone(), seed) {
            Ok(w) => w,
            Err(e) => {
                log::error!("{}", e.0);
                return None;
            }
        };
        let panics = shared.define_own_counter("polaris_wasm.native_panics");
        tick_ms.store(
            u64::try_from(leader.tick_period().as_millis()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        let Some(timer) = handle
            .scheduler()
            .and_then(|s| Timer::start(s, tick_ms, Arc::clone(&shared)))
        else {
            log::error!("cannot start the refresh timer");
            return None;
        };
        LEADERS.with(|l| l.borrow_mut().insert(id, leader));
        let balancing = config.upstream_handover == Handover::LoadBalancer;
        let plugin = Arc::new(Plugin {
            id,
            config,
            shared,
            panics,
            panic_header: std::env::var("POLARIS_NATIVE_PANIC_HEADER")
                .ok()
                .filter(|h| !h.is_empty()),
            timer: Mutex::new(Some(timer)),
        });
        if balancing {
            *lock(&BALANCING) = Some(Arc::downgrade(&plugin));
            BALANCING_GEN.fetch_add(1, Ordering::Release);
        }
        Some(plugin)
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn panic_header(&self) -> Option<&str> {
        self.panic_header.as_deref()
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Envoy is done with this config: stop the timer, flush the leader's counts.
    pub fn shutdown(&self) {
        let timer = self
            .timer
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        if let Some(t) = timer {
            t.stop();
        }
        {
            let mut balancing = lock(&BALANCING);
            if balancing
                .as_ref()
                .is_some_and(|p| std::ptr::eq(p.as_ptr(), self))
            {
                *balancing = None;
                BALANCING_GEN.fetch_add(1, Ordering::Release);
            }
        }
        self.shared.close();
        ORPHANS.with(|o| {
            o.borrow_mut().retain(|orphan| {
                if orphan.via == self.id {
                    log::warn!("a provider's deregistration was still out: its config is gone");
                }
                orphan.via != self.id
            })
        });
        let Some(leader) = LEADERS.with(|l| l.borrow_mut().remove(&self.id)) else {
            return;
        };
        // Envoy's streams of this config end with it; reset them while it still exists.
        leader.host().grpc_streams().close_all(&self.shared.config);
        // Envoy cancels this config's callouts as it goes, so `on_done`'s calls (a provider's
        // isolation, then deregistration, when this was its last member: a listener update
        // that removed the provider) go out from another live config of this process, on that
        // config's next tick; their answers come back there. Not from here: Envoy may be
        // stopping (it then runs no more ticks, and a callout started now crashes it). With no
        // other config, nothing is sent: the offline trigger deregisters before stopping, as
        // in wasm.
        let adopter = LEADERS.with(|l| {
            l.borrow()
                .iter()
                .next()
                .map(|(id, w)| (*id, Arc::clone(w.host().shared())))
        });
        match adopter {
            Some((via, shared)) => {
                leader.host().adopt(shared);
                ORPHANS.with(|o| {
                    o.borrow_mut().push(Orphan {
                        via,
                        worker: leader,
                        leaving: false,
                    })
                });
            }
            None => leader.counters().flush(leader.host()),
        }
    }

    /// The timer's event, on the main thread.
    pub fn on_scheduled(&self, event: u64) {
        if event == TICK {
            LEADERS.with(|l| {
                // Held throughout: answers Envoy gives inline wait in the inbox.
                let mut leaders = l.borrow_mut();
                if let Some(w) = leaders.get_mut(&self.id) {
                    w.on_tick();
                }
                start_leaving(self.id);
            });
        }
        drain();
    }

    /// A callout of the leader's has its answer (on the main thread).
    pub fn on_callout_done(&self, id: u64, answer: Answer) {
        INBOX.with(|i| {
            i.borrow_mut()
                .push_back((self.id, Inbound::Callout(id, answer)))
        });
        drain();
    }

    /// An event of one of the leader's streams (on the main thread).
    pub fn on_stream_event(&self, stream_id: u64, event: StreamEvent) {
        INBOX.with(|i| {
            i.borrow_mut()
                .push_back((self.id, Inbound::Stream(stream_id, event)))
        });
        drain();
    }

    pub fn count_panic(&self) {
        if let Some(id) = self.panics {
            self.shared.config.increment_counter(id, 1);
        }
    }
}

/// The leaders `plugin` adopted leave now (`on_done`: their calls go out from its config); those
/// with nothing to wait for are dropped.
fn start_leaving(plugin: u64) {
    ORPHANS.with(|o| {
        o.borrow_mut().retain_mut(|orphan| {
            if orphan.via != plugin || orphan.leaving {
                return true;
            }
            orphan.leaving = true;
            !orphan.worker.on_done()
        })
    });
}

/// Hands callout `id` of `plugin`'s config to the adopted leader that made it, if one did;
/// drops that leader once its leaving is answered.
fn to_orphan(plugin: u64, id: u64, answer: &Answer) -> bool {
    ORPHANS.with(|orphans| {
        let mut orphans = orphans.borrow_mut();
        let found = orphans.iter_mut().enumerate().find_map(|(i, o)| {
            let call = (o.via == plugin).then(|| o.worker.host().take_call(None, id))??;
            Some((i, &mut o.worker, call))
        });
        let Some((i, w, (token, kind))) = found else {
            return false;
        };
        let gone = match kind {
            CallKind::Grpc => {
                w.on_call_result(token, grpc::unary_result(answer));
                w.done_leaving(token)
            }
            CallKind::Http => {
                w.on_http_call_result(token, grpc::http_status(answer), &answer.body);
                false
            }
        };
        if gone {
            orphans.swap_remove(i);
        }
        true
    })
}

/// Hands queued answers to their leaders, unless a leader is busy (the answer came inline, from
/// inside its own tick): then the tick's end drains them.
fn drain() {
    LEADERS.with(|leaders| {
        let Ok(mut leaders) = leaders.try_borrow_mut() else {
            return;
        };
        loop {
            let Some((plugin, inbound)) = INBOX.with(|i| i.borrow_mut().pop_front()) else {
                return;
            };
            let Some(w) = leaders.get_mut(&plugin) else {
                continue;
            };
            let (id, answer) = match inbound {
                Inbound::Callout(id, answer) if !to_orphan(plugin, id, &answer) => (id, answer),
                Inbound::Callout(..) => continue,
                Inbound::Stream(id, event) => {
                    for d in w.host().grpc_streams().on_event(id, event) {
                        match d {
                            Delivery::Message(token, m) => w.on_stream_message(token, &m),
                            Delivery::Close(token, status, m) => {
                                w.on_stream_close(token, status, m)
                            }
                        }
                    }
                    continue;
                }
            };
            match w.host().take_call(None, id) {
                Some((token, CallKind::Grpc)) => {
                    w.on_call_result(token, grpc::unary_result(&answer))
                }
                Some((token, CallKind::Http)) => {
                    w.on_http_call_result(token, grpc::http_status(&answer), &answer.body)
                }
                None => log::debug!("callout {id} answered but not ours"),
            }
        }
    });
}
