//! Certificate and CSR building on rcgen, with our own signer so that every key/hash pair works.

use p256::ecdsa::signature::hazmat::PrehashSigner;
use rcgen::{PublicKeyData, SignatureAlgorithm, SigningKey};
use time::UtcOffset;
use x509_parser::prelude::FromDer;

use super::inspect::{self, parse_cert_der};
use super::{
    CertificateSpec, DistinguishedName, ExtendedKeyUsage, KeyAlgorithm, KeyUsage, PkiError,
    PrivateKey, SignatureHash, SubjectAltName, pem,
};

/// Where the subject public key of a new certificate comes from.
#[derive(Clone, Copy, Debug)]
pub enum PublicKeySource<'a> {
    /// The CA generated the key pair (PCA "apply" mode).
    Key(&'a PrivateKey),
    /// A PKCS#10 CSR PEM; its self-signature is verified before use. Only the public key is
    /// taken from it: subject, SANs and extensions come from the [`CertificateSpec`].
    Csr(&'a str),
    /// A SubjectPublicKeyInfo DER (e.g. kept from an earlier CSR).
    PublicKeyDer(&'a [u8]),
}

/// Issues a self-signed certificate (a root CA) for `key`. Returns PEM.
pub fn self_signed(spec: &CertificateSpec, key: &PrivateKey) -> Result<String, PkiError> {
    let params = to_params(spec, key.public_key_der())?;
    let signer = Signer::new(key, spec.hash)?;
    let subject = SubjectKey::from_spki(key.public_key_der())?;
    // By value: rcgen's `PublicKeyData for &K` does not forward `subject_public_key_info`,
    // which the authority key identifier is computed from.
    let issuer = rcgen::Issuer::from_params(&params, signer);
    let cert = params
        .signed_by(&subject, &issuer)
        .map_err(|e| PkiError::Signing(format!("self-signed {}: {e}", spec.subject)))?;
    let der = issuer.key().finish(cert.der())?;
    Ok(pem::encode("CERTIFICATE", &der))
}

/// Issues a certificate for `subject_key`, signed by `issuer_key` as `issuer_cert_pem` (first
/// certificate in the PEM). The issuer name is written from the issuer certificate's subject;
/// the result is checked to carry that name byte for byte and to verify under the issuer key.
pub fn issue(
    spec: &CertificateSpec,
    subject_key: &PublicKeySource<'_>,
    issuer_cert_pem: &str,
    issuer_key: &PrivateKey,
) -> Result<String, PkiError> {
    let issuer_info = inspect::parse_cert(issuer_cert_pem)?;
    let issuer_name = issuer_info.subject.to_string();
    if !inspect::key_matches_cert(issuer_key, &issuer_info) {
        return Err(PkiError::IssuerKeyMismatch {
            issuer: issuer_name,
        });
    }
    if !issuer_info.is_ca {
        return Err(PkiError::IssuerNotAllowed {
            issuer: issuer_name,
            reason: "it is not a CA (BasicConstraints CA:TRUE is missing)".into(),
        });
    }
    if !issuer_info.key_usages.is_empty()
        && !issuer_info.key_usages.contains(&KeyUsage::KeyCertSign)
    {
        return Err(PkiError::IssuerNotAllowed {
            issuer: issuer_name,
            reason: "its KeyUsage lacks keyCertSign".into(),
        });
    }
    if spec.is_ca && issuer_info.path_length == Some(0) {
        return Err(PkiError::IssuerNotAllowed {
            issuer: issuer_name,
            reason: "its pathLenConstraint is 0, so it cannot issue CA certificates".into(),
        });
    }
    let subject = match subject_key {
        PublicKeySource::Key(k) => SubjectKey::from_spki(k.public_key_der())?,
        PublicKeySource::Csr(csr_pem) => {
            SubjectKey::from_spki(&inspect::parse_csr(csr_pem)?.public_key_der)?
        }
        PublicKeySource::PublicKeyDer(der) => SubjectKey::from_spki(der)?,
    };
    let params = to_params(spec, &subject.spki)?;
    let signer = Signer::new(issuer_key, spec.hash)?;
    let issuer = rcgen::Issuer::from_ca_cert_pem(
        &pem::encode("CERTIFICATE", &issuer_info.der),
        signer,
    )
    .map_err(|e| {
        PkiError::Unsupported(format!(
            "issuer certificate {issuer_name} cannot be used by the certificate builder: {e}"
        ))
    })?;
    let cert = params
        .signed_by(&subject, &issuer)
        .map_err(|e| PkiError::Signing(format!("{} by {issuer_name}: {e}", spec.subject)))?;
    let der = issuer.key().finish(cert.der())?;
    let issued = parse_cert_der(&der)?;
    if issued.issuer_raw != issuer_info.subject_raw {
        // rcgen re-encodes the issuer name; names it cannot reproduce (multi-valued RDNs,
        // repeated attributes) end up here rather than in a chain nobody can verify.
        return Err(PkiError::IssuerNameMismatch {
            subject: issued.subject.to_string(),
            cert_issuer: issued.issuer.to_string(),
            issuer: issuer_name,
        });
    }
    inspect::verify_signed_by(&issued, &issuer_info)?;
    Ok(pem::encode("CERTIFICATE", &der))
}

/// A PKCS#10 CSR for `key` with `subject` and a SAN extension request, signed with the key's
/// default hash (SHA256, or SHA384 for EC384). Returns PEM ("CERTIFICATE REQUEST").
pub fn generate_csr(
    key: &PrivateKey,
    subject: &DistinguishedName,
    sans: &[SubjectAltName],
) -> Result<String, PkiError> {
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = to_rcgen_dn(subject)?;
    params.subject_alt_names = to_rcgen_sans(sans)?;
    let signer = Signer::new(key, key.algorithm().default_hash())?;
    let csr = params
        .serialize_request(&signer)
        .map_err(|e| PkiError::Signing(format!("CSR for {subject}: {e}")))?;
    Ok(pem::encode("CERTIFICATE REQUEST", csr.der()))
}

fn to_params(
    spec: &CertificateSpec,
    subject_spki: &[u8],
) -> Result<rcgen::CertificateParams, PkiError> {
    use sha2::Digest as _;
    let mut p = rcgen::CertificateParams::default();
    p.distinguished_name = to_rcgen_dn(&spec.subject)?;
    p.subject_alt_names = to_rcgen_sans(&spec.sans)?;
    p.not_before = whole_seconds_utc(spec.not_before)?;
    p.not_after = whole_seconds_utc(spec.not_after)?;
    if p.not_after <= p.not_before {
        return Err(PkiError::InvalidSpec(format!(
            "not_after {} is not after not_before {}",
            p.not_after, p.not_before
        )));
    }
    p.is_ca = match (spec.is_ca, spec.path_length) {
        (true, Some(n)) => rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(n)),
        (true, None) => rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained),
        // Not rcgen's `ExplicitNoCa`: it encodes the DEFAULT `cA FALSE`, which DER forbids and
        // strict parsers (Python `cryptography`) refuse. The extensions are written below.
        (false, None) => rcgen::IsCa::NoCa,
        (false, Some(_)) => {
            return Err(PkiError::InvalidSpec(
                "path_length is set on a certificate that is not a CA".into(),
            ));
        }
    };
    if spec.is_ca
        && !spec.key_usages.is_empty()
        && !spec.key_usages.contains(&KeyUsage::KeyCertSign)
    {
        return Err(PkiError::InvalidSpec(
            "a CA certificate with key usages must include keyCertSign".into(),
        ));
    }
    p.key_usages = spec.key_usages.iter().map(|u| to_rcgen_ku(*u)).collect();
    p.extended_key_usages = spec
        .extended_key_usages
        .iter()
        .map(|u| to_rcgen_eku(*u))
        .collect();
    let serial = match &spec.serial {
        Some(s) => {
            let significant = s.iter().skip_while(|b| **b == 0).count();
            if significant == 0 || significant > 20 {
                return Err(PkiError::InvalidSpec(format!(
                    "serial must be 1 to 20 bytes and not zero (got {} significant bytes)",
                    significant
                )));
            }
            s.clone()
        }
        None => random_serial(),
    };
    p.serial_number = Some(rcgen::SerialNumber::from_slice(&serial));
    p.use_authority_key_identifier_extension = true;
    p.key_identifier_method = rcgen::KeyIdMethod::Sha256;
    if !spec.is_ca {
        // What `ExplicitNoCa` wrote, in DER: the key identifier (as rcgen derives it for CAs,
        // SHA-256 of the SubjectPublicKeyInfo cut to 20 bytes) and a critical BasicConstraints
        // whose only field is at its default, so an empty SEQUENCE.
        let ski = der_wrap(0x04, &sha2::Sha256::digest(subject_spki)[..20]);
        p.custom_extensions
            .push(rcgen::CustomExtension::from_oid_content(
                &[2, 5, 29, 14],
                ski,
            ));
        let mut bc = rcgen::CustomExtension::from_oid_content(&[2, 5, 29, 19], der_wrap(0x30, &[]));
        bc.set_criticality(true);
        p.custom_extensions.push(bc);
    }
    for (i, ext) in spec.custom_extensions.iter().enumerate() {
        let taken = BUILDER_EXTENSIONS.iter().any(|o| *o == ext.oid())
            || spec.custom_extensions[..i]
                .iter()
                .any(|e| e.oid() == ext.oid());
        if taken {
            return Err(PkiError::InvalidSpec(format!(
                "extension {} is already in the certificate (an extension may appear only once)",
                ext.oid_string()
            )));
        }
        let mut e = rcgen::CustomExtension::from_oid_content(ext.oid(), ext.value_der.clone());
        e.set_criticality(ext.critical);
        p.custom_extensions.push(e);
    }
    Ok(p)
}

