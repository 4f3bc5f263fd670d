#![no_main]

//! What a peer holding the secret could put in a record: any fragments at
//! all, sealed with the session's keys, must be taken or refused, never
//! panic, and never yield a frame over the limit.

use converge::dist::{Handshake, Hello, Secret, Step};
use libfuzzer_sys::fuzz_target;

const LIMIT: usize = 1 << 16;

fuzz_target!(|data: &[u8]| {
    let secret = Secret::from_bytes(b"the fuzzing cluster secret").unwrap();
    let (mut init, first) = Handshake::initiate(&secret, Hello::new(converge::fuzzing::node_id(1), "a"), LIMIT);
    let mut resp = Handshake::respond(&secret, Hello::new(converge::fuzzing::node_id(2), "b"), LIMIT);
    let Ok(Step::Done { session: mut server, send: Some(reply), .. }) = resp.feed(&first) else {
        panic!("the handshake failed")
    };
    let Ok(Step::Done { session: mut client, .. }) = init.feed(&reply) else {
        panic!("the handshake failed")
    };
    // Records of at most 60,000 bytes of plaintext, one after another.
    let mut wire = Vec::new();
    for plain in data.chunks(60_000) {
        if client.seal_raw(plain, &mut wire).is_err() {
            return;
        }
    }
    let mut frames = Vec::new();
    if server.open(&wire, &mut frames).is_ok() {
        assert!(frames.iter().all(|(_, f)| f.len() <= LIMIT), "a frame over the limit");
    }
});
