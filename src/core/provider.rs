//! The provider side over the host traits: every root context configured with a `provider` runs
//! the shared record's state machine (`crate::provider::record`) on its tick, and the one holding
//! that record's lease sends `RegisterInstance`, `Heartbeat` and `ReportClient`. The offline
//! trigger (an HTTP stream) and `on_done` deregister.

use std::collections::HashMap;
use std::time::Duration;

use super::discover::Link;
use super::host::{CallResult, Clock, Host, HttpCall, Properties, Store};
use super::metrics::{Counter, Counters};
use super::node;
use super::store::{self, Update};
use crate::model::Location;
use crate::polaris::CallError;
use crate::provider::record::{self, Action, Event, Outcome, Record, Timing};
use crate::provider::{self as pure, Instance, ProviderConfig, REPORT_INTERVAL};
use crate::shared;

/// Deadline of one provider call.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(3);
/// Without a configured host, how long to wait for Envoy's node before saying why nothing is
/// registered.
const NODE_GRACE_MS: u64 = 2_000;

/// One root context's part in registering this Envoy's instance.
pub struct Provider {
    config: ProviderConfig,
    timing: Timing,
    me: Option<u64>,
    settled: Option<Settled>,
    /// Calls out: token -> what for.
    pending: HashMap<u32, Action>,
    /// `on_done` found this context the last of a registered instance's: isolating, then
    /// deregistering; the deregistration's answer ends this context.
    leaving: Option<Leaving>,
    first_tick_ms: Option<u64>,
    warned: bool,
}

