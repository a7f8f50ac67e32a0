//! The keystores of the IIS and TOMCAT export packages: a PKCS#12 file (`server.pfx`) and a Java
//! KeyStore (`server.jks`), each holding the private key with the certificate and its chain, and
//! the password that opens them (`keystorePass.txt`), fresh for every export.
//!
//! The PFX is written as the agent writes its own (`install::pkcs12`): PBES2 with
//! PBKDF2-HMAC-SHA256 and AES-256-CBC, an HMAC-SHA256 MAC. The JKS is Sun's format, version 2,
//! written here from its published layout (no maintained crate writes it): a `PrivateKeyEntry`
//! whose key is protected by Sun's SHA-1 XOR scheme (`sun.security.provider.KeyProtector`), the
//! store sealed by SHA-1 over the password, "Mighty Aphrodite" and the body. Key and store share
//! the password, as Tomcat expects by default.

use p12_keystore::{Certificate, KeyStore, KeyStoreEntry, PrivateKey, PrivateKeyChain};
use sha1::Digest as _;

/// PBKDF2 rounds for the PFX encryption keys and its MAC key, as in `install::pkcs12`.
pub const PFX_ITERATIONS: u32 = 10_000;
/// Characters of a generated keystore password (letters and digits, so it types anywhere).
pub const PASSWORD_LEN: usize = 20;

/// `magic`, `version` of a Sun JKS file.
const JKS_MAGIC: u32 = 0xFEED_FEED;
const JKS_VERSION: u32 = 2;
/// Entry tag of a private key with its certificate chain.
const JKS_PRIVATE_KEY_ENTRY: u32 = 1;
/// Mixed into the store's integrity digest after the password.
const JKS_WHITENER: &[u8] = b"Mighty Aphrodite";
/// DER of the OID 1.3.6.1.4.1.42.2.17.1.1 (Sun's key protector) and of NULL.
const KEY_PROTECTOR_OID: [u8; 12] = [
    0x06, 0x0a, 0x2b, 0x06, 0x01, 0x04, 0x01, 0x2a, 0x02, 0x11, 0x01, 0x01,
];
const DER_NULL: [u8; 2] = [0x05, 0x00];
const SHA1_LEN: usize = 20;

/// What goes into a keystore. `key_pkcs8` is secret: this type is not `Debug`.
pub struct KeystoreContents<'a> {
    /// The entry's alias (JKS) and friendly name (PFX); see [`alias_for`].
    pub alias: &'a str,
    /// PKCS#8 DER of the private key.
    pub key_pkcs8: &'a [u8],
    /// The certificate first, then its chain up to the root (DER).
    pub certs_der: &'a [Vec<u8>],
}

/// A fresh random password of [`PASSWORD_LEN`] letters and digits.
pub fn new_password() -> String {
    use rand::RngExt as _;
    const CHARS: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789";
    let mut rng = rand::rng();
    (0..PASSWORD_LEN)
        .map(|_| char::from(CHARS[rng.random_range(0..CHARS.len())]))
        .collect()
}

/// The alias for a certificate's common name: lower case (JKS compares aliases in lower case),
/// printable ASCII only (the JKS alias is Java's modified UTF-8), `server` when nothing is left.
pub fn alias_for(common_name: &str) -> String {
    let alias: String = common_name
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    if alias.trim_matches('_').is_empty() {
        "server".to_owned()
    } else {
        alias
    }
}

/// The PKCS#12 file.
pub fn pfx(contents: &KeystoreContents<'_>, password: &str) -> Result<Vec<u8>, String> {
    let fail = |e: p12_keystore::error::Error| format!("building the PFX: {e}");
    let leaf = contents
        .certs_der
        .first()
        .ok_or("building the PFX: no certificate")?;
    let key = PrivateKey::from_der(contents.key_pkcs8).map_err(fail)?;
    let certs = contents
        .certs_der
        .iter()
        .map(|d| Certificate::from_der(d))
        .collect::<Result<Vec<_>, _>>()
        .map_err(fail)?;
    let mut store = KeyStore::new();
    store.add_entry(
        contents.alias,
        KeyStoreEntry::PrivateKeyChain(PrivateKeyChain::new(
            // localKeyID as OpenSSL sets it: SHA-1 of the certificate.
            sha1::Sha1::digest(leaf).to_vec(),
            key,
            certs,
        )),
    );
    store
        .writer(password)
        .encryption_algorithm(p12_keystore::EncryptionAlgorithm::PbeWithHmacSha256AndAes256)
        .encryption_iterations(PFX_ITERATIONS)
        .mac_algorithm(p12_keystore::MacAlgorithm::HmacSha256)
        .mac_iterations(PFX_ITERATIONS)
        .write()
        .map_err(fail)
}

