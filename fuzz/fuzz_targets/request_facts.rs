//! What a client sends: `:authority`, `:path`, `cookie` and other header strings and the peer
//! address, through the destination parser (and its memo), the argument readers and the core's
//! lazily-read stream facts.
//!
//! Invariants:
//! - nothing panics;
//! - every value read (query parameter, cookie value, path, address without port) is a slice of
//!   its input, and holds no separator of its syntax;
//! - a parsed destination names a valid service and namespace (non-empty, at most 128 bytes, no
//!   `/`, no whitespace or control characters), taken from the input (the namespace may be the
//!   configured default); the memo answers as the parser does, every time;
//! - the stream facts the rules read answer exactly what the pure readers give for the same
//!   header, however often they are asked.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use polaris_wasm::core::facts::StreamFacts;
use polaris_wasm::core::host::{HostError, Stream};
use polaris_wasm::destination::{parse_destination, DestinationMemo};
use polaris_wasm::matching::{cookie_value, path_only, query_param, strip_port, RequestFacts};
use polaris_wasm::routing::Caller;
use polaris_wasm_fuzz::gen::Text;
use polaris_wasm_fuzz::{clean_name, within};

#[derive(Arbitrary, Debug)]
struct Input {
    authority: String,
    default_namespace: Text,
    path: String,
    cookie: String,
    name: Text,
    address: String,
    headers: Vec<(String, String)>,
}

struct FuzzStream<'a> {
    input: &'a Input,
    reads: usize,
}

impl Stream for FuzzStream<'_> {
    fn request_header(&mut self, name: &str) -> Option<String> {
        self.reads += 1;
        let i = self.input;
        match name {
            ":authority" => Some(i.authority.clone()),
            ":path" => Some(i.path.clone()),
            "cookie" => Some(i.cookie.clone()),
            n if n.starts_with(':') => None,
            _ => i
                .headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone()),
        }
    }

    fn set_request_header(&mut self, _name: &str, _value: &str) -> Result<(), HostError> {
        Ok(())
    }

    fn set_response_header(&mut self, _name: &str, _value: &str) -> Result<(), HostError> {
        Ok(())
    }

    fn source_address(&mut self) -> Option<String> {
        Some(self.input.address.clone())
    }

    fn remove_request_header(&mut self, _name: &str) -> Result<(), HostError> {
        Ok(())
    }

    fn response_header(&mut self, _name: &str) -> Option<String> {
        None
    }

    fn stream_property(&mut self, _path: &[&str]) -> Option<Vec<u8>> {
        None
    }

    fn destination_address(&mut self) -> Option<String> {
        None
    }
}

fn check_destination(raw: &str, default_namespace: &str, memo: &mut DestinationMemo) {
    let parsed = parse_destination(raw, default_namespace);
    if let Some(key) = &parsed {
        for part in [&key.name, &key.namespace] {
            assert!(clean_name(part), "{part:?}");
            assert!(part.len() <= 128);
            assert!(!part.chars().any(char::is_whitespace), "{part:?}");
        }
        assert!(raw.contains(key.name.as_str()));
        assert!(raw.contains(key.namespace.as_str()) || key.namespace == default_namespace);
    }
    for _ in 0..2 {
        assert_eq!(memo.resolve(raw, default_namespace).as_deref(), parsed.as_ref());
    }
}

fuzz_target!(|input: Input| {
    let namespace = input
        .default_namespace
        .pick(&["default", "prod", "", "a/b", "Polaris"]);
    let name = input.name.pick(&["q", "c", "x", "", "a=b"]);

    let mut memo = DestinationMemo::default();
    check_destination(&input.authority, &namespace, &mut memo);
    for (_, v) in input.headers.iter().take(4) {
        check_destination(v, &namespace, &mut memo);
    }

    let query = query_param(&input.path, &name);
    if let Some(v) = query {
        assert!(within(&input.path, v));
        assert!(!v.contains(['&', '#']), "{v:?}");
    }
    let cookie = cookie_value(&input.cookie, &name);
    if let Some(v) = cookie {
        assert!(within(&input.cookie, v));
        assert!(!v.contains(';'), "{v:?}");
    }
    let path = path_only(&input.path);
    assert!(input.path.starts_with(path) && within(&input.path, path));
    assert!(!path.contains(['?', '#']));
    let ip = strip_port(&input.address);
    assert!(within(&input.address, ip));

    // The same facts as the rules read them from the stream, each asked twice.
    let caller = Caller {
        metadata: input
            .headers
            .iter()
            .take(2)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        ..Caller::default()
    };
    let mut stream = FuzzStream {
        input: &input,
        reads: 0,
    };
    let mut facts = StreamFacts::new(&mut stream, &caller);
    for _ in 0..2 {
        assert_eq!(facts.query(&name), query);
        assert_eq!(facts.cookie(&name), cookie);
        assert_eq!(facts.path(), Some(path));
        assert_eq!(facts.caller_ip(), Some(ip));
        assert_eq!(facts.method(), None);
        for (k, _) in input.headers.iter().take(4) {
            if !k.starts_with(':') && k != "cookie" {
                let first = input.headers.iter().find(|(h, _)| h == k).map(|(_, v)| v);
                assert_eq!(facts.header(k), first.map(String::as_str));
            }
            assert_eq!(facts.custom(k), caller.metadata.get(k).map(String::as_str));
        }
    }
    drop(facts);
    // Each header is read from the host once, however often the rules ask.
    let distinct: std::collections::HashSet<&str> = input
        .headers
        .iter()
        .take(4)
        .map(|(k, _)| k.as_str())
        .filter(|k| !k.starts_with(':') && *k != "cookie")
        .chain([":path", "cookie", ":method"])
        .collect();
    assert!(stream.reads <= distinct.len(), "{} reads", stream.reads);
});
