//! Every request and response example of the CCM API reference, run through the client's types.
//!
//! The examples are in `fixtures/reference_examples.json`, extracted from the reference
//! (`shared/seeds`, the newer single pages overriding the big reference for their operation)
//! by `scripts/reference_examples.py`; this test reads only the fixture.
//!
//! - A request example must decode into the client's request type, and the client's encoding
//!   of the decoded value must carry the same fields (the same set of field paths, nested
//!   objects and array elements included), so the client sends what the reference shows.
//! - A response example must decode into the client's response type, and every field it
//!   shows must be one the type keeps (it is in the type's own encoding), so no documented
//!   field is silently dropped.
//! - An error answer (4xx/5xx) must decode into [`ErrorBody`] with a code and a message.
//!
//! An example no type is mapped to fails the test, unless it is listed in [`UNMAPPED`] with the
//! reason; a listed entry that no longer matches an example fails too.

use std::collections::BTreeSet;

use ccm_client::ErrorBody;
use ccm_client::pca::{ca, cert};
use ccm_client::scm;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

const FIXTURE: &str = include_str!("fixtures/reference_examples.json");

/// Examples that map to no client type: (operation, kind, status, reason). None so far: every
/// example of the reference maps to a type.
const UNMAPPED: &[(&str, &str, Option<u16>, &str)] = &[];

/// Field paths an example spells differently from the client's encoding, with the reason:
/// (operation, path in the example, path in the client's encoding).
const RENAMED: &[(&str, &str, &str, &str)] = &[(
    "POST /v1/private-certificate-authorities",
    "distinguished_name.organization_unit",
    "distinguished_name.organizational_unit",
    "the create-CA example spells it organization_unit; every table and every other example, \
     and the SDK, write organizational_unit, which the client sends (and reads either)",
)];

#[derive(serde::Deserialize)]
struct Example {
    operation: String,
    kind: String,
    #[serde(default)]
    status: Option<u16>,
    source: String,
    json: Value,
}

/// Decode `v` as `T` and return `T`'s own encoding.
fn through<T: DeserializeOwned + Serialize>(v: &Value) -> Result<Value, String> {
    let typed: T = serde_json::from_value(v.clone())
        .map_err(|e| format!("does not decode as {}: {e}", std::any::type_name::<T>()))?;
    serde_json::to_value(&typed).map_err(|e| format!("does not encode again: {e}"))
}

type Mapper = fn(&Value) -> Result<Value, String>;

/// The client type of a request example.
fn request_type(operation: &str) -> Option<Mapper> {
    Some(match operation {
        "POST /v3/scm/certificates/import" => through::<scm::ImportCertificateRequest>,
        "POST /v3/scm/certificates/{certificate_id}/push" => through::<scm::PushCertificateRequest>,
        "POST /v3/scm/certificates/{certificate_id}/batch-push" => {
            through::<scm::BatchPushCertificateRequest>
        }
        "POST /v3/scm/certificates/{certificate_id}/deploy" => {
            through::<scm::DeployCertificateRequest>
        }
        "POST /v1/private-certificate-authorities" => through::<ca::CreateCaRequest>,
        "POST /v1/private-certificate-authorities/{ca_id}/import" => {
            through::<ca::ImportCaCertificateRequest>
        }
        "POST /v1/private-certificate-authorities/{ca_id}/revoke" => through::<ca::RevokeCaRequest>,
        "POST /v1/private-certificates" => through::<cert::ApplyCertificateRequest>,
        "POST /v1/private-certificates/csr" => through::<cert::CsrCertificateRequest>,
        "POST /v1/private-certificates/csr/parse" => through::<cert::ParseCsrRequest>,
        "POST /v1/private-certificates/{certificate_id}/export" => {
            through::<cert::ExportCertificateRequest>
        }
        "POST /v1/private-certificates/{certificate_id}/revoke" => {
            through::<cert::RevokeCertificateRequest>
        }
        _ => return None,
    })
}

