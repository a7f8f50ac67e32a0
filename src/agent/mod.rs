//! The daemon: deciding when to renew ([`plan`]); renewing, installing and the watch loop come
//! later.

pub mod plan;