/// The extensions [`to_params`] writes itself: subject and authority key identifiers, key
/// usage, subject alternative names, basic constraints, extended key usage.
const BUILDER_EXTENSIONS: [&[u64]; 6] = [
    &[2, 5, 29, 14],
    &[2, 5, 29, 15],
    &[2, 5, 29, 17],
    &[2, 5, 29, 19],
    &[2, 5, 29, 35],
    &[2, 5, 29, 37],
];

/// 16 random bytes, top bit clear (positive, so DER needs no sign byte), first byte non-zero.
fn random_serial() -> Vec<u8> {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] &= 0x7f;
    if bytes[0] == 0 {
        bytes[0] = 0x01;
    }
    bytes.to_vec()
}

fn whole_seconds_utc(t: time::OffsetDateTime) -> Result<time::OffsetDateTime, PkiError> {
    t.to_offset(UtcOffset::UTC)
        .replace_nanosecond(0)
        .map_err(|e| PkiError::InvalidSpec(format!("time {t}: {e}")))
}

fn to_rcgen_dn(dn: &DistinguishedName) -> Result<rcgen::DistinguishedName, PkiError> {
    let mut out = rcgen::DistinguishedName::new();
    for (short, value) in dn.entries() {
        let (ty, val) = match short {
            // RFC 5280 requires PrintableString for the country.
            "C" => (
                rcgen::DnType::CountryName,
                rcgen::DnValue::PrintableString(
                    value
                        .try_into()
                        .map_err(|e| PkiError::InvalidSpec(format!("country {value:?}: {e}")))?,
                ),
            ),
            "ST" => (rcgen::DnType::StateOrProvinceName, utf8(value)),
            "L" => (rcgen::DnType::LocalityName, utf8(value)),
            "O" => (rcgen::DnType::OrganizationName, utf8(value)),
            "OU" => (rcgen::DnType::OrganizationalUnitName, utf8(value)),
            _ => (rcgen::DnType::CommonName, utf8(value)),
        };
        out.push(ty, val);
    }
    Ok(out)
}

