//! Pure rules of the event bus: topic and group names, the receiver's deduplication of a
//! publisher's stream, gap detection for broadcast subscribers, and the choice of the group
//! member node that gets an event.
//!
//! A publisher sends every event for one destination node down one *stream*: a sequence of
//! items numbered from 1, sent one batch at a time and resent until the destination accepts
//! it. The destination keeps a [`StreamCursor`] per publisher so a resent batch is applied
//! once. Every event also carries its topic sequence number (per publisher and topic); a
//! broadcast subscriber that sees that number jump knows, and is told, that it missed events.

use crate::node::NodeId;

/// Longest topic or group name, in bytes.
pub const MAX_NAME_LEN: usize = 255;

/// Why a topic or group name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// The name was empty.
    #[error("name is empty")]
    Empty,
    /// The name was longer than [`MAX_NAME_LEN`] bytes.
    #[error("name is {len} bytes long; the limit is {max}")]
    TooLong {
        /// Length of the refused name in bytes.
        len: usize,
        /// The limit, [`MAX_NAME_LEN`].
        max: usize,
    },
    /// The name contained a control character or whitespace.
    #[error("name contains a control character or whitespace")]
    BadCharacter,
}

/// Checks a topic or group name: 1 to [`MAX_NAME_LEN`] bytes of printable characters without
/// whitespace (`orders.created`, `billing`).
pub fn check_name(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong { len: name.len(), max: MAX_NAME_LEN });
    }
    if name.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(NameError::BadCharacter);
    }
    Ok(())
}

/// Where a destination stands in one publisher's stream: the publisher's incarnation (one per
/// process), the stream (one per destination incarnation, increasing) and the next item
/// number expected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamCursor {
    /// The publisher's incarnation.
    pub incarnation: u64,
    /// The stream id, increasing within one incarnation.
    pub stream: u64,
    /// The next item number not yet applied.
    pub next: u64,
}

/// What a destination does with a batch, decided by [`StreamCursor::admit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Apply the batch's items from index `skip` on (the first `skip` were applied before:
    /// the batch was resent). The cursor to keep is `cursor`, to advance by the items applied.
    Apply {
        /// Items at the front already applied.
        skip: usize,
        /// The cursor the batch continues.
        cursor: StreamCursor,
    },
    /// The batch belongs to a stream the publisher has already replaced: refuse it.
    Stale,
}

impl StreamCursor {
    /// Decides what to do with a batch of `len` items numbered from `first` on `stream` of the
    /// publisher's `incarnation`, given the cursor kept so far (if any).
    ///
    /// A new incarnation or a newer stream starts over; an older stream of the same
    /// incarnation is stale; within the stream, items below `next` were applied already.
    pub fn admit(
        kept: Option<StreamCursor>,
        incarnation: u64,
        stream: u64,
        first: u64,
        len: usize,
    ) -> Admission {
        let fresh = StreamCursor { incarnation, stream, next: first };
        let Some(kept) = kept else {
            return Admission::Apply { skip: 0, cursor: fresh };
        };
        if kept.incarnation != incarnation || stream > kept.stream {
            return Admission::Apply { skip: 0, cursor: fresh };
        }
        if stream < kept.stream {
            return Admission::Stale;
        }
        let skip = kept.next.saturating_sub(first).min(len as u64) as usize;
        // A batch that starts past `next` cannot happen (a stream never drops items); apply it
        // and move on rather than wedge the stream.
        let next = kept.next.max(first);
        Admission::Apply { skip, cursor: StreamCursor { next, ..kept } }
    }
}

/// What a broadcast subscriber learns from one event's topic sequence number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeqObservation {
    /// The first event seen from this publisher incarnation on this topic, or the next one.
    InOrder,
    /// `missed` events from this publisher on this topic never arrived.
    Gap {
        /// How many.
        missed: u64,
    },
    /// Seen before (an event is never sent twice to a broadcast subscriber; kept for safety).
    Duplicate,
}

/// Classifies topic sequence number `seq` of publisher incarnation `incarnation` given the last
/// one seen (`last`: incarnation and sequence number), and returns what to remember.
pub fn observe_seq(last: Option<(u64, u64)>, incarnation: u64, seq: u64) -> (SeqObservation, u64) {
    match last {
        Some((inc, last)) if inc == incarnation => {
            // `seq > last` below, so neither expression overflows (numbers come off the wire).
            if seq <= last {
                (SeqObservation::Duplicate, last)
            } else if seq - last == 1 {
                (SeqObservation::InOrder, seq)
            } else {
                (SeqObservation::Gap { missed: seq - last - 1 }, seq)
            }
        }
        _ => (SeqObservation::InOrder, seq),
    }
}