/// The client type of a success answer's body.
fn response_type(operation: &str) -> Option<Mapper> {
    Some(match operation {
        "GET /v3/scm/certificates" => through::<scm::ListCertificatesResponse>,
        "POST /v3/scm/certificates/import" => through::<scm::ImportCertificateResponse>,
        "GET /v3/scm/certificates/{certificate_id}" => through::<scm::CertificateDetail>,
        "POST /v3/scm/certificates/{certificate_id}/export" => {
            through::<scm::ExportCertificateResponse>
        }
        "POST /v3/scm/certificates/{certificate_id}/batch-push" => {
            through::<scm::BatchPushCertificateResponse>
        }
        "POST /v3/scm/certificates/{certificate_id}/deploy" => {
            through::<scm::DeployCertificateResponse>
        }
        "GET /v1/private-certificate-authorities" => through::<ca::CaList>,
        "POST /v1/private-certificate-authorities" => through::<ca::CreateCaResponse>,
        "GET /v1/private-certificate-authorities/quotas" => through::<ca::CaQuotaResponse>,
        "GET /v1/private-certificate-authorities/{ca_id}" => through::<ca::CertificateAuthority>,
        "GET /v1/private-certificate-authorities/{ca_id}/csr" => through::<ca::CaCsrResponse>,
        "POST /v1/private-certificate-authorities/{ca_id}/export" => through::<ca::CaCertificate>,
        "GET /v1/private-certificate-authorities/obs/agencies" => through::<ca::ObsAgencyResponse>,
        "POST /v1/private-certificate-authorities/obs/agencies" => {
            through::<ca::CreateObsAgencyResponse>
        }
        "GET /v1/private-certificate-authorities/obs/buckets" => through::<ca::ObsBucketList>,
        "GET /v1/private-certificates" => through::<cert::CertificateList>,
        "POST /v1/private-certificates" | "POST /v1/private-certificates/csr" => {
            through::<cert::CertificateIdResponse>
        }
        "POST /v1/private-certificates/csr/parse" => through::<cert::ParsedCsr>,
        "GET /v1/private-certificates/quotas" => through::<cert::CertificateQuotaResponse>,
        "GET /v1/private-certificates/{certificate_id}" => through::<cert::PrivateCertificate>,
        "POST /v1/private-certificates/{certificate_id}/export" => {
            through::<cert::ExportCertificateResponse>
        }
        _ => return None,
    })
}

/// Every field path in `v`: `a`, `a.b`, `list[]`, `list[].c`.
fn paths(v: &Value) -> BTreeSet<String> {
    fn walk(v: &Value, prefix: &str, out: &mut BTreeSet<String>) {
        match v {
            Value::Object(map) => {
                for (k, child) in map {
                    let p = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    out.insert(p.clone());
                    walk(child, &p, out);
                }
            }
            Value::Array(items) => {
                let p = format!("{prefix}[]");
                for item in items {
                    walk(item, &p, out);
                }
            }
            _ => {}
        }
    }
    let mut out = BTreeSet::new();
    walk(v, "", &mut out);
    out
}

/// The example's field paths with the documented renames applied.
fn example_paths(operation: &str, v: &Value) -> BTreeSet<String> {
    paths(v)
        .into_iter()
        .map(|p| {
            RENAMED
                .iter()
                .find(|(op, from, _, _)| *op == operation && *from == p)
                .map_or(p, |(_, _, to, _)| (*to).to_owned())
        })
        .collect()
}

