//! X.509 (placeholder).
