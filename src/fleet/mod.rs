//! Fleet mode: several hosts that serve the same certificates coordinate through etcd v3, so
//! that a `shared` certificate is issued once and installed everywhere, and every cloud deploy
//! (billed per domain) is made once per target per generation, by the holder of the
//! certificate's lock, fenced by that lock's lease. [`config`] is always compiled (a binary
//! without the `fleet` feature refuses `[fleet]` clearly); the coordinator needs the feature.

pub mod config;

pub use config::{FleetMode, FleetSettings};
pub mod keys;
pub mod rollout;

#[cfg(feature = "fleet")]
pub mod coordinator;
#[cfg(feature = "fleet")]
pub mod status;

#[cfg(feature = "fleet")]
pub use coordinator::{Coordinator, FleetError};
