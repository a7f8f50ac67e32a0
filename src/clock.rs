//! Time as an input: the agent asks a [`Clock`] for "now" instead of reading the wall clock, so
//! tests and the demo can run it on the emulator's movable clock.

use std::sync::Arc;

use time::OffsetDateTime;

/// Where the agent gets the current time from. Cheap to clone.
#[derive(Clone)]
pub struct Clock(Arc<dyn Fn() -> OffsetDateTime + Send + Sync>);

impl Clock {
    /// The system's wall clock (UTC).
    pub fn system() -> Self {
        Self(Arc::new(OffsetDateTime::now_utc))
    }

    /// Any time source, e.g. the emulator's clock: `Clock::from_fn(move || shared.now())`.
    pub fn from_fn(f: impl Fn() -> OffsetDateTime + Send + Sync + 'static) -> Self {
        Self(Arc::new(f))
    }

    pub fn now(&self) -> OffsetDateTime {
        (self.0)()
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::system()
    }
}

impl std::fmt::Debug for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Clock").field(&self.now()).finish()
    }
}
