//! Our declarations of Envoy 1.40's dynamic-module ABI: the callbacks we call, behind safe
//! handles ([`abi`], [`cluster`], `pick`). With [`crate::exports`], the only modules with
//! `unsafe`.

pub mod abi;
pub mod cluster;
mod pick;
