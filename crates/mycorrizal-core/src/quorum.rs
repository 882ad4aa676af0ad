//! Consistency levels and quorum accounting: the one place that decides what a quorum is and
//! what a write's outcome was.
//!
//! A coordinator sends a write to the replicas and feeds every answer (or failure, or the
//! deadline) into a [`WriteTally`]; the tally says when the outcome is known. A write that
//! timed out after *some* acknowledgements is [`WriteOutcome::Indeterminate`], never `Failed`:
//! it may have been applied, and reporting it as failed would invite a retry that is not one.

/// How many replicas must answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Consistency {
    /// One replica.
    One,
    /// A majority of the replication factor: `rf / 2 + 1`.
    Quorum,
    /// Every replica.
    All,
}

impl Consistency {
    /// Acknowledgements needed out of `replicas` (at least 1, at most `replicas`).
    pub fn required(self, replicas: usize) -> usize {
        let n = match self {
            Consistency::One => 1,
            Consistency::Quorum => replicas / 2 + 1,
            Consistency::All => replicas,
        };
        n.clamp(1, replicas.max(1))
    }
}

/// The outcome of a replicated write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOutcome {
    /// Enough replicas acknowledged.
    Succeeded {
        /// Acknowledgements received when the outcome was decided.
        acks: usize,
    },
    /// Every replica certainly refused the write: it was not applied anywhere.
    Failed,
    /// Some replicas acknowledged but not enough before the deadline, or the rest failed: the
    /// write may be visible and may or may not survive. Never reported as failed.
    Indeterminate {
        /// Acknowledgements received.
        acks: usize,
    },
}

/// Counts answers to one replicated write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteTally {
    replicas: usize,
    required: usize,
    acks: usize,
    failures: usize,
    unknown: usize,
}

impl WriteTally {
    /// A write sent to `replicas` replicas at `consistency`.
    pub fn new(replicas: usize, consistency: Consistency) -> Self {
        Self::needing(replicas, consistency.required(replicas))
    }

    /// A write sent to `replicas` replicas that needs `required` acknowledgements. A sloppy
    /// quorum computes `required` from the replication factor and may find fewer replicas to
    /// send to; `required` above `replicas` can only end `Failed` or `Indeterminate`.
    pub fn needing(replicas: usize, required: usize) -> Self {
        WriteTally { replicas, required: required.max(1), acks: 0, failures: 0, unknown: 0 }
    }

    /// Acknowledgements needed.
    pub fn required(&self) -> usize {
        self.required
    }

    /// Records an acknowledgement; returns the outcome if it is now decided.
    pub fn ack(&mut self) -> Option<WriteOutcome> {
        self.acks += 1;
        self.decided()
    }

    /// Records a replica that certainly did not apply the write; returns the outcome if decided.
    pub fn fail(&mut self) -> Option<WriteOutcome> {
        self.failures += 1;
        self.decided()
    }

    /// Records a replica whose answer will never come but which may have applied the write (a
    /// timeout, a connection lost after sending); returns the outcome if decided.
    pub fn unknown(&mut self) -> Option<WriteOutcome> {
        self.unknown += 1;
        self.decided()
    }

    /// The outcome at the deadline: whatever has been decided, else `Indeterminate` if any
    /// replica acknowledged, else `Failed` only if every replica certainly failed, otherwise
    /// `Indeterminate` (a replica that did not answer may have applied it).
    pub fn deadline(&self) -> WriteOutcome {
        match self.decided() {
            Some(o) => o,
            None if self.acks == 0 && self.failures == self.replicas => WriteOutcome::Failed,
            None => WriteOutcome::Indeterminate { acks: self.acks },
        }
    }

