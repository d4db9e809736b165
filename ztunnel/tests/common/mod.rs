//! Glue between ztunnel's end-to-end tests and the shared mesh fixture.
#![allow(dead_code)]

pub use testbed::fixture::*;

/// A fixture running this build's ztunnel binary.
pub fn fixture(name: &str) -> Fixture {
    Fixture::new(name, env!("CARGO_BIN_EXE_ztunnel"))
}

pub const ID_PREFIX: &str = "spiffe://cluster.local/ns/";