/// Chooses the node that gets a group event: among `candidates` (node, events of this group it
/// holds unacknowledged), the least loaded, ties broken by `rotation`; `avoid` is skipped
/// unless it is the only candidate (a redelivery goes to another member when there is one).
/// `None` when there is no candidate.
pub fn choose_member<'a>(
    candidates: &[(&'a NodeId, u64)],
    avoid: Option<&NodeId>,
    rotation: u64,
) -> Option<&'a NodeId> {
    let eligible: Vec<&(&NodeId, u64)> = match avoid {
        Some(a) if candidates.iter().any(|(n, _)| *n != a) => {
            candidates.iter().filter(|(n, _)| *n != a).collect()
        }
        _ => candidates.iter().collect(),
    };
    let least = eligible.iter().map(|(_, load)| *load).min()?;
    let tied: Vec<&NodeId> =
        eligible.iter().filter(|(_, load)| *load == least).map(|(n, _)| *n).collect();
    Some(tied[(rotation % tied.len() as u64) as usize])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert_eq!(check_name("orders.created"), Ok(()));
        assert_eq!(check_name(""), Err(NameError::Empty));
        assert_eq!(check_name("a b"), Err(NameError::BadCharacter));
        assert_eq!(check_name("a\u{7}"), Err(NameError::BadCharacter));
        let long = "x".repeat(MAX_NAME_LEN + 1);
        assert_eq!(check_name(&long), Err(NameError::TooLong { len: 256, max: 255 }));
        assert_eq!(check_name(&long[..MAX_NAME_LEN]), Ok(()));
    }

    #[test]
    fn a_resent_batch_is_applied_once() {
        let a = StreamCursor::admit(None, 7, 1, 1, 3);
        let Admission::Apply { skip: 0, cursor } = a else { panic!("{a:?}") };
        let applied = StreamCursor { next: cursor.next + 3, ..cursor };
        // The same batch again (its answer was lost): everything skipped.
        assert_eq!(
            StreamCursor::admit(Some(applied), 7, 1, 1, 3),
            Admission::Apply { skip: 3, cursor: applied }
        );
        // Partly applied before (the receiver was full after two): skip two.
        let partly = StreamCursor { next: 3, ..cursor };
        assert_eq!(
            StreamCursor::admit(Some(partly), 7, 1, 1, 3),
            Admission::Apply { skip: 2, cursor: partly }
        );
        // The next batch.
        assert_eq!(
            StreamCursor::admit(Some(applied), 7, 1, 4, 2),
            Admission::Apply { skip: 0, cursor: applied }
        );
    }

    #[test]
    fn newer_streams_and_incarnations_start_over_and_older_streams_are_stale() {
        let kept = StreamCursor { incarnation: 7, stream: 2, next: 50 };
        let fresh = |incarnation, stream| StreamCursor { incarnation, stream, next: 1 };
        assert_eq!(
            StreamCursor::admit(Some(kept), 7, 3, 1, 4),
            Admission::Apply { skip: 0, cursor: fresh(7, 3) }
        );
        assert_eq!(
            StreamCursor::admit(Some(kept), 8, 1, 1, 4),
            Admission::Apply { skip: 0, cursor: fresh(8, 1) }
        );
        assert_eq!(StreamCursor::admit(Some(kept), 7, 1, 1, 4), Admission::Stale);
    }

    #[test]
    fn topic_sequence_gaps_are_counted() {
        assert_eq!(observe_seq(None, 1, 40), (SeqObservation::InOrder, 40));
        assert_eq!(observe_seq(Some((1, 40)), 1, 41), (SeqObservation::InOrder, 41));
        assert_eq!(observe_seq(Some((1, 41)), 1, 45), (SeqObservation::Gap { missed: 3 }, 45));
        assert_eq!(observe_seq(Some((1, 45)), 1, 45), (SeqObservation::Duplicate, 45));
        // A restarted publisher numbers from 1 again.
        assert_eq!(observe_seq(Some((1, 45)), 2, 1), (SeqObservation::InOrder, 1));
        // Extreme numbers from a peer do not overflow.
        assert_eq!(
            observe_seq(Some((1, u64::MAX)), 1, u64::MAX),
            (SeqObservation::Duplicate, u64::MAX)
        );
        assert_eq!(
            observe_seq(Some((1, 0)), 1, u64::MAX),
            (SeqObservation::Gap { missed: u64::MAX - 1 }, u64::MAX)
        );
    }

    #[test]
    fn the_least_loaded_member_gets_the_event_and_a_redelivery_avoids_the_last_holder() {
        let (a, b, c) =
            (NodeId::new("a").unwrap(), NodeId::new("b").unwrap(), NodeId::new("c").unwrap());
        let cands = [(&a, 3), (&b, 1), (&c, 1)];
        assert_eq!(choose_member(&cands, None, 0), Some(&b));
        assert_eq!(choose_member(&cands, None, 1), Some(&c));
        assert_eq!(choose_member(&cands, Some(&b), 0), Some(&c));
        // The only member gets its own redelivery.
        assert_eq!(choose_member(&[(&a, 9)], Some(&a), 0), Some(&a));
        assert_eq!(choose_member(&[], None, 0), None);
    }
}
