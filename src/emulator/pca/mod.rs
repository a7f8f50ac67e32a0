//! PCA v1 in the emulator: private CAs ([`ca`]) and private certificates ([`cert`]), with real
//! keys and real X.509 signed by the CA's key. The store is shared by both halves.

pub mod ca;
pub mod cert;
pub mod keystore;

use std::collections::BTreeMap;

use axum::Router;
use serde::{Deserialize, Serialize};

use super::Shared;

/// Everything PCA stores.
#[derive(Default, Serialize, Deserialize)]
pub struct PcaStore {
    /// By `ca_id` (UUID).
    pub cas: BTreeMap<String, ca::CaRecord>,
    /// By `certificate_id` (UUID).
    pub certs: BTreeMap<String, cert::CertRecord>,
    /// The OBS agency and buckets used for CRL publishing.
    #[serde(default)]
    pub obs: ca::ObsState,
    /// Private certificate quota; `None` is the documented default
    /// ([`cert::DEFAULT_CERTIFICATE_QUOTA`]). Tests lower it to reach the limit.
    #[serde(default)]
    pub certificate_quota: Option<u64>,
}

pub fn routes() -> Router<Shared> {
    Router::new().merge(ca::routes()).merge(cert::routes())
}

/// A root CA, a subordinate CA, and private certificates at various distances from expiry.
pub fn seed_demo(shared: &Shared) -> anyhow::Result<()> {
    ca::seed_demo(shared)?;
    cert::seed_demo(shared)?;
    Ok(())
}