    fn decided(&self) -> Option<WriteOutcome> {
        if self.acks >= self.required {
            return Some(WriteOutcome::Succeeded { acks: self.acks });
        }
        let answered = (self.failures + self.unknown).min(self.replicas);
        let still_possible = self.replicas - answered;
        if still_possible < self.required {
            // The requirement cannot be reached any more. Only if every replica certainly
            // refused is the write known not to exist anywhere; a replica that has not
            // answered may still apply it.
            return Some(if self.failures >= self.replicas {
                WriteOutcome::Failed
            } else {
                WriteOutcome::Indeterminate { acks: self.acks }
            });
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn quorum_sizes() {
        assert_eq!([1, 2, 3, 4, 5].map(|rf| Consistency::Quorum.required(rf)), [1, 2, 2, 3, 3]);
        assert_eq!(Consistency::One.required(3), 1);
        assert_eq!(Consistency::All.required(3), 3);
        assert_eq!(Consistency::All.required(0), 1, "never zero: a write needs a witness");
    }

    #[test]
    fn quorum_write_outcomes() {
        let mut t = WriteTally::new(3, Consistency::Quorum);
        assert_eq!(t.ack(), None);
        assert_eq!(t.ack(), Some(WriteOutcome::Succeeded { acks: 2 }));

        let mut t = WriteTally::new(3, Consistency::Quorum);
        assert_eq!(t.fail(), None);
        assert_eq!(
            t.fail(),
            Some(WriteOutcome::Indeterminate { acks: 0 }),
            "quorum unreachable, but the silent replica may still apply it"
        );
        let mut t = WriteTally::new(2, Consistency::Quorum);
        t.fail();
        assert_eq!(t.fail(), Some(WriteOutcome::Failed), "every replica refused");

        let mut t = WriteTally::new(3, Consistency::All);
        assert_eq!(t.ack(), None);
        assert_eq!(t.fail(), Some(WriteOutcome::Indeterminate { acks: 1 }));

        let mut t = WriteTally::new(3, Consistency::Quorum);
        t.ack();
        assert_eq!(
            t.deadline(),
            WriteOutcome::Indeterminate { acks: 1 },
            "timeout after a partial ack"
        );
        let t = WriteTally::new(3, Consistency::Quorum);
        assert_eq!(
            t.deadline(),
            WriteOutcome::Indeterminate { acks: 0 },
            "silence may hide an apply"
        );
    }

    #[test]
    fn unknown_answers_never_count_as_failures() {
        let mut t = WriteTally::needing(2, 2);
        assert_eq!(t.unknown(), Some(WriteOutcome::Indeterminate { acks: 0 }));
        let mut t = WriteTally::needing(2, 2);
        t.fail();
        assert_eq!(t.unknown(), Some(WriteOutcome::Indeterminate { acks: 0 }));
        let mut t = WriteTally::needing(3, 2);
        assert_eq!(t.unknown(), None);
        assert_eq!(t.ack(), None);
        assert_eq!(t.ack(), Some(WriteOutcome::Succeeded { acks: 2 }));
        let mut t = WriteTally::needing(1, 2);
        assert_eq!(t.ack(), Some(WriteOutcome::Indeterminate { acks: 1 }), "too few replicas");
    }

    proptest! {
        /// Whatever the order of answers: Succeeded exactly when acks reach the requirement;
        /// Failed only when every replica refused; anything else is Indeterminate.
        #[test]
        fn outcomes_are_sound(rf in 1usize..7, c in 0u8..3, answers in prop::collection::vec(any::<bool>(), 0..7)) {
            let consistency = [Consistency::One, Consistency::Quorum, Consistency::All][c as usize];
            let mut t = WriteTally::new(rf, consistency);
            let mut outcome = None;
            let (mut acks, mut fails) = (0, 0);
            for ok in answers.into_iter().take(rf) {
                if outcome.is_some() { break; }
                if ok { acks += 1; outcome = t.ack(); } else { fails += 1; outcome = t.fail(); }
            }
            let outcome = outcome.unwrap_or_else(|| t.deadline());
            prop_assert!(fails <= rf);
            match outcome {
                WriteOutcome::Succeeded { acks: a } => prop_assert!(a >= consistency.required(rf) && a == acks),
                WriteOutcome::Failed => prop_assert!(acks == 0 && fails == rf),
                WriteOutcome::Indeterminate { acks: a } => prop_assert!(a < consistency.required(rf) && a == acks),
            }
            prop_assert!(acks + fails <= rf);
        }
    }
}
