//! The daemon side: what to renew and when, the issuance journal, the watch loop.

pub mod journal;
