//! Keys, X.509 certificates and CSRs: generation, signing, parsing and chain checks, shared by
//! the CCM emulator (which signs real certificates) and the agent (CSR mode, install checks).
//!
//! Every key algorithm (RSA2048, RSA4096, EC256, EC384) works with every signature hash (SHA256,
//! SHA384, SHA512). RSA signs PKCS#1 v1.5 through ring (via rcgen). ECDSA signs through the
//! `p256`/`p384` crates on a digest computed here, because ring only pairs P-256 with SHA-256 and
//! P-384 with SHA-384; rcgen on ring has no `ecdsa-with-SHA512` identifier, so for EC+SHA512 the
//! certificate is re-signed after rcgen builds it (see `build::resign_ecdsa_sha512`). Signatures
//! are verified here too (RSA via x509-parser/ring, ECDSA via p256/p384), for the same matrix.
//!
//! Conventions: serials and fingerprints are upper-case hex without separators (as
//! `openssl x509 -serial` / `-fingerprint` print them, minus the colons); validity has
//! one-second precision in UTC (sub-second parts are dropped); a [`DistinguishedName`] holds
//! the first value of each of C, ST, L, O, OU, CN.

mod build;
mod inspect;
mod key;
mod pem;
#[cfg(test)]
mod tests;

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use time::OffsetDateTime;

pub(crate) use build::der_wrap;
pub use build::{PublicKeySource, generate_csr, issue, self_signed};
pub use inspect::{
    CertInfo, CsrInfo, key_matches_cert, parse_cert, parse_cert_der, parse_csr, parse_pem_chain,
    verify_chain, verify_signed_by,
};
pub use key::{PrivateKey, generate_key};

/// Why a PKI operation failed. Each message names the object and the reason.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{what} PEM is malformed: {reason}")]
    Pem { what: &'static str, reason: String },
    #[error("certificate does not parse: {0}")]
    CertificateParse(String),
    #[error("CSR does not parse: {0}")]
    CsrParse(String),
    #[error("private key does not parse: {0}")]
    KeyParse(String),
    #[error(
        "private key is encrypted: only unencrypted PKCS#8, PKCS#1 (RSA) and SEC1 (EC) keys are accepted; decrypt it first (e.g. `openssl pkey -in key.pem -out plain.pem`)"
    )]
    EncryptedKey,
    #[error("unsupported: {0}")]
    Unsupported(String),
    #[error("unknown {kind} {value:?}: expected one of {expected}")]
    UnknownName {
        kind: &'static str,
        value: String,
        expected: &'static str,
    },
    #[error("invalid certificate spec: {0}")]
    InvalidSpec(String),
    #[error("key generation failed: {0}")]
    KeyGeneration(String),
    #[error("signing failed: {0}")]
    Signing(String),
    #[error("CSR signature is invalid: {0}")]
    CsrSignatureInvalid(String),
    #[error("issuer private key does not match the public key of issuer certificate {issuer}")]
    IssuerKeyMismatch { issuer: String },
    #[error("issuer certificate {issuer} cannot issue this certificate: {reason}")]
    IssuerNotAllowed { issuer: String, reason: String },
    #[error("issuer name of {subject} ({cert_issuer}) differs from the subject of {issuer}")]
    IssuerNameMismatch {
        subject: String,
        cert_issuer: String,
        issuer: String,
    },
    #[error("signature on {subject} does not verify with the key of {issuer}: {reason}")]
    BadSignature {
        subject: String,
        issuer: String,
        reason: String,
    },
    #[error("certificate {subject} is not valid at {at}: valid from {not_before} to {not_after}")]
    NotValidAt {
        subject: String,
        at: OffsetDateTime,
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    },
    #[error("certificate chain does not verify: {0}")]
    Chain(String),
}

