//! SCM v3 in the emulator (placeholder: the SCM engineer replaces this file).

use axum::Router;
use serde::{Deserialize, Serialize};

use super::Shared;

#[derive(Default, Serialize, Deserialize)]
pub struct ScmStore {}

impl ScmStore {
    /// What was pushed and deployed where, for `/_emulator/deployments`.
    pub fn deployments_json(&self) -> serde_json::Value {
        serde_json::json!({})
    }
}

pub fn routes() -> Router<Shared> {
    Router::new()
}

pub fn seed_demo(_shared: &Shared) -> anyhow::Result<()> {
    Ok(())
}
