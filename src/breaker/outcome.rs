//! What one upstream result was, as the breakers see it.
//!
//! Envoy reports an upstream reset or a connect failure as a 503 (or a timeout as a 504) that it
//! generated itself; the response's `response.code_details` then says so (anything but
//! `via_upstream`). Such a result is polaris-go's return code `-1`.

/// One upstream result: the status, or `-1` when the upstream never answered, and the time from
/// request start to response headers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub code: i32,
    pub latency_ms: u64,
}

/// Envoy's `response.code_details` of a response the upstream itself sent.
pub const VIA_UPSTREAM: &str = "via_upstream";

impl Outcome {
    /// The outcome of a response with `status`, whose `code_details` (read only for a 5xx) tells
    /// whether the upstream sent it.
    pub fn from_response(
        status: Option<u32>,
        code_details: Option<&str>,
        latency_ms: u64,
    ) -> Outcome {
        let code = match status {
            Some(s) if s >= 500 && code_details.is_some_and(|d| d != VIA_UPSTREAM) => -1,
            Some(s) => i32::try_from(s).unwrap_or(-1),
            None => -1,
        };
        Outcome { code, latency_ms }
    }

    /// The code as the decimal text RET_CODE conditions test, written into `buf` (no allocation).
    pub fn code_str<'b>(&self, buf: &'b mut [u8; 12]) -> &'b str {
        let mut n = i64::from(self.code).unsigned_abs();
        let mut at = buf.len();
        loop {
            at -= 1;
            if let Some(slot) = buf.get_mut(at) {
                *slot = b'0' + (n % 10) as u8;
            }
            n /= 10;
            if n == 0 || at == 1 {
                break;
            }
        }
        if self.code < 0 {
            at -= 1;
            if let Some(slot) = buf.get_mut(at) {
                *slot = b'-';
            }
        }
        buf.get(at..)
            .and_then(|b| std::str::from_utf8(b).ok())
            .unwrap_or_default()
    }

    /// Whether `code_details` must be read to classify `status`.
    pub fn needs_details(status: Option<u32>) -> bool {
        status.is_some_and(|s| s >= 500)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn envoy_generated_5xx_is_a_reset_and_upstream_5xx_keeps_its_code() {
        let reset = Some("upstream_reset_before_response_started{remote_connection_failure}");
        assert_eq!(Outcome::from_response(Some(503), reset, 3).code, -1);
        assert_eq!(
            Outcome::from_response(Some(503), Some(VIA_UPSTREAM), 3).code,
            503
        );
        assert_eq!(Outcome::from_response(Some(500), None, 3).code, 500);
        assert_eq!(Outcome::from_response(Some(200), None, 3).code, 200);
        assert_eq!(Outcome::from_response(None, None, 3).code, -1);
        assert!(Outcome::needs_details(Some(502)));
        assert!(!Outcome::needs_details(Some(404)));
    }

    #[test]
    fn the_code_is_written_as_decimal_text_without_allocating() {
        let mut buf = [0u8; 12];
        for code in [0, 7, 200, 503, -1, i32::MAX, i32::MIN] {
            let o = Outcome {
                code,
                latency_ms: 0,
            };
            assert_eq!(o.code_str(&mut buf), code.to_string());
        }
    }
}
