#![no_main]

//! A frame of a cluster session, as a peer's reader decodes it.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| converge::fuzzing::cluster_frame(data));
