//! Parsing certificates and CSRs, signature checks and chain verification.

use p256::ecdsa::signature::hazmat::PrehashVerifier;
use time::OffsetDateTime;
use x509_parser::der_parser::asn1_rs::BitString;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::oid_registry as oids;
use x509_parser::prelude::{FromDer, X509Certificate, X509Name};
use x509_parser::x509::{AlgorithmIdentifier, SubjectPublicKeyInfo};

use super::{
    DistinguishedName, ExtendedKeyUsage, KeyAlgorithm, KeyUsage, PkiError, PrivateKey,
    SignatureHash, SubjectAltName, pem,
};

/// What a certificate says, in this crate's words. Hex strings are upper-case, no separators.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertInfo {
    pub subject: DistinguishedName,
    pub issuer: DistinguishedName,
    /// DER of the subject Name, for exact issuer matching.
    pub subject_raw: Vec<u8>,
    /// DER of the issuer Name.
    pub issuer_raw: Vec<u8>,
    /// Minimal big-endian serial, as `openssl x509 -serial` prints it.
    pub serial_hex: String,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
    pub sans: Vec<SubjectAltName>,
    pub sha1_fingerprint_hex: String,
    pub sha256_fingerprint_hex: String,
    /// As SCM shows it: "SHA256WITHRSA", "SHA384WITHECDSA", ...; the dotted OID if unknown.
    pub signature_algorithm: String,
    /// `None` for keys outside [`KeyAlgorithm`] (e.g. RSA-3072, P-521, Ed25519).
    pub key_algorithm: Option<KeyAlgorithm>,
    pub is_ca: bool,
    pub path_length: Option<u8>,
    pub key_usages: Vec<KeyUsage>,
    pub extended_key_usages: Vec<ExtendedKeyUsage>,
    /// SubjectKeyIdentifier, upper-case hex.
    pub subject_key_id_hex: Option<String>,
    /// AuthorityKeyIdentifier keyIdentifier, upper-case hex.
    pub authority_key_id_hex: Option<String>,
    /// SubjectPublicKeyInfo DER.
    pub public_key_der: Vec<u8>,
    /// The whole certificate, DER.
    pub der: Vec<u8>,
}

impl CertInfo {
    /// The certificate as PEM.
    pub fn to_pem(&self) -> String {
        pem::encode("CERTIFICATE", &self.der)
    }

    /// Whether `at` lies within [not_before, not_after].
    pub fn is_valid_at(&self, at: OffsetDateTime) -> bool {
        self.not_before <= at && at <= self.not_after
    }
}

/// What a CSR asks for. Only parsed after its self-signature verified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CsrInfo {
    pub subject: DistinguishedName,
    pub key_algorithm: Option<KeyAlgorithm>,
    pub sans: Vec<SubjectAltName>,
    /// Same spelling as [`CertInfo::signature_algorithm`].
    pub signature_algorithm: String,
    /// SubjectPublicKeyInfo DER.
    pub public_key_der: Vec<u8>,
}

/// Parses and verifies a PKCS#10 CSR ("CERTIFICATE REQUEST" or "NEW CERTIFICATE REQUEST").
pub fn parse_csr(text: &str) -> Result<CsrInfo, PkiError> {
    let blocks = pem::parse(text).map_err(|reason| PkiError::Pem {
        what: "CSR",
        reason,
    })?;
    let Some(block) = blocks
        .iter()
        .find(|b| b.label == "CERTIFICATE REQUEST" || b.label == "NEW CERTIFICATE REQUEST")
    else {
        return Err(PkiError::Pem {
            what: "CSR",
            reason: "no CERTIFICATE REQUEST block found".into(),
        });
    };
    let (_, csr) =
        x509_parser::certification_request::X509CertificationRequest::from_der(&block.der)
            .map_err(|e| PkiError::CsrParse(e.to_string()))?;
    let info = &csr.certification_request_info;
    verify_raw(
        &info.subject_pki,
        &csr.signature_algorithm,
        &csr.signature_value,
        info.raw,
    )
    .map_err(PkiError::CsrSignatureInvalid)?;
    let mut sans = Vec::new();
    if let Some(exts) = csr.requested_extensions() {
        for ext in exts {
            if let ParsedExtension::SubjectAlternativeName(san) = ext {
                sans.extend(san.general_names.iter().filter_map(to_san));
            }
        }
    }
    Ok(CsrInfo {
        subject: to_dn(&info.subject),
        key_algorithm: key_algorithm(&info.subject_pki),
        sans,
        signature_algorithm: signature_algorithm_name(&csr.signature_algorithm),
        public_key_der: info.subject_pki.raw.to_vec(),
    })
}

