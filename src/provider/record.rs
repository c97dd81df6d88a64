//! One provider instance's record in shared data, and the state machine every root context runs
//! on it. Pure: the driver (`crate::core::provider`) reads the record, applies one of these steps
//! and writes it back by CAS, then sends whatever call the step asked for.
//!
//! - **Members.** Every root context configured with this instance (one per worker plus the main
//!   thread's, per configuration) is a member, with the fingerprint of what it would register and
//!   a stamp it refreshes every second. A member not seen for [`LIVE_MS`] is gone.
//! - **Who acts.** The newest-joined live member's fingerprint leads (a listener update's new
//!   configuration wins over the draining old one); among the members with it, one holds a lease
//!   in this record and makes the calls. State is here, not in a VM, so a takeover continues it.
//! - **Phases.** `unregistered` (register, with backoff, until Polaris accepts) → `registered`
//!   (heartbeat every TTL; not-found answers go back to `unregistered`) → `offline` (the trigger
//!   deregistered it; nothing is sent until the configuration changes) or `leaving` (the last
//!   member left, e.g. its listener was removed; it deregisters once).

use serde::{Deserialize, Serialize};

use crate::polaris::code;

/// A member refreshes its stamp this often.
pub const STAMP_MS: u64 = 1_000;
/// A member not seen for this long is gone (ticks are at most 500 ms apart).
pub const LIVE_MS: u64 = 3_000;
/// Members gone this long are dropped from the record.
const PRUNE_MS: u64 = 30_000;
/// First registration retry delay; doubles per failure up to [`MAX_BACKOFF_MS`].
pub const FIRST_BACKOFF_MS: u64 = 500;
pub const MAX_BACKOFF_MS: u64 = 10_000;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    #[default]
    Unregistered,
    Registered,
    /// Deregistered by the offline trigger.
    Offline,
    /// The last member left: one deregistration is out.
    Leaving,
}

impl Phase {
    pub fn name(self) -> &'static str {
        match self {
            Phase::Unregistered => "unregistered",
            Phase::Registered => "registered",
            Phase::Offline => "offline",
            Phase::Leaving => "leaving",
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// The root context (unique per Envoy, from the shared `seq` counter).
    pub ctx: u64,
    /// Fingerprint of what this member would register.
    pub fp: u64,
    pub joined_ms: u64,
    pub seen_ms: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Record {
    pub phase: Phase,
    /// The instance id Polaris gave.
    pub id: String,
    /// Fingerprint of what was last registered (or taken offline).
    pub registered_fp: u64,
    /// When the next registration attempt or heartbeat is due.
    pub due_ms: u64,
    /// A registration or heartbeat is out until then (its answer clears it), so neither this VM
    /// nor one taking over repeats it at once.
    pub busy_ms: u64,
    pub report_due_ms: u64,
    /// Consecutive failures of the current action (register backoff, heartbeat retries).
    pub failures: u32,
    /// The lease: which member makes the calls, and until when.
    pub owner: u64,
    pub lease_ms: u64,
    pub members: Vec<Member>,
    /// For the status answer.
    pub registered_ms: u64,
    pub beat_ms: u64,
    pub registrations: u64,
    pub last_error: String,
    /// The readiness gate's last probe passed (only used when a gate is configured).
    pub ready: bool,
}

/// A call the step asks the driver to make.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    Register,
    Heartbeat,
    Deregister,
    Report,
    /// The readiness gate's probe of the local service, before a registration or heartbeat.
    Probe,
}

impl Action {
    pub fn method(self) -> &'static str {
        match self {
            Action::Register => "RegisterInstance",
            Action::Heartbeat => "Heartbeat",
            Action::Deregister => "DeregisterInstance",
            Action::Report => "ReportClient",
            Action::Probe => "readiness probe",
        }
    }
}

/// Timing of the machine, from the configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    pub ttl_ms: u64,
    /// How early the next heartbeat is due, half the leader's tick: the answer comes a little
    /// after the tick that sent it, so a heartbeat due a full TTL after the answer would wait
    /// for one tick more; this way the tick a TTL after the last one sends it (polaris-go beats
    /// every TTL).
    pub early_ms: u64,
    /// How long a call may be out before its action is due again.
    pub call_ms: u64,
    pub lease_ms: u64,
    pub report_ms: u64,
}

