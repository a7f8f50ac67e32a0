//! The boundary between the agent's certificate vocabulary ([`crate::pki`]: one domain type per
//! concept, used by the configuration, verification and metrics) and the CCM client's wire types
//! ([`crate::cloud`]: serde structs spelled as the API reference spells them). Conversions happen
//! here and nowhere else.

use crate::cloud::pca::DistinguishedName as ApiName;
use crate::cloud::pca::cert::{
    ApplyCertificateRequest, ExtendedKeyUsage as ApiEku, SubjectAlternativeName,
};
use crate::config::{ExtendedKeyUsage, PcaSource};
use crate::pki::{DistinguishedName, SubjectAltName};

/// The API's `distinguished_name` object.
pub fn api_name(name: &DistinguishedName) -> ApiName {
    ApiName {
        common_name: name.common_name.clone(),
        country: name.country.clone(),
        state: name.state.clone(),
        locality: name.locality.clone(),
        organization: name.organization.clone(),
        organizational_unit: name.organizational_unit.clone(),
    }
}

/// The API's `subject_alternative_names` entry.
pub fn api_san(san: &SubjectAltName) -> SubjectAlternativeName {
    match san {
        SubjectAltName::Dns(v) => SubjectAlternativeName::dns(v),
        SubjectAltName::Ip(ip) => SubjectAlternativeName::ip(ip.to_string()),
        SubjectAltName::Email(v) => SubjectAlternativeName::email(v),
        SubjectAltName::Uri(v) => SubjectAlternativeName::uri(v),
    }
}

/// The API's `extended_key_usage` object (one boolean per purpose).
pub fn api_eku(purposes: &[ExtendedKeyUsage]) -> ApiEku {
    let mut eku = ApiEku::default();
    for e in purposes {
        match e {
            ExtendedKeyUsage::ServerAuth => eku.server_auth = true,
            ExtendedKeyUsage::ClientAuth => eku.client_auth = true,
            ExtendedKeyUsage::CodeSigning => eku.code_signing = true,
            ExtendedKeyUsage::EmailProtection => eku.email_protection = true,
            ExtendedKeyUsage::TimeStamping => eku.time_stamping = true,
        }
    }
    eku
}

/// `POST /v1/private-certificates` (apply mode) for a configured certificate.
pub fn apply_request(src: &PcaSource) -> ApplyCertificateRequest {
    let mut body = ApplyCertificateRequest::new(
        &src.ca_id,
        src.common_name(),
        src.key_algorithm.as_str(),
        src.signature_algorithm.as_str(),
        src.validity.to_api(),
    );
    body.distinguished_name = api_name(&src.subject);
    body.subject_alternative_names = src.sans.iter().map(api_san).collect();
    if !src.key_usages.is_empty() {
        body.key_usages = Some(
            src.key_usages
                .iter()
                .map(|k| k.as_str().to_owned())
                .collect(),
        );
    }
    if !src.extended_key_usage.is_empty() {
        body.extended_key_usage = Some(api_eku(&src.extended_key_usage));
    }
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_configured_certificate_becomes_the_reference_apply_body() {
        let text = r#"
[cloud]
endpoint = "http://127.0.0.1:1"
[cloud.auth]
access_key = "AK"
secret_key_env = "UNUSED"
[[certificates]]
name = "web"
[certificates.pca]
ca_id = "3fa85f64-5717-4562-b3fc-2c963f66afa6"
mode = "apply"
subject = { organization = "Example", country = "CN" }
sans = ["dns:web.example", "ip:10.0.0.1", "email:ops@example.com", "uri:spiffe://x/web"]
key_algorithm = "RSA2048"
signature_algorithm = "SHA384"
key_usages = ["digitalSignature", "keyEncipherment"]
extended_key_usage = ["server_auth", "client_auth"]
validity = { type = "DAY", value = 30 }
[certificates.output]
dir = "/tmp/ccm-wire-test"
"#;
        let config = crate::config::Config::from_str(text, "wire.toml").expect("config");
        let cert = config.certificate("web").expect("web");
        let crate::config::CertificateSource::Pca(src) = &cert.source else {
            panic!("a PCA certificate");
        };
        let body = serde_json::to_value(apply_request(src)).expect("json");
        assert_eq!(
            body,
            serde_json::json!({
                "issuer_id": "3fa85f64-5717-4562-b3fc-2c963f66afa6",
                "key_algorithm": "RSA2048",
                "signature_algorithm": "SHA384",
                "validity": {"type": "DAY", "value": 30},
                "distinguished_name": {
                    "common_name": "web.example",
                    "country": "CN",
                    "organization": "Example"
                },
                "key_usages": ["digitalSignature", "keyEncipherment"],
                "subject_alternative_names": [
                    {"type": "DNS", "value": "web.example"},
                    {"type": "IP", "value": "10.0.0.1"},
                    {"type": "EMAIL", "value": "ops@example.com"},
                    {"type": "URI", "value": "spiffe://x/web"}
                ],
                "extended_key_usage": {"server_auth": true, "client_auth": true}
            })
        );
    }
}
