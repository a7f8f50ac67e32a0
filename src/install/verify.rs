//! Checks a candidate before it may replace anything (parses, valid now, key matches, chain
//! leads to the issuer, names covered), and the health check of the files already on disk.

use std::fmt;
use std::net::IpAddr;
use std::path::Path;

use time::OffsetDateTime;

use super::{InstallError, InstalledCert, InstalledState, OutputPaths, fsio};
use crate::pki::{self, CertInfo, PrivateKey, SubjectAltName};

/// A certificate as received (from the API, or read back from disk), not yet trusted.
#[derive(Clone)]
pub struct Candidate {
    /// The configured certificate name; every error carries it.
    pub name: String,
    /// The leaf certificate. If it holds more than one certificate, the others are taken as the
    /// start of the chain.
    pub cert_pem: String,
    /// Intermediates, leaf's issuer first. May be empty.
    pub chain_pem: String,
    pub key_pem: String,
}

impl fmt::Debug for Candidate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Candidate")
            .field("name", &self.name)
            .field("cert_pem_len", &self.cert_pem.len())
            .field("chain_pem_len", &self.chain_pem.len())
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

/// What the candidate must satisfy.
#[derive(Clone, Debug)]
pub struct Expectations {
    /// DNS names and IP addresses the certificate must cover (RFC 6125 wildcard matching for
    /// DNS: `*` only as the whole left-most label, matching exactly one label).
    pub names: Vec<String>,
    /// The issuing CA or root (PEM, one or more certificates). When given, the chain must lead
    /// to it; when absent, the chain must at least be internally consistent (each certificate
    /// signed by the next) and the leaf signed by its first certificate.
    pub trust: Option<String>,
    pub now: OffsetDateTime,
}

/// Why a candidate was rejected.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("the certificate does not parse: {0}")]
    CertificateUnparsable(String),
    #[error("the chain does not parse: {0}")]
    ChainUnparsable(String),
    #[error("the private key does not parse: {0}")]
    KeyUnparsable(String),
    #[error("not yet valid: valid from {not_before}, now is {now}")]
    NotYetValid {
        not_before: OffsetDateTime,
        now: OffsetDateTime,
    },
    #[error("expired: valid until {not_after}, now is {now}")]
    Expired {
        not_after: OffsetDateTime,
        now: OffsetDateTime,
    },
    #[error("the private key does not match the certificate's public key")]
    KeyMismatch,
    #[error("the chain does not lead to the issuer: {0}")]
    Chain(String),
    #[error("names not covered: {} (the certificate has: {})", missing.join(", "), present.join(", "))]
    NamesNotCovered {
        missing: Vec<String>,
        present: Vec<String>,
    },
}

/// A candidate that passed every check, in the exact bytes that will be written: certificates
/// re-encoded from their DER (so the same certificate always gives the same file), the key with
/// line endings normalised. Only [`verify_candidate`] makes one.
#[derive(Clone)]
pub struct VerifiedBundle {
    name: String,
    cert_pem: String,
    chain_pem: String,
    key_pem: String,
    leaf: CertInfo,
}

impl VerifiedBundle {
    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }
    pub fn chain_pem(&self) -> &str {
        &self.chain_pem
    }
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }
    /// Certificate followed by the chain (nginx's `ssl_certificate`).
    pub fn fullchain_pem(&self) -> String {
        format!("{}{}", self.cert_pem, self.chain_pem)
    }
    /// The parsed leaf certificate.
    pub fn leaf(&self) -> &CertInfo {
        &self.leaf
    }
    /// SHA-256 of the leaf's DER, upper-case hex.
    pub fn fingerprint_sha256(&self) -> &str {
        &self.leaf.sha256_fingerprint_hex
    }
}

impl fmt::Debug for VerifiedBundle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifiedBundle")
            .field("name", &self.name)
            .field("subject", &self.leaf.subject.to_string())
            .field("serial", &self.leaf.serial_hex)
            .field("not_after", &self.leaf.not_after)
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