/// Generates `Display`/`FromStr` (case-insensitive) from one name table.
macro_rules! named_enum {
    ($ty:ident, $kind:literal, $expected:literal, { $($variant:ident => $name:literal),+ $(,)? }) => {
        impl $ty {
            /// Every value, in declaration order.
            pub const ALL: &'static [$ty] = &[$($ty::$variant),+];

            /// The name as the CCM API spells it.
            pub fn as_str(self) -> &'static str {
                match self { $($ty::$variant => $name),+ }
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $ty {
            type Err = PkiError;

            fn from_str(s: &str) -> Result<Self, PkiError> {
                $(if s.eq_ignore_ascii_case($name) { return Ok($ty::$variant); })+
                Err(PkiError::UnknownName { kind: $kind, value: s.to_string(), expected: $expected })
            }
        }
    };
}

/// A key type and size, as CCM names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KeyAlgorithm {
    Rsa2048,
    Rsa4096,
    Ec256,
    Ec384,
}

named_enum!(KeyAlgorithm, "key algorithm", "RSA2048, RSA4096, EC256, EC384", {
    Rsa2048 => "RSA2048",
    Rsa4096 => "RSA4096",
    Ec256 => "EC256",
    Ec384 => "EC384",
});

impl KeyAlgorithm {
    /// The hash that matches the key strength; used to sign CSRs.
    pub fn default_hash(self) -> SignatureHash {
        match self {
            KeyAlgorithm::Rsa2048 | KeyAlgorithm::Rsa4096 | KeyAlgorithm::Ec256 => {
                SignatureHash::Sha256
            }
            KeyAlgorithm::Ec384 => SignatureHash::Sha384,
        }
    }

    pub fn is_rsa(self) -> bool {
        matches!(self, KeyAlgorithm::Rsa2048 | KeyAlgorithm::Rsa4096)
    }
}

/// The digest of a certificate signature, as CCM names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SignatureHash {
    Sha256,
    Sha384,
    Sha512,
}

named_enum!(SignatureHash, "signature hash", "SHA256, SHA384, SHA512", {
    Sha256 => "SHA256",
    Sha384 => "SHA384",
    Sha512 => "SHA512",
});

impl SignatureHash {
    pub(crate) fn digest(self, msg: &[u8]) -> Vec<u8> {
        use sha2::Digest;
        match self {
            SignatureHash::Sha256 => sha2::Sha256::digest(msg).to_vec(),
            SignatureHash::Sha384 => sha2::Sha384::digest(msg).to_vec(),
            SignatureHash::Sha512 => sha2::Sha512::digest(msg).to_vec(),
        }
    }
}

/// X.509 KeyUsage bits (RFC 5280 names).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KeyUsage {
    DigitalSignature,
    NonRepudiation,
    KeyEncipherment,
    DataEncipherment,
    KeyAgreement,
    KeyCertSign,
    CrlSign,
    EncipherOnly,
    DecipherOnly,
}

named_enum!(KeyUsage, "key usage", "digitalSignature, nonRepudiation, keyEncipherment, dataEncipherment, keyAgreement, keyCertSign, cRLSign, encipherOnly, decipherOnly", {
    DigitalSignature => "digitalSignature",
    NonRepudiation => "nonRepudiation",
    KeyEncipherment => "keyEncipherment",
    DataEncipherment => "dataEncipherment",
    KeyAgreement => "keyAgreement",
    KeyCertSign => "keyCertSign",
    CrlSign => "cRLSign",
    EncipherOnly => "encipherOnly",
    DecipherOnly => "decipherOnly",
});

/// X.509 ExtendedKeyUsage purposes (RFC 5280 names).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ExtendedKeyUsage {
    ServerAuth,
    ClientAuth,
    CodeSigning,
    EmailProtection,
    TimeStamping,
}

named_enum!(ExtendedKeyUsage, "extended key usage", "serverAuth, clientAuth, codeSigning, emailProtection, timeStamping", {
    ServerAuth => "serverAuth",
    ClientAuth => "clientAuth",
    CodeSigning => "codeSigning",
    EmailProtection => "emailProtection",
    TimeStamping => "timeStamping",
});

/// A subject or issuer name: the attributes CCM exposes. Empty strings count as absent.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DistinguishedName {
    pub country: Option<String>,
    pub state: Option<String>,
    pub locality: Option<String>,
    pub organization: Option<String>,
    pub organizational_unit: Option<String>,
    pub common_name: Option<String>,
}

