//! The `[certificates.deploy]` table: the file as written ([`RawDeploy`], serde, unknown keys
//! rejected) and its validation into a [`DeploySpec`] ([`check`]), every problem named by its
//! key like the rest of [`crate::config`].

use std::time::Duration;

use serde::Deserialize;

use crate::cloud::scm::{self, TargetService};
use crate::values::{Problem, parse_duration};

/// Attempts per region/resource within one run, the first included.
pub const DEFAULT_ATTEMPTS: u32 = 3;
pub const MAX_ATTEMPTS: u32 = 10;
/// Backoff between attempts: full jitter over `initial × 2^(n-1)`, at most `max`.
pub const DEFAULT_RETRY_INITIAL: Duration = Duration::from_secs(5);
pub const DEFAULT_RETRY_MAX: Duration = Duration::from_secs(60);
/// Prefix of the default SCM name of a certificate the agent imports.
pub const DEFAULT_SCM_NAME_PREFIX: &str = "ccm-agent-";
/// The longest resource id the deploy call takes.
pub const MAX_RESOURCE_ID: usize = 63;

/// `[certificates.deploy]` as written.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDeploy {
    pub scm_name: Option<String>,
    pub attempts: Option<i64>,
    pub retry_initial: Option<String>,
    pub retry_max: Option<String>,
    #[serde(default)]
    pub targets: Vec<RawCloudTarget>,
}

/// `[[certificates.deploy.targets]]` as written.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCloudTarget {
    pub action: Option<String>,
    pub service: Option<String>,
    pub region: Option<String>,
    pub regions: Option<Vec<String>>,
    pub project_name: Option<String>,
    pub resources: Option<Vec<RawResource>>,
}

/// One entry of `resources` as written.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawResource {
    pub id: Option<String>,
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub enterprise_project_id: Option<String>,
}

/// Where and how one certificate is pushed to cloud services.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeploySpec {
    /// The stable SCM name a certificate held on this host is imported under (3..=63 of
    /// `[A-Za-z0-9_.-]`). Unused for SCM-sourced certificates, which are deployed by id.
    pub scm_name: String,
    pub retry: DeployRetry,
    pub targets: Vec<CloudTarget>,
}

/// Retrying failed regions/resources within one run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeployRetry {
    /// Attempts per region/resource, the first included (1..=10).
    pub attempts: u32,
    pub initial: Duration,
    pub max: Duration,
}

impl Default for DeployRetry {
    fn default() -> Self {
        DeployRetry {
            attempts: DEFAULT_ATTEMPTS,
            initial: DEFAULT_RETRY_INITIAL,
            max: DEFAULT_RETRY_MAX,
        }
    }
}

/// One configured target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CloudTarget {
    /// `POST .../push`: one region per call.
    Push {
        service: TargetService,
        region: String,
    },
    /// `POST .../batch-push`: up to 10 regions per call; more are split into calls.
    BatchPush {
        service: TargetService,
        regions: Vec<String>,
    },
    /// `POST .../deploy`: up to 20 resources per call; more are split into calls.
    Deploy {
        service: TargetService,
        /// The project of the resources (the region id for a main project).
        project_name: Option<String>,
        resources: Vec<Resource>,
    },
}

impl CloudTarget {
    pub fn service(&self) -> TargetService {
        match self {
            CloudTarget::Push { service, .. }
            | CloudTarget::BatchPush { service, .. }
            | CloudTarget::Deploy { service, .. } => *service,
        }
    }
}

/// A resource to deploy to (an ELB certificate/listener, a WAF instance).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resource {
    pub id: String,
    /// WAF only.
    pub waf_type: Option<WafType>,
    /// WAF only: `0` (the default project) or a UUID.
    pub enterprise_project_id: Option<String>,
}

impl Resource {
    pub fn elb(id: impl Into<String>) -> Self {
        Resource {
            id: id.into(),
            waf_type: None,
            enterprise_project_id: None,
        }
    }

    pub fn waf(id: impl Into<String>, waf_type: WafType, enterprise_project_id: &str) -> Self {
        Resource {
            id: id.into(),
            waf_type: Some(waf_type),
            enterprise_project_id: Some(enterprise_project_id.to_owned()),
        }
    }