/// The Java KeyStore (JKS) file with one `PrivateKeyEntry` created at `created_ms` (epoch ms).
pub fn jks(
    contents: &KeystoreContents<'_>,
    password: &str,
    created_ms: i64,
) -> Result<Vec<u8>, String> {
    if contents.certs_der.is_empty() {
        return Err("building the JKS: no certificate".into());
    }
    let password = utf16_be(password);
    let mut out = Vec::new();
    out.extend_from_slice(&JKS_MAGIC.to_be_bytes());
    out.extend_from_slice(&JKS_VERSION.to_be_bytes());
    out.extend_from_slice(&1u32.to_be_bytes());
    out.extend_from_slice(&JKS_PRIVATE_KEY_ENTRY.to_be_bytes());
    write_utf(&mut out, contents.alias)?;
    out.extend_from_slice(&created_ms.to_be_bytes());
    write_bytes(&mut out, &protect_key(contents.key_pkcs8, &password))?;
    out.extend_from_slice(&java_int(contents.certs_der.len())?.to_be_bytes());
    for cert in contents.certs_der {
        write_utf(&mut out, "X.509")?;
        write_bytes(&mut out, cert)?;
    }
    let digest = sha1::Sha1::new()
        .chain_update(&password)
        .chain_update(JKS_WHITENER)
        .chain_update(&out)
        .finalize();
    out.extend_from_slice(&digest);
    Ok(out)
}

/// The password as Java hands it to the JKS digests: each UTF-16 unit, big-endian.
fn utf16_be(password: &str) -> Vec<u8> {
    password.encode_utf16().flat_map(u16::to_be_bytes).collect()
}

/// Sun's key protector: `salt || key XOR keystream || SHA-1(password || key)`, the keystream
/// being `SHA-1(password || previous)` blocks starting from the salt; wrapped as an
/// EncryptedPrivateKeyInfo naming the protector's OID.
fn protect_key(key: &[u8], password: &[u8]) -> Vec<u8> {
    let salt: [u8; SHA1_LEN] = rand::random();
    let mut protected = Vec::with_capacity(2 * SHA1_LEN + key.len());
    protected.extend_from_slice(&salt);
    let mut block = salt.to_vec();
    for chunk in key.chunks(SHA1_LEN) {
        block = sha1::Sha1::new()
            .chain_update(password)
            .chain_update(&block)
            .finalize()
            .to_vec();
        protected.extend(chunk.iter().zip(&block).map(|(k, s)| k ^ s));
    }
    let check = sha1::Sha1::new()
        .chain_update(password)
        .chain_update(key)
        .finalize();
    protected.extend_from_slice(&check);
    let algorithm = crate::pki::der_wrap(0x30, &[&KEY_PROTECTOR_OID[..], &DER_NULL].concat());
    let data = crate::pki::der_wrap(0x04, &protected);
    crate::pki::der_wrap(0x30, &[algorithm, data].concat())
}

fn java_int(n: usize) -> Result<u32, String> {
    i32::try_from(n)
        .map(|n| n as u32)
        .map_err(|_| format!("building the JKS: {n} does not fit a Java int"))
}

/// `DataOutputStream.writeInt(len)` then the bytes.
fn write_bytes(out: &mut Vec<u8>, data: &[u8]) -> Result<(), String> {
    out.extend_from_slice(&java_int(data.len())?.to_be_bytes());
    out.extend_from_slice(data);
    Ok(())
}