/// The first certificate in a PEM text.
pub fn parse_cert(text: &str) -> Result<CertInfo, PkiError> {
    let blocks = pem::parse(text).map_err(|reason| PkiError::Pem {
        what: "certificate",
        reason,
    })?;
    let block = blocks
        .iter()
        .find(|b| b.label == "CERTIFICATE")
        .ok_or_else(|| PkiError::Pem {
            what: "certificate",
            reason: "no CERTIFICATE block found".into(),
        })?;
    parse_cert_der(&block.der)
}

/// Every certificate in a PEM text, in order; `\r\n`, indentation, text between blocks and
/// non-certificate blocks (e.g. a key) are tolerated. Whitespace-only input gives an empty
/// list; other text without a certificate is an error.
pub fn parse_pem_chain(text: &str) -> Result<Vec<CertInfo>, PkiError> {
    if text.trim().is_empty() {
        return Ok(Vec::new());
    }
    let blocks = pem::parse(text).map_err(|reason| PkiError::Pem {
        what: "certificate chain",
        reason,
    })?;
    let certs = blocks
        .iter()
        .filter(|b| b.label == "CERTIFICATE")
        .map(|b| parse_cert_der(&b.der))
        .collect::<Result<Vec<_>, _>>()?;
    if certs.is_empty() {
        return Err(PkiError::Pem {
            what: "certificate chain",
            reason: "no CERTIFICATE block found".into(),
        });
    }
    Ok(certs)
}

