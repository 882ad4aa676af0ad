//! Request ids for tracing spans: one counter per process, so the spans of one operation and
//! of the requests it sends can be told apart in logs.
//!
//! Spans (all carry `node` and `request_id` unless noted): `request` (every request a node
//! sends: `peer`, `channel`), `serve` (every request a node receives: `from`, `channel`; no
//! node id: the link layer dispatches before any layer), `cache.write` (`bucket`),
//! `events.publish` (`topic`), `cache.sync` (one rebalance and anti-entropy round:
//! `generation`), `admin` (every admin API request: `method`, `path`).

use std::sync::atomic::{AtomicU64, Ordering};

static NEXT: AtomicU64 = AtomicU64::new(1);

/// A fresh request id.
pub(crate) fn request_id() -> u64 {
    NEXT.fetch_add(1, Ordering::Relaxed)
}
