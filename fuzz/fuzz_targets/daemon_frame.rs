#![no_main]

//! A frame between the `converge` command and a node daemon, as either side
//! reads it.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| converge::fuzzing::daemon_frame(data));
