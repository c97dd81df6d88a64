//! Request facts read from the stream on demand, each at most once per request.

use super::host::Stream;
use crate::matching::{cookie_value, path_only, query_param, strip_port, RequestFacts};
use crate::routing::Caller;

/// Lazily read request headers and the peer address of one stream.
pub struct StreamFacts<'a, S: ?Sized> {
    stream: &'a mut S,
    caller: &'a Caller,
    headers: Vec<(String, Option<String>)>,
    caller_ip: Option<Option<String>>,
}

impl<'a, S: Stream + ?Sized> StreamFacts<'a, S> {
    pub fn new(stream: &'a mut S, caller: &'a Caller) -> StreamFacts<'a, S> {
        StreamFacts {
            stream,
            caller,
            headers: Vec::new(),
            caller_ip: None,
        }
    }

    fn read(&mut self, name: &str) -> Option<&str> {
        let pos = match self.headers.iter().position(|(n, _)| n == name) {
            Some(pos) => pos,
            None => {
                let value = self.stream.request_header(name);
                self.headers.push((name.to_string(), value));
                self.headers.len() - 1
            }
        };
        self.headers.get(pos).and_then(|(_, v)| v.as_deref())
    }
}

impl<S: Stream + ?Sized> RequestFacts for StreamFacts<'_, S> {
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
            let address = self
                .stream
                .source_address()
                .map(|a| strip_port(&a).to_string());
            self.caller_ip = Some(address);
        }
        self.caller_ip.as_ref().and_then(|a| a.as_deref())
    }

    fn custom(&mut self, key: &str) -> Option<&str> {
        self.caller.metadata.get(key).map(String::as_str)
    }
}
