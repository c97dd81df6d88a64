//! The leader's refresh bookkeeping: which watched services are due, which revision to send, and
//! what to do with each answer. Pure, so the timing and the keep-last-good rules are unit-tested.

use std::collections::HashMap;

use super::decode::{classify, Answer, DecodeError};
use crate::model::Kind;
use crate::model::ServiceKey;

/// One discovered resource: a kind of data about a service.
pub type Resource = (Kind, ServiceKey);

#[derive(Clone, Debug, Default)]
struct State {
    /// Revision of what we last stored; empty before the first answer.
    revision: String,
    /// What we last stored was a not-found answer.
    not_found: bool,
    /// A call is out; when it was sent.
    in_flight_since_ms: Option<u64>,
    next_due_ms: u64,
}

/// What to do with an answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Write these bytes to the service's shared entry.
    Store,
    /// Same revision (or still not found): nothing to write.
    Unchanged,
    /// Unusable answer; the last good snapshot stays.
    Keep(DecodeError),
}

#[derive(Clone, Debug)]
pub struct Refresher {
    interval_ms: u64,
    /// An answer lost by the host still frees the service after this long.
    call_expiry_ms: u64,
    services: HashMap<Resource, State>,
}

impl Refresher {
    pub fn new(interval_ms: u64, call_timeout_ms: u64) -> Refresher {
        Refresher {
            interval_ms,
            call_expiry_ms: call_timeout_ms.saturating_mul(2),
            services: HashMap::new(),
        }
    }

    /// Resources from `watched` to discover now, with the revision to send; marks them in flight.
    pub fn due(&mut self, watched: &[Resource], now_ms: u64) -> Vec<(Resource, String)> {
        self.services.retain(|k, _| watched.contains(k));
        let mut out = Vec::new();
        for key in watched {
            let state = self.services.entry(key.clone()).or_default();
            if let Some(since) = state.in_flight_since_ms {
                if now_ms < since.saturating_add(self.call_expiry_ms) {
                    continue;
                }
            }
            if now_ms >= state.next_due_ms {
                state.in_flight_since_ms = Some(now_ms);
                // Periodic from the due time, not from when the answer came back, so the
                // period stays the interval whatever the tick granularity; after a stall,
                // no burst to catch up.
                let next = state.next_due_ms.saturating_add(self.interval_ms);
                state.next_due_ms = if next > now_ms {
                    next
                } else {
                    now_ms.saturating_add(self.interval_ms)
                };
                out.push((key.clone(), state.revision.clone()));
            }
        }
        out
    }

    /// Classifies an answer (`Err` = the call itself failed).
    pub fn on_answer(&mut self, key: &Resource, answer: Result<&[u8], String>) -> Outcome {
        let state = self.services.entry(key.clone()).or_default();
        state.in_flight_since_ms = None;
        let bytes = match answer {
            Ok(b) => b,
            Err(cause) => {
                return Outcome::Keep(DecodeError::Server {
                    code: 0,
                    info: cause,
                })
            }
        };
        match classify(key.0, &key.1, bytes) {
            Ok(Answer::Changed { revision }) => {
                state.revision = revision;
                state.not_found = false;
                Outcome::Store
            }
            Ok(Answer::Unchanged) => Outcome::Unchanged,
            Ok(Answer::NotFound) if state.not_found => Outcome::Unchanged,
            Ok(Answer::NotFound) => {
                state.revision.clear();
                state.not_found = true;
                Outcome::Store
            }
            Err(e) => Outcome::Keep(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::polaris::proto;
    use prost::Message;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn answer(code: u32, rev: &str) -> Vec<u8> {
        proto::DiscoverResponse {
            code: Some(code),
            r#type: proto::discover_response::DiscoverResponseType::Instance as i32,
            service: Some(proto::Service {
                name: Some("echo".into()),
                namespace: Some("default".into()),
                revision: Some(rev.into()),
                ..Default::default()
            }),
            ..Default::default()
        }
        .encode_to_vec()
    }

    fn key() -> Resource {
        (Kind::Instances, ServiceKey::new("default", "echo"))
    }

    #[test]
    fn each_service_is_due_once_per_interval_and_sends_its_revision() {
        let mut r = Refresher::new(1000, 500);
        let w = vec![key()];
        assert_eq!(r.due(&w, 0), vec![(key(), String::new())]);
        assert!(r.due(&w, 10).is_empty(), "in flight");
        assert_eq!(
            r.on_answer(&key(), Ok(&answer(200000, "r1"))),
            Outcome::Store
        );
        assert!(r.due(&w, 999).is_empty());
        assert_eq!(r.due(&w, 1000), vec![(key(), "r1".to_string())]);
        assert_eq!(
            r.on_answer(&key(), Ok(&answer(200001, "r1"))),
            Outcome::Unchanged
        );
    }

    #[test]
    fn failed_or_malformed_answers_keep_the_last_snapshot() {
        let mut r = Refresher::new(1000, 500);
        r.due(&[key()], 0);
        r.on_answer(&key(), Ok(&answer(200000, "r1")));
        r.due(&[key()], 1000);
        assert!(matches!(
            r.on_answer(&key(), Err("unavailable".into())),
            Outcome::Keep(_)
        ));
        r.due(&[key()], 2000);
        assert!(matches!(
            r.on_answer(&key(), Ok(b"\xff\xff")),
            Outcome::Keep(DecodeError::Malformed(_))
        ));
        assert_eq!(r.due(&[key()], 3000), vec![(key(), "r1".to_string())]);
    }

    #[test]
    fn not_found_is_stored_once() {
        let mut r = Refresher::new(1000, 500);
        r.due(&[key()], 0);
        assert_eq!(r.on_answer(&key(), Ok(&answer(400202, ""))), Outcome::Store);
        r.due(&[key()], 1000);
        assert_eq!(
            r.on_answer(&key(), Ok(&answer(400202, ""))),
            Outcome::Unchanged
        );
    }

    #[test]
    fn late_ticks_do_not_stretch_the_period() {
        let mut r = Refresher::new(1000, 500);
        r.due(&[key()], 0);
        r.on_answer(&key(), Ok(&answer(200001, "")));
        assert_eq!(r.due(&[key()], 1400).len(), 1);
        r.on_answer(&key(), Ok(&answer(200001, "")));
        assert!(r.due(&[key()], 1999).is_empty());
        assert_eq!(r.due(&[key()], 2000).len(), 1);
    }

    #[test]
    fn a_stalled_leader_does_not_burst_to_catch_up() {
        let mut r = Refresher::new(1000, 500);
        r.due(&[key()], 0);
        r.on_answer(&key(), Ok(&answer(200001, "")));
        assert_eq!(r.due(&[key()], 9000).len(), 1);
        r.on_answer(&key(), Ok(&answer(200001, "")));
        assert!(r.due(&[key()], 9500).is_empty());
        assert_eq!(r.due(&[key()], 10000).len(), 1);
    }

    #[test]
    fn a_lost_call_frees_the_service_after_twice_the_timeout() {
        let mut r = Refresher::new(100, 500);
        assert_eq!(r.due(&[key()], 0).len(), 1);
        assert!(r.due(&[key()], 999).is_empty());
        assert_eq!(r.due(&[key()], 1000).len(), 1);
    }

    #[test]
    fn unwatched_services_are_forgotten() {
        let mut r = Refresher::new(100, 500);
        r.due(&[key()], 0);
        assert!(r.due(&[], 10).is_empty());
        assert_eq!(r.services.len(), 0);
    }
}
