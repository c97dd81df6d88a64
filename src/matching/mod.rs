//! Matching requests against rule values, shared by routing, rate limiting and circuit breaking:
//! Polaris `MatchString`s in every match type, the request arguments rules name, and per-argument
//! regex sets. Knows nothing of plans or rules.

pub mod args;
pub mod regex_set;
pub mod string;

pub use args::{cookie_value, path_only, query_param, strip_port, Arg, RequestFacts, StaticFacts};
pub use regex_set::{RegexEval, RegexSets, Slot};
pub use string::{
    take_backtrack_limit_hits, LimitHit, MatchError, MatchKind, Matcher, ValueSource,
    BACKTRACK_LIMIT,
};