/// Parses one DER certificate.
pub fn parse_cert_der(der: &[u8]) -> Result<CertInfo, PkiError> {
    use sha1::Digest;
    let x = parse_x509(der)?;
    let parse_err = |what: &str, e: &dyn std::fmt::Display| {
        PkiError::CertificateParse(format!("{what} extension: {e}"))
    };
    let sans = x
        .subject_alternative_name()
        .map_err(|e| parse_err("subjectAltName", &e))?
        .map(|ext| ext.value.general_names.iter().filter_map(to_san).collect())
        .unwrap_or_default();
    let (is_ca, path_length) = match x
        .basic_constraints()
        .map_err(|e| parse_err("basicConstraints", &e))?
    {
        Some(bc) => (
            bc.value.ca,
            bc.value
                .path_len_constraint
                .map(|n| u8::try_from(n).unwrap_or(u8::MAX)),
        ),
        None => (false, None),
    };
    let key_usages = match x.key_usage().map_err(|e| parse_err("keyUsage", &e))? {
        Some(ku) => {
            let k = &ku.value;
            [
                (k.digital_signature(), KeyUsage::DigitalSignature),
                (k.non_repudiation(), KeyUsage::NonRepudiation),
                (k.key_encipherment(), KeyUsage::KeyEncipherment),
                (k.data_encipherment(), KeyUsage::DataEncipherment),
                (k.key_agreement(), KeyUsage::KeyAgreement),
                (k.key_cert_sign(), KeyUsage::KeyCertSign),
                (k.crl_sign(), KeyUsage::CrlSign),
                (k.encipher_only(), KeyUsage::EncipherOnly),
                (k.decipher_only(), KeyUsage::DecipherOnly),
            ]
            .into_iter()
            .filter_map(|(set, u)| set.then_some(u))
            .collect()
        }
        None => Vec::new(),
    };
    let extended_key_usages = match x
        .extended_key_usage()
        .map_err(|e| parse_err("extendedKeyUsage", &e))?
    {
        Some(eku) => {
            let e = &eku.value;
            [
                (e.server_auth, ExtendedKeyUsage::ServerAuth),
                (e.client_auth, ExtendedKeyUsage::ClientAuth),
                (e.code_signing, ExtendedKeyUsage::CodeSigning),
                (e.email_protection, ExtendedKeyUsage::EmailProtection),
                (e.time_stamping, ExtendedKeyUsage::TimeStamping),
            ]
            .into_iter()
            .filter_map(|(set, u)| set.then_some(u))
            .collect()
        }
        None => Vec::new(),
    };
    let mut subject_key_id_hex = None;
    let mut authority_key_id_hex = None;
    for ext in x.extensions() {
        match ext.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(id) => {
                subject_key_id_hex = Some(hex::encode_upper(id.0));
            }
            ParsedExtension::AuthorityKeyIdentifier(aki) => {
                authority_key_id_hex = aki
                    .key_identifier
                    .as_ref()
                    .map(|id| hex::encode_upper(id.0));
            }
            _ => {}
        }
    }
    Ok(CertInfo {
        subject: to_dn(x.subject()),
        issuer: to_dn(x.issuer()),
        subject_raw: x.subject().as_raw().to_vec(),
        issuer_raw: x.issuer().as_raw().to_vec(),
        serial_hex: hex::encode_upper(x.serial.to_bytes_be()),
        not_before: x.validity().not_before.to_datetime(),
        not_after: x.validity().not_after.to_datetime(),
        sans,
        sha1_fingerprint_hex: hex::encode_upper(sha1::Sha1::digest(der)),
        sha256_fingerprint_hex: hex::encode_upper(sha2::Sha256::digest(der)),
        signature_algorithm: signature_algorithm_name(&x.signature_algorithm),
        key_algorithm: key_algorithm(x.public_key()),
        is_ca,
        path_length,
        key_usages,
        extended_key_usages,
        subject_key_id_hex,
        authority_key_id_hex,
        public_key_der: x.public_key().raw.to_vec(),
        der: der.to_vec(),
    })
}

fn parse_x509(der: &[u8]) -> Result<X509Certificate<'_>, PkiError> {
    let (rest, x) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| PkiError::CertificateParse(e.to_string()))?;
    if !rest.is_empty() {
        return Err(PkiError::CertificateParse(format!(
            "{} trailing bytes after the certificate",
            rest.len()
        )));
    }
    Ok(x)
}

/// Whether `key` is the private half of the certificate's public key.
pub fn key_matches_cert(key: &PrivateKey, cert: &CertInfo) -> bool {
    if key.public_key_der() == cert.public_key_der.as_slice() {
        return true;
    }
    // Same key, different AlgorithmIdentifier encoding (e.g. RSA without the NULL parameter).
    match (
        SubjectPublicKeyInfo::from_der(key.public_key_der()),
        SubjectPublicKeyInfo::from_der(&cert.public_key_der),
    ) {
        (Ok((_, a)), Ok((_, b))) => {
            a.algorithm.algorithm == b.algorithm.algorithm
                && a.subject_public_key.data == b.subject_public_key.data
        }
        _ => false,
    }
}

