//! Private keys: generation, PEM import (PKCS#8, PKCS#1, SEC1) and PKCS#8 export.

use std::fmt;

use p256::elliptic_curve::rand_core::OsRng;
use p256::pkcs8::{AssociatedOid, DecodePrivateKey, EncodePrivateKey, EncodePublicKey};
use rsa::pkcs1::DecodeRsaPrivateKey;
use rsa::traits::PublicKeyParts;

use super::{KeyAlgorithm, PkiError, pem};

/// A private key of one of the [`KeyAlgorithm`]s, held as normalised PKCS#8 DER (for EC keys
/// with the public key embedded, as ring requires). `Debug` never shows key material.
#[derive(Clone)]
pub struct PrivateKey {
    algorithm: KeyAlgorithm,
    pkcs8: Vec<u8>,
    spki: Vec<u8>,
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PrivateKey")
            .field("algorithm", &self.algorithm)
            .field("pkcs8", &"[redacted]")
            .finish()
    }
}

/// Generates a fresh key from the OS random source. RSA uses the `rsa` crate (ring cannot
/// generate RSA keys); EC uses `p256`/`p384`. CPU-bound and blocking: RSA-4096 takes seconds
/// (about 3-12 s in a debug build on a busy 2-core machine), so call it from
/// `spawn_blocking` in async code.
pub fn generate_key(alg: KeyAlgorithm) -> Result<PrivateKey, PkiError> {
    let gen_err = |e: &dyn fmt::Display| PkiError::KeyGeneration(format!("{alg}: {e}"));
    match alg {
        KeyAlgorithm::Rsa2048 | KeyAlgorithm::Rsa4096 => {
            let bits = if alg == KeyAlgorithm::Rsa2048 {
                2048
            } else {
                4096
            };
            let key = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, bits)
                .map_err(|e| gen_err(&e))?;
            PrivateKey::from_rsa(&key)
        }
        KeyAlgorithm::Ec256 => PrivateKey::from_p256(&p256::SecretKey::random(&mut OsRng)),
        KeyAlgorithm::Ec384 => PrivateKey::from_p384(&p384::SecretKey::random(&mut OsRng)),
    }
}

impl PrivateKey {
    pub fn algorithm(&self) -> KeyAlgorithm {
        self.algorithm
    }

    /// PKCS#8 PEM ("PRIVATE KEY"), unencrypted.
    pub fn to_pem(&self) -> String {
        pem::encode("PRIVATE KEY", &self.pkcs8)
    }

    /// PKCS#8 DER. Secret: do not log.
    pub fn to_pkcs8_der(&self) -> &[u8] {
        &self.pkcs8
    }

    /// The public key as SubjectPublicKeyInfo DER.
    pub fn public_key_der(&self) -> &[u8] {
        &self.spki
    }

    /// Reads the first private key block: PKCS#8 "PRIVATE KEY", PKCS#1 "RSA PRIVATE KEY" or SEC1
    /// "EC PRIVATE KEY". Encrypted keys give [`PkiError::EncryptedKey`].
    pub fn from_pem(text: &str) -> Result<Self, PkiError> {
        let blocks = pem::parse(text).map_err(|reason| PkiError::Pem {
            what: "private key",
            reason,
        })?;
        let Some(block) = blocks
            .into_iter()
            .find(|b| b.label.ends_with("PRIVATE KEY"))
        else {
            return Err(PkiError::Pem {
                what: "private key",
                reason: "no PRIVATE KEY block found".into(),
            });
        };
        if block.label == "ENCRYPTED PRIVATE KEY" || block.has_headers {
            return Err(PkiError::EncryptedKey);
        }
        match block.label.as_str() {
            "PRIVATE KEY" => Self::from_pkcs8_der(&block.der),
            "RSA PRIVATE KEY" => {
                let key = rsa::RsaPrivateKey::from_pkcs1_der(&block.der)
                    .map_err(|e| PkiError::KeyParse(format!("PKCS#1 RSA key: {e}")))?;
                Self::from_rsa(&key)
            }
            "EC PRIVATE KEY" => {
                if let Ok(k) = p256::SecretKey::from_sec1_der(&block.der) {
                    Self::from_p256(&k)
                } else if let Ok(k) = p384::SecretKey::from_sec1_der(&block.der) {
                    Self::from_p384(&k)
                } else {
                    Err(PkiError::KeyParse(
                        "SEC1 EC key is neither a P-256 nor a P-384 key (or is malformed)".into(),
                    ))
                }
            }
            other => Err(PkiError::Unsupported(format!(
                "private key PEM label {other:?} (expected PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY)"
            ))),
        }
    }

