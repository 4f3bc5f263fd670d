#![no_main]

//! The membership packet wrapper, and SWIM behind it.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| converge::fuzzing::membership_packet(data));