/// Checks that `issuer`'s subject equals `cert`'s issuer name (byte for byte), that the
/// authority key identifier (when both sides have one) names `issuer`'s subject key identifier
/// (OpenSSL relies on it to find issuers), and that `cert`'s signature verifies with `issuer`'s
/// public key. Nothing else (dates, CA flags).
pub fn verify_signed_by(cert: &CertInfo, issuer: &CertInfo) -> Result<(), PkiError> {
    if cert.issuer_raw != issuer.subject_raw {
        return Err(PkiError::IssuerNameMismatch {
            subject: cert.subject.to_string(),
            cert_issuer: cert.issuer.to_string(),
            issuer: issuer.subject.to_string(),
        });
    }
    let x = parse_x509(&cert.der)?;
    let ix = parse_x509(&issuer.der)?;
    let bad = |reason: String| PkiError::BadSignature {
        subject: cert.subject.to_string(),
        issuer: issuer.subject.to_string(),
        reason,
    };
    if let (Some(aki), Some(ski)) = (&cert.authority_key_id_hex, &issuer.subject_key_id_hex)
        && aki != ski
    {
        return Err(bad(format!(
            "authority key identifier {aki} differs from the issuer's subject key identifier {ski}"
        )));
    }
    if x.signature_algorithm != x.tbs_certificate.signature {
        return Err(bad(
            "outer and TBS signature algorithms differ (tampered certificate)".into(),
        ));
    }
    verify_raw(
        ix.public_key(),
        &x.signature_algorithm,
        &x.signature_value,
        x.tbs_certificate.as_ref(),
    )
    .map_err(bad)
}

/// Verifies `leaf` up to one of the certificates in `trust_anchor_pem`, using the certificates in
/// `chain_pem` (any order, may be empty, may include the anchor) as intermediates. Checks every
/// signature and issuer name, validity of every certificate (anchor included) at `at`, and that
/// every issuing certificate is a CA whose KeyUsage (if present) allows keyCertSign and whose
/// pathLenConstraint is respected. No revocation, name constraints or EKU policy.
pub fn verify_chain(
    leaf_pem: &str,
    chain_pem: &str,
    trust_anchor_pem: &str,
    at: OffsetDateTime,
) -> Result<(), PkiError> {
    const MAX_DEPTH: usize = 16;
    let leaf = parse_cert(leaf_pem)?;
    let intermediates = parse_pem_chain(chain_pem)?;
    let anchors = parse_pem_chain(trust_anchor_pem)?;
    if anchors.is_empty() {
        return Err(PkiError::Chain(
            "the trust anchor PEM holds no certificate".into(),
        ));
    }
    check_valid_at(&leaf, at)?;
    if anchors.iter().any(|a| a.der == leaf.der) {
        return Ok(());
    }
    let mut path: Vec<&CertInfo> = vec![&leaf];
    while path.len() <= MAX_DEPTH {
        let current = path[path.len() - 1];
        // CA certificates between this issuer and the leaf.
        let below = path.len() - 1;
        let mut last_err = None;
        for anchor in anchors
            .iter()
            .filter(|a| a.subject_raw == current.issuer_raw)
        {
            match verify_signed_by(current, anchor) {
                Ok(()) => {
                    check_issuer_role(anchor, below)?;
                    return check_valid_at(anchor, at);
                }
                Err(e) => last_err = Some(e),
            }
        }
        let mut next = None;
        for cand in intermediates
            .iter()
            .filter(|c| c.subject_raw == current.issuer_raw && !path.iter().any(|p| p.der == c.der))
        {
            match verify_signed_by(current, cand) {
                Ok(()) => {
                    next = Some(cand);
                    break;
                }
                Err(e) => last_err = Some(e),
            }
        }
        let Some(next) = next else {
            return Err(match last_err {
                Some(e) => PkiError::Chain(e.to_string()),
                None => PkiError::Chain(format!(
                    "no issuer {} for {} among {} chain certificate(s) and {} trust anchor(s)",
                    current.issuer,
                    current.subject,
                    intermediates.len(),
                    anchors.len()
                )),
            });
        };
        check_issuer_role(next, below)?;
        check_valid_at(next, at)?;
        path.push(next);
    }
    Err(PkiError::Chain(format!(
        "no trust anchor reached within {MAX_DEPTH} certificates"
    )))
}