/// `DataOutputStream.writeUTF` for printable ASCII (where modified UTF-8 is plain ASCII).
fn write_utf(out: &mut Vec<u8>, s: &str) -> Result<(), String> {
    if !s.bytes().all(|b| b.is_ascii_graphic() || b == b' ') {
        return Err(format!("building the JKS: {s:?} is not printable ASCII"));
    }
    let len = u16::try_from(s.len()).map_err(|_| format!("building the JKS: {s:?} is too long"))?;
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(s.as_bytes());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A JKS reader from the format's description, independent of the writer's helpers.
    struct Reader<'a> {
        data: &'a [u8],
        pos: usize,
    }

    impl<'a> Reader<'a> {
        fn take(&mut self, n: usize) -> &'a [u8] {
            let out = &self.data[self.pos..self.pos + n];
            self.pos += n;
            out
        }
        fn u16(&mut self) -> usize {
            usize::from(u16::from_be_bytes(self.take(2).try_into().expect("bytes")))
        }
        fn u32(&mut self) -> u32 {
            u32::from_be_bytes(self.take(4).try_into().expect("bytes"))
        }
        fn i64(&mut self) -> i64 {
            i64::from_be_bytes(self.take(8).try_into().expect("bytes"))
        }
        fn utf(&mut self) -> String {
            let n = self.u16();
            String::from_utf8(self.take(n).to_vec()).expect("ASCII alias")
        }
        fn bytes(&mut self) -> &'a [u8] {
            let n = self.u32() as usize;
            self.take(n)
        }
    }

    fn sha1(parts: &[&[u8]]) -> Vec<u8> {
        let mut h = sha1::Sha1::new();
        for p in parts {
            h.update(p);
        }
        h.finalize().to_vec()
    }

    /// (alias, created, key PKCS#8, certificates) of the one entry, checking every digest.
    fn read(data: &[u8], password: &str) -> (String, i64, Vec<u8>, Vec<Vec<u8>>) {
        let pw: Vec<u8> = password
            .encode_utf16()
            .flat_map(|u| u.to_be_bytes())
            .collect();
        let (body, mac) = data.split_at(data.len() - 20);
        assert_eq!(sha1(&[&pw, b"Mighty Aphrodite", body]), mac, "store digest");
        let mut r = Reader { data: body, pos: 0 };
        assert_eq!((r.u32(), r.u32(), r.u32(), r.u32()), (0xFEED_FEED, 2, 1, 1));
        let alias = r.utf();
        let created = r.i64();
        let epki = r.bytes();
        // SEQUENCE { SEQUENCE { OID, NULL } (16 bytes), OCTET STRING }.
        let (_, inner) = epki.split_at(if epki[1] & 0x80 != 0 {
            2 + usize::from(epki[1] & 0x7f)
        } else {
            2
        });
        assert_eq!(
            &inner[..16],
            &[
                0x30, 0x0e, 0x06, 0x0a, 0x2b, 0x06, 0x01, 0x04, 0x01, 0x2a, 0x02, 0x11, 0x01, 0x01,
                0x05, 0x00
            ]
        );
        let octets = &inner[16..];
        assert_eq!(octets[0], 0x04);
        let protected = &octets[if octets[1] & 0x80 != 0 {
            2 + usize::from(octets[1] & 0x7f)
        } else {
            2
        }..];
        let (salt, rest) = protected.split_at(20);
        let (enc, check) = rest.split_at(rest.len() - 20);
        let mut key = Vec::new();
        let mut block = salt.to_vec();
        for chunk in enc.chunks(20) {
            block = sha1(&[&pw, &block]);
            key.extend(chunk.iter().zip(&block).map(|(a, b)| a ^ b));
        }
        assert_eq!(sha1(&[&pw, &key]), check, "key check digest");
        let n = r.u32();
        let certs = (0..n)
            .map(|_| {
                assert_eq!(r.utf(), "X.509");
                r.bytes().to_vec()
            })
            .collect();
        assert_eq!(r.pos, body.len());
        (alias, created, key, certs)
    }

    #[test]
    fn jks_reads_back_per_the_format() {
        // Long enough keys to take several keystream blocks, with a partial last one.
        for len in [1usize, 20, 21, 138, 1217] {
            let key: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
            let certs = vec![vec![0x30, 0x03, 0x02, 0x01, 0x01], vec![0x30, 0x00]];
            let contents = KeystoreContents {
                alias: "www.example.com",
                key_pkcs8: &key,
                certs_der: &certs,
            };
            let data = jks(&contents, "pässword", 1_700_000_000_123).expect("jks");
            let (alias, created, key_back, certs_back) = read(&data, "pässword");
            assert_eq!(alias, "www.example.com");
            assert_eq!(created, 1_700_000_000_123);
            assert_eq!(key_back, key);
            assert_eq!(certs_back, certs);
        }
    }

    #[test]
    fn jks_with_another_password_fails_its_digest() {
        let certs = vec![vec![0x30, 0x00]];
        let contents = KeystoreContents {
            alias: "a",
            key_pkcs8: b"key",
            certs_der: &certs,
        };
        let data = jks(&contents, "right", 0).expect("jks");
        let wrong = std::panic::catch_unwind(|| read(&data, "wrong"));
        assert!(wrong.is_err());
    }

    #[test]
    fn aliases_and_passwords() {
        assert_eq!(alias_for("WWW.Example.com"), "www.example.com");
        assert_eq!(alias_for("ümlaut site"), "_mlaut_site");
        assert_eq!(alias_for("çà"), "server");
        let (a, b) = (new_password(), new_password());
        assert_eq!(a.chars().count(), PASSWORD_LEN);
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(a, b);
    }
}
