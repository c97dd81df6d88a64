//! Metadata routing (polaris-go `dstMetaRouter`): a request asks for instances whose metadata
//! equals labels it carries (here: values of configured request headers), with a failover when
//! none of those instances is healthy.

use std::fmt;
use std::str::FromStr;

/// Where a request's wanted labels come from, and what to do when they match no healthy instance.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MetadataRouting {
    /// (request header, instance metadata key), in configuration order; at most [`MAX_KEYS`].
    pub labels: Vec<(String, String)>,
    pub failover: MetaFailover,
}

/// More keys would multiply the pools prebuilt per snapshot (one per key subset).
pub const MAX_KEYS: usize = 3;

/// What happens when no healthy instance carries the wanted labels.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MetaFailover {
    /// polaris-go without a failover: the request is refused (503 `metadata-routing`).
    #[default]
    None,
    /// Every instance the earlier stages left.
    All,
    /// The instances that do not carry the wanted labels.
    Others,
    /// The instances that carry none of the wanted keys at all.
    NotContainKey,
}

impl FromStr for MetaFailover {
    type Err = String;

    fn from_str(s: &str) -> Result<MetaFailover, String> {
        match s {
            "none" => Ok(MetaFailover::None),
            "all" => Ok(MetaFailover::All),
            "others" => Ok(MetaFailover::Others),
            "not_contain_key" => Ok(MetaFailover::NotContainKey),
            other => Err(format!(
                "`{other}` is not one of \"none\", \"all\", \"others\", \"not_contain_key\""
            )),
        }
    }
}

impl fmt::Display for MetaFailover {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MetaFailover::None => "none",
            MetaFailover::All => "all",
            MetaFailover::Others => "others",
            MetaFailover::NotContainKey => "not_contain_key",
        })
    }
}

/// How metadata routing settled a request that wanted labels: for the decision trace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetaOutcome {
    /// Healthy instances carry the labels.
    Matched,
    /// None did; the configured failover chose these instances.
    Failover(MetaFailover),
    /// None did and the failover had nothing: the unhealthy carriers are used (recover-all).
    UnhealthyCarriers,
}

impl fmt::Display for MetaOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MetaOutcome::Matched => f.write_str("matched"),
            MetaOutcome::Failover(kind) => write!(f, "failover-{kind}"),
            MetaOutcome::UnhealthyCarriers => f.write_str("unhealthy-carriers"),
        }
    }
}

/// The lookup key of a wanted-label tuple: which configured keys are present (a bit mask) and
/// their values, joined with a separator no header value contains.
pub fn tuple_key(mask: u8, values: &[&str]) -> String {
    let mut key = String::with_capacity(4 + values.iter().map(|v| v.len() + 1).sum::<usize>());
    key.push(char::from(b'0' + mask));
    for v in values {
        key.push('\0');
        key.push_str(v);
    }
    key
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn failover_names_parse() {
        assert_eq!("others".parse::<MetaFailover>(), Ok(MetaFailover::Others));
        assert!("some".parse::<MetaFailover>().is_err());
    }

    #[test]
    fn tuple_keys_differ_by_mask_and_value() {
        assert_ne!(tuple_key(1, &["v1"]), tuple_key(2, &["v1"]));
        assert_ne!(tuple_key(3, &["a", "bc"]), tuple_key(3, &["ab", "c"]));
    }
}
