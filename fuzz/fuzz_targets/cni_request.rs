//! CNI: the plugin's request parsing (environment + network config on stdin), as the container
//! runtime hands it over. Whatever the runtime sends, the plugin must answer with a CNI result
//! or error, never panic. Input layout: `KEY=VALUE` lines, a NUL byte, then stdin.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    istio_cni_like::cni::fuzz_parse(data);
});