/// The instance with its address and location known, and what is sent for it.
struct Settled {
    instance: Instance,
    key: String,
    fp: u64,
    label: String,
    register: Vec<u8>,
    report: Vec<u8>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Leaving {
    Isolating(u32),
    Deregistering(u32),
    /// The answer with this token ended it.
    Done(u32),
}

/// The answer to the offline trigger.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OfflineReply {
    pub status: u32,
    pub body: String,
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Provider {
    pub fn new(config: ProviderConfig, tick: Duration) -> Provider {
        let timing = Timing {
            ttl_ms: millis(config.ttl),
            early_ms: (millis(tick) / 2).min(millis(config.ttl) / 2),
            call_ms: millis(CALL_TIMEOUT) + 500,
            lease_ms: millis(tick * 4).max(2_000),
            report_ms: millis(REPORT_INTERVAL),
        };
        Provider {
            config,
            timing,
            me: None,
            settled: None,
            pending: HashMap::new(),
            leaving: None,
            first_tick_ms: None,
            warned: false,
        }
    }

    pub fn config(&self) -> &ProviderConfig {
        &self.config
    }

    /// Settles the address and location once Envoy's node can be read (or is not needed).
    /// `plugin_location` is the plugin's `location` (or the node locality it was filled from).
    pub(super) fn settle<P: Properties + ?Sized>(
        &mut self,
        host: &P,
        plugin_location: &Location,
        now: u64,
    ) {
        if self.settled.is_some() {
            return;
        }
        let first = *self.first_tick_ms.get_or_insert(now);
        let node = node::read(host);
        let Some(address) = self
            .config
            .host
            .clone()
            .or_else(|| node.as_ref().and_then(|n| n.instance_ip.clone()))
        else {
            if now.saturating_sub(first) >= NODE_GRACE_MS && !self.warned {
                self.warned = true;
                log::error!(
                    "provider {}: field `provider.host` is not set and Envoy's node metadata has no \
                     {}: nothing is registered",
                    self.config.service,
                    node::INSTANCE_IPS
                );
            }
            return;
        };
        let location = self
            .config
            .location
            .clone()
            .filter(|l| !l.is_empty())
            .or_else(|| Some(plugin_location.clone()).filter(|l| !l.is_empty()))
            .or_else(|| node.as_ref().map(|n| n.locality.clone()))
            .unwrap_or_default();
        let instance = Instance {
            config: self.config.clone(),
            host: address,
            location,
        };
        let version = node.map(|n| n.envoy_version).unwrap_or_default();
        let l = &instance.location;
        log::info!(
            "provider {}: registering with TTL {}s, location {}/{}/{}, reporting as {}{}",
            instance.label(),
            self.config.ttl.as_secs(),
            l.region,
            l.zone,
            l.campus,
            pure::CLIENT_VERSION,
            if version.is_empty() {
                String::new()
            } else {
                format!(" envoy/{version}")
            }
        );
        self.settled = Some(Settled {
            key: instance.record_key(),
            fp: instance.fingerprint(),
            label: instance.label(),
            register: instance.register_message(),
            report: instance.report_message(&version),
            instance,
        });
    }

    /// The tick: membership, lease, and whatever call is due.
    pub fn tick<H: Host>(
        &mut self,
        host: &H,
        link: &Link,
        counters: &Counters,
        plugin_location: &Location,
        now: u64,
    ) {
        if self.leaving.is_some() {
            return;
        }
        self.settle(host, plugin_location, now);
        if self.me.is_none() {
            self.me = store::increment(host, shared::SEQ_KEY).ok();
        }
        let (Some(s), Some(me)) = (&self.settled, self.me) else {
            return;
        };
        let (fp, timing) = (s.fp, self.timing);
        let gated = self.config.readiness.is_some();
        let stepped = store::cas_update(host, &s.key, |bytes| {
            let mut r = Record::decode(bytes);
            let before = r.clone();
            let actions = record::tick(&mut r, me, fp, gated, now, &timing);
            let id = r.id.clone();
            if r == before {
                Update::Keep((actions, id))
            } else {
                Update::Write(r.encode(), (actions, id))
            }
        });
        match stepped {
            Ok((actions, id)) => {
                for action in actions {
                    self.send(host, link, counters, action, &id);
                }
            }
            Err(e) => log::warn!("provider {}: record not updated: {e}", s.label),
        }
    }

    fn send<H: Host>(
        &mut self,
        host: &H,
        link: &Link,
        counters: &Counters,
        action: Action,
        id: &str,
    ) -> Option<u32> {
        let s = self.settled.as_ref()?;
        let message = match action {
            Action::Register => s.register.clone(),
            Action::Heartbeat | Action::Deregister => s.instance.identity_message(id),
            Action::Report => s.report.clone(),
            Action::Probe => return self.probe(host, link, counters),
        };
        match link.unary(host, action.method(), &message, CALL_TIMEOUT) {
            Ok(token) => {
                self.pending.insert(token, action);
                Some(token)
            }
            Err(e) => {
                // Not sent: the answer handling records the failure and schedules the retry.
                let outcome = Outcome::Failed(e.to_string());
                self.apply(host, counters, action, &outcome);
                None
            }
        }
    }

    /// The readiness gate's probe: `GET path` through the local service's cluster.
    fn probe<H: Host>(&mut self, host: &H, link: &Link, counters: &Counters) -> Option<u32> {
        let r = self.config.readiness.as_ref()?;
        let headers = [
            (":method", "GET"),
            (":path", r.path.as_str()),
            (":authority", self.config.service.name.as_str()),
            ("user-agent", pure::CLIENT_VERSION),
        ];
        let sent = host.http_call(HttpCall {
            cluster: &r.cluster,
            headers: &headers,
            body: None,
            timeout: r.timeout,
        });
        match sent {
            Ok(token) => {
                self.pending.insert(token, Action::Probe);
                Some(token)
            }
            Err(e) => {
                let why = format!("cannot call cluster {}: {e}", r.cluster);
                self.on_probe(host, link, counters, Err(why));
                None
            }
        }
    }

    /// A readiness probe's answer: the HTTP status, or why there was none.
    pub fn on_http_result<H: Host>(
        &mut self,
        host: &H,
        link: &Link,
        counters: &Counters,
        token: u32,
        status: Result<u32, String>,
    ) -> bool {
        if self.pending.get(&token) != Some(&Action::Probe) {
            return false;
        }
        self.pending.remove(&token);
        self.on_probe(host, link, counters, status);
        true
    }

    fn on_probe<H: Host>(
        &mut self,
        host: &H,
        link: &Link,
        counters: &Counters,
        status: Result<u32, String>,
    ) {
        let Some(s) = &self.settled else {
            return;
        };
        let (ok, why) = match status {
            Ok(code) if (200..300).contains(&code) => (true, String::new()),
            Ok(code) => (false, format!("answered {code}")),
            Err(why) => (false, why),
        };
        let (fp, timing, now) = (s.fp, self.timing, host.now_ms());
        let stepped = store::cas_update(host, &s.key, |bytes| {
            let mut r = Record::decode(bytes);
            let (event, next) = record::probed(&mut r, fp, ok, &why, now, &timing);
            Update::Write(r.encode(), (event, next, r.id.clone()))
        });
        let label = s.label.clone();
        match stepped {
            Ok((event, next, id)) => {
                report(&label, counters, &event);
                if let Some(next) = next {
                    self.send(host, link, counters, next, &id);
                }
            }
            Err(e) => log::warn!("provider {label}: probe answer not recorded: {e}"),
        }
    }

    /// Applies an answer to the record and logs it; returns the action to send next, if any.
    fn apply<S: Store + Clock + ?Sized>(
        &self,
        host: &S,
        counters: &Counters,
        action: Action,
        outcome: &Outcome,
    ) -> Option<Action> {
        let s = self.settled.as_ref()?;
        let (fp, timing, now) = (s.fp, self.timing, host.now_ms());
        let applied = store::cas_update(host, &s.key, |bytes| {
            let mut r = Record::decode(bytes);
            let (event, next) = record::answer(&mut r, action, fp, outcome, now, &timing);
            Update::Write(r.encode(), (event, next))
        });
        let (event, next) = match applied {
            Ok(x) => x,
            Err(e) => {
                log::warn!(
                    "provider {}: {} answer not recorded: {e}",
                    s.label,
                    action.method()
                );
                return None;
            }
        };
        report(&s.label, counters, &event);
        next
    }

    /// Whether the call with `token` is ours.
    pub fn owns(&self, token: u32) -> bool {
        self.pending.contains_key(&token) || self.leaving == Some(Leaving::Isolating(token))
    }

    /// An answer to a call this context made; false if the token was not ours.
    pub fn on_call_result<H: Host>(
        &mut self,
        host: &H,
        link: &Link,
        counters: &Counters,
        token: u32,
        result: CallResult,
    ) -> bool {
        if self.leaving == Some(Leaving::Isolating(token)) {
            let isolated = outcome(&result);
            let label = self.settled.as_ref().map_or("", |s| s.label.as_str());
            if isolated.is_success() {
                log::info!("provider {label}: isolated in Polaris");
            } else {
                log::warn!(
                    "provider {label}: isolating failed, deregistering anyway: {}",
                    isolated.describe()
                );
            }
            let id = self.record(host).id;
            self.leaving = Some(
                match self.send(host, link, counters, Action::Deregister, &id) {
                    Some(next) => Leaving::Deregistering(next),
                    None => Leaving::Done(token),
                },
            );
            return true;
        }
        let Some(action) = self.pending.remove(&token) else {
            return false;
        };
        let outcome = outcome(&result);
        if let Some(next) = self.apply(host, counters, action, &outcome) {
            let id = self.record(host).id;
            self.send(host, link, counters, next, &id);
        }
        if self.leaving == Some(Leaving::Deregistering(token)) {
            self.leaving = Some(Leaving::Done(token));
        }
        true
    }

    /// `on_done`: leaves the record; the last live member of a registered instance deregisters
    /// it. False while that deregistration is out (the host then waits for its answer).
    pub fn on_done<H: Host>(&mut self, host: &H, link: &Link, counters: &Counters) -> bool {
        let (Some(s), Some(me)) = (&self.settled, self.me) else {
            return true;
        };
        let (now, timing) = (host.now_ms(), self.timing);
        let left = store::cas_update(host, &s.key, |bytes| {
            let mut r = Record::decode(bytes);
            let last = record::leave(&mut r, me, now, &timing);
            Update::Write(r.encode(), (last, r.id.clone()))
        });
        let label = s.label.clone();
        match left {
            Ok((true, id)) => {
                log::info!(
                    "provider {label}: the last root context serving it is finishing \
                     (configuration removed, or Envoy stopping): isolating, then deregistering"
                );
                let isolate = self.settled.as_ref().map(|s| s.instance.isolate_message());
                let sent = isolate.and_then(|m| {
                    link.unary(host, Action::Register.method(), &m, CALL_TIMEOUT)
                        .ok()
                });
                self.leaving = match sent {
                    Some(token) => Some(Leaving::Isolating(token)),
                    None => self
                        .send(host, link, counters, Action::Deregister, &id)
                        .map(Leaving::Deregistering),
                };
                self.leaving.is_none()
            }
            Ok((false, _)) => true,
            Err(e) => {
                log::warn!("provider {label}: could not leave the record: {e}");
                true
            }
        }
    }

    /// After an answer: whether `on_done`'s deregistration has been answered.
    pub fn done_leaving(&mut self, token: u32) -> bool {
        self.leaving == Some(Leaving::Done(token))
    }

    /// The offline trigger's first step: marks the record offline (no more heartbeats or
    /// registrations from any VM) and registers the instance again with `isolate: true`, which
    /// takes it out of every consumer's picks. `Err` is the reply to send at once.
    ///
    /// Why isolate first: Polaris v1.18.1 with its default bolt store marks a deleted instance
    /// without touching the modification time its cache loads changes by, so a deregistration
    /// alone reaches Discover only if the instance changed in the cache's 5 s look-back (else
    /// only when it turns unhealthy, 3 × TTL later). An update always does.
    pub fn offline<H: Host>(&self, host: &H, link: &Link) -> Result<u32, OfflineReply> {
        let Some(s) = &self.settled else {
            return Err(OfflineReply {
                status: 503,
                body: "polaris-wasm: the provider's address is not known yet; nothing is \
                       registered\n"
                    .into(),
            });
        };
        let now = host.now_ms();
        let marked = store::cas_update(host, &s.key, |bytes| {
            let mut r = Record::decode(bytes);
            let already = record::go_offline(&mut r, now);
            Update::Write(r.encode(), already)
        });
        let already = marked.map_err(|e| OfflineReply {
            status: 503,
            body: format!("polaris-wasm: cannot mark {} offline: {e}\n", s.label),
        })?;
        log::info!(
            "provider {}: offline requested{}: isolating, then deregistering",
            s.label,
            if already { " again" } else { "" }
        );
        link.unary(
            host,
            Action::Register.method(),
            &s.instance.isolate_message(),
            CALL_TIMEOUT,
        )
        .map_err(|e| OfflineReply {
            status: 503,
            body: format!("polaris-wasm: {e}\n"),
        })
    }

    /// The isolation was answered: sends `DeregisterInstance`. Returns the isolation's outcome
    /// (for the final reply) and the deregistration's token, or the reply to send at once.
    pub fn offline_isolated<H: Host>(
        &self,
        host: &H,
        link: &Link,
        result: &CallResult,
    ) -> (Outcome, Result<u32, OfflineReply>) {
        let isolated = outcome(result);
        let Some(s) = &self.settled else {
            let reply = OfflineReply {
                status: 503,
                body: "polaris-wasm: no provider instance\n".into(),
            };
            return (isolated, Err(reply));
        };
        if isolated.is_success() {
            log::info!("provider {}: isolated in Polaris", s.label);
        } else {
            log::warn!(
                "provider {}: isolating failed, deregistering anyway: {}",
                s.label,
                isolated.describe()
            );
        }
        let id = self.record(host).id;
        let sent = link
            .unary(
                host,
                Action::Deregister.method(),
                &s.instance.identity_message(&id),
                CALL_TIMEOUT,
            )
            .map_err(|e| OfflineReply {
                status: 503,
                body: format!("polaris-wasm: {e}\n"),
            });
        (isolated, sent)
    }

    /// The deregistration was answered: the reply to the trigger.
    pub fn offline_answer<H: Host>(
        &self,
        host: &H,
        counters: &Counters,
        isolated: &Outcome,
        result: &CallResult,
    ) -> OfflineReply {
        let deregistered = outcome(result);
        self.apply(host, counters, Action::Deregister, &deregistered);
        let label = self.settled.as_ref().map_or("", |s| s.label.as_str());
        let isolation = if isolated.is_success() {
            "isolated, then deregistered".to_string()
        } else {
            format!("deregistered (isolating failed: {})", isolated.describe())
        };
        if deregistered.is_success() {
            OfflineReply {
                status: 200,
                body: format!("polaris-wasm: {label} {isolation} in Polaris; heartbeats stopped\n"),
            }
        } else {
            OfflineReply {
                status: 502,
                body: format!(
                    "polaris-wasm: deregistering {label} failed: {}; {}heartbeats stay \
                     stopped, call again to retry\n",
                    deregistered.describe(),
                    if isolated.is_success() {
                        "it is isolated (consumers no longer pick it); "
                    } else {
                        ""
                    }
                ),
            }
        }
    }

    fn record<S: Store + ?Sized>(&self, host: &S) -> Record {
        match &self.settled {
            Some(s) => Record::decode(host.get(&s.key).0.as_deref()),
            None => Record::default(),
        }
    }

    /// The status answer: this Envoy's instance and whether it is registered, as JSON.
    pub fn status<S: Store + Clock + ?Sized>(&self, host: &S) -> String {
        let Some(s) = &self.settled else {
            return serde_json::json!({
                "service": self.config.service.to_string(),
                "state": "address-unknown",
            })
            .to_string()
                + "\n";
        };
        let r = self.record(host);
        let now = host.now_ms();
        let ago = |t: u64| (t > 0).then(|| now.saturating_sub(t));
        serde_json::json!({
            "service": s.instance.config.service.to_string(),
            "instance": format!("{}:{}", s.instance.host, s.instance.config.port),
            "id": r.id,
            "state": r.phase.name(),
            "ttl_s": self.config.ttl.as_secs(),
            "registrations": r.registrations,
            "registered_ms_ago": ago(r.registered_ms),
            "last_heartbeat_ms_ago": ago(r.beat_ms),
            "last_error": r.last_error,
        })
        .to_string()
            + "\n"
    }
}

fn outcome(result: &CallResult) -> Outcome {
    match result {
        Ok(bytes) => match pure::decode_answer(bytes) {
            Some(a) => Outcome::Code {
                code: a.code,
                info: a.info,
                id: a.id,
            },
            None => Outcome::Failed("undecodable answer from Polaris".into()),
        },
        Err(e) => Outcome::Failed(CallError::to_string(e)),
    }
}

/// Logs an event of the state machine and counts it.
fn report(label: &str, counters: &Counters, event: &Event) {
    match event {
        Event::Registered => {
            counters.inc(Counter::ProviderRegistrations);
            log::info!("provider {label}: registered in Polaris");
        }
        Event::RegisterFailed { error, retry_ms } => {
            counters.inc(Counter::ProviderRegisterErrors);
            log::warn!(
                "provider {label}: RegisterInstance failed, retrying in {retry_ms} ms: {error}"
            );
        }
        Event::Beat => counters.inc(Counter::ProviderHeartbeats),
        Event::BeatFailed { error, retry_ms } => {
            counters.inc(Counter::ProviderHeartbeatErrors);
            log::warn!("provider {label}: Heartbeat failed, retrying in {retry_ms} ms: {error}");
        }
        Event::Forgotten(why) => {
            counters.inc(Counter::ProviderReregistrations);
            log::warn!("provider {label}: Heartbeat answered {why}");
        }
        Event::Deregistered => {
            counters.inc(Counter::ProviderDeregistrations);
            log::info!("provider {label}: deregistered from Polaris");
        }
        Event::DeregisterFailed(why) => {
            counters.inc(Counter::ProviderDeregisterErrors);
            log::warn!("provider {label}: DeregisterInstance failed: {why}");
        }
        Event::Reported => counters.inc(Counter::ClientReports),
        Event::ReportFailed(why) => {
            counters.inc(Counter::ClientReportErrors);
            log::warn!("provider {label}: ReportClient failed: {why}");
        }
        Event::Ready => log::info!("provider {label}: the local service is ready"),
        Event::NotReady(why) => log::warn!(
            "provider {label}: the local service is not ready ({why}): no registration or \
             heartbeat until it is"
        ),
        Event::Stale => {}
    }
}