/// How a call ended, as the machine needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Polaris answered with this code; `id` from `Response.instance`.
    Code { code: u32, info: String, id: String },
    /// No usable answer (transport failure, undecodable bytes): the reason.
    Failed(String),
}

impl Outcome {
    fn code(&self) -> Option<u32> {
        match self {
            Outcome::Code { code, .. } => Some(*code),
            Outcome::Failed(_) => None,
        }
    }

    /// Polaris answered with a success code.
    pub fn is_success(&self) -> bool {
        self.code().is_some_and(code::is_success)
    }

    /// The code with its name and meaning, or why there was no answer.
    pub fn describe(&self) -> String {
        match self {
            Outcome::Code { code, info, .. } if info.is_empty() => code::render(*code),
            Outcome::Code { code, info, .. } => format!("{}: {info}", code::render(*code)),
            Outcome::Failed(why) => why.clone(),
        }
    }
}

/// What an answer did, for the driver's log line and counters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    Registered,
    RegisterFailed {
        error: String,
        retry_ms: u64,
    },
    Beat,
    BeatFailed {
        error: String,
        retry_ms: u64,
    },
    /// Polaris no longer knows the instance: registering again.
    Forgotten(String),
    Deregistered,
    DeregisterFailed(String),
    Reported,
    ReportFailed(String),
    /// The readiness probe passed after failing (or for the first time).
    Ready,
    /// The readiness probe failed after passing (or for the first time): no registration or
    /// heartbeat until it passes.
    NotReady(String),
    /// The answer came after the phase moved on; nothing to do.
    Stale,
}