fn utf8(s: &str) -> rcgen::DnValue {
    rcgen::DnValue::Utf8String(s.to_string())
}

fn to_rcgen_sans(sans: &[SubjectAltName]) -> Result<Vec<rcgen::SanType>, PkiError> {
    let ia5 = |s: &str, san: &SubjectAltName| {
        rcgen::string::Ia5String::try_from(s).map_err(|e| {
            PkiError::InvalidSpec(format!(
                "subject alternative name {san}: {e} (must be ASCII)"
            ))
        })
    };
    sans.iter()
        .map(|san| {
            Ok(match san {
                SubjectAltName::Dns(s) => rcgen::SanType::DnsName(ia5(s, san)?),
                SubjectAltName::Ip(ip) => rcgen::SanType::IpAddress(*ip),
                SubjectAltName::Email(s) => rcgen::SanType::Rfc822Name(ia5(s, san)?),
                SubjectAltName::Uri(s) => rcgen::SanType::URI(ia5(s, san)?),
            })
        })
        .collect()
}

fn to_rcgen_ku(u: KeyUsage) -> rcgen::KeyUsagePurpose {
    use rcgen::KeyUsagePurpose as K;
    match u {
        KeyUsage::DigitalSignature => K::DigitalSignature,
        KeyUsage::NonRepudiation => K::ContentCommitment,
        KeyUsage::KeyEncipherment => K::KeyEncipherment,
        KeyUsage::DataEncipherment => K::DataEncipherment,
        KeyUsage::KeyAgreement => K::KeyAgreement,
        KeyUsage::KeyCertSign => K::KeyCertSign,
        KeyUsage::CrlSign => K::CrlSign,
        KeyUsage::EncipherOnly => K::EncipherOnly,
        KeyUsage::DecipherOnly => K::DecipherOnly,
    }
}

