//! SCM v3 operations (placeholder while the SCM client is written).
