//! The served-certificate check: a TLS handshake with an endpoint, reading the leaf certificate
//! the server presents, compared by SHA-256 fingerprint with the one installed.
//!
//! # Why accepting any certificate is safe here
//! The probe's client uses a [`ServerCertVerifier`] that does not check the chain, the names or
//! the dates: the point is to *read* whatever the server presents, including a wrong, expired or
//! self-signed certificate, so that the agent can say which one it is. Nothing is trusted
//! because of this handshake: no request, credential or application byte is ever sent on the
//! connection (it is closed right after the handshake), and the only thing taken from it is the
//! leaf's fingerprint, which is compared with the fingerprint of the file the agent itself
//! installed. An attacker in the middle could make the check *fail* (a mismatch, then a
//! rollback), which they could do anyway by dropping the connection; they cannot make it pass
//! without presenting the very certificate that was installed, and the handshake signature is
//! still verified against that certificate's key, so they would also need its private key. This
//! verifier is private to this module and used for nothing else.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha2::Digest;
use tokio::net::TcpStream;

/// Each connection attempt (TCP connect and handshake) gets at most this long.
pub const PROBE_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause between attempts while waiting for a server to serve the expected certificate.
pub const PROBE_INTERVAL: Duration = Duration::from_millis(250);
/// Even the last attempt before the deadline gets this long, so that a slow handshake at the end
/// reports what was served rather than a time-out.
pub const PROBE_ATTEMPT_MIN: Duration = Duration::from_secs(1);
/// How many handshakes in a row, [`PROBE_INTERVAL`] apart, must present the expected certificate
/// before it counts as served (so it must hold for at least half a second). Right after a reload
/// the old and the new workers both accept connections for a while: nginx's master starts the
/// new workers, sleeps 100 ms, and only then tells the old ones to close their listeners. One
/// matching handshake can be followed by one an old worker answers with the old certificate.
pub const PROBE_CONFIRMATIONS: u32 = 3;

/// Where to look: a TLS endpoint and the SNI name to ask for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifyEndpoint {
    /// Host name or IP address to connect to.
    pub address: String,
    pub port: u16,
    /// The server name sent in the handshake; `None`: the address if it is a host name, no SNI
    /// if it is an IP address.
    pub sni: Option<String>,
}

impl fmt::Display for VerifyEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.address.contains(':') {
            write!(f, "[{}]:{}", self.address, self.port)?;
        } else {
            write!(f, "{}:{}", self.address, self.port)?;
        }
        if let Some(sni) = &self.sni {
            write!(f, " (SNI {sni})")?;
        }
        Ok(())
    }
}

/// Why a probe did not produce a fingerprint.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProbeError {
    #[error("{endpoint}: invalid server name {name:?}")]
    ServerName { endpoint: String, name: String },
    #[error("{endpoint}: connect: {error}")]
    Connect { endpoint: String, error: String },
    #[error("{endpoint}: TLS handshake: {error}")]
    Handshake { endpoint: String, error: String },
    #[error("{endpoint}: no answer within {timeout:?}")]
    Timeout { endpoint: String, timeout: Duration },
    #[error("{endpoint}: the server presented no certificate")]
    NoCertificate { endpoint: String },
}

/// Upper-case hex SHA-256 of DER bytes (the convention of [`crate::pki::CertInfo`]).
pub fn fingerprint_der(der: &[u8]) -> String {
    hex::encode_upper(sha2::Sha256::digest(der))
}

/// The fingerprint of the first certificate in a PEM text (the leaf of a certificate or full
/// chain file).
pub fn fingerprint_pem(pem: &str) -> Result<String, crate::pki::PkiError> {
    crate::pki::parse_cert(pem).map(|c| c.sha256_fingerprint_hex)
}

