//! PCA v1 in the emulator (placeholder: the PCA engineer replaces this file).

use axum::Router;
use serde::{Deserialize, Serialize};

use super::Shared;

#[derive(Default, Serialize, Deserialize)]
pub struct PcaStore {}

pub fn routes() -> Router<Shared> {
    Router::new()
}

pub fn seed_demo(_shared: &Shared) -> anyhow::Result<()> {
    Ok(())
}
