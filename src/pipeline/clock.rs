//! The write clock of the diff phases: the HBase timestamp of every change.
//!
//! HBase orders the states of a cell by timestamp alone, and a delete marker
//! hides every put stamped at or below it, whenever that put arrives. Source
//! versions are whole seconds, so two changes of one row in the same second
//! (a column set to NULL and back, a hard delete and a re-insert, a message
//! moved to another room) would share a timestamp, and the delete would hide
//! the later state for good; a re-insert whose `update_time` is older than
//! the delete would be hidden too. So each change is stamped above the
//! previous one, and never below its source version or its binlog time: the
//! stamps follow the source's commit order, later changes always win, and
//! base, a re-run of base or `verify --repair` (which write the source
//! version) never win over a diff write of a later state.
//!
//! The clock is saved in every diff checkpoint and marker and restarts at
//! the highest of that, the version floor and the wall clock, so a resumed
//! run stamps at or above everything an earlier attempt wrote.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteClock {
    last: u64,
}

impl WriteClock {
    /// Restarts above `saved` (a checkpoint's clock), `floor` and `now_ms`.
    pub fn restart(saved: u64, floor: u64, now_ms: u64) -> Self {
        Self {
            last: saved.max(floor).max(now_ms),
        }
    }

    /// The stamp of the next write: at least `at_least`, above every stamp
    /// given before.
    pub fn next(&mut self, at_least: u64) -> u64 {
        self.last = at_least.max(self.last + 1);
        self.last
    }

    /// The lowest stamp the next write can get.
    pub fn floor(&self) -> u64 {
        self.last + 1
    }

    /// Records a stamp given through [`WriteClock::floor`].
    pub fn observe(&mut self, stamp: u64) {
        self.last = self.last.max(stamp);
    }

    pub fn last(&self) -> u64 {
        self.last
    }
}

#[cfg(test)]
mod tests {
    use super::WriteClock;

    #[test]
    fn stamps_rise_strictly_and_never_go_below_the_source_version() {
        let mut c = WriteClock::restart(0, 0, 1_000);
        assert_eq!(c.next(0), 1_001);
        assert_eq!(c.next(0), 1_002);
        // A far-future source version lifts the clock; the next stamp is above it.
        assert_eq!(c.next(5_000), 5_000);
        assert_eq!(c.next(2_000), 5_001);
        c.observe(7_000);
        assert_eq!(c.floor(), 7_001);
    }

    #[test]
    fn a_restart_never_stamps_below_what_an_earlier_attempt_wrote() {
        // Saved clock ahead of the wall clock (a burst of changes in one second).
        let c = WriteClock::restart(9_000, 100, 1_000);
        assert_eq!(c.floor(), 9_001);
        let c = WriteClock::restart(0, 3_000, 1_000);
        assert_eq!(c.floor(), 3_001);
    }
}
