#![no_main]

//! Convergent jobs' decoders: traces, checkpoints, and a program agent's
//! effect lines.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| converge::fuzzing::job_records(data));
