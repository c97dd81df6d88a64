//! Request facts read from Envoy on demand, each at most once per request.

use proxy_wasm::hostcalls;
use proxy_wasm::types::MapType;

use crate::routing::args::{cookie_value, path_only, query_param, strip_port};
use crate::routing::{Caller, RequestFacts};

/// Lazily read request headers and properties.
pub struct HostFacts<'a> {
    caller: &'a Caller,
    headers: Vec<(String, Option<String>)>,
    caller_ip: Option<Option<String>>,
}

impl<'a> HostFacts<'a> {
    pub fn new(caller: &'a Caller) -> HostFacts<'a> {
        HostFacts {
            caller,
            headers: Vec::new(),
            caller_ip: None,
        }
    }

    fn read(&mut self, name: &str) -> Option<&str> {
        let pos = match self.headers.iter().position(|(n, _)| n == name) {
            Some(pos) => pos,
            None => {
                let value = hostcalls::get_map_value(MapType::HttpRequestHeaders, name)
                    .ok()
                    .flatten();
                self.headers.push((name.to_string(), value));
                self.headers.len() - 1
            }
        };
        self.headers.get(pos).and_then(|(_, v)| v.as_deref())
    }
}

impl RequestFacts for HostFacts<'_> {
    fn header(&mut self, name: &str) -> Option<&str> {
        self.read(name)
    }

    fn method(&mut self) -> Option<&str> {
        self.read(":method")
    }

    fn path(&mut self) -> Option<&str> {
        self.read(":path").map(path_only)
    }

    fn query(&mut self, name: &str) -> Option<&str> {
        self.read(":path").and_then(|p| query_param(p, name))
    }

    fn cookie(&mut self, name: &str) -> Option<&str> {
        self.read("cookie").and_then(|c| cookie_value(c, name))
    }

    fn caller_ip(&mut self) -> Option<&str> {
        if self.caller_ip.is_none() {
            let address = hostcalls::get_property(vec!["source", "address"])
                .ok()
                .flatten()
                .and_then(|b| String::from_utf8(b).ok())
                .map(|a| strip_port(&a).to_string());
            self.caller_ip = Some(address);
        }
        self.caller_ip.as_ref().and_then(|a| a.as_deref())
    }

    fn custom(&mut self, key: &str) -> Option<&str> {
        self.caller.metadata.get(key).map(String::as_str)
    }
}