    /// The API's `DeployedResource`.
    pub fn to_api(&self) -> scm::DeployedResource {
        scm::DeployedResource {
            id: Some(self.id.clone()),
            resource_type: self.waf_type.map(|t| t.as_str().to_owned()),
            domain_name: None,
            enterprise_project_id: self.enterprise_project_id.clone(),
        }
    }
}

/// The WAF resource `type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WafType {
    /// Cloud mode.
    Cloud,
    /// Dedicated mode.
    Premium,
}

impl WafType {
    pub fn as_str(self) -> &'static str {
        match self {
            WafType::Cloud => "cloud",
            WafType::Premium => "premium",
        }
    }
}

/// The SCM name a certificate named `cert_name` is imported under by default:
/// `ccm-agent-<name>`, kept within SCM's 63 characters (a long name is shortened and given a
/// hash of the full name, so two long names do not collide).
pub fn default_scm_name(cert_name: &str) -> String {
    let clean: String = cert_name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect();
    let full = format!("{DEFAULT_SCM_NAME_PREFIX}{clean}");
    if full.len() <= 63 {
        return full;
    }
    let digest = crate::install::sha256_hex(cert_name.as_bytes());
    let keep = 63 - DEFAULT_SCM_NAME_PREFIX.len() - 9;
    format!(
        "{DEFAULT_SCM_NAME_PREFIX}{}-{}",
        &clean[..keep],
        &digest[..8]
    )
}

/// Whether `s` looks like a region (`ap-southeast-1`) or a project name under one
/// (`ap-southeast-1_sub`).
pub fn valid_region(s: &str) -> bool {
    let (region, sub) = match s.split_once('_') {
        Some((r, sub)) => (r, Some(sub)),
        None => (s, None),
    };
    let mut parts = region.split('-');
    let first_ok = parts
        .next()
        .is_some_and(|p| p.len() >= 2 && p.bytes().all(|b| b.is_ascii_lowercase()));
    let rest: Vec<&str> = parts.collect();
    first_ok
        && !rest.is_empty()
        && rest.iter().all(|p| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        })
        && s.len() <= 64
        && sub.is_none_or(|sub| {
            !sub.is_empty()
                && sub
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        })
}

/// `0` or a UUID (lower-case hex, 8-4-4-4-12).
pub fn valid_enterprise_project_id(s: &str) -> bool {
    if s == "0" {
        return true;
    }
    let parts: Vec<&str> = s.split('-').collect();
    parts.len() == 5
        && parts.iter().zip([8, 4, 4, 4, 12]).all(|(p, n)| {
            p.len() == n
                && p.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        })
}

fn valid_resource_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_RESOURCE_ID
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

struct Problems(Vec<Problem>);

impl Problems {
    fn err(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.0.push(Problem {
            key: key.into(),
            message: message.into(),
            position: None,
        });
    }
}

/// Validate `[certificates.deploy]` of the certificate named `cert_name`; `prefix` is the
/// certificate's key path (`certificates[0]`). Every problem is returned, each with its key.
pub fn check(prefix: &str, cert_name: &str, raw: &RawDeploy) -> Result<DeploySpec, Vec<Problem>> {
    let mut p = Problems(Vec::new());
    let key = |k: &str| format!("{prefix}.deploy.{k}");
    let scm_name = match &raw.scm_name {
        Some(n) if scm::valid_name(n) => n.clone(),
        Some(n) => {
            p.err(
                key("scm_name"),
                format!("{n:?}: SCM names are 3 to 63 of A-Z a-z 0-9 _ . -"),
            );
            String::new()
        }
        None => default_scm_name(cert_name),
    };
    let mut retry = DeployRetry::default();
    if let Some(a) = raw.attempts {
        match u32::try_from(a) {
            Ok(a) if (1..=MAX_ATTEMPTS).contains(&a) => retry.attempts = a,
            _ => p.err(key("attempts"), format!("{a} is not in 1..={MAX_ATTEMPTS}")),
        }
    }
    for (k, value, slot) in [
        ("retry_initial", &raw.retry_initial, &mut retry.initial),
        ("retry_max", &raw.retry_max, &mut retry.max),
    ] {
        if let Some(v) = value {
            match parse_duration(v) {
                Ok(d) if !d.is_zero() => *slot = d,
                Ok(_) => p.err(key(k), "must be more than zero"),
                Err(e) => p.err(key(k), e.to_string()),
            }
        }
    }
    if retry.initial > retry.max {
        p.err(key("retry_initial"), "is longer than retry_max");
    }
    if raw.targets.is_empty() {
        p.err(
            key("targets"),
            "no targets: add [[certificates.deploy.targets]] tables or remove [certificates.deploy]",
        );
    }
    let mut targets = Vec::new();
    // Unit key → where it was first configured, to refuse the same region/resource twice.
    let mut seen: Vec<(String, String)> = Vec::new();
    for (i, t) in raw.targets.iter().enumerate() {
        let tkey = format!("{prefix}.deploy.targets[{i}]");
        if let Some(target) = check_target(&mut p, &tkey, t) {
            for unit in super::units_of(&target) {
                let k = unit.key();
                if let Some((_, first)) = seen.iter().find(|(s, _)| *s == k) {
                    p.err(
                        &tkey,
                        format!("{} is also a target of {first}", unit.label()),
                    );
                } else {
                    seen.push((k, tkey.clone()));
                }
            }
            targets.push(target);
        }
    }
    if p.0.is_empty() {
        Ok(DeploySpec {
            scm_name,
            retry,
            targets,
        })
    } else {
        Err(p.0)
    }
}

