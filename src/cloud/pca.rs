//! PCA v1 operations (placeholder while the PCA client is written).
