//! PCA private CAs in the emulator (owned by the CA engineer).

use axum::Router;
use serde::{Deserialize, Serialize};

use crate::cloud::pca::DistinguishedName;
use crate::emulator::Shared;

/// One CA. The certificate side reads these fields; the CA side may add more, but not rename
/// or remove these.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CaRecord {
    /// UUID.
    pub id: String,
    /// `ROOT` or `SUBORDINATE`.
    pub ca_type: String,
    /// `PENDING`, `ACTIVED`, `DISABLED`, `DELETED`, `EXPIRED` (stored; the clock may also make a
    /// CA expired: use [`CaRecord::effective_status`]).
    pub status: String,
    pub distinguished_name: DistinguishedName,
    /// `RSA2048`, `RSA4096`, `EC256`, `EC384`.
    pub key_algorithm: String,
    /// `SHA256`, `SHA384`, `SHA512`; empty while a subordinate CA is pending without one.
    pub signature_algorithm: String,
    /// The CA's private key, PKCS#8 PEM. Never sent to clients.
    pub key_pem: String,
    /// The CA's certificate; `None` while PENDING.
    pub certificate_pem: Option<String>,
    /// The certificates above this CA up to the root, PEM, nearest first (empty for a root).
    pub chain_pem: String,
    pub issuer_id: Option<String>,
    pub path_length: Option<u8>,
    /// Epoch milliseconds; `None` while PENDING.
    pub not_before: Option<i64>,
    pub not_after: Option<i64>,
}

impl CaRecord {
    /// The status as clients see it at `now_ms`: an issued CA past `not_after` is `EXPIRED`.
    pub fn effective_status(&self, now_ms: i64) -> &str {
        match (self.status.as_str(), self.not_after) {
            ("ACTIVED" | "DISABLED", Some(na)) if na <= now_ms => "EXPIRED",
            (s, _) => s,
        }
    }
}

pub fn routes() -> Router<Shared> {
    Router::new()
}

pub fn seed_demo(_shared: &Shared) -> anyhow::Result<()> {
    Ok(())
}