fn check_target(p: &mut Problems, tkey: &str, t: &RawCloudTarget) -> Option<CloudTarget> {
    let key = |k: &str| format!("{tkey}.{k}");
    let service = match t.service.as_deref() {
        Some(s) => match s.parse::<TargetService>() {
            Ok(s) => Some(s),
            Err(_) => {
                p.err(key("service"), format!("{s:?} is not one of ELB, WAF"));
                None
            }
        },
        None => {
            p.err(key("service"), "missing: ELB or WAF");
            None
        }
    };
    let given: Vec<&str> = [
        ("region", t.region.is_some()),
        ("regions", t.regions.is_some()),
        ("project_name", t.project_name.is_some()),
        ("resources", t.resources.is_some()),
    ]
    .into_iter()
    .filter_map(|(k, present)| present.then_some(k))
    .collect();
    let action = match t.action.as_deref() {
        Some("push") => Some("push"),
        Some("batch-push" | "batch_push") => Some("batch-push"),
        Some("deploy") => Some("deploy"),
        Some(other) => {
            p.err(
                key("action"),
                format!("{other:?} is not one of push, batch-push, deploy"),
            );
            None
        }
        None => match (
            t.region.is_some(),
            t.regions.is_some(),
            t.resources.is_some(),
        ) {
            (true, false, false) => Some("push"),
            (false, true, false) => Some("batch-push"),
            (false, false, true) => Some("deploy"),
            _ => {
                p.err(
                    key("action"),
                    "missing: push (with region), batch-push (with regions) or deploy (with resources)",
                );
                None
            }
        },
    }?;
    let allowed: &[&str] = match action {
        "push" => &["region"],
        "batch-push" => &["regions"],
        _ => &["project_name", "resources"],
    };
    let mut ok = true;
    for k in given.iter().filter(|k| !allowed.contains(k)) {
        p.err(key(k), format!("not used by action {action:?}"));
        ok = false;
    }
    let target = match action {
        "push" => {
            let region = match &t.region {
                Some(r) if valid_region(r) => Some(r.clone()),
                Some(r) => {
                    p.err(
                        key("region"),
                        format!("{r:?} is not a region name like ap-southeast-1"),
                    );
                    None
                }
                None => {
                    p.err(key("region"), "missing: the region to push to");
                    None
                }
            };
            CloudTarget::Push {
                service: service?,
                region: region?,
            }
        }
        "batch-push" => {
            let regions = t.regions.clone().unwrap_or_default();
            if regions.is_empty() {
                p.err(key("regions"), "missing or empty: at least one region");
                ok = false;
            }
            for (j, r) in regions.iter().enumerate() {
                if !valid_region(r) {
                    p.err(
                        format!("{tkey}.regions[{j}]"),
                        format!("{r:?} is not a region name like ap-southeast-1"),
                    );
                    ok = false;
                } else if regions[..j].contains(r) {
                    p.err(
                        format!("{tkey}.regions[{j}]"),
                        format!("{r:?} is listed twice"),
                    );
                    ok = false;
                }
            }
            CloudTarget::BatchPush {
                service: service?,
                regions,
            }
        }
        _ => {
            if let Some(pn) = &t.project_name
                && !valid_region(pn)
            {
                p.err(
                    key("project_name"),
                    format!("{pn:?} is not a project name like ap-southeast-1"),
                );
                ok = false;
            }
            let raw_resources = t.resources.clone().unwrap_or_default();
            if raw_resources.is_empty() {
                p.err(key("resources"), "missing or empty: at least one resource");
                ok = false;
            }
            let mut resources = Vec::new();
            for (j, r) in raw_resources.iter().enumerate() {
                let rkey = format!("{tkey}.resources[{j}]");
                if let Some(id) = &r.id
                    && raw_resources[..j].iter().any(|x| x.id.as_ref() == Some(id))
                {
                    p.err(format!("{rkey}.id"), format!("{id:?} is listed twice"));
                    ok = false;
                }
                match check_resource(p, &rkey, service, r) {
                    Some(res) => resources.push(res),
                    None => ok = false,
                }
            }
            CloudTarget::Deploy {
                service: service?,
                project_name: t.project_name.clone(),
                resources,
            }
        }
    };
    ok.then_some(target)
}

