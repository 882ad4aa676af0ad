//! Arbitrary bytes from a peer, cut into arbitrary reads, through the frame decoder and the
//! reassembler: no panic, no allocation beyond the configured bounds.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use mycorrizal_core::wire::{FrameDecoder, Reassembler};

fuzz_target!(|data: &[u8]| {
    let Some((&cut, data)) = data.split_first() else { return };
    let step = usize::from(cut).max(1);
    let mut decoder = FrameDecoder::new(4096);
    let mut reassembler = Reassembler::new(16 * 1024, 32 * 1024);
    let mut buf = BytesMut::new();
    for chunk in data.chunks(step) {
        buf.extend_from_slice(chunk);
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(frame)) => {
                    assert!(frame.payload.len() <= 4096);
                    match reassembler.push(frame) {
                        Ok(Some(msg)) => assert!(msg.payload.len() <= 16 * 1024),
                        Ok(None) => {}
                        Err(_) => return,
                    }
                    assert!(reassembler.pending_bytes() <= 32 * 1024);
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
});
