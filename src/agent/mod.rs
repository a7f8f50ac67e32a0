//! The daemon side: the issuance journal, renewing one certificate ([`renew`]) and the watch
//! loop ([`daemon`]). When to renew is [`crate::policy`]; the clock is [`crate::clock`].

pub mod daemon;
pub mod renew;
