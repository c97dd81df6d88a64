//! Which Polaris service a request is for.
//!
//! A request names its destination as `service` or `service.namespace` (in `:authority` by
//! default). The split is at the last dot, because Polaris service names may contain dots
//! (`polaris.checker.Polaris` is service `polaris.checker` in namespace `Polaris`) while namespace
//! names are short words.

use std::collections::HashMap;
use std::rc::Rc;

use crate::matching::strip_port;
use crate::model::ServiceKey;

/// Longest service or namespace name accepted from a request.
const MAX_NAME: usize = 128;

/// Parses a destination (`host[:port]`, `service` or `service.namespace`); `None` when the value
/// cannot name a Polaris service.
pub fn parse_destination(value: &str, default_namespace: &str) -> Option<ServiceKey> {
    let value = value.trim();
    if value.starts_with('[') {
        // An IPv6 literal names no service.
        return None;
    }
    let host = strip_port(value);
    let (name, namespace) = match host.rsplit_once('.') {
        Some((name, namespace)) => (name, namespace),
        None => (host, default_namespace),
    };
    (valid_name(name) && valid_name(namespace)).then(|| ServiceKey::new(namespace, name))
}

/// Remembers how raw destination values parsed, so the request path neither re-parses nor
/// allocates for a destination it has seen. Bounded: cleared when full, since hostile clients
/// choose the values.
#[derive(Debug, Default)]
pub struct DestinationMemo {
    parsed: HashMap<String, Option<Rc<ServiceKey>>>,
}

impl DestinationMemo {
    const CAPACITY: usize = 4096;

    /// The service `raw` names, shared: the request path holds it without copying its names.
    pub fn resolve(&mut self, raw: &str, default_namespace: &str) -> Option<Rc<ServiceKey>> {
        if let Some(known) = self.parsed.get(raw) {
            return known.clone();
        }
        if self.parsed.len() >= Self::CAPACITY {
            self.parsed.clear();
        }
        let key = parse_destination(raw, default_namespace).map(Rc::new);
        self.parsed.insert(raw.to_string(), key.clone());
        key
    }
}

/// Polaris names: letters, digits, `-`, `_`, `.`, `:`; never `/` or control characters, which our
/// shared-data keys and watch list rely on.
pub fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_NAME
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn bare_host_uses_default_namespace() {
        assert_eq!(
            parse_destination("echo", "default"),
            Some(ServiceKey::new("default", "echo"))
        );
    }

    #[test]
    fn port_is_stripped() {
        assert_eq!(
            parse_destination("echo:10000", "default"),
            Some(ServiceKey::new("default", "echo"))
        );
    }

    #[test]
    fn last_dot_separates_namespace() {
        assert_eq!(
            parse_destination("echo.prod", "default"),
            Some(ServiceKey::new("prod", "echo"))
        );
        assert_eq!(
            parse_destination("polaris.checker.Polaris", "default"),
            Some(ServiceKey::new("Polaris", "polaris.checker"))
        );
    }

    #[test]
    fn memo_answers_like_the_parser_and_stays_bounded() {
        let mut memo = DestinationMemo::default();
        assert_eq!(
            memo.resolve("echo.prod:80", "default"),
            Some(Rc::new(ServiceKey::new("prod", "echo")))
        );
        assert_eq!(memo.resolve("bad.", "default"), None);
        for i in 0..(DestinationMemo::CAPACITY + 10) {
            memo.resolve(&format!("s{i}"), "default");
        }
        assert!(memo.parsed.len() <= DestinationMemo::CAPACITY);
        assert_eq!(
            memo.resolve("echo", "default"),
            Some(Rc::new(ServiceKey::new("default", "echo")))
        );
    }

    #[test]
    fn junk_names_nothing() {
        for v in [
            "", ":80", "echo.", ".ns", "a/b", "[::1]:80", "sp ace", "x\ny",
        ] {
            assert_eq!(parse_destination(v, "default"), None, "{v:?}");
        }
        assert_eq!(parse_destination(&"a".repeat(200), "default"), None);
    }
}
