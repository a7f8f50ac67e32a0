//! The daemon side: one pass and one certificate's stages through it ([`pass`]), renewing one
//! certificate ([`renew`]: plan, obtain, verify, install) and the watch loop ([`daemon`]). When
//! to renew is [`crate::policy`]; the clock is [`crate::clock`]; what lives on disk is
//! [`crate::state`].

pub mod daemon;
#[cfg(feature = "fleet")]
pub mod fleet;
pub mod pass;
pub mod renew;