fn to_rcgen_eku(u: ExtendedKeyUsage) -> rcgen::ExtendedKeyUsagePurpose {
    use rcgen::ExtendedKeyUsagePurpose as E;
    match u {
        ExtendedKeyUsage::ServerAuth => E::ServerAuth,
        ExtendedKeyUsage::ClientAuth => E::ClientAuth,
        ExtendedKeyUsage::CodeSigning => E::CodeSigning,
        ExtendedKeyUsage::EmailProtection => E::EmailProtection,
        ExtendedKeyUsage::TimeStamping => E::TimeStamping,
    }
}

/// A subject public key for rcgen: the SPKI is passed through for key identifiers, and
/// `algorithm()` only decides how rcgen re-writes the SPKI's AlgorithmIdentifier.
struct SubjectKey {
    spki: Vec<u8>,
    raw: Vec<u8>,
    alg: &'static SignatureAlgorithm,
}

impl SubjectKey {
    fn from_spki(spki: &[u8]) -> Result<Self, PkiError> {
        let (_, parsed) = x509_parser::x509::SubjectPublicKeyInfo::from_der(spki).map_err(|e| {
            PkiError::Unsupported(format!("subject public key does not parse: {e}"))
        })?;
        let alg = match inspect::spki_kind(&parsed) {
            inspect::SpkiKind::Rsa => &rcgen::PKCS_RSA_SHA256,
            inspect::SpkiKind::P256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            inspect::SpkiKind::P384 => &rcgen::PKCS_ECDSA_P384_SHA384,
            inspect::SpkiKind::Other(what) => {
                return Err(PkiError::Unsupported(format!(
                    "subject public key type {what} (only RSA, P-256 and P-384)"
                )));
            }
        };
        Ok(SubjectKey {
            spki: spki.to_vec(),
            raw: parsed.subject_public_key.data.to_vec(),
            alg,
        })
    }
}

impl PublicKeyData for SubjectKey {
    fn subject_public_key_info(&self) -> Vec<u8> {
        self.spki.clone()
    }

    fn der_bytes(&self) -> &[u8] {
        &self.raw
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        self.alg
    }
}

enum Backend {
    Rsa(rcgen::KeyPair),
    P256(p256::ecdsa::SigningKey),
    P384(p384::ecdsa::SigningKey),
}