/// Connects to `endpoint`, completes a TLS handshake and returns the SHA-256 fingerprint of the
/// leaf certificate the server presented. See the module doc for why any certificate is accepted.
pub async fn served_fingerprint(
    endpoint: &VerifyEndpoint,
    timeout: Duration,
) -> Result<String, ProbeError> {
    let label = endpoint.to_string();
    let name_text = endpoint.sni.as_deref().unwrap_or(&endpoint.address);
    let server_name =
        ServerName::try_from(name_text.to_owned()).map_err(|_| ProbeError::ServerName {
            endpoint: label.clone(),
            name: name_text.to_owned(),
        })?;
    let attempt = async {
        let tcp = TcpStream::connect((endpoint.address.as_str(), endpoint.port))
            .await
            .map_err(|e| ProbeError::Connect {
                endpoint: label.clone(),
                error: e.to_string(),
            })?;
        let config = probe_config().map_err(|e| ProbeError::Handshake {
            endpoint: label.clone(),
            error: e.to_string(),
        })?;
        let connector = tokio_rustls::TlsConnector::from(config);
        let tls = connector
            .connect(server_name, tcp)
            .await
            .map_err(|e| ProbeError::Handshake {
                endpoint: label.clone(),
                error: e.to_string(),
            })?;
        let (_, conn) = tls.get_ref();
        let leaf = conn
            .peer_certificates()
            .and_then(|c| c.first())
            .ok_or_else(|| ProbeError::NoCertificate {
                endpoint: label.clone(),
            })?;
        Ok(fingerprint_der(leaf.as_ref()))
        // The stream is dropped here: nothing is ever written after the handshake.
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .unwrap_or_else(|_| {
            Err(ProbeError::Timeout {
                endpoint: label.clone(),
                timeout,
            })
        })
}

/// What an endpoint served when the wait ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observation {
    pub endpoint: VerifyEndpoint,
    /// The fingerprint seen last, or why none could be read.
    pub last: Result<String, ProbeError>,
    /// Attempts made.
    pub attempts: u32,
}

impl Observation {
    pub fn matches(&self, expected: &str) -> bool {
        matches!(&self.last, Ok(fp) if fp.eq_ignore_ascii_case(expected))
    }
}

impl fmt::Display for Observation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.last {
            Ok(fp) => write!(
                f,
                "{} serves {fp} (after {} attempt(s))",
                self.endpoint, self.attempts
            ),
            Err(e) => write!(f, "{e} (after {} attempt(s))", self.attempts),
        }
    }
}

/// Probes every endpoint until each serves `expected` on [`PROBE_CONFIRMATIONS`] handshakes in
/// a row, or `within` has passed (old workers drain, a systemd reload is asynchronous). Returns
/// one observation per endpoint, holding the last handshake's result; the caller checks
/// [`Observation::matches`]. When time runs out during the confirmations, the last handshake
/// decides.
pub async fn wait_for_fingerprint(
    endpoints: &[VerifyEndpoint],
    expected: &str,
    within: Duration,
) -> Vec<Observation> {
    let deadline = tokio::time::Instant::now() + within;
    let mut out = Vec::with_capacity(endpoints.len());
    for endpoint in endpoints {
        let mut attempts = 0;
        let mut in_a_row = 0;
        loop {
            attempts += 1;
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let last = served_fingerprint(
                endpoint,
                left.clamp(PROBE_ATTEMPT_MIN, PROBE_ATTEMPT_TIMEOUT),
            )
            .await;
            if matches!(&last, Ok(fp) if fp.eq_ignore_ascii_case(expected)) {
                in_a_row += 1;
            } else {
                in_a_row = 0;
            }
            if in_a_row >= PROBE_CONFIRMATIONS
                || tokio::time::Instant::now() + PROBE_INTERVAL > deadline
            {
                out.push(Observation {
                    endpoint: endpoint.clone(),
                    last,
                    attempts,
                });
                break;
            }
            tokio::time::sleep(PROBE_INTERVAL).await;
        }
    }
    out
}

/// The probe's client configuration. It uses its own ring provider, not the process-wide
/// default, so it works whether or not `main` installed one.
fn probe_config() -> Result<Arc<rustls::ClientConfig>, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(AnyCertificate {
        algorithms: provider.signature_verification_algorithms,
    });
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Accepts whatever certificate the server presents (see the module doc), but still checks the
/// handshake signature with it, so the peer must hold the certificate's private key.
#[derive(Debug)]
struct AnyCertificate {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