fn check_issuer_role(ca: &CertInfo, below: usize) -> Result<(), PkiError> {
    if !ca.is_ca {
        return Err(PkiError::Chain(format!(
            "{} issues certificates but is not a CA (BasicConstraints CA:TRUE missing)",
            ca.subject
        )));
    }
    if !ca.key_usages.is_empty() && !ca.key_usages.contains(&KeyUsage::KeyCertSign) {
        return Err(PkiError::Chain(format!(
            "{} issues certificates but its KeyUsage lacks keyCertSign",
            ca.subject
        )));
    }
    if let Some(max) = ca.path_length
        && below > usize::from(max)
    {
        return Err(PkiError::Chain(format!(
            "{} has pathLenConstraint {max} but {below} CA certificate(s) follow it",
            ca.subject
        )));
    }
    Ok(())
}

fn check_valid_at(cert: &CertInfo, at: OffsetDateTime) -> Result<(), PkiError> {
    if cert.is_valid_at(at) {
        Ok(())
    } else {
        Err(PkiError::NotValidAt {
            subject: cert.subject.to_string(),
            at,
            not_before: cert.not_before,
            not_after: cert.not_after,
        })
    }
}

/// Verifies one signature. RSA (PKCS#1 v1.5, PSS) goes through x509-parser/ring; ECDSA on
/// P-256/P-384 with SHA-256/384/512 through p256/p384, which ring does not fully cover.
fn verify_raw(
    spki: &SubjectPublicKeyInfo<'_>,
    alg: &AlgorithmIdentifier<'_>,
    sig: &BitString<'_>,
    msg: &[u8],
) -> Result<(), String> {
    let oid = &alg.algorithm;
    let hash = if *oid == oids::OID_SIG_ECDSA_WITH_SHA256 {
        SignatureHash::Sha256
    } else if *oid == oids::OID_SIG_ECDSA_WITH_SHA384 {
        SignatureHash::Sha384
    } else if *oid == oids::OID_SIG_ECDSA_WITH_SHA512 {
        SignatureHash::Sha512
    } else {
        return x509_parser::verify::verify_signature(spki, alg, sig, msg).map_err(|e| {
            format!(
                "{} signature: {e}",
                signature_algorithm_name(alg).to_lowercase()
            )
        });
    };
    let digest = hash.digest(msg);
    let point = &spki.subject_public_key.data;
    let bad = |e: &dyn std::fmt::Display| format!("ECDSA with {hash}: {e}");
    match spki_kind(spki) {
        SpkiKind::P256 => {
            let key = p256::ecdsa::VerifyingKey::from_sec1_bytes(point).map_err(|e| bad(&e))?;
            let s = p256::ecdsa::Signature::from_der(&sig.data).map_err(|e| bad(&e))?;
            key.verify_prehash(&digest, &s).map_err(|e| bad(&e))
        }
        SpkiKind::P384 => {
            let key = p384::ecdsa::VerifyingKey::from_sec1_bytes(point).map_err(|e| bad(&e))?;
            let s = p384::ecdsa::Signature::from_der(&sig.data).map_err(|e| bad(&e))?;
            key.verify_prehash(&digest, &s).map_err(|e| bad(&e))
        }
        SpkiKind::Rsa => Err("ECDSA signature with an RSA key".into()),
        SpkiKind::Other(what) => Err(format!("ECDSA with unsupported key type {what}")),
    }
}

pub(crate) enum SpkiKind {
    Rsa,
    P256,
    P384,
    Other(String),
}

pub(crate) fn spki_kind(spki: &SubjectPublicKeyInfo<'_>) -> SpkiKind {
    let alg = &spki.algorithm.algorithm;
    if *alg == oids::OID_PKCS1_RSAENCRYPTION {
        SpkiKind::Rsa
    } else if *alg == oids::OID_KEY_TYPE_EC_PUBLIC_KEY {
        match spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok())
        {
            Some(c) if c == oids::OID_EC_P256 => SpkiKind::P256,
            Some(c) if c == oids::OID_NIST_EC_P384 => SpkiKind::P384,
            Some(c) => SpkiKind::Other(format!("EC curve {c}")),
            None => SpkiKind::Other("EC key without a named curve".into()),
        }
    } else {
        SpkiKind::Other(alg.to_id_string())
    }
}

