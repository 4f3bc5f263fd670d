#![no_main]

//! What a peer could inject into an established session: arbitrary bytes
//! opened by the session's record layer must be refused, never panic, never
//! yield a frame.

use converge::dist::{Handshake, Hello, Secret, Step};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let secret = Secret::from_bytes(b"the fuzzing cluster secret").unwrap();
    let (mut init, first) = Handshake::initiate(&secret, Hello::new(converge::fuzzing::node_id(1), "a"), 1 << 20);
    let mut resp = Handshake::respond(&secret, Hello::new(converge::fuzzing::node_id(2), "b"), 1 << 20);
    let Ok(Step::Done { session: mut server, send: Some(reply), .. }) = resp.feed(&first) else {
        panic!("the handshake failed")
    };
    let Ok(Step::Done { .. }) = init.feed(&reply) else {
        panic!("the handshake failed")
    };
    let mut frames = Vec::new();
    let cut = data.first().map_or(1, |&b| (b as usize % 64) + 1);
    for piece in data.chunks(cut) {
        if server.open(piece, &mut frames).is_err() {
            break;
        }
    }
    assert!(frames.is_empty(), "a frame from unsealed bytes");
});
