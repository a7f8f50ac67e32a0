//! PCA private certificate operations (the certificate engineer fills this in).
