//! Request arguments as Polaris rules name them, and the facts of a request they are read from.
//!
//! The server turns v2 rule arguments into v1 metadata keys (`common/model/routing.go:
//! RoutingArguments2Labels`): `$header.<k>`, `$query.<k>`, `$cookie.<k>`, `$method`, `$path`,
//! `$caller_ip`, and bare keys for CUSTOM. `$path` is lower case, as the server sends it and
//! polaris-go (v1.6.1, v1.7.0: `model.LabelKeyPath`) reads it.

/// One argument a rule reads.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Arg {
    Header(String),
    Query(String),
    Cookie(String),
    Method,
    Path,
    CallerIp,
    /// A caller metadata key (plugin `caller.metadata`).
    Custom(String),
}

impl Arg {
    pub fn parse(key: &str) -> Arg {
        match key {
            "$method" => Arg::Method,
            "$path" => Arg::Path,
            "$caller_ip" => Arg::CallerIp,
            _ => {
                if let Some(k) = key.strip_prefix("$header.") {
                    Arg::Header(k.to_ascii_lowercase())
                } else if let Some(k) = key.strip_prefix("$query.") {
                    Arg::Query(k.to_string())
                } else if let Some(k) = key.strip_prefix("$cookie.") {
                    Arg::Cookie(k.to_string())
                } else {
                    Arg::Custom(key.to_string())
                }
            }
        }
    }
}

/// What a rule can ask of a request. The host implements it with lazy, cached header reads, so a
/// request pays only for the arguments its rules name.
pub trait RequestFacts {
    fn header(&mut self, name: &str) -> Option<&str>;
    fn method(&mut self) -> Option<&str>;
    /// The path without its query string.
    fn path(&mut self) -> Option<&str>;
    fn query(&mut self, name: &str) -> Option<&str>;
    fn cookie(&mut self, name: &str) -> Option<&str>;
    /// The downstream peer address, without port.
    fn caller_ip(&mut self) -> Option<&str>;
    /// Caller metadata from configuration.
    fn custom(&mut self, key: &str) -> Option<&str>;

    fn arg(&mut self, arg: &Arg) -> Option<&str> {
        match arg {
            Arg::Header(h) => self.header(h),
            Arg::Query(q) => self.query(q),
            Arg::Cookie(c) => self.cookie(c),
            Arg::Method => self.method(),
            Arg::Path => self.path(),
            Arg::CallerIp => self.caller_ip(),
            Arg::Custom(k) => self.custom(k),
        }
    }
}

/// `?a=1&b=2` lookup without decoding allocation beyond the answer's slice.
pub fn query_param<'a>(path: &'a str, name: &str) -> Option<&'a str> {
    let (_, query) = path.split_once('?')?;
    let query = query.split('#').next().unwrap_or(query);
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then_some(v)
    })
}

/// `cookie: a=1; b=2` lookup.
pub fn cookie_value<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header.split(';').find_map(|pair| {
        let (k, v) = pair.trim().split_once('=')?;
        (k == name).then_some(v.trim_matches('"'))
    })
}

/// The path part of `:path`.
pub fn path_only(path: &str) -> &str {
    path.split(['?', '#']).next().unwrap_or(path)
}

/// `1.2.3.4:5678` or `[::1]:5678` without the port.
pub fn strip_port(address: &str) -> &str {
    if let Some(rest) = address.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match address.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => {
            host
        }
        _ => address,
    }
}

/// Request facts held in memory: for tests and the native benchmark.
#[derive(Clone, Debug, Default)]
pub struct StaticFacts {
    pub headers: Vec<(String, String)>,
    pub method: String,
    pub path: String,
    pub caller_ip: String,
    pub custom: Vec<(String, String)>,
}

impl RequestFacts for StaticFacts {
    fn header(&mut self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    fn method(&mut self) -> Option<&str> {
        Some(self.method.as_str()).filter(|m| !m.is_empty())
    }
    fn path(&mut self) -> Option<&str> {
        Some(path_only(&self.path)).filter(|p| !p.is_empty())
    }
    fn query(&mut self, name: &str) -> Option<&str> {
        query_param(&self.path, name)
    }
    fn cookie(&mut self, name: &str) -> Option<&str> {
        let header = self
            .headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("cookie"))
            .map(|(_, v)| v.as_str())?;
        cookie_value(header, name)
    }
    fn caller_ip(&mut self) -> Option<&str> {
        Some(self.caller_ip.as_str()).filter(|c| !c.is_empty())
    }
    fn custom(&mut self, key: &str) -> Option<&str> {
        self.custom
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn server_keys_parse_to_arguments() {
        assert_eq!(Arg::parse("$header.X-Env"), Arg::Header("x-env".into()));
        assert_eq!(Arg::parse("$query.q"), Arg::Query("q".into()));
        assert_eq!(Arg::parse("$cookie.c"), Arg::Cookie("c".into()));
        assert_eq!(Arg::parse("$method"), Arg::Method);
        assert_eq!(Arg::parse("$path"), Arg::Path);
        assert_eq!(Arg::parse("$caller_ip"), Arg::CallerIp);
        assert_eq!(Arg::parse("env"), Arg::Custom("env".into()));
    }

    #[test]
    fn a_capital_path_key_is_a_custom_key_because_neither_the_server_nor_polaris_go_use_it() {
        assert_eq!(Arg::parse("$Path"), Arg::Custom("$Path".into()));
    }

    #[test]
    fn query_and_cookie_values_are_found() {
        assert_eq!(query_param("/a?x=1&y=2", "y"), Some("2"));
        assert_eq!(query_param("/a?x", "x"), Some(""));
        assert_eq!(query_param("/a", "x"), None);
        assert_eq!(cookie_value("a=1; b=\"2\"", "b"), Some("2"));
        assert_eq!(cookie_value("a=1", "c"), None);
        assert_eq!(path_only("/p/q?x=1"), "/p/q");
    }

    #[test]
    fn ports_are_stripped_from_peer_addresses() {
        assert_eq!(strip_port("127.0.0.1:5555"), "127.0.0.1");
        assert_eq!(strip_port("[::1]:5555"), "::1");
        assert_eq!(strip_port("10.0.0.1"), "10.0.0.1");
    }
}
