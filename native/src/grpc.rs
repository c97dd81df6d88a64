//! gRPC unary calls as Envoy HTTP callouts: the request frame, and the answer read back from
//! the response headers and body (a callout's answer carries no trailers, so a `grpc-status`
//! there is not seen: a 200 with one whole message frame is taken as OK).

use polaris_wasm::polaris::CallError;

use crate::ffi::abi::Answer;

/// gRPC `UNAVAILABLE`: what a transport failure reads as, as in the wasm build.
const UNAVAILABLE: u32 = 14;
/// gRPC `INTERNAL`: an answer that is not one message frame.
const INTERNAL: u32 = 13;

/// A length-prefixed, uncompressed gRPC message.
pub fn frame(message: &[u8]) -> Vec<u8> {
    let len = u32::try_from(message.len()).unwrap_or(u32::MAX);
    let mut out = Vec::with_capacity(message.len() + 5);
    out.push(0);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(message);
    out
}

/// Takes the first whole message frame off `buf`: `Ok(None)` while it is incomplete.
pub fn take_frame(buf: &mut Vec<u8>) -> Result<Option<Vec<u8>>, CallError> {
    let (Some(&flag), Some(len)) = (buf.first(), buf.get(1..5)) else {
        return Ok(None);
    };
    if flag != 0 {
        return Err(error(INTERNAL, "compressed gRPC message"));
    }
    let mut n = [0u8; 4];
    n.copy_from_slice(len);
    let end = usize::try_from(u32::from_be_bytes(n))
        .ok()
        .and_then(|n| n.checked_add(5))
        .ok_or_else(|| error(INTERNAL, "oversized gRPC message"))?;
    let Some(message) = buf.get(5..end).map(<[u8]>::to_vec) else {
        return Ok(None);
    };
    buf.drain(..end);
    Ok(Some(message))
}

/// The Envoy cluster an encoded `GrpcService { envoy_grpc { cluster_name } }` names (what the
/// core passes as a call's `upstream`, built by `polaris::client::envoy_grpc_service`).
pub fn cluster_of(upstream: &str) -> Option<&str> {
    let b = upstream.as_bytes();
    let (&[0x0a, outer, 0x0a, inner], rest) = (b.get(..4)?, b.get(4..)?) else {
        return None;
    };
    let n = usize::from(inner);
    (usize::from(outer) == n + 2 && rest.len() == n)
        .then(|| upstream.get(4..))
        .flatten()
}

fn error(status: u32, message: impl Into<String>) -> CallError {
    CallError {
        status,
        message: Some(message.into()),
    }
}

/// The message of a unary answer, or how the call failed.
pub fn unary_result(answer: &Answer) -> Result<Vec<u8>, CallError> {
    if answer.failed {
        return Err(error(UNAVAILABLE, "callout reset"));
    }
    if let Some(status) = answer.header("grpc-status") {
        let code = status.trim().parse::<u32>().unwrap_or(INTERNAL);
        if code != 0 {
            let message = answer
                .header("grpc-message")
                .map_or_else(|| format!("gRPC status {code}"), str::to_owned);
            return Err(error(code, message));
        }
    }
    match answer.header(":status") {
        Some("200") => {}
        Some(other) => {
            let body = String::from_utf8_lossy(&answer.body);
            return Err(error(UNAVAILABLE, format!("HTTP {other}: {body}")));
        }
        None => return Err(error(UNAVAILABLE, "no response")),
    }
    let body = answer.body.as_slice();
    let (Some(&flag), Some(len)) = (body.first(), body.get(1..5)) else {
        return Err(error(INTERNAL, "empty gRPC answer"));
    };
    if flag != 0 {
        return Err(error(INTERNAL, "compressed gRPC answer"));
    }
    let mut n = [0u8; 4];
    n.copy_from_slice(len);
    let end = usize::try_from(u32::from_be_bytes(n))
        .ok()
        .and_then(|n| n.checked_add(5));
    match end.and_then(|end| body.get(5..end)) {
        Some(message) => Ok(message.to_vec()),
        None => Err(error(INTERNAL, "truncated gRPC answer")),
    }
}

/// The `:status` of an HTTP callout's answer (`None` when it failed).
pub fn http_status(answer: &Answer) -> Option<u32> {
    if answer.failed {
        return None;
    }
    answer.header(":status").and_then(|s| s.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(body: Vec<u8>) -> Answer {
        Answer {
            failed: false,
            headers: vec![(":status".into(), "200".into())],
            body,
        }
    }

    #[test]
    fn a_framed_message_reads_back() {
        assert_eq!(unary_result(&ok(frame(b"hello"))), Ok(b"hello".to_vec()));
    }

    #[test]
    fn a_truncated_frame_is_an_error_not_a_panic() {
        let mut body = frame(b"hello");
        body.truncate(6);
        assert_eq!(unary_result(&ok(body)).map_err(|e| e.status), Err(INTERNAL));
        assert_eq!(
            unary_result(&ok(vec![0, 1])).map_err(|e| e.status),
            Err(INTERNAL)
        );
    }

    #[test]
    fn trailers_only_status_is_the_error() {
        let a = Answer {
            failed: false,
            headers: vec![
                (":status".into(), "200".into()),
                ("grpc-status".into(), "14".into()),
                ("grpc-message".into(), "no healthy upstream".into()),
            ],
            body: vec![],
        };
        let e = unary_result(&a).err();
        assert_eq!(e.as_ref().map(|e| e.status), Some(14));
        assert_eq!(
            e.and_then(|e| e.message).as_deref(),
            Some("no healthy upstream")
        );
    }

    #[test]
    fn the_cluster_of_an_encoded_grpc_service_reads_back() {
        let up = polaris_wasm::polaris::client::envoy_grpc_service("polaris_limiter");
        assert_eq!(up.as_deref().and_then(cluster_of), Some("polaris_limiter"));
        assert_eq!(cluster_of("polaris_grpc"), None);
        assert_eq!(cluster_of("\u{0a}\u{09}\u{0a}\u{07}abc"), None);
    }

    #[test]
    fn frames_are_taken_whole_and_a_partial_one_waits() {
        let mut buf = frame(b"one");
        buf.extend(frame(b"two"));
        buf.truncate(buf.len() - 1);
        assert_eq!(take_frame(&mut buf), Ok(Some(b"one".to_vec())));
        assert_eq!(take_frame(&mut buf), Ok(None));
        buf.push(b'o');
        assert_eq!(take_frame(&mut buf), Ok(Some(b"two".to_vec())));
        assert!(buf.is_empty());
    }

    #[test]
    fn a_reset_callout_is_unavailable() {
        let a = Answer {
            failed: true,
            ..Answer::default()
        };
        assert_eq!(unary_result(&a).map_err(|e| e.status), Err(UNAVAILABLE));
        assert_eq!(http_status(&a), None);
    }
}