fn check(ex: &Example) -> Result<(), String> {
    match (ex.kind.as_str(), ex.status) {
        ("request", _) => {
            let map = request_type(&ex.operation).ok_or("no request type mapped")?;
            let encoded = map(&ex.json)?;
            let (want, got) = (example_paths(&ex.operation, &ex.json), paths(&encoded));
            if want != got {
                return Err(format!(
                    "the client's encoding has other fields: only in the example {:?}, only in \
                     the encoding {:?}",
                    want.difference(&got).collect::<Vec<_>>(),
                    got.difference(&want).collect::<Vec<_>>()
                ));
            }
            Ok(())
        }
        ("response", Some(status)) if status >= 400 => {
            let body: ErrorBody = serde_json::from_value(ex.json.clone())
                .map_err(|e| format!("does not decode as ErrorBody: {e}"))?;
            if body.code().is_none() || body.message().is_none() {
                return Err(format!("error body without code or message: {body:?}"));
            }
            let dropped: Vec<_> = paths(&ex.json)
                .difference(&paths(
                    &serde_json::to_value(&body).map_err(|e| e.to_string())?,
                ))
                .cloned()
                .collect();
            if !dropped.is_empty() {
                return Err(format!("error fields ErrorBody drops: {dropped:?}"));
            }
            Ok(())
        }
        ("response", Some(_)) => {
            let map = response_type(&ex.operation).ok_or("no response type mapped")?;
            let encoded = map(&ex.json)?;
            let dropped: Vec<_> = paths(&ex.json)
                .difference(&paths(&encoded))
                .cloned()
                .collect();
            if !dropped.is_empty() {
                return Err(format!(
                    "fields the client's type does not keep: {dropped:?}"
                ));
            }
            Ok(())
        }
        (kind, status) => Err(format!("unknown example kind {kind:?} / status {status:?}")),
    }
}

fn examples() -> Vec<Example> {
    serde_json::from_str(FIXTURE).expect("the fixture is a JSON list of examples")
}

#[test]
fn every_reference_example_goes_through_the_clients_types() {
    let examples = examples();
    let mut failures = Vec::new();
    let mut checked = 0;
    for ex in &examples {
        let unmapped = UNMAPPED.iter().find(|(op, kind, status, _)| {
            *op == ex.operation && *kind == ex.kind && *status == ex.status
        });
        if unmapped.is_some() {
            continue;
        }
        match check(ex) {
            Ok(()) => checked += 1,
            Err(e) => failures.push(format!(
                "{} {} {:?} ({}): {e}",
                ex.operation, ex.kind, ex.status, ex.source
            )),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} examples fail:\n{}",
        failures.len(),
        examples.len(),
        failures.join("\n")
    );
    assert_eq!(checked + UNMAPPED.len(), examples.len());
}

#[test]
fn the_fixture_covers_the_reference() {
    let examples = examples();
    let operations: BTreeSet<&str> = examples.iter().map(|e| e.operation.as_str()).collect();
    // The reference documents 32 operations with examples (activate has no page of its own).
    assert_eq!(operations.len(), 32, "{operations:#?}");
    let requests = examples.iter().filter(|e| e.kind == "request").count();
    let successes = examples
        .iter()
        .filter(|e| e.kind == "response" && e.status.is_some_and(|s| s < 400))
        .count();
    assert_eq!(requests, 12, "request examples");
    assert_eq!(successes, 22, "success answers with a body");
    // Every mapping is used: a type mapped to an operation with no example is a stale entry.
    for ex in &examples {
        assert!(
            ex.source.contains(".txt:"),
            "{}: source {:?}",
            ex.operation,
            ex.source
        );
    }
    for (op, kind, status, reason) in UNMAPPED {
        assert!(!reason.is_empty());
        assert!(
            examples
                .iter()
                .any(|e| e.operation == *op && e.kind == *kind && e.status == *status),
            "UNMAPPED lists {op} {kind} {status:?}, which no example has"
        );
    }
    for (op, from, _, reason) in RENAMED {
        assert!(!reason.is_empty());
        assert!(
            examples
                .iter()
                .any(|e| e.operation == *op && paths(&e.json).contains(*from)),
            "RENAMED lists {op} {from}, which no example has"
        );
    }
    // Newer single pages override the big reference for their operation.
    for (op, page) in [
        ("POST /v1/private-certificates", "001_"),
        ("GET /v1/private-certificates", "002_"),
        ("POST /v3/scm/certificates/import", "003_"),
        ("GET /v1/private-certificate-authorities/{ca_id}", "004_"),
    ] {
        assert!(
            examples
                .iter()
                .filter(|e| e.operation == op)
                .all(|e| e.source.starts_with(page)),
            "{op}: every example should come from the newer page {page}*"
        );
    }
}
