//! PCA private certificates in the emulator (owned by the certificate engineer).

use axum::Router;
use serde::{Deserialize, Serialize};

use crate::emulator::Shared;

/// One private certificate (the certificate engineer defines the fields).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CertRecord {
    pub id: String,
}

pub fn routes() -> Router<Shared> {
    Router::new()
}

pub fn seed_demo(_shared: &Shared) -> anyhow::Result<()> {
    Ok(())
}
