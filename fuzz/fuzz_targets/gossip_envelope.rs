//! Arbitrary datagrams through everything a gossip datagram meets before foca sees it: the
//! envelope parser, the replay guard, AEAD opening, and the membership codec (fed the raw input
//! too, since an authenticated peer could send anything inside a valid seal).
#![no_main]

use foca::Codec;
use libfuzzer_sys::fuzz_target;
use mycorrizal::security::{GossipKey, GossipKeys};
use mycorrizal_core::wire::{envelope, membership::MembershipCodec};

fuzz_target!(|data: &[u8]| {
    let keys = GossipKeys::new("fuzz", GossipKey::new([7; 32]), vec![]);
    let mut guard = envelope::ReplayGuard::new(30_000, 5_000, 64);
    if let Ok(parsed) = envelope::parse(data) {
        let now = parsed.header.sent_at_ms;
        if guard.check_fresh(&parsed.header, now).is_ok() {
            if let Ok(plain) = keys.open(&parsed) {
                let _ = guard.record(&parsed.header, now);
                let _ = MembershipCodec.decode_header(&plain[..]);
            }
        }
    }
    let _ = MembershipCodec.decode_header(data);
    let _ = MembershipCodec.decode_member(data);
});