impl Record {
    /// The record in `bytes`; an unreadable or missing one is a fresh record.
    pub fn decode(bytes: Option<&[u8]>) -> Record {
        bytes
            .and_then(|b| serde_json::from_slice(b).ok())
            .unwrap_or_default()
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    fn live(&self, now: u64) -> impl Iterator<Item = &Member> {
        self.members
            .iter()
            .filter(move |m| m.seen_ms.saturating_add(LIVE_MS) > now)
    }

    /// The fingerprint of the newest-joined live member: the configuration that acts.
    pub fn leading_fp(&self, now: u64) -> Option<u64> {
        self.live(now)
            .max_by_key(|m| (m.joined_ms, m.ctx))
            .map(|m| m.fp)
    }

    pub fn holds_lease(&self, me: u64, now: u64) -> bool {
        self.owner == me && self.lease_ms > now
    }
}

/// The registration or heartbeat due for configuration `fp`.
fn next_call(r: &Record, fp: u64) -> Action {
    match r.phase {
        Phase::Registered if r.registered_fp == fp => Action::Heartbeat,
        _ => Action::Register,
    }
}

/// One root context's tick: keeps its membership fresh, takes or renews the lease when its
/// configuration leads, and returns the calls due (marking them in flight). With a readiness
/// gate (`gated`), a probe goes first and its answer ([`probed`]) makes the call.
pub fn tick(r: &mut Record, me: u64, fp: u64, gated: bool, now: u64, t: &Timing) -> Vec<Action> {
    r.members
        .retain(|m| m.ctx == me || m.seen_ms.saturating_add(PRUNE_MS) > now);
    match r.members.iter_mut().find(|m| m.ctx == me) {
        Some(m) => {
            if now.saturating_sub(m.seen_ms) >= STAMP_MS {
                m.seen_ms = now;
            }
            if m.fp != fp {
                m.fp = fp;
                m.joined_ms = now;
            }
        }
        None => r.members.push(Member {
            ctx: me,
            fp,
            joined_ms: now,
            seen_ms: now,
        }),
    }
    let holding = r.holds_lease(me, now);
    if r.leading_fp(now) != Some(fp) {
        if holding {
            r.owner = 0;
            r.lease_ms = 0;
        }
        return Vec::new();
    }
    if !holding {
        if r.owner != 0 && r.owner != me && r.lease_ms > now {
            return Vec::new();
        }
        r.owner = me;
        r.lease_ms = now.saturating_add(t.lease_ms);
    } else if r.lease_ms.saturating_sub(now) < t.lease_ms / 2 {
        r.lease_ms = now.saturating_add(t.lease_ms);
    }

    match r.phase {
        Phase::Offline if r.registered_fp == fp => return Vec::new(),
        // A new configuration after the trigger: it registers again.
        Phase::Offline => {
            r.phase = Phase::Unregistered;
            r.due_ms = now;
            r.failures = 0;
        }
        Phase::Leaving if now < r.due_ms => return Vec::new(),
        // A member joined while (or after) the last one left: register again.
        Phase::Leaving => {
            r.phase = Phase::Unregistered;
            r.due_ms = now;
        }
        Phase::Unregistered | Phase::Registered => {}
    }
    let mut actions = Vec::new();
    // A registration of other attributes (a new configuration) is redone at once.
    let stale = r.phase == Phase::Registered && r.registered_fp != fp;
    if now >= r.busy_ms && (now >= r.due_ms || stale) {
        actions.push(if gated {
            Action::Probe
        } else {
            next_call(r, fp)
        });
        r.busy_ms = now.saturating_add(t.call_ms);
    }
    if now >= r.report_due_ms {
        actions.push(Action::Report);
        r.report_due_ms = now.saturating_add(t.call_ms);
    }
    actions
}

fn backoff(failures: u32) -> u64 {
    let doublings = failures.saturating_sub(1).min(16);
    FIRST_BACKOFF_MS
        .saturating_mul(1u64 << doublings)
        .min(MAX_BACKOFF_MS)
}

/// Applies the answer to an action this VM sent for configuration `fp`. The returned action, if
/// any, must be sent now (a registration that landed after the trigger is taken back).
pub fn answer(
    r: &mut Record,
    action: Action,
    fp: u64,
    outcome: &Outcome,
    now: u64,
    t: &Timing,
) -> (Event, Option<Action>) {
    let ok = outcome.code().is_some_and(code::is_success);
    if matches!(action, Action::Register | Action::Heartbeat) {
        r.busy_ms = 0;
    }
    match action {
        Action::Register => {
            let accepted = ok || outcome.code() == Some(code::EXISTED_RESOURCE);
            if matches!(r.phase, Phase::Offline | Phase::Leaving) {
                // Too late: this instance must not stay registered.
                return (Event::Stale, accepted.then_some(Action::Deregister));
            }
            if accepted {
                if let Outcome::Code { id, .. } = outcome {
                    if !id.is_empty() {
                        r.id = id.clone();
                    }
                }
                r.phase = Phase::Registered;
                r.registered_fp = fp;
                r.failures = 0;
                r.due_ms = now.saturating_add(t.ttl_ms);
                r.registered_ms = now;
                r.registrations = r.registrations.saturating_add(1);
                r.last_error.clear();
                (Event::Registered, None)
            } else {
                r.failures = r.failures.saturating_add(1);
                let retry_ms = backoff(r.failures);
                r.due_ms = now.saturating_add(retry_ms);
                r.last_error = format!("RegisterInstance: {}", outcome.describe());
                let error = outcome.describe();
                (Event::RegisterFailed { error, retry_ms }, None)
            }
        }
        Action::Heartbeat => {
            if r.phase != Phase::Registered {
                return (Event::Stale, None);
            }
            let forgotten = matches!(
                outcome.code(),
                Some(code::NOT_FOUND_RESOURCE | code::NOT_FOUND_INSTANCE)
                    | Some(code::HEALTH_CHECK_NOT_OPEN)
            );
            if ok {
                r.failures = 0;
                r.beat_ms = now;
                r.due_ms = now.saturating_add(t.ttl_ms.saturating_sub(t.early_ms));
                r.last_error.clear();
                (Event::Beat, None)
            } else if forgotten {
                r.phase = Phase::Unregistered;
                r.failures = 0;
                r.due_ms = now;
                r.last_error = format!("Heartbeat: {}", outcome.describe());
                (Event::Forgotten(outcome.describe()), None)
            } else {
                r.failures = r.failures.saturating_add(1);
                let retry_ms = backoff(r.failures).min(t.ttl_ms);
                r.due_ms = now.saturating_add(retry_ms);
                r.last_error = format!("Heartbeat: {}", outcome.describe());
                let error = outcome.describe();
                (Event::BeatFailed { error, retry_ms }, None)
            }
        }
        Action::Deregister => {
            if r.phase == Phase::Leaving {
                r.phase = Phase::Unregistered;
                r.due_ms = now;
            }
            if ok {
                (Event::Deregistered, None)
            } else {
                r.last_error = format!("DeregisterInstance: {}", outcome.describe());
                (Event::DeregisterFailed(outcome.describe()), None)
            }
        }
        // Probe answers go through `probed`.
        Action::Probe => (Event::Stale, None),
        Action::Report => {
            r.report_due_ms = now.saturating_add(t.report_ms);
            if ok {
                (Event::Reported, None)
            } else {
                (Event::ReportFailed(outcome.describe()), None)
            }
        }
    }
}

const PROBE_ERROR: &str = "readiness probe";

/// How often a failing readiness probe is retried (at most; a shorter TTL wins).
pub const PROBE_RETRY_MS: u64 = 1_000;

/// The readiness probe's answer: `ok` when the local service answered 2xx. Passing, the call it
/// gated is returned to be sent now; failing, nothing is sent (a registered instance misses its
/// heartbeat, so Polaris marks it unhealthy after 3 × TTL) and the probe is retried.
pub fn probed(
    r: &mut Record,
    fp: u64,
    ok: bool,
    why: &str,
    now: u64,
    t: &Timing,
) -> (Event, Option<Action>) {
    let was = r.ready;
    r.ready = ok;
    let event = match (was, ok) {
        (false, true) => Event::Ready,
        // Said once per change: on the first failure, and when a passing probe fails.
        (true, false) => Event::NotReady(why.to_string()),
        (false, false) if !r.last_error.starts_with(PROBE_ERROR) => {
            Event::NotReady(why.to_string())
        }
        _ => Event::Stale,
    };
    if !ok {
        r.last_error = format!("{PROBE_ERROR}: {why}");
        r.busy_ms = 0;
        r.due_ms = now.saturating_add(PROBE_RETRY_MS.min(t.ttl_ms));
        return (event, None);
    }
    if matches!(r.phase, Phase::Offline | Phase::Leaving) {
        r.busy_ms = 0;
        return (event, None);
    }
    (event, Some(next_call(r, fp)))
}

/// The offline trigger: no more registrations or heartbeats for this configuration. Returns
/// whether it was already offline (the deregistration is sent again either way).
pub fn go_offline(r: &mut Record, now: u64) -> bool {
    let already = r.phase == Phase::Offline;
    if let Some(fp) = r.leading_fp(now) {
        r.registered_fp = fp;
    }
    r.phase = Phase::Offline;
    r.failures = 0;
    already
}

/// A member's root context is going away. True when it was the last live member of a
/// registered instance: it must deregister (and the record says `leaving`, so no other VM
/// does).
pub fn leave(r: &mut Record, me: u64, now: u64, t: &Timing) -> bool {
    r.members.retain(|m| m.ctx != me);
    if r.owner == me {
        r.owner = 0;
        r.lease_ms = 0;
    }
    if matches!(r.phase, Phase::Offline | Phase::Leaving) || r.live(now).next().is_some() {
        return false;
    }
    if r.phase == Phase::Unregistered && r.registrations == 0 {
        return false;
    }
    r.phase = Phase::Leaving;
    r.due_ms = now.saturating_add(t.call_ms);
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    const T: Timing = Timing {
        ttl_ms: 2_000,
        early_ms: 0,
        call_ms: 3_000,
        lease_ms: 2_000,
        report_ms: 120_000,
    };

    fn ok(id: &str) -> Outcome {
        Outcome::Code {
            code: 200_000,
            info: String::new(),
            id: id.into(),
        }
    }

    fn code(c: u32) -> Outcome {
        Outcome::Code {
            code: c,
            info: String::new(),
            id: String::new(),
        }
    }

    /// A record where member 1 (fp 7) registered instance "i1" at `now`.
    fn registered(now: u64) -> Record {
        let mut r = Record::default();
        assert_eq!(
            tick(&mut r, 1, 7, false, now, &T),
            vec![Action::Register, Action::Report]
        );
        answer(&mut r, Action::Register, 7, &ok("i1"), now, &T);
        r
    }

    #[test]
    fn the_first_member_registers_and_reports_then_heartbeats_every_ttl() {
        let mut r = registered(1000);
        assert_eq!(r.phase, Phase::Registered);
        assert_eq!(r.id, "i1");
        assert_eq!(tick(&mut r, 1, 7, false, 2999, &T), vec![], "not due");
        assert_eq!(tick(&mut r, 1, 7, false, 3000, &T), vec![Action::Heartbeat]);
        assert_eq!(
            tick(&mut r, 1, 7, false, 3500, &T),
            vec![],
            "heartbeat in flight"
        );
        let (e, _) = answer(&mut r, Action::Heartbeat, 7, &ok(""), 3100, &T);
        assert_eq!(e, Event::Beat);
        assert_eq!(r.due_ms, 5100);
        assert_eq!(r.beat_ms, 3100);
    }

    #[test]
    fn only_the_lease_holder_acts() {
        let mut r = registered(1000);
        assert_eq!(
            tick(&mut r, 2, 7, false, 1100, &T),
            vec![],
            "1 holds the lease"
        );
        assert_eq!(
            tick(&mut r, 1, 7, false, 2500, &T),
            vec![],
            "renewed, nothing due"
        );
        assert_eq!(tick(&mut r, 3, 7, false, 3100, &T), vec![]);
        assert_eq!(r.owner, 1);
    }

    #[test]
    fn a_takeover_continues_the_schedule_without_registering_again() {
        let mut r = registered(1000);
        tick(&mut r, 2, 7, false, 1100, &T);
        // Member 1 stops ticking; its lease (2 s) runs out, then member 2 takes over.
        assert_eq!(
            tick(&mut r, 2, 7, false, 2999, &T),
            vec![],
            "lease still 1's"
        );
        assert_eq!(tick(&mut r, 2, 7, false, 3000, &T), vec![Action::Heartbeat]);
        assert_eq!(r.owner, 2);
        assert_eq!(r.registrations, 1);
    }

    #[test]
    fn registration_failures_back_off_and_name_the_code() {
        let mut r = Record::default();
        let mut now = 0;
        let mut delays = Vec::new();
        for _ in 0..7 {
            let actions = tick(&mut r, 1, 7, false, now, &T);
            assert!(actions.contains(&Action::Register), "at {now}");
            let (e, _) = answer(&mut r, Action::Register, 7, &code(500_000), now, &T);
            let Event::RegisterFailed { retry_ms, error } = e else {
                panic!("{e:?}")
            };
            assert!(error.contains("ExecuteException"), "{error}");
            delays.push(retry_ms);
            now += retry_ms;
            // the lease must not lapse in the test
            r.lease_ms = now + 10_000;
        }
        assert_eq!(delays, vec![500, 1000, 2000, 4000, 8000, 10_000, 10_000]);
        assert!(r.last_error.contains("500000 ExecuteException"));
        answer(&mut r, Action::Register, 7, &ok("i"), now, &T);
        assert_eq!((r.phase, r.failures), (Phase::Registered, 0));
    }

    #[test]
    fn an_existing_instance_counts_as_registered() {
        let mut r = Record::default();
        tick(&mut r, 1, 7, false, 0, &T);
        let (e, _) = answer(&mut r, Action::Register, 7, &code(400_201), 0, &T);
        assert_eq!(e, Event::Registered);
    }

    #[test]
    fn a_forgotten_instance_is_registered_again_at_once() {
        for c in [400_202, 400_303, 400_140] {
            let mut r = registered(0);
            assert_eq!(tick(&mut r, 1, 7, false, 2000, &T), vec![Action::Heartbeat]);
            let (e, _) = answer(&mut r, Action::Heartbeat, 7, &code(c), 2100, &T);
            assert!(matches!(e, Event::Forgotten(_)), "{c}: {e:?}");
            assert_eq!(tick(&mut r, 1, 7, false, 2100, &T), vec![Action::Register]);
        }
    }

    #[test]
    fn a_failed_heartbeat_is_retried_within_the_ttl() {
        let mut r = registered(0);
        tick(&mut r, 1, 7, false, 2000, &T);
        let (e, _) = answer(
            &mut r,
            Action::Heartbeat,
            7,
            &Outcome::Failed("Polaris unreachable".into()),
            2000,
            &T,
        );
        assert_eq!(
            e,
            Event::BeatFailed {
                error: "Polaris unreachable".into(),
                retry_ms: 500
            }
        );
        assert_eq!(r.phase, Phase::Registered);
    }

    #[test]
    fn offline_stops_everything_and_a_late_registration_is_taken_back() {
        let mut r = Record::default();
        tick(&mut r, 1, 7, false, 0, &T);
        assert!(!go_offline(&mut r, 100));
        assert!(go_offline(&mut r, 150), "twice is harmless");
        let (e, again) = answer(&mut r, Action::Register, 7, &ok("i"), 200, &T);
        assert_eq!((e, again), (Event::Stale, Some(Action::Deregister)));
        assert_eq!(r.phase, Phase::Offline);
        r.report_due_ms = u64::MAX;
        assert_eq!(tick(&mut r, 1, 7, false, 60_000, &T), vec![]);
        let (e, _) = answer(&mut r, Action::Heartbeat, 7, &code(400_202), 60_000, &T);
        assert_eq!(e, Event::Stale, "no re-registration after the trigger");
    }

    #[test]
    fn a_new_configuration_after_offline_registers_again() {
        let mut r = registered(0);
        go_offline(&mut r, 100);
        r.report_due_ms = u64::MAX;
        assert_eq!(
            tick(&mut r, 2, 9, false, 120, &T),
            vec![],
            "1 holds the lease"
        );
        assert_eq!(
            tick(&mut r, 1, 7, false, 150, &T),
            vec![],
            "1 no longer leads"
        );
        assert_eq!(tick(&mut r, 2, 9, false, 200, &T), vec![Action::Register]);
        assert_eq!(r.owner, 2);
        assert_eq!(r.phase, Phase::Unregistered);
    }

    #[test]
    fn the_newest_configuration_leads_while_the_old_one_drains() {
        let mut r = registered(0);
        r.report_due_ms = u64::MAX;
        // A listener update: member 5 joins with new attributes (fp 9).
        assert_eq!(
            tick(&mut r, 5, 9, false, 500, &T),
            vec![],
            "1 still holds the lease"
        );
        assert_eq!(
            tick(&mut r, 1, 7, false, 600, &T),
            vec![],
            "1 no longer leads"
        );
        assert_eq!(r.owner, 0, "and let the lease go");
        assert_eq!(
            tick(&mut r, 5, 9, false, 700, &T),
            vec![Action::Register],
            "upsert with the new attributes"
        );
        answer(&mut r, Action::Register, 9, &ok("i1"), 800, &T);
        assert_eq!(tick(&mut r, 5, 9, false, 2800, &T), vec![Action::Heartbeat]);
        // The old member leaves after the drain: the new one is live, nothing is deregistered.
        assert!(!leave(&mut r, 1, 2900, &T));
    }

    #[test]
    fn the_last_member_to_leave_deregisters_once() {
        let mut r = registered(0);
        tick(&mut r, 2, 7, false, 100, &T);
        tick(&mut r, 3, 7, false, 100, &T);
        assert!(!leave(&mut r, 2, 500, &T));
        assert!(!leave(&mut r, 1, 500, &T));
        assert!(leave(&mut r, 3, 500, &T), "the last one out");
        assert_eq!(r.phase, Phase::Leaving);
        assert!(!leave(&mut r, 3, 500, &T), "a repeat does not send twice");
        let (e, _) = answer(&mut r, Action::Deregister, 7, &ok(""), 600, &T);
        assert_eq!(e, Event::Deregistered);
        assert_eq!(r.phase, Phase::Unregistered);
    }

    #[test]
    fn members_that_stopped_ticking_do_not_hold_the_instance() {
        let mut r = registered(0);
        tick(&mut r, 2, 7, false, 0, &T);
        // 2 crashed (no on_done): 1 leaves after 2's stamp went stale.
        assert!(leave(&mut r, 1, LIVE_MS + 1, &T));
    }

    #[test]
    fn leaving_an_offline_or_never_registered_instance_sends_nothing() {
        let mut r = registered(0);
        go_offline(&mut r, 10);
        assert!(!leave(&mut r, 1, 20, &T));
        let mut fresh = Record::default();
        tick(&mut fresh, 1, 7, false, 0, &T);
        assert!(!leave(&mut fresh, 1, 10, &T));
    }

    #[test]
    fn a_member_joining_while_the_last_one_leaves_registers_again() {
        let mut r = registered(0);
        assert!(leave(&mut r, 1, 100, &T));
        r.report_due_ms = u64::MAX;
        assert_eq!(
            tick(&mut r, 4, 7, false, 200, &T),
            vec![],
            "deregistration in flight"
        );
        assert_eq!(tick(&mut r, 4, 7, false, 3100, &T), vec![Action::Register]);
    }

    #[test]
    fn reports_repeat_every_interval() {
        let mut r = registered(0);
        answer(&mut r, Action::Report, 7, &ok(""), 50, &T);
        assert_eq!(r.report_due_ms, 120_050);
        r.due_ms = u64::MAX;
        assert_eq!(tick(&mut r, 1, 7, false, 120_050, &T), vec![Action::Report]);
    }

    #[test]
    fn a_readiness_gate_probes_before_registering_and_heartbeating() {
        let mut r = Record::default();
        assert_eq!(
            tick(&mut r, 1, 7, true, 0, &T),
            vec![Action::Probe, Action::Report]
        );
        r.report_due_ms = u64::MAX;
        let (e, next) = probed(&mut r, 7, false, "503", 10, &T);
        assert_eq!((e, next), (Event::NotReady("503".into()), None));
        assert_eq!(
            tick(&mut r, 1, 7, true, 500, &T),
            vec![],
            "retried after 1 s"
        );
        assert_eq!(tick(&mut r, 1, 7, true, 1010, &T), vec![Action::Probe]);
        let (e, next) = probed(&mut r, 7, false, "503", 1020, &T);
        assert_eq!((e, next), (Event::Stale, None), "logged once");
        assert_eq!(tick(&mut r, 1, 7, true, 2020, &T), vec![Action::Probe]);
        let (e, next) = probed(&mut r, 7, true, "", 2030, &T);
        assert_eq!((e, next), (Event::Ready, Some(Action::Register)));
        answer(&mut r, Action::Register, 7, &ok("i"), 2040, &T);
        assert_eq!(tick(&mut r, 1, 7, true, 4040, &T), vec![Action::Probe]);
        assert_eq!(
            probed(&mut r, 7, true, "", 4050, &T).1,
            Some(Action::Heartbeat)
        );
        answer(&mut r, Action::Heartbeat, 7, &ok(""), 4060, &T);
        // The service stops answering: no heartbeat while it does not.
        assert_eq!(tick(&mut r, 1, 7, true, 6060, &T), vec![Action::Probe]);
        let (e, next) = probed(&mut r, 7, false, "connection refused", 6070, &T);
        assert_eq!(
            (e, next),
            (Event::NotReady("connection refused".into()), None)
        );
        assert_eq!(r.phase, Phase::Registered, "left to expire in Polaris");
    }

    #[test]
    fn records_round_trip_and_junk_is_a_fresh_record() {
        let r = registered(5);
        assert_eq!(Record::decode(Some(&r.encode())), r);
        assert_eq!(Record::decode(Some(b"\xff")), Record::default());
        assert_eq!(Record::decode(None), Record::default());
    }
}
