//! Noticing a Kafka consumer that is outside its group.
//!
//! librdkafka can leave a consumer outside its group after a broker restart: made while
//! the restarted broker was still loading its group metadata, it never joins, and waits
//! for messages that never come, with no error (seen in the `kafka_restart` test; the
//! same kind of hang is reported upstream, e.g. confluentinc/librdkafka#3082). A
//! projection worker would then stand still until someone restarted it. So the worker's
//! consumer notes each assignment ([`Membership`]), and the worker makes the consumer
//! anew when it has been without one for longer than its deadline ([`Watchdog`]). An
//! empty assignment counts: with more consumers than partitions a member may get none,
//! and is still in its group.

use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, ConsumerContext, Rebalance};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// A consumer context that knows whether the group has given the consumer an
/// assignment (set on assign, cleared on revoke).
#[derive(Debug, Default)]
pub struct Membership {
    assigned: AtomicBool,
}

impl Membership {
    pub fn is_assigned(&self) -> bool {
        self.assigned.load(Ordering::Relaxed)
    }
}

impl ClientContext for Membership {}

impl ConsumerContext for Membership {
    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(_) => self.assigned.store(true, Ordering::Relaxed),
            Rebalance::Revoke(_) => self.assigned.store(false, Ordering::Relaxed),
            Rebalance::Error(_) => {}
        }
    }
}

/// How long a consumer has been without an assignment, checked from the worker's loop.
#[derive(Debug)]
pub struct Watchdog {
    deadline: Duration,
    /// Since when the consumer has had no assignment (`None`: it has one).
    outside_since: Option<Instant>,
}

impl Watchdog {
    /// A watchdog for a consumer that has just subscribed (no assignment yet).
    pub fn new(deadline: Duration, now: Instant) -> Self {
        Self {
            deadline,
            outside_since: Some(now),
        }
    }

    /// A message arrived: the consumer is in its group (the clock stops until the next
    /// check that finds it without an assignment).
    pub fn message(&mut self) {
        self.outside_since = None;
    }

    /// `Err(waited)` when the consumer has had no assignment for longer than the
    /// deadline: make it anew.
    pub fn check(&mut self, assigned: bool, now: Instant) -> Result<(), Duration> {
        if assigned {
            self.outside_since = None;
            return Ok(());
        }
        let since = *self.outside_since.get_or_insert(now);
        let waited = now.duration_since(since);
        if waited > self.deadline {
            Err(waited)
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEADLINE: Duration = Duration::from_secs(30);

    #[test]
    fn a_consumer_never_assigned_is_given_up_after_the_deadline() {
        let start = Instant::now();
        let mut dog = Watchdog::new(DEADLINE, start);
        assert_eq!(dog.check(false, start + Duration::from_secs(29)), Ok(()));
        assert_eq!(
            dog.check(false, start + Duration::from_secs(31)),
            Err(Duration::from_secs(31))
        );
    }

    #[test]
    fn an_assignment_resets_the_clock_and_a_revocation_starts_it_again() {
        let start = Instant::now();
        let mut dog = Watchdog::new(DEADLINE, start);
        assert_eq!(dog.check(true, start + Duration::from_secs(25)), Ok(()));
        // Assigned for a long while: never given up.
        assert_eq!(dog.check(true, start + Duration::from_secs(600)), Ok(()));
        // Revoked at 600 s: the deadline runs from the first check without one.
        let revoked = start + Duration::from_secs(601);
        assert_eq!(dog.check(false, revoked), Ok(()));
        assert_eq!(dog.check(false, revoked + Duration::from_secs(30)), Ok(()));
        assert_eq!(
            dog.check(false, revoked + Duration::from_secs(45)),
            Err(Duration::from_secs(45))
        );
    }

    #[test]
    fn messages_stop_the_clock_so_a_long_catch_up_then_a_rebalance_is_not_given_up() {
        // Messages flow for ten minutes without a pause, so nothing is checked; then a
        // rebalance leaves the consumer without an assignment for a moment.
        let start = Instant::now();
        let mut dog = Watchdog::new(DEADLINE, start);
        dog.message();
        let rebalance = start + Duration::from_secs(600);
        assert_eq!(dog.check(false, rebalance), Ok(()));
        assert_eq!(dog.check(false, rebalance + Duration::from_secs(5)), Ok(()));
    }
}