impl DistinguishedName {
    /// A name with only a common name.
    pub fn with_common_name(cn: impl Into<String>) -> Self {
        DistinguishedName {
            common_name: Some(cn.into()),
            ..Default::default()
        }
    }

    /// The present attributes in certificate order (C, ST, L, O, OU, CN), with their short names.
    pub fn entries(&self) -> impl Iterator<Item = (&'static str, &str)> {
        [
            ("C", &self.country),
            ("ST", &self.state),
            ("L", &self.locality),
            ("O", &self.organization),
            ("OU", &self.organizational_unit),
            ("CN", &self.common_name),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.as_deref().filter(|v| !v.is_empty()).map(|v| (k, v)))
    }
}

impl fmt::Display for DistinguishedName {
    /// OpenSSL's one-line form: `C=CN, O=Example, CN=example.com`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for (k, v) in self.entries() {
            if !first {
                f.write_str(", ")?;
            }
            first = false;
            write!(f, "{k}={v}")?;
        }
        if first {
            f.write_str("(empty name)")?;
        }
        Ok(())
    }
}

/// A subjectAltName entry of the four kinds CCM issues.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum SubjectAltName {
    Dns(String),
    Ip(IpAddr),
    Email(String),
    Uri(String),
}

impl SubjectAltName {
    /// The type as the PCA API spells it: "DNS", "IP", "EMAIL", "URI".
    pub fn kind(&self) -> &'static str {
        match self {
            SubjectAltName::Dns(_) => "DNS",
            SubjectAltName::Ip(_) => "IP",
            SubjectAltName::Email(_) => "EMAIL",
            SubjectAltName::Uri(_) => "URI",
        }
    }

    /// The value as text.
    pub fn value(&self) -> String {
        match self {
            SubjectAltName::Dns(s) | SubjectAltName::Email(s) | SubjectAltName::Uri(s) => s.clone(),
            SubjectAltName::Ip(ip) => ip.to_string(),
        }
    }

    /// Builds an entry from the API's `{type, value}` pair (type is case-insensitive).
    pub fn from_kind_value(kind: &str, value: &str) -> Result<Self, PkiError> {
        let k = kind.to_ascii_uppercase();
        match k.as_str() {
            "DNS" => Ok(SubjectAltName::Dns(value.to_string())),
            "IP" => value.parse().map(SubjectAltName::Ip).map_err(|_| {
                PkiError::InvalidSpec(format!(
                    "IP subject alternative name {value:?} is not an IP address"
                ))
            }),
            "EMAIL" => Ok(SubjectAltName::Email(value.to_string())),
            "URI" => Ok(SubjectAltName::Uri(value.to_string())),
            _ => Err(PkiError::UnknownName {
                kind: "subject alternative name type",
                value: kind.to_string(),
                expected: "DNS, IP, EMAIL, URI",
            }),
        }
    }
}

impl fmt::Display for SubjectAltName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.kind(), self.value())
    }
}

/// What to put in a certificate. The issuer and the subject key are given separately.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertificateSpec {
    pub subject: DistinguishedName,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
    /// BasicConstraints CA:TRUE (critical); otherwise a critical BasicConstraints with the
    /// DEFAULT `cA FALSE` left out, as DER requires (an empty SEQUENCE).
    pub is_ca: bool,
    /// pathLenConstraint; only allowed when `is_ca`. `None` on a CA means unlimited.
    pub path_length: Option<u8>,
    /// Written as a critical KeyUsage extension when not empty. A CA with key usages must
    /// include `KeyCertSign`.
    pub key_usages: Vec<KeyUsage>,
    pub extended_key_usages: Vec<ExtendedKeyUsage>,
    pub sans: Vec<SubjectAltName>,
    /// The digest the issuer signs with.
    pub hash: SignatureHash,
    /// Big-endian unsigned serial (1..=20 bytes, not zero); `None` draws 16 random bytes.
    pub serial: Option<Vec<u8>>,
    /// Further extensions, written after the standard ones.
    pub custom_extensions: Vec<CustomExtension>,
}

