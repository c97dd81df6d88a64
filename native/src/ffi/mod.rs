//! The only module with `unsafe`: our declarations of Envoy 1.40's dynamic-module ABI
//! ([`abi`]: the callbacks we call, behind safe handles) and the event hooks we export
//! ([`hooks`], each catching panics).

pub mod abi;
pub mod cluster;
mod hooks;
mod pick;