/// Runs every check on `c`; the first failure is returned, naming the certificate and the cause.
pub fn verify_candidate(c: &Candidate, e: &Expectations) -> Result<VerifiedBundle, InstallError> {
    let reject = |reason: Rejection| InstallError::Rejected {
        name: c.name.clone(),
        reason,
    };
    let mut certs = pki::parse_pem_chain(&c.cert_pem)
        .map_err(|err| reject(Rejection::CertificateUnparsable(err.to_string())))?;
    if certs.is_empty() {
        return Err(reject(Rejection::CertificateUnparsable(
            "no certificate in the PEM".into(),
        )));
    }
    let leaf = certs.remove(0);
    let mut chain = certs;
    chain.extend(
        pki::parse_pem_chain(&c.chain_pem)
            .map_err(|err| reject(Rejection::ChainUnparsable(err.to_string())))?,
    );
    // A leaf repeated at the head of the chain, or a chain with duplicates, is tidied rather
    // than rejected: servers would send the duplicate for nothing.
    let mut seen = vec![leaf.der.clone()];
    chain.retain(|x| {
        let dup = seen.contains(&x.der);
        seen.push(x.der.clone());
        !dup
    });
    let key = PrivateKey::from_pem(&c.key_pem)
        .map_err(|err| reject(Rejection::KeyUnparsable(err.to_string())))?;

    if e.now < leaf.not_before {
        return Err(reject(Rejection::NotYetValid {
            not_before: leaf.not_before,
            now: e.now,
        }));
    }
    if e.now > leaf.not_after {
        return Err(reject(Rejection::Expired {
            not_after: leaf.not_after,
            now: e.now,
        }));
    }
    if !pki::key_matches_cert(&key, &leaf) {
        return Err(reject(Rejection::KeyMismatch));
    }
    check_chain(&leaf, &chain, e).map_err(|m| reject(Rejection::Chain(m)))?;
    let missing: Vec<String> = e
        .names
        .iter()
        .filter(|n| !names_covered(&leaf, n))
        .cloned()
        .collect();
    if !missing.is_empty() {
        return Err(reject(Rejection::NamesNotCovered {
            missing,
            present: presented_names(&leaf),
        }));
    }

    let chain_pem: String = chain.iter().map(CertInfo::to_pem).collect();
    Ok(VerifiedBundle {
        name: c.name.clone(),
        cert_pem: leaf.to_pem(),
        chain_pem,
        key_pem: normalize_text(&c.key_pem),
        leaf,
    })
}

/// The chain in the order it will be served: the leaf signed by the first chain certificate,
/// each one signed by the next, each valid now; then, with a trust anchor, a full path
/// verification up to it (CA flags, key usage, path length included).
fn check_chain(leaf: &CertInfo, chain: &[CertInfo], e: &Expectations) -> Result<(), String> {
    let mut child = leaf;
    for (i, ca) in chain.iter().enumerate() {
        pki::verify_signed_by(child, ca)
            .map_err(|err| format!("chain certificate {}: {err}", i + 1))?;
        if !ca.is_valid_at(e.now) {
            return Err(format!(
                "chain certificate {} ({}) is not valid now: valid from {} to {}",
                i + 1,
                ca.subject,
                ca.not_before,
                ca.not_after
            ));
        }
        child = ca;
    }
    let leaf_pem = leaf.to_pem();
    let chain_pem: String = chain.iter().map(CertInfo::to_pem).collect();
    match &e.trust {
        Some(anchor) => {
            pki::verify_chain(&leaf_pem, &chain_pem, anchor, e.now).map_err(|err| err.to_string())
        }
        None if chain.is_empty() => {
            if leaf.subject_raw == leaf.issuer_raw {
                pki::verify_signed_by(leaf, leaf).map_err(|err| err.to_string())
            } else {
                Err(format!(
                    "the chain is empty and no trust anchor is configured, so nothing shows that {} issued it",
                    leaf.issuer
                ))
            }
        }
        None => Ok(()),
    }
}

/// Whether the certificate covers `name` (a DNS name or an IP address). Subject alternative
/// names are authoritative; the subject CN is consulted only when the certificate has no DNS or
/// IP SAN at all (RFC 6125 §6.4.4).
pub fn names_covered(cert: &CertInfo, name: &str) -> bool {
    let has_sans = cert
        .sans
        .iter()
        .any(|s| matches!(s, SubjectAltName::Dns(_) | SubjectAltName::Ip(_)));
    if let Ok(ip) = name
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
    {
        return cert
            .sans
            .iter()
            .any(|s| matches!(s, SubjectAltName::Ip(a) if *a == ip));
    }
    if has_sans {
        cert.sans.iter().any(|s| match s {
            SubjectAltName::Dns(pattern) => dns_matches(pattern, name),
            _ => false,
        })
    } else {
        cert.subject
            .common_name
            .as_deref()
            .is_some_and(|cn| dns_matches(cn, name))
    }
}

/// RFC 6125 §6.4.3 matching, case-insensitive, trailing dots ignored. A wildcard is accepted only
/// as the entire left-most label of a pattern with at least two more labels (`*.example.com`,
/// not `*.com` or `f*.example.com`), and matches exactly one non-empty label. IDNs are compared
/// in their A-label (`xn--`) form, as certificates carry them.
fn dns_matches(pattern: &str, name: &str) -> bool {
    let p = pattern.trim_end_matches('.').to_ascii_lowercase();
    let n = name.trim_end_matches('.').to_ascii_lowercase();
    if p.is_empty() || n.is_empty() {
        return false;
    }
    match p.strip_prefix("*.") {
        Some(rest) => {
            if rest.contains('*') || rest.split('.').count() < 2 {
                return false;
            }
            match n.split_once('.') {
                Some((first, tail)) => !first.is_empty() && tail == rest,
                None => false,
            }
        }
        None => !p.contains('*') && p == n,
    }
}

fn presented_names(cert: &CertInfo) -> Vec<String> {
    let mut v: Vec<String> = cert
        .sans
        .iter()
        .filter(|s| matches!(s, SubjectAltName::Dns(_) | SubjectAltName::Ip(_)))
        .map(|s| s.value())
        .collect();
    if v.is_empty()
        && let Some(cn) = &cert.subject.common_name
    {
        v.push(format!("CN={cn}"));
    }
    v
}