fn check_resource(
    p: &mut Problems,
    rkey: &str,
    service: Option<TargetService>,
    r: &RawResource,
) -> Option<Resource> {
    let id = match &r.id {
        Some(id) if valid_resource_id(id) => Some(id.clone()),
        Some(id) => {
            p.err(
                format!("{rkey}.id"),
                format!("{id:?}: a resource id is 1 to {MAX_RESOURCE_ID} of A-Z a-z 0-9 - _"),
            );
            None
        }
        None => {
            p.err(format!("{rkey}.id"), "missing");
            None
        }
    };
    match service? {
        TargetService::Elb => {
            let mut ok = true;
            for (k, present) in [
                ("type", r.kind.is_some()),
                ("enterprise_project_id", r.enterprise_project_id.is_some()),
            ] {
                if present {
                    p.err(format!("{rkey}.{k}"), "only for WAF resources");
                    ok = false;
                }
            }
            let id = id?;
            ok.then(|| Resource::elb(id))
        }
        TargetService::Waf => {
            let waf_type = match r.kind.as_deref() {
                Some("cloud") => Some(WafType::Cloud),
                Some("premium") => Some(WafType::Premium),
                Some(other) => {
                    p.err(
                        format!("{rkey}.type"),
                        format!("{other:?} is not one of cloud, premium"),
                    );
                    None
                }
                None => {
                    p.err(
                        format!("{rkey}.type"),
                        "missing: cloud (cloud mode) or premium (dedicated mode)",
                    );
                    None
                }
            };
            let eps = r.enterprise_project_id.as_deref().unwrap_or("0");
            let eps_ok = valid_enterprise_project_id(eps);
            if !eps_ok {
                p.err(
                    format!("{rkey}.enterprise_project_id"),
                    format!("{eps:?} is not 0 or an enterprise project UUID"),
                );
            }
            let (id, waf_type) = (id?, waf_type?);
            eps_ok.then(|| Resource::waf(id, waf_type, eps))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<DeploySpec, Vec<Problem>> {
        let raw: RawDeploy = toml::from_str(text).expect("toml");
        check("certificates[0]", "www", &raw)
    }

    fn keys(r: Result<DeploySpec, Vec<Problem>>) -> Vec<String> {
        r.expect_err("problems")
            .into_iter()
            .map(|p| p.key)
            .collect()
    }

    #[test]
    fn full_table_validates() {
        let spec = parse(
            r#"
            attempts = 2
            retry_initial = "1s"
            [[targets]]
            service = "elb"
            region = "ap-southeast-1"
            [[targets]]
            action = "batch-push"
            service = "WAF"
            regions = ["ap-southeast-1", "cn-north-4", "ap-southeast-1_sub"]
            [[targets]]
            service = "WAF"
            project_name = "ap-southeast-3"
            resources = [{ id = "w1", type = "premium", enterprise_project_id = "2cb2878b-6cd1-460d-bd25-afe655159bdc" }, { id = "w2", type = "cloud" }]
            "#,
        )
        .expect("valid");
        assert_eq!(spec.scm_name, "ccm-agent-www");
        assert_eq!(spec.retry.attempts, 2);
        assert_eq!(spec.retry.initial, Duration::from_secs(1));
        assert_eq!(spec.retry.max, DEFAULT_RETRY_MAX);
        assert_eq!(
            spec.targets[0],
            CloudTarget::Push {
                service: TargetService::Elb,
                region: "ap-southeast-1".into()
            }
        );
        let CloudTarget::Deploy { resources, .. } = &spec.targets[2] else {
            panic!("deploy target");
        };
        assert_eq!(resources[1], Resource::waf("w2", WafType::Cloud, "0"));
        assert_eq!(resources[0].waf_type, Some(WafType::Premium));
    }

    #[test]
    fn problems_name_their_keys() {
        let k = keys(parse(
            r#"
            scm_name = "x"
            attempts = 0
            [[targets]]
            service = "CDN"
            region = "ap-southeast-1"
            [[targets]]
            service = "ELB"
            regions = []
            [[targets]]
            service = "ELB"
            regions = ["AP_bad", "cn-north-4", "cn-north-4"]
            [[targets]]
            service = "WAF"
            resources = [{ id = "a", type = "dedicated" }, { id = "b", type = "cloud", enterprise_project_id = "x" }, { type = "cloud" }]
            [[targets]]
            service = "ELB"
            resources = [{ id = "e1", type = "cloud" }, { id = "e1" }]
            [[targets]]
            service = "ELB"
            region = "ap-southeast-1"
            resources = [{ id = "e2" }]
            "#,
        ));
        for want in [
            "certificates[0].deploy.scm_name",
            "certificates[0].deploy.attempts",
            "certificates[0].deploy.targets[0].service",
            "certificates[0].deploy.targets[1].regions",
            "certificates[0].deploy.targets[2].regions[0]",
            "certificates[0].deploy.targets[2].regions[2]",
            "certificates[0].deploy.targets[3].resources[0].type",
            "certificates[0].deploy.targets[3].resources[1].enterprise_project_id",
            "certificates[0].deploy.targets[3].resources[2].id",
            "certificates[0].deploy.targets[4].resources[0].type",
            "certificates[0].deploy.targets[4].resources[1].id",
            "certificates[0].deploy.targets[5].action",
        ] {
            assert!(k.iter().any(|x| x == want), "{want} not in {k:#?}");
        }
    }

    #[test]
    fn same_region_twice_across_targets_is_refused() {
        let k = keys(parse(
            r#"
            [[targets]]
            service = "ELB"
            region = "cn-north-4"
            [[targets]]
            service = "ELB"
            action = "push"
            region = "cn-north-4"
            "#,
        ));
        assert_eq!(k, vec!["certificates[0].deploy.targets[1]"]);
        let k = keys(parse("scm_name = \"abc\""));
        assert_eq!(k, vec!["certificates[0].deploy.targets"]);
    }

    #[test]
    fn default_scm_names_fit_the_rule() {
        assert_eq!(default_scm_name("www"), "ccm-agent-www");
        let long_a = "a".repeat(64);
        let long_b = format!("{}b", "a".repeat(63));
        let (na, nb) = (default_scm_name(&long_a), default_scm_name(&long_b));
        assert!(scm::valid_name(&na) && scm::valid_name(&nb), "{na} {nb}");
        assert_eq!(na.len(), 63);
        assert_ne!(na, nb);
    }

    #[test]
    fn region_and_project_formats() {
        for ok in [
            "ap-southeast-1",
            "cn-north-4",
            "my-kualalumpur-1",
            "cn-north-4_sub-1",
        ] {
            assert!(valid_region(ok), "{ok}");
        }
        for bad in [
            "",
            "ap",
            "AP-southeast-1",
            "ap--1",
            "ap-southeast-1_",
            "a-1",
            "ap southeast",
        ] {
            assert!(!valid_region(bad), "{bad}");
        }
        assert!(valid_enterprise_project_id("0"));
        assert!(!valid_enterprise_project_id(
            "2CB2878B-6cd1-460d-bd25-afe655159bdc"
        ));
    }
}
