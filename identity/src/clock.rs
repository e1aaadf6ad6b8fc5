//! Where time comes from: a [`Clock`] that components read instead of calling
//! `OffsetDateTime::now_utc()` themselves, so tests can move time instead of sleeping through
//! it. The binaries use [`SystemClock`]; tests build a [`ManualClock`] (feature `test-util`)
//! and set or advance it.
//!
//! A clock only answers "what time is it": it does not schedule or wake anything (timers stay
//! tokio's, whose paused time serves in-memory tests).

use std::fmt;
#[cfg(any(test, feature = "test-util"))]
use std::sync::Mutex;

use time::OffsetDateTime;

/// A source of the current time (UTC). Shared across threads (`Arc<dyn Clock>`).
pub trait Clock: Send + Sync + fmt::Debug {
    fn now(&self) -> OffsetDateTime;

    /// The current time in Unix seconds, as the store and the wire types keep it.
    fn unix(&self) -> i64 {
        self.now().unix_timestamp()
    }
}

/// The operating system's wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }
}

/// A clock that stands still until a test sets or advances it.
#[cfg(any(test, feature = "test-util"))]
#[derive(Debug)]
pub struct ManualClock {
    now: Mutex<OffsetDateTime>,
}

#[cfg(any(test, feature = "test-util"))]
impl ManualClock {
    /// A clock standing at `at`.
    pub fn new(at: OffsetDateTime) -> Self {
        Self { now: Mutex::new(at) }
    }

    /// A clock standing at the wall clock's present second (so certificates made with it are
    /// also valid to tools that read the real time).
    pub fn at_system_now() -> Self {
        let now = OffsetDateTime::now_utc();
        Self::new(now.replace_nanosecond(0).unwrap_or(now))
    }

    pub fn set(&self, at: OffsetDateTime) {
        *self.lock() = at;
    }

    pub fn advance(&self, by: time::Duration) {
        let mut now = self.lock();
        *now += by;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, OffsetDateTime> {
        // A test thread that panicked while holding the lock left a valid time behind.
        self.now.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(any(test, feature = "test-util"))]
impl Clock for ManualClock {
    fn now(&self) -> OffsetDateTime {
        *self.lock()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_moves_only_when_told() {
        let start = OffsetDateTime::from_unix_timestamp(1_000_000).expect("in range");
        let clock = ManualClock::new(start);
        assert_eq!(clock.now(), start);
        clock.advance(time::Duration::seconds(90));
        assert_eq!(clock.unix(), 1_000_090);
        clock.set(start);
        assert_eq!(clock.now(), start);
    }
}
