//! The system clock, the production implementation of `domain::ports::Clock`.

use domain::Timestamp;
use domain::ports::Clock;

#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        chrono::Utc::now()
    }
}
