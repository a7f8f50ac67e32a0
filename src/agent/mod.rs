//! The daemon side: what to renew and when ([`plan`]), the issuance journal, the watch loop.

pub mod clock;
pub mod journal;
pub mod plan;
pub mod renew;
