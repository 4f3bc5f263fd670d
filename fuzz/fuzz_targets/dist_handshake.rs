#![no_main]

//! What an unauthenticated peer can send to a node's listener: a handshake
//! responder fed arbitrary bytes in arbitrary pieces must refuse or wait,
//! never panic, never complete.

use converge::dist::{Handshake, Hello, Secret, Step};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let secret = Secret::from_bytes(b"the fuzzing cluster secret").unwrap();
    let me = Hello::new(converge::fuzzing::node_id(2), "fuzz");
    let mut hs = Handshake::respond(&secret, me, 1 << 20);
    let cut = data.first().map_or(1, |&b| (b as usize % 64) + 1);
    for piece in data.chunks(cut) {
        match hs.feed(piece) {
            Ok(Step::Pending) => {}
            Ok(_) => panic!("a handshake completed from arbitrary bytes"),
            Err(_) => break,
        }
    }
});
