//! The leader's gRPC streams (polaris-limiter's) over Envoy's filter-config HTTP streams: gRPC
//! framed by us as the unary calls are ([`crate::grpc`]). Opened, fed and reset on the main
//! thread; their response events come back there too, in the config's `http_stream_*` hooks,
//! and are turned here into what the core's `on_stream_message` / `on_stream_close` take.
//!
//! Our tokens for streams are ours, not Envoy's stream ids: the core matches calls and streams
//! by token, and a stream id may equal a callout id (Envoy counts them apart).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;

use polaris_wasm::core::host::HostError;

use crate::ffi::abi::{Callout, ConfigHandle};
use crate::grpc;

/// Stream tokens start here, above any callout id Envoy hands out in practice.
const FIRST_TOKEN: u32 = 0x8000_0000;
/// gRPC `UNAVAILABLE` (a reset, or an HTTP error status) and `UNKNOWN` (no `grpc-status`).
const UNAVAILABLE: u32 = 14;
const UNKNOWN: u32 = 2;

/// One response event of a streamed request, copied out of Envoy's buffers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StreamEvent {
    Headers(Vec<(String, String)>),
    Data(Vec<u8>),
    Trailers(Vec<(String, String)>),
    /// The response ended normally (after its headers, data and trailers).
    Complete,
    /// Reset or failed (Envoy's `http_stream_reset_reason`).
    Reset(u32),
}

/// What the core is told.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Delivery {
    Message(u32, Vec<u8>),
    Close(u32, u32, Option<String>),
}

#[derive(Debug, Default)]
struct Open {
    envoy_id: u64,
    /// Received bytes not yet a whole frame.
    pending: Vec<u8>,
    http_status: Option<String>,
    grpc_status: Option<(u32, Option<String>)>,
}

/// The open streams of one leader (main thread only).
#[derive(Debug)]
pub struct GrpcStreams {
    next: Cell<u32>,
    open: RefCell<HashMap<u32, Open>>,
}

impl Default for GrpcStreams {
    fn default() -> GrpcStreams {
        GrpcStreams {
            next: Cell::new(FIRST_TOKEN),
            open: RefCell::new(HashMap::new()),
        }
    }
}

fn status_of(headers: &[(String, String)]) -> Option<(u32, Option<String>)> {
    let find = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    };
    let code = find("grpc-status")?
        .trim()
        .parse::<u32>()
        .unwrap_or(UNKNOWN);
    Some((code, find("grpc-message").map(str::to_owned)))
}

impl GrpcStreams {
    /// Starts the request (headers only, no timeout: the stream lives until closed).
    pub fn open(&self, config: &ConfigHandle, call: &Callout<'_>) -> Result<u32, HostError> {
        let envoy_id = config
            .start_stream(call)
            .map_err(|e| HostError(e.to_string()))?;
        let token = self.next.get();
        self.next
            .set(token.checked_add(1).unwrap_or(FIRST_TOKEN).max(FIRST_TOKEN));
        self.open.borrow_mut().insert(
            token,
            Open {
                envoy_id,
                ..Open::default()
            },
        );
        Ok(token)
    }

    pub fn send(
        &self,
        config: &ConfigHandle,
        token: u32,
        message: &[u8],
        end: bool,
    ) -> Result<(), HostError> {
        let id = self.open.borrow().get(&token).map(|o| o.envoy_id);
        let id = id.ok_or_else(|| HostError(format!("stream {token} is not open")))?;
        if config.stream_send(id, &grpc::frame(message), end) {
            Ok(())
        } else {
            Err(HostError(format!("Envoy refused data on stream {token}")))
        }
    }

    /// Resets the stream; nothing more is delivered for it.
    pub fn close(&self, config: &ConfigHandle, token: u32) -> Result<(), HostError> {
        let open = self.open.borrow_mut().remove(&token);
        let open = open.ok_or_else(|| HostError(format!("stream {token} is not open")))?;
        config.stream_reset(open.envoy_id);
        Ok(())
    }

    /// Resets every open stream (the filter config is going away).
    pub fn close_all(&self, config: &ConfigHandle) {
        let open: Vec<u64> = self
            .open
            .borrow_mut()
            .drain()
            .map(|(_, o)| o.envoy_id)
            .collect();
        for id in open {
            config.stream_reset(id);
        }
    }

