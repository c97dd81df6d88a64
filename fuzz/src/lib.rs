//! Shared pieces of the fuzz targets: a tiny host for the core, generators of well-typed inputs,
//! and the checks more than one target makes.

pub mod gen;
pub mod host;

/// Whether `inner` is a slice of `outer` (not merely equal text found elsewhere): what a parser
/// that returns borrowed parts of its input must give. An empty answer is a part of anything.
pub fn within(outer: &str, inner: &str) -> bool {
    let start = outer.as_ptr() as usize;
    let at = inner.as_ptr() as usize;
    inner.is_empty() || (at >= start && at + inner.len() <= start + outer.len())
}

/// A Polaris name as the filter may put it into shared-data keys and the watch list.
pub fn clean_name(s: &str) -> bool {
    !s.is_empty() && !s.contains('/') && !s.chars().any(char::is_control)
}
