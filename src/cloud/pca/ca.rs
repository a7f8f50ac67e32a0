//! PCA private CA operations (the CA engineer fills this in).