    /// Reads an unencrypted PKCS#8 DER key.
    pub fn from_pkcs8_der(der: &[u8]) -> Result<Self, PkiError> {
        let info = p256::pkcs8::PrivateKeyInfo::try_from(der)
            .map_err(|e| PkiError::KeyParse(format!("PKCS#8: {e}")))?;
        let oid = info.algorithm.oid;
        if oid == rsa::pkcs1::ALGORITHM_OID {
            let key = rsa::RsaPrivateKey::from_pkcs8_der(der)
                .map_err(|e| PkiError::KeyParse(format!("PKCS#8 RSA key: {e}")))?;
            Self::from_rsa(&key)
        } else if oid == p256::elliptic_curve::ALGORITHM_OID {
            let curve = info.algorithm.parameters_oid().map_err(|e| {
                PkiError::KeyParse(format!("PKCS#8 EC key has no named curve: {e}"))
            })?;
            let alg = if curve == p256::NistP256::OID {
                Some(KeyAlgorithm::Ec256)
            } else if curve == p384::NistP384::OID {
                Some(KeyAlgorithm::Ec384)
            } else {
                None
            };
            if let Some(key) = alg.and_then(|alg| Self::from_ec_pkcs8_ring(der, alg)) {
                return Ok(key);
            }
            if curve == p256::NistP256::OID {
                let k = p256::SecretKey::from_pkcs8_der(der)
                    .map_err(|e| PkiError::KeyParse(format!("PKCS#8 P-256 key: {e}")))?;
                Self::from_p256(&k)
            } else if curve == p384::NistP384::OID {
                let k = p384::SecretKey::from_pkcs8_der(der)
                    .map_err(|e| PkiError::KeyParse(format!("PKCS#8 P-384 key: {e}")))?;
                Self::from_p384(&k)
            } else {
                Err(PkiError::Unsupported(format!(
                    "EC curve {curve} (only P-256 and P-384)"
                )))
            }
        } else {
            Err(PkiError::Unsupported(format!(
                "private key algorithm {oid} (only RSA and EC)"
            )))
        }
    }

    /// The fast path for an EC key in PKCS#8 with its public key embedded (what this crate
    /// writes, and what OpenSSL writes): ring derives the public key from the private scalar
    /// and refuses the document unless the embedded one is the same, so the pair is checked
    /// as thoroughly as the slow path checks it, and the document is kept as it is (already in
    /// the normalised form). `None` when ring does not take it (no embedded public key, a
    /// PKCS#8 v2 document, ...): the caller goes the slow way.
    pub(crate) fn from_ec_pkcs8_ring(der: &[u8], algorithm: KeyAlgorithm) -> Option<Self> {
        use ring::signature::{self, EcdsaKeyPair, KeyPair as _};
        let rng = ring::rand::SystemRandom::new();
        let spki = match algorithm {
            KeyAlgorithm::Ec256 => {
                let pair =
                    EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_ASN1_SIGNING, der, &rng)
                        .ok()?;
                p256::PublicKey::from_sec1_bytes(pair.public_key().as_ref())
                    .ok()?
                    .to_public_key_der()
                    .ok()?
            }
            KeyAlgorithm::Ec384 => {
                let pair =
                    EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P384_SHA384_ASN1_SIGNING, der, &rng)
                        .ok()?;
                p384::PublicKey::from_sec1_bytes(pair.public_key().as_ref())
                    .ok()?
                    .to_public_key_der()
                    .ok()?
            }
            KeyAlgorithm::Rsa2048 | KeyAlgorithm::Rsa4096 => return None,
        };
        Some(PrivateKey {
            algorithm,
            pkcs8: der.to_vec(),
            spki: spki.as_bytes().to_vec(),
        })
    }

    fn from_rsa(key: &rsa::RsaPrivateKey) -> Result<Self, PkiError> {
        let algorithm = match key.size() * 8 {
            2048 => KeyAlgorithm::Rsa2048,
            4096 => KeyAlgorithm::Rsa4096,
            bits => {
                return Err(PkiError::Unsupported(format!(
                    "RSA key of {bits} bits (only 2048 and 4096)"
                )));
            }
        };
        let pkcs8 = key
            .to_pkcs8_der()
            .map_err(|e| PkiError::KeyParse(format!("re-encoding RSA key: {e}")))?;
        let spki = key
            .to_public_key()
            .to_public_key_der()
            .map_err(|e| PkiError::KeyParse(format!("encoding RSA public key: {e}")))?;
        Ok(PrivateKey {
            algorithm,
            pkcs8: pkcs8.as_bytes().to_vec(),
            spki: spki.as_bytes().to_vec(),
        })
    }

    fn from_p256(key: &p256::SecretKey) -> Result<Self, PkiError> {
        let pkcs8 = key
            .to_pkcs8_der()
            .map_err(|e| PkiError::KeyParse(format!("re-encoding P-256 key: {e}")))?;
        let spki = key
            .public_key()
            .to_public_key_der()
            .map_err(|e| PkiError::KeyParse(format!("encoding P-256 public key: {e}")))?;
        Ok(PrivateKey {
            algorithm: KeyAlgorithm::Ec256,
            pkcs8: pkcs8.as_bytes().to_vec(),
            spki: spki.as_bytes().to_vec(),
        })
    }

    fn from_p384(key: &p384::SecretKey) -> Result<Self, PkiError> {
        let pkcs8 = key
            .to_pkcs8_der()
            .map_err(|e| PkiError::KeyParse(format!("re-encoding P-384 key: {e}")))?;
        let spki = key
            .public_key()
            .to_public_key_der()
            .map_err(|e| PkiError::KeyParse(format!("encoding P-384 public key: {e}")))?;
        Ok(PrivateKey {
            algorithm: KeyAlgorithm::Ec384,
            pkcs8: pkcs8.as_bytes().to_vec(),
            spki: spki.as_bytes().to_vec(),
        })
    }
}