fn key_algorithm(spki: &SubjectPublicKeyInfo<'_>) -> Option<KeyAlgorithm> {
    match spki_kind(spki) {
        SpkiKind::Rsa => match spki.parsed().ok()? {
            x509_parser::public_key::PublicKey::RSA(k) => match k.key_size() {
                2048 => Some(KeyAlgorithm::Rsa2048),
                4096 => Some(KeyAlgorithm::Rsa4096),
                _ => None,
            },
            _ => None,
        },
        SpkiKind::P256 => Some(KeyAlgorithm::Ec256),
        SpkiKind::P384 => Some(KeyAlgorithm::Ec384),
        SpkiKind::Other(_) => None,
    }
}

/// The SCM spelling of a signature algorithm.
fn signature_algorithm_name(alg: &AlgorithmIdentifier<'_>) -> String {
    let oid = &alg.algorithm;
    let known = [
        (oids::OID_PKCS1_SHA1WITHRSA, "SHA1WITHRSA"),
        (oids::OID_PKCS1_SHA256WITHRSA, "SHA256WITHRSA"),
        (oids::OID_PKCS1_SHA384WITHRSA, "SHA384WITHRSA"),
        (oids::OID_PKCS1_SHA512WITHRSA, "SHA512WITHRSA"),
        (oids::OID_PKCS1_RSASSAPSS, "RSASSA-PSS"),
        (oids::OID_SIG_ECDSA_WITH_SHA256, "SHA256WITHECDSA"),
        (oids::OID_SIG_ECDSA_WITH_SHA384, "SHA384WITHECDSA"),
        (oids::OID_SIG_ECDSA_WITH_SHA512, "SHA512WITHECDSA"),
        (oids::OID_SIG_ED25519, "ED25519"),
    ];
    known
        .iter()
        .find(|(o, _)| o == oid)
        .map(|(_, name)| (*name).to_string())
        .unwrap_or_else(|| oid.to_id_string())
}

fn to_dn(name: &X509Name<'_>) -> DistinguishedName {
    let first =
        |mut it: Box<dyn Iterator<Item = &x509_parser::x509::AttributeTypeAndValue<'_>> + '_>| {
            it.next().map(|a| match a.as_str() {
                Ok(s) => s.to_string(),
                Err(_) => String::from_utf8_lossy(a.as_slice()).into_owned(),
            })
        };
    DistinguishedName {
        country: first(Box::new(name.iter_country())),
        state: first(Box::new(name.iter_state_or_province())),
        locality: first(Box::new(name.iter_locality())),
        organization: first(Box::new(name.iter_organization())),
        organizational_unit: first(Box::new(name.iter_organizational_unit())),
        common_name: first(Box::new(name.iter_common_name())),
    }
}

fn to_san(name: &GeneralName<'_>) -> Option<SubjectAltName> {
    match name {
        GeneralName::DNSName(s) => Some(SubjectAltName::Dns((*s).to_string())),
        GeneralName::RFC822Name(s) => Some(SubjectAltName::Email((*s).to_string())),
        GeneralName::URI(s) => Some(SubjectAltName::Uri((*s).to_string())),
        GeneralName::IPAddress(b) => match b.len() {
            4 => <[u8; 4]>::try_from(*b)
                .ok()
                .map(|a| SubjectAltName::Ip(a.into())),
            16 => <[u8; 16]>::try_from(*b)
                .ok()
                .map(|a| SubjectAltName::Ip(a.into())),
            _ => None,
        },
        _ => None,
    }
}