/// An extension the builder has no field for: its OID, criticality and the DER of its value
/// (what goes inside the extension's OCTET STRING).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CustomExtension {
    oid: Vec<u64>,
    pub critical: bool,
    pub value_der: Vec<u8>,
}

impl CustomExtension {
    /// A non-critical extension whose value is `text` as an ASN.1 UTF8String. `oid` is
    /// dot-decimal and must be a valid ASN.1 object identifier (see [`CustomExtension::new`]).
    pub fn utf8_string(oid: &str, text: &str) -> Result<Self, PkiError> {
        Self::new(oid, false, build::der_wrap(0x0C, text.as_bytes()))
    }

    /// An extension with a ready DER value. `oid` is dot-decimal: at least two arcs, the first
    /// 0, 1 or 2, the second below 40 under 0 and 1, every arc a number that fits 64 bits.
    pub fn new(oid: &str, critical: bool, value_der: Vec<u8>) -> Result<Self, PkiError> {
        let invalid =
            |why: &str| PkiError::InvalidSpec(format!("object identifier {oid:?}: {why}"));
        let arcs = oid
            .split('.')
            .map(|a| {
                if a.is_empty() || !a.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(invalid("arcs must be decimal numbers separated by dots"));
                }
                a.parse::<u64>()
                    .map_err(|_| invalid("an arc does not fit in 64 bits"))
            })
            .collect::<Result<Vec<u64>, PkiError>>()?;
        match arcs.as_slice() {
            [first, second, ..] if *first <= 2 && (*first == 2 || *second < 40) => {
                // The first two arcs are encoded as one number, 40 * first + second.
                if second.checked_add(80).is_none() {
                    return Err(invalid("the second arc is too large"));
                }
            }
            [_, _, ..] => {
                return Err(invalid(
                    "the first arc must be 0, 1 or 2, and the second below 40 under 0 and 1",
                ));
            }
            _ => return Err(invalid("at least two arcs are needed")),
        }
        Ok(CustomExtension {
            oid: arcs,
            critical,
            value_der,
        })
    }

    /// The arcs of the OID.
    pub fn oid(&self) -> &[u64] {
        &self.oid
    }

    /// The OID in dot-decimal form.
    pub fn oid_string(&self) -> String {
        let arcs: Vec<String> = self.oid.iter().map(u64::to_string).collect();
        arcs.join(".")
    }
}

impl CertificateSpec {
    /// A CA certificate: KeyUsage keyCertSign + cRLSign + digitalSignature, no EKU, no SANs.
    pub fn new_ca(
        subject: DistinguishedName,
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
        path_length: Option<u8>,
    ) -> Self {
        CertificateSpec {
            subject,
            not_before,
            not_after,
            is_ca: true,
            path_length,
            key_usages: vec![
                KeyUsage::DigitalSignature,
                KeyUsage::KeyCertSign,
                KeyUsage::CrlSign,
            ],
            extended_key_usages: Vec::new(),
            sans: Vec::new(),
            hash: SignatureHash::Sha256,
            serial: None,
            custom_extensions: Vec::new(),
        }
    }

    /// A TLS end-entity certificate: KeyUsage digitalSignature + keyEncipherment, EKU serverAuth
    /// + clientAuth.
    pub fn new_leaf(
        subject: DistinguishedName,
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
        sans: Vec<SubjectAltName>,
    ) -> Self {
        CertificateSpec {
            subject,
            not_before,
            not_after,
            is_ca: false,
            path_length: None,
            key_usages: vec![KeyUsage::DigitalSignature, KeyUsage::KeyEncipherment],
            extended_key_usages: vec![ExtendedKeyUsage::ServerAuth, ExtendedKeyUsage::ClientAuth],
            sans,
            hash: SignatureHash::Sha256,
            serial: None,
            custom_extensions: Vec::new(),
        }
    }

    /// Sets the signature hash (builder style).
    pub fn with_hash(mut self, hash: SignatureHash) -> Self {
        self.hash = hash;
        self
    }
}
