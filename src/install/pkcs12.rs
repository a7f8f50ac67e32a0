//! The optional PKCS#12 (PFX) output: the leaf certificate, its chain and the private key in one
//! password-protected file, for consumers that want a keystore (Java, .NET, some appliances).
//!
//! Written with modern algorithms only: certificates and key encrypted with PBES2
//! (PBKDF2-HMAC-SHA256, AES-256-CBC), integrity by an HMAC-SHA256 MAC, [`ITERATIONS`] rounds
//! each. OpenSSL 3, Java 11+ and current Windows read these; OpenSSL 1.0 and old Windows do not.
//! No password configured means the empty password (the file is then only integrity-protected
//! in name: anyone who can read it can open it, so rely on its mode, the key's).
//!
//! Encryption draws a fresh salt and IV every time, so two encodings of the same content never
//! have the same bytes. "Identical content" (which the install transaction detects by comparing
//! bytes) is therefore decided here: when the file in place opens with the password and holds
//! exactly the same key, certificates, alias and key id, its bytes are reused as the new content
//! and the install stays a no-op.

use std::path::Path;

use p12_keystore::{
    Certificate, KeyStore, KeyStoreEntry, Pkcs12Archive, PrivateKey, PrivateKeyChain,
};
use sha1::Digest;

use super::{InstallError, Pkcs12Output, VerifiedBundle};
use crate::pki;

/// PBKDF2 rounds for the encryption keys and PKCS#12-KDF rounds for the MAC key (the Java
/// default; OpenSSL 3 uses 2048).
pub const ITERATIONS: u32 = 10_000;

/// What goes into the file, in the form it is compared in.
struct Contents {
    alias: String,
    /// SHA-1 of the leaf certificate's DER, as OpenSSL sets `localKeyID`.
    local_key_id: Vec<u8>,
    /// PKCS#8 DER. Secret.
    key_pkcs8: Vec<u8>,
    /// Leaf first, then the chain in file order.
    certs_der: Vec<Vec<u8>>,
}

impl Contents {
    fn of(bundle: &VerifiedBundle) -> Result<Self, InstallError> {
        let fail = |what: &str, detail: String| unsupported(bundle, format!("{what}: {detail}"));
        let key = pki::PrivateKey::from_pem(bundle.key_pem())
            .map_err(|e| fail("the private key", e.to_string()))?;
        let chain = pki::parse_pem_chain(bundle.chain_pem())
            .map_err(|e| fail("the chain", e.to_string()))?;
        let leaf = bundle.leaf().der.clone();
        let mut certs_der = Vec::with_capacity(1 + chain.len());
        certs_der.push(leaf);
        certs_der.extend(chain.into_iter().map(|c| c.der));
        Ok(Contents {
            alias: alias_for(bundle.name()),
            local_key_id: sha1::Sha1::digest(&certs_der[0]).to_vec(),
            key_pkcs8: key.to_pkcs8_der().to_vec(),
            certs_der,
        })
    }

    fn encode(&self, bundle: &VerifiedBundle, password: &str) -> Result<Vec<u8>, InstallError> {
        let fail = |e: p12_keystore::error::Error| unsupported(bundle, e.to_string());
        let key = PrivateKey::from_der(&self.key_pkcs8).map_err(fail)?;
        let certs = self
            .certs_der
            .iter()
            .map(|d| Certificate::from_der(d))
            .collect::<Result<Vec<_>, _>>()
            .map_err(fail)?;
        let mut store = KeyStore::new();
        store.add_entry(
            &self.alias,
            KeyStoreEntry::PrivateKeyChain(PrivateKeyChain::new(
                self.local_key_id.clone(),
                key,
                certs,
            )),
        );
        store
            .writer(password)
            .encryption_algorithm(p12_keystore::EncryptionAlgorithm::PbeWithHmacSha256AndAes256)
            .encryption_iterations(ITERATIONS)
            .mac_algorithm(p12_keystore::MacAlgorithm::HmacSha256)
            .mac_iterations(ITERATIONS)
            .write()
            .map_err(fail)
    }

    /// Whether `data` opens with `password` and holds exactly this content.
    fn is_in(&self, data: &[u8], password: &str) -> bool {
        let Ok(archive) = Pkcs12Archive::from_pkcs12(data, password) else {
            return false;
        };
        let [key] = archive.keys.as_slice() else {
            return false;
        };
        key.key.as_der() == self.key_pkcs8.as_slice()
            && key.friendly_name.as_deref() == Some(self.alias.as_str())
            && key.local_key_id.as_ref().map(|k| k.as_ref()) == Some(self.local_key_id.as_slice())
            && archive.secrets.is_empty()
            && archive
                .certs
                .iter()
                .map(|c| c.cert.as_der())
                .eq(self.certs_der.iter().map(Vec::as_slice))
            && archive.certs.iter().enumerate().all(|(i, c)| {
                !c.trusted
                    && (c.local_key_id.as_deref() == Some(self.local_key_id.as_slice())) == (i == 0)
            })
    }
}

/// The bytes of the PKCS#12 file for `bundle`: the file in place when it already holds the same
/// content under the same password (so a re-install changes nothing), a new encoding otherwise.
pub(super) fn pkcs12_bytes(
    bundle: &VerifiedBundle,
    p12: &Pkcs12Output,
) -> Result<Vec<u8>, InstallError> {
    let contents = Contents::of(bundle)?;
    let password = p12.password.expose();
    if let Some(existing) = read_existing(&p12.path)
        && contents.is_in(&existing, password)
    {
        return Ok(existing);
    }
    contents.encode(bundle, password)
}

/// Opens a PKCS#12 file and returns its certificates (DER, file order) and whether it holds a
/// private key, or why it cannot be opened (wrong password, not PKCS#12, unsupported cipher).
pub fn inspect(
    data: &[u8],
    password: &crate::cloud::Secret,
) -> Result<(Vec<Vec<u8>>, bool), String> {
    let archive = Pkcs12Archive::from_pkcs12(data, password.expose()).map_err(|e| e.to_string())?;
    Ok((
        archive
            .certs
            .iter()
            .map(|c| c.cert.as_der().to_vec())
            .collect(),
        !archive.keys.is_empty(),
    ))
}

fn read_existing(path: &Path) -> Option<Vec<u8>> {
    // Anything unreadable is simply rewritten; the transaction reports real I/O errors.
    std::fs::read(path).ok().filter(|d| !d.is_empty())
}

/// The key's friendly name: the certificate name, restricted to what a BMPString can hold.
fn alias_for(name: &str) -> String {
    let alias: String = name
        .chars()
        .filter(|c| u32::from(*c) <= 0xFFFF && !c.is_control())
        .collect();
    if alias.is_empty() {
        "certificate".to_string()
    } else {
        alias
    }
}

fn unsupported(bundle: &VerifiedBundle, detail: String) -> InstallError {
    InstallError::Unsupported {
        name: bundle.name().to_string(),
        detail: format!("cannot build the PKCS#12 file: {detail}"),
    }
}

#[cfg(test)]
mod tests {
    use super::alias_for;

    #[test]
    fn alias_keeps_bmp_characters_only() {
        assert_eq!(alias_for("www.example.com"), "www.example.com");
        assert_eq!(alias_for("ümlaut"), "ümlaut");
        assert_eq!(alias_for("a\u{1F600}b\n"), "ab");
        assert_eq!(alias_for(""), "certificate");
    }
}
