//! The local config file (`--local-config`): YAML workloads, services and policies.
//!
//! It is operator input read from disk; a typo must come back as a `ConfigError`, never a
//! panic, both in parsing/validation and in building the lookup state from a valid file.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(config) = mesh::model::local_config::parse_bytes(data) {
        let _ = config.into_state();
    }
});