fn normalize_text(s: &str) -> String {
    let mut t = s.replace("\r\n", "\n").trim().to_string();
    t.push('\n');
    t
}

/// Reads the installed files and reports the first problem: a file missing or unreadable, a
/// certificate or key that does not parse, a key that does not match, a full chain that does not
/// start with the certificate. Every failure mode is a state, so this never errors.
pub fn read_installed(paths: &OutputPaths) -> InstalledState {
    let read = |path: &Path| -> Result<String, InstalledState> {
        match fsio::read_optional(path) {
            Ok(Some(b)) => String::from_utf8(b).map_err(|_| InstalledState::Unparsable {
                path: path.to_path_buf(),
                detail: "not UTF-8 text".into(),
            }),
            Ok(None) => Err(InstalledState::Missing {
                path: path.to_path_buf(),
            }),
            Err(e) => Err(InstalledState::Unreadable {
                path: path.to_path_buf(),
                error: e.source.to_string(),
            }),
        }
    };
    let unparsable = |path: &Path, detail: String| InstalledState::Unparsable {
        path: path.to_path_buf(),
        detail,
    };
    let check = || -> Result<InstalledCert, InstalledState> {
        let cert_text = read(&paths.cert)?;
        let key_text = read(&paths.key)?;
        let chain_text = read(&paths.chain)?;
        let full_text = read(&paths.fullchain)?;
        let cert =
            pki::parse_cert(&cert_text).map_err(|e| unparsable(&paths.cert, e.to_string()))?;
        let key =
            PrivateKey::from_pem(&key_text).map_err(|e| unparsable(&paths.key, e.to_string()))?;
        let chain = pki::parse_pem_chain(&chain_text)
            .map_err(|e| unparsable(&paths.chain, e.to_string()))?;
        let full = pki::parse_pem_chain(&full_text)
            .map_err(|e| unparsable(&paths.fullchain, e.to_string()))?;
        if !pki::key_matches_cert(&key, &cert) {
            return Err(InstalledState::KeyMismatch {
                cert: paths.cert.clone(),
                key: paths.key.clone(),
            });
        }
        if full.first().map(|f| &f.der) != Some(&cert.der) {
            return Err(InstalledState::Inconsistent {
                path: paths.fullchain.clone(),
                detail: "does not start with the certificate".into(),
            });
        }
        if full[1..]
            .iter()
            .map(|c| &c.der)
            .ne(chain.iter().map(|c| &c.der))
        {
            return Err(InstalledState::Inconsistent {
                path: paths.fullchain.clone(),
                detail: "its chain differs from the chain file".into(),
            });
        }
        if let Some(p12) = &paths.pkcs12 {
            let data = match std::fs::read(&p12.path) {
                Ok(d) if !d.is_empty() => d,
                Ok(_) => return Err(unparsable(&p12.path, "empty file".into())),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Err(InstalledState::Missing {
                        path: p12.path.clone(),
                    });
                }
                Err(e) => {
                    return Err(InstalledState::Unreadable {
                        path: p12.path.clone(),
                        error: e.to_string(),
                    });
                }
            };
            // A wrong password (rotated since the file was written) or a stale content both
            // call for a rewrite.
            let (certs, has_key) = super::pkcs12::inspect(&data, &p12.password)
                .map_err(|e| unparsable(&p12.path, format!("cannot open as PKCS#12: {e}")))?;
            let expected = std::iter::once(&cert.der).chain(chain.iter().map(|c| &c.der));
            if !has_key || !certs.iter().eq(expected) {
                return Err(InstalledState::Inconsistent {
                    path: p12.path.clone(),
                    detail: "does not hold the installed key, certificate and chain".into(),
                });
            }
        }
        Ok(InstalledCert {
            fingerprint_sha256: cert.sha256_fingerprint_hex.clone(),
            serial_hex: cert.serial_hex.clone(),
            not_before: cert.not_before,
            not_after: cert.not_after,
            info: Box::new(cert),
        })
    };
    match check() {
        Ok(c) => InstalledState::Present(c),
        Err(s) => s,
    }
}

#[cfg(test)]
mod tests {
    use super::dns_matches;

    #[test]
    fn rfc6125_wildcards() {
        assert!(dns_matches("www.example.com", "WWW.Example.com."));
        assert!(dns_matches("*.example.com", "a.example.com"));
        assert!(!dns_matches("*.example.com", "example.com"));
        assert!(!dns_matches("*.example.com", "a.b.example.com"));
        assert!(!dns_matches("*.example.com", ".example.com"));
        assert!(!dns_matches("*.com", "example.com"));
        assert!(!dns_matches("f*.example.com", "foo.example.com"));
        assert!(!dns_matches("a.*.example.com", "a.b.example.com"));
        assert!(!dns_matches("example.com", "www.example.com"));
        assert!(!dns_matches("", ""));
    }
}