    /// What event `event` of Envoy's stream `envoy_id` means to the core (nothing for a stream
    /// we no longer have).
    pub fn on_event(&self, envoy_id: u64, event: StreamEvent) -> Vec<Delivery> {
        let mut open = self.open.borrow_mut();
        let Some((&token, stream)) = open.iter_mut().find(|(_, o)| o.envoy_id == envoy_id) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        match event {
            StreamEvent::Headers(h) => {
                stream.http_status = h
                    .iter()
                    .find(|(k, _)| k == ":status")
                    .map(|(_, v)| v.clone());
                // A trailers-only answer carries its status in the headers.
                stream.grpc_status = status_of(&h);
            }
            StreamEvent::Data(bytes) => {
                stream.pending.extend_from_slice(&bytes);
                loop {
                    match grpc::take_frame(&mut stream.pending) {
                        Ok(Some(message)) => out.push(Delivery::Message(token, message)),
                        Ok(None) => break,
                        Err(e) => {
                            stream.grpc_status = Some((e.status, e.message));
                            break;
                        }
                    }
                }
            }
            StreamEvent::Trailers(t) => {
                if let Some(s) = status_of(&t) {
                    stream.grpc_status = Some(s);
                }
            }
            StreamEvent::Complete => {
                let (status, message) = match (&stream.grpc_status, &stream.http_status) {
                    (Some(s), _) => s.clone(),
                    (None, Some(h)) if h != "200" => (UNAVAILABLE, Some(format!("HTTP {h}"))),
                    _ => (
                        UNKNOWN,
                        Some("the stream ended without a gRPC status".into()),
                    ),
                };
                out.push(Delivery::Close(token, status, message));
                open.remove(&token);
            }
            StreamEvent::Reset(reason) => {
                out.push(Delivery::Close(
                    token,
                    UNAVAILABLE,
                    Some(format!("stream reset (reason {reason})")),
                ));
                open.remove(&token);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn streams_with(envoy_id: u64) -> (GrpcStreams, u32) {
        let s = GrpcStreams::default();
        s.open.borrow_mut().insert(
            FIRST_TOKEN,
            Open {
                envoy_id,
                ..Open::default()
            },
        );
        (s, FIRST_TOKEN)
    }

    fn h(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn messages_split_across_data_events_are_delivered_whole_and_in_order() {
        let (s, t) = streams_with(9);
        assert!(s
            .on_event(9, StreamEvent::Headers(h(&[(":status", "200")])))
            .is_empty());
        let mut bytes = grpc::frame(b"first");
        bytes.extend(grpc::frame(b"second"));
        let (a, b) = bytes.split_at(12);
        assert_eq!(
            s.on_event(9, StreamEvent::Data(a.to_vec())),
            vec![Delivery::Message(t, b"first".to_vec())]
        );
        assert_eq!(
            s.on_event(9, StreamEvent::Data(b.to_vec())),
            vec![Delivery::Message(t, b"second".to_vec())]
        );
    }

    #[test]
    fn the_trailers_status_closes_the_stream_once() {
        let (s, t) = streams_with(3);
        s.on_event(3, StreamEvent::Headers(h(&[(":status", "200")])));
        s.on_event(3, StreamEvent::Trailers(h(&[("grpc-status", "0")])));
        assert_eq!(
            s.on_event(3, StreamEvent::Complete),
            vec![Delivery::Close(t, 0, None)]
        );
        assert!(s.on_event(3, StreamEvent::Reset(1)).is_empty());
    }

    #[test]
    fn a_trailers_only_error_and_a_reset_close_with_their_status() {
        let (s, t) = streams_with(4);
        s.on_event(
            4,
            StreamEvent::Headers(h(&[
                (":status", "200"),
                ("grpc-status", "14"),
                ("grpc-message", "no healthy upstream"),
            ])),
        );
        assert_eq!(
            s.on_event(4, StreamEvent::Complete),
            vec![Delivery::Close(t, 14, Some("no healthy upstream".into()))]
        );
        let (s, t) = streams_with(5);
        assert!(matches!(
            s.on_event(5, StreamEvent::Reset(0)).as_slice(),
            [Delivery::Close(tok, 14, Some(_))] if *tok == t
        ));
    }

    #[test]
    fn events_of_a_stream_we_do_not_have_are_dropped() {
        let (s, _) = streams_with(4);
        assert!(s
            .on_event(8, StreamEvent::Data(grpc::frame(b"x")))
            .is_empty());
    }
}