/// Signs with a [`PrivateKey`] and a chosen hash. For rcgen, `algorithm()` is the identifier
/// written as the certificate's signatureAlgorithm; the subject SPKI is always written from a
/// separate [`SubjectKey`], except in CSRs, where the default hash makes the two agree.
struct Signer {
    backend: Backend,
    hash: SignatureHash,
    alg: &'static SignatureAlgorithm,
    spki: Vec<u8>,
    raw: Vec<u8>,
}

impl Signer {
    fn new(key: &PrivateKey, hash: SignatureHash) -> Result<Self, PkiError> {
        let sign_err = |e: &dyn std::fmt::Display| {
            PkiError::Signing(format!("loading {} key for {hash}: {e}", key.algorithm()))
        };
        let (backend, alg): (Backend, &'static SignatureAlgorithm) = match key.algorithm() {
            KeyAlgorithm::Rsa2048 | KeyAlgorithm::Rsa4096 => {
                let alg = match hash {
                    SignatureHash::Sha256 => &rcgen::PKCS_RSA_SHA256,
                    SignatureHash::Sha384 => &rcgen::PKCS_RSA_SHA384,
                    SignatureHash::Sha512 => &rcgen::PKCS_RSA_SHA512,
                };
                let der = rustls::pki_types::PrivatePkcs8KeyDer::from(key.to_pkcs8_der());
                let kp = rcgen::KeyPair::from_pkcs8_der_and_sign_algo(&der, alg)
                    .map_err(|e| sign_err(&e))?;
                (Backend::Rsa(kp), alg)
            }
            KeyAlgorithm::Ec256 => {
                use p256::pkcs8::DecodePrivateKey;
                let k = p256::ecdsa::SigningKey::from_pkcs8_der(key.to_pkcs8_der())
                    .map_err(|e| sign_err(&e))?;
                (Backend::P256(k), ecdsa_alg_placeholder(hash))
            }
            KeyAlgorithm::Ec384 => {
                use p384::pkcs8::DecodePrivateKey;
                let k = p384::ecdsa::SigningKey::from_pkcs8_der(key.to_pkcs8_der())
                    .map_err(|e| sign_err(&e))?;
                (Backend::P384(k), ecdsa_alg_placeholder(hash))
            }
        };
        let subject = SubjectKey::from_spki(key.public_key_der())?;
        Ok(Signer {
            backend,
            hash,
            alg,
            spki: subject.spki,
            raw: subject.raw,
        })
    }

    /// Signature bytes as they go into the BIT STRING (DER ECDSA-Sig-Value for EC).
    fn sign_bytes(&self, msg: &[u8]) -> Result<Vec<u8>, String> {
        match &self.backend {
            Backend::Rsa(kp) => kp.sign(msg).map_err(|e| e.to_string()),
            Backend::P256(k) => {
                let sig: p256::ecdsa::Signature = k
                    .sign_prehash(&self.hash.digest(msg))
                    .map_err(|e| e.to_string())?;
                Ok(sig.to_der().as_bytes().to_vec())
            }
            Backend::P384(k) => {
                let sig: p384::ecdsa::Signature = k
                    .sign_prehash(&self.hash.digest(msg))
                    .map_err(|e| e.to_string())?;
                Ok(sig.to_der().as_bytes().to_vec())
            }
        }
    }

    fn needs_resign(&self) -> bool {
        !matches!(self.backend, Backend::Rsa(_)) && self.hash == SignatureHash::Sha512
    }

    /// The final certificate DER: rcgen's output, or for ECDSA+SHA512 the same certificate with
    /// the signature algorithm corrected and re-signed.
    fn finish(&self, der: &[u8]) -> Result<Vec<u8>, PkiError> {
        if self.needs_resign() {
            resign_ecdsa_sha512(der, self)
        } else {
            Ok(der.to_vec())
        }
    }
}

impl PublicKeyData for Signer {
    fn subject_public_key_info(&self) -> Vec<u8> {
        self.spki.clone()
    }

    fn der_bytes(&self) -> &[u8] {
        &self.raw
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        self.alg
    }
}

