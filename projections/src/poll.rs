//! How soon a reader of the feed looks again after finding nothing new.
//!
//! The feed is polled, not notified: a NOTIFY on append serialises every appending
//! transaction's commit (migration 0010). While events flow, a reader polls every `busy`
//! interval, so that an event reaches the models within tens of milliseconds. After
//! `idle_after` with nothing new it slows to `idle`, so that a lab's server, quiet all
//! night, is not running hundreds of empty reads a second. The first event after a quiet
//! spell waits at most `idle` longer; from then on the reader is busy again.

use std::time::{Duration, Instant};

/// The polling intervals of a feed reader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Polling {
    /// The wait after an empty read while events have been arriving.
    pub busy: Duration,
    /// The wait after an empty read once nothing has arrived for `idle_after`.
    pub idle: Duration,
    /// How long without events before the reader counts as idle.
    pub idle_after: Duration,
}

impl Default for Polling {
    fn default() -> Self {
        Self {
            busy: Duration::from_millis(25),
            idle: Duration::from_millis(100),
            idle_after: Duration::from_secs(10),
        }
    }
}

/// A reader's polling state: when it last found events.
#[derive(Debug, Clone)]
pub struct Poller {
    polling: Polling,
    last_found: Instant,
}

impl Poller {
    /// A reader that starts busy (it may have just been started to catch up).
    pub fn new(polling: Polling, now: Instant) -> Self {
        Self {
            polling,
            last_found: now,
        }
    }

    /// Notes that a read found events.
    pub fn found(&mut self, now: Instant) {
        self.last_found = now;
    }

    /// How long to wait after an empty read.
    pub fn wait(&self, now: Instant) -> Duration {
        if now.saturating_duration_since(self.last_found) >= self.polling.idle_after {
            self.polling.idle
        } else {
            self.polling.busy
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reader_polls_fast_while_events_arrive_and_slows_down_when_quiet() {
        let polling = Polling::default();
        let start = Instant::now();
        let mut poller = Poller::new(polling, start);
        assert_eq!(poller.wait(start), polling.busy);
        let quiet = start + polling.idle_after - Duration::from_millis(1);
        assert_eq!(poller.wait(quiet), polling.busy);
        let idle = start + polling.idle_after;
        assert_eq!(poller.wait(idle), polling.idle);
        assert_eq!(poller.wait(idle + Duration::from_secs(3600)), polling.idle);
        // One event and it is busy again.
        poller.found(idle);
        assert_eq!(poller.wait(idle + Duration::from_millis(1)), polling.busy);
    }

    #[test]
    fn the_default_idle_wait_is_longer_than_the_busy_one_but_well_under_a_second() {
        let p = Polling::default();
        assert!(p.busy < p.idle && p.idle < Duration::from_secs(1));
    }
}
