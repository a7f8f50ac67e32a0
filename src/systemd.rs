//! The systemd notify protocol (`Type=notify`): READY once the agent is serving, STATUS with a
//! one-line summary, WATCHDOG keep-alives while the scheduling loop is alive, RELOADING/READY
//! around a configuration reload, STOPPING on shutdown. Without `NOTIFY_SOCKET` every call is a
//! no-op, so the same binary runs outside systemd unchanged.

use std::time::Duration;

use sd_notify::NotifyState;

/// Sends state changes to systemd, when it is listening.
#[derive(Clone, Debug)]
pub struct Notifier {
    enabled: bool,
    watchdog: Option<Duration>,
}

impl Notifier {
    /// Read `NOTIFY_SOCKET` and `WATCHDOG_USEC` / `WATCHDOG_PID` once, at startup.
    pub fn from_env() -> Self {
        Self {
            enabled: std::env::var_os("NOTIFY_SOCKET").is_some(),
            watchdog: sd_notify::watchdog_enabled(),
        }
    }

    /// A notifier that never sends anything.
    pub fn disabled() -> Self {
        Self {
            enabled: false,
            watchdog: None,
        }
    }

    pub fn is_enabled(&self) -> bool {
        self.enabled
    }

    /// How often to send WATCHDOG=1: half of `WATCHDOG_USEC`, when the watchdog is on.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog.filter(|_| self.enabled).map(|d| d / 2)
    }

    fn send(&self, states: &[NotifyState<'_>]) {
        if !self.enabled {
            return;
        }
        if let Err(e) = sd_notify::notify(states) {
            tracing::warn!(error = %e, "cannot notify systemd");
        }
    }

    pub fn ready(&self) {
        self.send(&[NotifyState::Ready]);
    }

    /// A one-line status shown by `systemctl status`.
    pub fn status(&self, line: &str) {
        self.send(&[NotifyState::Status(line)]);
    }

    pub fn watchdog(&self) {
        self.send(&[NotifyState::Watchdog]);
    }

    /// Before re-reading the configuration; follow with [`Notifier::ready`].
    pub fn reloading(&self) {
        match NotifyState::monotonic_usec_now() {
            Ok(now) => self.send(&[NotifyState::Reloading, now]),
            Err(_) => self.send(&[NotifyState::Reloading]),
        }
    }

    pub fn stopping(&self) {
        self.send(&[NotifyState::Stopping]);
    }
}