impl SigningKey for Signer {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        if self.needs_resign() {
            // Replaced in `finish`; signing here would only be thrown away.
            return Ok(Vec::new());
        }
        self.sign_bytes(msg)
            .map_err(|_| rcgen::Error::RemoteKeyError)
    }
}

/// rcgen's ECDSA algorithms whose identifiers read ecdsa-with-SHA256 / -SHA384. With ring there
/// is no ecdsa-with-SHA512 one, so SHA512 borrows the SHA384 identifier until `finish`.
fn ecdsa_alg_placeholder(hash: SignatureHash) -> &'static SignatureAlgorithm {
    match hash {
        SignatureHash::Sha256 => &rcgen::PKCS_ECDSA_P256_SHA256,
        SignatureHash::Sha384 | SignatureHash::Sha512 => &rcgen::PKCS_ECDSA_P384_SHA384,
    }
}

/// DER of AlgorithmIdentifier { ecdsa-with-SHA384 } and { ecdsa-with-SHA512 } (no parameters).
const ECDSA_SHA384_ALG_ID: [u8; 12] = [
    0x30, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03,
];
const ECDSA_SHA512_ALG_ID: [u8; 12] = [
    0x30, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x04,
];

/// Rewrites Certificate { tbs, alg, sig }: the TBS `signature` field (3rd element, after the
/// [0] version and the serial) goes from ecdsa-with-SHA384 to ecdsa-with-SHA512, then the TBS is
/// signed with SHA-512 and the outer structure rebuilt.
fn resign_ecdsa_sha512(cert_der: &[u8], signer: &Signer) -> Result<Vec<u8>, PkiError> {
    let bad = |what: &str| PkiError::Signing(format!("re-signing with ECDSA/SHA512: {what}"));
    let (outer, _) = der_tlv(cert_der, 0x30).ok_or_else(|| bad("certificate is not a SEQUENCE"))?;
    let (tbs_content, _) = der_tlv(outer, 0x30).ok_or_else(|| bad("TBS is not a SEQUENCE"))?;
    let (_, after_version) = der_tlv(tbs_content, 0xa0).ok_or_else(|| bad("no version"))?;
    let (_, after_serial) = der_tlv(after_version, 0x02).ok_or_else(|| bad("no serial"))?;
    if !after_serial.starts_with(&ECDSA_SHA384_ALG_ID) {
        return Err(bad("unexpected signature algorithm in TBS"));
    }
    let prefix_len = tbs_content.len() - after_serial.len();
    let mut new_tbs_content = Vec::with_capacity(tbs_content.len());
    new_tbs_content.extend_from_slice(&tbs_content[..prefix_len]);
    new_tbs_content.extend_from_slice(&ECDSA_SHA512_ALG_ID);
    new_tbs_content.extend_from_slice(&after_serial[ECDSA_SHA384_ALG_ID.len()..]);
    let tbs = der_wrap(0x30, &new_tbs_content);
    let sig = signer.sign_bytes(&tbs).map_err(|e| bad(&e))?;
    let mut bits = Vec::with_capacity(sig.len() + 1);
    bits.push(0); // no unused bits
    bits.extend_from_slice(&sig);
    let mut content = tbs;
    content.extend_from_slice(&ECDSA_SHA512_ALG_ID);
    content.extend_from_slice(&der_wrap(0x03, &bits));
    Ok(der_wrap(0x30, &content))
}

/// Splits one TLV with the expected tag off `input`: (content, rest).
fn der_tlv(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    if *input.first()? != tag {
        return None;
    }
    let first = *input.get(1)?;
    let (len, header) = if first < 0x80 {
        (usize::from(first), 2)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 {
            return None;
        }
        let len = input
            .get(2..2 + n)?
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, 2 + n)
    };
    let content = input.get(header..header + len)?;
    Some((content, &input[header + len..]))
}

/// One DER TLV with a one-byte tag.
pub(crate) fn der_wrap(tag: u8, content: &[u8]) -> Vec<u8> {
    let len = content.len();
    let mut out = Vec::with_capacity(len + 6);
    out.push(tag);
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(content);
    out
}
