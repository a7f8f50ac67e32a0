//! ccm-agent: keeps certificates from Huawei Cloud Certificate Manager (CCM) fresh on a host.
//!
//! # Layout
//! - [`cloud`]: the CCM API client (SCM v3, PCA v1, IAM tokens, AK/SK signing): the
//!   `ccm-client` crate of this workspace (`crates/ccm-client`), re-exported under this name.
//! - [`emulator`]: a local CCM that speaks the same APIs, signs real certificates, and injects
//!   faults; the peer of every test and the backend of the demo.
//! - [`agent`]: one pass and its stages (`agent::pass`: plan, obtain, verify, install, activate,
//!   publish, record), renewing one certificate (`agent::renew`), the watch loop.
//! - [`state`]: the state directory's layout and every store in it (lock, journal, records,
//!   deploy progress, status file).
//! - [`fsio`]: durable file writes with explicit modes; owner and group lookup.
//! - [`policy`]: when to renew (a pure function of now, validity and policy), retry backoff.
//! - [`clock`]: the agent's clock (the system clock, or one a test moves).
//! - [`values`]: durations, file modes, cron schedules, and the `Problem` a validation reports.
//! - [`install`]: verify before swap, atomic durable install of cert/chain/key, rollback.
//! - [`reload`]: after an install: hooks, server config test and reload, the served-certificate
//!   check over TLS, rollback.
//! - [`pki`]: the certificate vocabulary (one type per concept), key generation, X.509 building,
//!   signing and parsing shared by both.
//! - [`deploy`]: pushing renewed certificates to ELB / WAF through SCM (push, batch-push,
//!   deploy), never twice for the same certificate.
//! - [`config`]: the agent's TOML configuration, validated into typed settings.
//! - [`fleet`]: fleet mode: certificates and cloud deploys shared by many hosts through etcd.
//! - [`metrics`]: Prometheus metrics, the readiness latch, `/metrics` `/healthz` `/readyz`.
//! - [`logging`]: log output for terminals, pipes and the journal; the operator-facing events.

pub mod agent;
pub mod clock;
pub use ccm_client as cloud;
pub mod config;
pub mod deploy;
pub mod emulator;
pub mod fleet;
pub mod fsio;
pub mod install;
pub mod logging;
pub mod metrics;
pub mod pki;
pub mod policy;
pub mod reload;
pub mod state;
pub mod systemd;
pub mod values;
