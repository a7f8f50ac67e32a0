//! Scripted faults: per operation (or `*`), optionally per target (a region for batch-push, a
//! resource id for deploy), with a rate and a count. A rule can answer an error, add latency,
//! never answer, drop the connection, truncate the body, replace the body, or expire tokens.

use serde::{Deserialize, Serialize};

/// One fault rule. Unset fields do nothing; a rule with only `latency_ms` just slows requests.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultRule {
    /// `service.operation` (e.g. `pca.create_certificate`), a service prefix (`scm.*`), or `*`.
    #[serde(default = "any")]
    pub operation: String,
    /// Only for this region (batch-push, push) or resource id (deploy); whole requests otherwise.
    #[serde(default)]
    pub target: Option<String>,
    /// Chance in 0..=1 that a matching request is hit (default 1).
    #[serde(default = "one")]
    pub rate: f64,
    /// How many more times the rule fires; unlimited when absent.
    #[serde(default)]
    pub times: Option<u32>,
    /// Answer this HTTP status with `error_code`/`error_msg` instead of handling the request.
    #[serde(default)]
    pub status: Option<u16>,
    #[serde(default)]
    pub error_code: Option<String>,
    #[serde(default)]
    pub error_msg: Option<String>,
    /// Added latency before anything else happens.
    #[serde(default)]
    pub latency_ms: u64,
    /// Never answer (the client's timeout fires).
    #[serde(default)]
    pub timeout: bool,
    /// Close the connection in the middle of the response.
    #[serde(default)]
    pub drop_connection: bool,
    /// Handle the request, then send only the first half of the response body.
    #[serde(default)]
    pub truncate_body: bool,
    /// Handle the request, then answer 200 with this body instead (malformed JSON, say).
    #[serde(default)]
    pub replace_body: Option<String>,
    /// Expire every issued IAM token before authenticating this request.
    #[serde(default)]
    pub expire_tokens: bool,
}

fn any() -> String {
    "*".to_owned()
}

fn one() -> f64 {
    1.0
}

impl FaultRule {
    /// A rule answering `status` with `code` for `operation`.
    pub fn error(operation: &str, status: u16, code: &str) -> Self {
        Self {
            operation: operation.to_owned(),
            status: Some(status),
            error_code: Some(code.to_owned()),
            ..Self::new(operation)
        }
    }

    /// An empty rule for `operation`, to fill in.
    pub fn new(operation: &str) -> Self {
        Self {
            operation: operation.to_owned(),
            rate: 1.0,
            ..Self::default()
        }
    }

    pub fn matches(&self, operation: &str, target: Option<&str>) -> bool {
        let op_ok = self.operation == "*"
            || self.operation == operation
            || self
                .operation
                .strip_suffix(".*")
                .is_some_and(|svc| operation.split('.').next() == Some(svc));
        let target_ok = match (&self.target, target) {
            (None, None) => true,
            (Some(want), Some(got)) => want == got,
            _ => false,
        };
        op_ok && target_ok && self.times != Some(0)
    }
}

/// Find the first matching rule, roll its rate, count it down, and return a copy if it fires.
pub(crate) fn take(
    rules: &mut [FaultRule],
    operation: &str,
    target: Option<&str>,
) -> Option<FaultRule> {
    use rand::RngExt;
    let rule = rules.iter_mut().find(|r| r.matches(operation, target))?;
    if rule.rate < 1.0 && !rand::rng().random_bool(rule.rate.clamp(0.0, 1.0)) {
        return None;
    }
    if let Some(n) = rule.times.as_mut() {
        *n -= 1;
    }
    Some(rule.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matching_and_counting() {
        let mut rules = vec![
            FaultRule {
                times: Some(1),
                ..FaultRule::error("scm.deploy_certificate", 500, "SCM.0500")
            },
            FaultRule {
                target: Some("r1".into()),
                ..FaultRule::error("scm.batch_push_certificate", 400, "SCM.0010")
            },
        ];
        assert!(take(&mut rules, "scm.list_certificates", None).is_none());
        assert!(take(&mut rules, "scm.deploy_certificate", None).is_some());
        assert!(
            take(&mut rules, "scm.deploy_certificate", None).is_none(),
            "times exhausted"
        );
        assert!(
            take(&mut rules, "scm.batch_push_certificate", None).is_none(),
            "target rule only for targets"
        );
        assert!(take(&mut rules, "scm.batch_push_certificate", Some("r2")).is_none());
        assert!(take(&mut rules, "scm.batch_push_certificate", Some("r1")).is_some());
        let wild = FaultRule::new("pca.*");
        assert!(wild.matches("pca.create_certificate", None));
        assert!(!wild.matches("scm.import_certificate", None));
    }

    #[test]
    fn rate_zero_never_fires() {
        let mut rules = vec![FaultRule {
            rate: 0.0,
            ..FaultRule::error("*", 500, "X")
        }];
        for _ in 0..100 {
            assert!(take(&mut rules, "scm.list_certificates", None).is_none());
        }
    }

    #[test]
    fn unknown_fields_rejected() {
        let r: Result<FaultRule, _> = serde_json::from_str(r#"{"operation":"*","stauts":500}"#);
        assert!(r.is_err());
    }
}
