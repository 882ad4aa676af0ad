//! Arbitrary bytes from a peer on the Events channel: decoded, checked, and (when they pass)
//! run through the receiver's pure rules (stream admission, gap detection): no panic, and a
//! request that passes the check respects its bounds.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mycorrizal_core::{
    events::{Admission, StreamCursor, observe_seq},
    wire::events::{EventsOp, EventsRequest, ItemKind, MAX_BATCH_ITEMS},
};
use prost::Message as _;

fuzz_target!(|data: &[u8]| {
    let Ok(req) = EventsRequest::decode(data) else { return };
    if !req.check() {
        return;
    }
    let Some(EventsOp::Batch(b)) = req.op else { return };
    assert!(!b.items.is_empty() && b.items.len() <= MAX_BATCH_ITEMS);
    // Against a cursor derived from the same numbers, so every branch is reachable.
    let kept = StreamCursor { incarnation: b.incarnation, stream: b.stream, next: b.first / 2 };
    for kept in [None, Some(kept)] {
        if let Admission::Apply { skip, cursor } =
            StreamCursor::admit(kept, b.incarnation, b.stream, b.first, b.items.len())
        {
            assert!(skip <= b.items.len());
            let _ = cursor.next.saturating_add(b.items.len() as u64);
        }
    }
    let mut last = None;
    for item in &b.items {
        if let Some(ItemKind::Event(e)) = &item.kind {
            let (_, keep) = observe_seq(last, b.incarnation, e.seq);
            last = Some((b.incarnation, keep));
        }
    }
});
