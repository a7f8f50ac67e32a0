//! Staged rollout of a shared certificate's new generation across the fleet: canaries first,
//! then batches, halted by a failure, resumed or rolled back by an operator.
//!
//! # How it works
//! When the lock holder publishes generation N over generation N-1 and the certificate has
//! rollout settings, it writes a [`Rollout`] beside the generation, in the same fenced
//! transaction: N-1 (the generation members fall back to), the canary members (resolved from
//! the live members at that moment), the batch size, the soak, the failure budget. From then on
//! every member decides for itself, from the same etcd state, with [`assess`]:
//!
//! - **canary**: only the canaries may install N. Each member reports its activation result
//!   (install, hooks, config test, reload, served-certificate check) under
//!   `certs/{name}/results/{N}/{member}`. When every live canary reported success, the soak
//!   starts from the last success; when it has passed the rollout is rolling.
//! - **rolling**: the other members are admitted in member-id order, at most `batch` of them
//!   without a result at any time; each admitted member reports like the canaries.
//! - **done**: every live member has N (a member that joins later installs N at once).
//! - **halted**: a canary failed, more rolling members failed than the budget allows, or an
//!   operator ran `ccm-agent fleet halt`. Members that have N and reported success keep it;
//!   every other member keeps (or goes back to) N-1.
//! - **rolled back**: an operator ran `ccm-agent fleet rollback`: every member goes back to
//!   N-1 (still valid, which the command checks).
//!
//! A halt is derived from the results, so the failing member writes only its own key; the
//! operator's commands are compare-and-swap transactions on the rollout key, safe from any
//! member at any time. `resume` clears the halt and the failed results (those members try
//! again); after a rollback it starts the rollout over from the canaries.
//!
//! While a rollout is unfinished the fleet issues no further generation (a new generation
//! would bypass the halt), unless the generation the members serve reaches its emergency
//! floor. A generation issued at the emergency floor skips the soak by default
//! (`emergency_skip_soak`): its canaries still go first, and a canary failure still halts, but
//! a soak can no longer let the fleet's certificate expire.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::keys::Generation;
use crate::values::{Problem, format_duration, parse_duration};

/// `[fleet.rollout]` (the fleet-wide default) or `[certificates.rollout]`, as written.
#[derive(Debug, Default, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawRollout {
    /// A count (`1`), a percentage (`"10%"`) or a list of member ids (`["web-1"]`).
    pub canary: Option<toml::Value>,
    pub canary_soak: Option<String>,
    /// A count or a percentage of the members.
    pub batch: Option<toml::Value>,
    pub failure_budget: Option<i64>,
    /// `"done"` (default) or `"canary"`: when the cloud deploys of a generation may run.
    pub deploy_after: Option<String>,
    pub emergency_skip_soak: Option<bool>,
    /// `false` turns a fleet-wide rollout off for one certificate.
    pub enabled: Option<bool>,
}

/// Which members go first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Canary {
    Count(u32),
    /// Of the live members serving the certificate, rounded up, at least one.
    Percent(u32),
    /// These member ids (those alive when the rollout starts).
    Members(Vec<String>),
}

/// How many members switch at once after the canaries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Batch {
    Count(u32),
    Percent(u32),
}

/// When a generation's cloud deploys may run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeployAfter {
    /// When the rollout is done (every member serves it).
    #[default]
    Done,
    /// Once the canaries served it through the soak.
    Canary,
}

/// A shared certificate's validated rollout settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RolloutSettings {
    pub canary: Canary,
    pub canary_soak: Duration,
    pub batch: Batch,
    /// Failed members tolerated in the rolling stage before it halts (a canary failure always
    /// halts).
    pub failure_budget: u32,
    pub deploy_after: DeployAfter,
    pub emergency_skip_soak: bool,
}

pub const DEFAULT_SOAK: Duration = Duration::from_secs(300);

fn problem(key: &str, message: impl Into<String>) -> Problem {
    Problem {
        key: key.to_owned(),
        message: message.into(),
        position: None,
    }
}

fn percent(key: &str, s: &str) -> Result<u32, Problem> {
    let bad = || {
        problem(
            key,
            format!("{s:?} is not a percentage between 1% and 100% (e.g. \"10%\")"),
        )
    };
    let n: u32 = s
        .trim()
        .strip_suffix('%')
        .ok_or_else(bad)?
        .trim()
        .parse()
        .map_err(|_| bad())?;
    if (1..=100).contains(&n) {
        Ok(n)
    } else {
        Err(bad())
    }
}

fn count(key: &str, v: i64) -> Result<u32, Problem> {
    u32::try_from(v)
        .ok()
        .filter(|n| *n >= 1)
        .ok_or_else(|| problem(key, format!("{v} must be at least 1")))
}

/// Merges a certificate's `[certificates.rollout]` over the fleet-wide `[fleet.rollout]`, key
/// by key, and validates the result. `Ok(None)`: no rollout (neither is given, or
/// `enabled = false`): every member installs a new generation at once.
pub fn check(
    prefix: &str,
    fleet: Option<&RawRollout>,
    cert: Option<&RawRollout>,
) -> Result<Option<RolloutSettings>, Vec<Problem>> {
    if fleet.is_none() && cert.is_none() {
        return Ok(None);
    }
    // Each key from the certificate's table when it has it, else from the fleet's; with the
    // key it came from, for errors.
    let empty = RawRollout::default();
    let cert_key = format!("{prefix}.rollout");
    let pick = |has: fn(&RawRollout) -> bool| -> (&RawRollout, String) {
        match cert {
            Some(c) if has(c) => (c, cert_key.clone()),
            _ => (fleet.unwrap_or(&empty), "fleet.rollout".to_owned()),
        }
    };
    let (r, _) = pick(|c| c.enabled.is_some());
    if r.enabled == Some(false) {
        return Ok(None);
    }
    let mut p = Vec::new();
    let (r, at) = pick(|c| c.canary.is_some());
    let canary = match &r.canary {
        None => Canary::Count(1),
        Some(toml::Value::Integer(n)) => match count(&format!("{at}.canary"), *n) {
            Ok(n) => Canary::Count(n),
            Err(e) => {
                p.push(e);
                Canary::Count(1)
            }
        },
        Some(toml::Value::String(s)) => match percent(&format!("{at}.canary"), s) {
            Ok(n) => Canary::Percent(n),
            Err(e) => {
                p.push(e);
                Canary::Count(1)
            }
        },
        Some(toml::Value::Array(list)) => {
            let ids: Vec<String> = list
                .iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect();
            if ids.len() != list.len()
                || ids.is_empty()
                || !ids.iter().all(|i| super::config::valid_member_id(i))
            {
                p.push(problem(
                    &format!("{at}.canary"),
                    "a list of canaries must hold one or more member ids (1 to 128 of A-Z a-z 0-9 _ . -)",
                ));
            }
            Canary::Members(ids)
        }
        Some(other) => {
            p.push(problem(
                &format!("{at}.canary"),
                format!(
                    "{other} is not a count (1), a percentage (\"10%\") or a list of member ids"
                ),
            ));
            Canary::Count(1)
        }
    };
    let (r, at) = pick(|c| c.canary_soak.is_some());
    let canary_soak = match &r.canary_soak {
        None => DEFAULT_SOAK,
        Some(s) => parse_duration(s).unwrap_or_else(|e| {
            p.push(problem(&format!("{at}.canary_soak"), e));
            DEFAULT_SOAK
        }),
    };
    if canary_soak > Duration::from_secs(7 * 86_400) {
        p.push(problem(
            &format!("{at}.canary_soak"),
            format!("{} is longer than 7d", format_duration(canary_soak)),
        ));
    }
    let (r, at) = pick(|c| c.batch.is_some());
    let batch = match &r.batch {
        None => Batch::Percent(25),
        Some(toml::Value::Integer(n)) => match count(&format!("{at}.batch"), *n) {
            Ok(n) => Batch::Count(n),
            Err(e) => {
                p.push(e);
                Batch::Count(1)
            }
        },
        Some(toml::Value::String(s)) => match percent(&format!("{at}.batch"), s) {
            Ok(n) => Batch::Percent(n),
            Err(e) => {
                p.push(e);
                Batch::Count(1)
            }
        },
        Some(other) => {
            p.push(problem(
                &format!("{at}.batch"),
                format!("{other} is not a count (2) or a percentage (\"25%\")"),
            ));
            Batch::Count(1)
        }
    };
    let (r, at) = pick(|c| c.failure_budget.is_some());
    let failure_budget = match r.failure_budget {
        None => 0,
        Some(n) => u32::try_from(n).unwrap_or_else(|_| {
            p.push(problem(
                &format!("{at}.failure_budget"),
                format!("{n} must be 0 or more"),
            ));
            0
        }),
    };
    let (r, at) = pick(|c| c.deploy_after.is_some());
    let deploy_after = match r.deploy_after.as_deref() {
        None | Some("done") => DeployAfter::Done,
        Some("canary") => DeployAfter::Canary,
        Some(other) => {
            p.push(problem(
                &format!("{at}.deploy_after"),
                format!("{other:?} is not \"done\" or \"canary\""),
            ));
            DeployAfter::Done
        }
    };
    let (r, _) = pick(|c| c.emergency_skip_soak.is_some());
    let emergency_skip_soak = r.emergency_skip_soak.unwrap_or(true);
    if !p.is_empty() {
        return Err(p);
    }
    Ok(Some(RolloutSettings {
        canary,
        canary_soak,
        batch,
        failure_budget,
        deploy_after,
        emergency_skip_soak,
    }))
}

/// Who did something to a rollout, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mark {
    /// `operator@member` for a command, the member id for a member.
    pub by: String,
    pub reason: String,
    /// RFC 3339.
    pub at: String,
}

/// A generation's rollout, as the publisher wrote it (`certs/{name}/rollout`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rollout {
    pub generation: u64,
    /// The generation members keep until admitted, and go back to on a rollback.
    pub previous: Generation,
    pub canaries: Vec<String>,
    pub canary_soak_secs: u64,
    /// Members switching at once after the canaries (resolved when the rollout started).
    pub batch: u32,
    pub failure_budget: u32,
    pub deploy_after: DeployAfter,
    /// Issued at the emergency floor of the previous generation.
    #[serde(default)]
    pub emergency: bool,
    /// The soak was skipped because of the emergency.
    #[serde(default)]
    pub soak_skipped: bool,
    pub started_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub halted: Option<Mark>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rolled_back: Option<Mark>,
    /// The last `resume`, for the record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resumed: Option<Mark>,
}

/// A member's activation result for one generation (`certs/{name}/results/{gen}/{member}`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberResult {
    pub ok: bool,
    pub fingerprint_sha256: String,
    /// What failed, with the server's stderr (failures only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// The reload result label (`ok`, `config_test_failed`, ...).
    #[serde(default)]
    pub result: String,
    /// RFC 3339.
    pub at: String,
}

/// Where a rollout stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    Canary,
    Rolling,
    Done,
    Halted,
    RolledBack,
}

impl Stage {
    pub const ALL: [Stage; 5] = [
        Stage::Canary,
        Stage::Rolling,
        Stage::Done,
        Stage::Halted,
        Stage::RolledBack,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Canary => "canary",
            Stage::Rolling => "rolling",
            Stage::Done => "done",
            Stage::Halted => "halted",
            Stage::RolledBack => "rolled_back",
        }
    }
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What [`assess`] concludes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Assessment {
    pub stage: Stage,
    /// Members that may have the new generation now (see [`Assessment::admits`]).
    admitted: BTreeSet<String>,
    /// Done: every member is admitted, including any that joins later.
    all: bool,
    /// Canary stage: the end of the soak, once every canary reported success.
    pub soak_until: Option<time::OffsetDateTime>,
    /// Why it is halted (the first failure, or the operator's mark).
    pub halt: Option<Mark>,
    /// Members that reported a failure: (member, detail).
    pub failures: Vec<(String, String)>,
    /// What happens next, for people (`fleet status`, `renew --dry-run`).
    pub next: String,
}

impl Assessment {
    /// Whether `member` should have the new generation.
    pub fn admits(&self, member: &str) -> bool {
        self.all || self.admitted.contains(member)
    }

    /// Whether the generation's cloud deploys may run.
    pub fn deploys_released(&self, r: &Rollout) -> bool {
        match self.stage {
            Stage::Done => true,
            Stage::Rolling => r.deploy_after == DeployAfter::Canary,
            _ => false,
        }
    }
}

/// The canaries of a new rollout, from the live members serving the certificate (sorted) and
/// the publisher. A list keeps the ids that are alive; if none is, the publisher is the canary
/// (a rollout needs at least one).
pub fn pick_canaries(canary: &Canary, live: &BTreeSet<String>, publisher: &str) -> Vec<String> {
    let n = live.len().max(1);
    let take = |k: usize| -> Vec<String> { live.iter().take(k.max(1)).cloned().collect() };
    let picked = match canary {
        Canary::Count(k) => take(usize::try_from(*k).unwrap_or(usize::MAX)),
        Canary::Percent(p) => take((n * usize::try_from(*p).unwrap_or(100)).div_ceil(100)),
        Canary::Members(ids) => ids.iter().filter(|i| live.contains(*i)).cloned().collect(),
    };
    if picked.is_empty() {
        vec![publisher.to_owned()]
    } else {
        picked
    }
}

/// The batch size of a new rollout over `members` live members.
pub fn batch_size(batch: Batch, members: usize) -> u32 {
    match batch {
        Batch::Count(k) => k.max(1),
        Batch::Percent(p) => {
            let n = (members * usize::try_from(p).unwrap_or(100)).div_ceil(100);
            u32::try_from(n.max(1)).unwrap_or(u32::MAX)
        }
    }
}

fn parse_time(s: &str) -> Option<time::OffsetDateTime> {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()
}

/// Where rollout `r` stands, from the members' results and the live members serving the
/// certificate; the same on every member that sees the same state.
pub fn assess(
    r: &Rollout,
    results: &BTreeMap<String, MemberResult>,
    live: &BTreeSet<String>,
    now: time::OffsetDateTime,
) -> Assessment {
    let ok: BTreeSet<&str> = results
        .iter()
        .filter(|(_, x)| x.ok)
        .map(|(m, _)| m.as_str())
        .collect();
    let failures: Vec<(String, String)> = results
        .iter()
        .filter(|(_, x)| !x.ok)
        .map(|(m, x)| (m.clone(), x.detail.clone().unwrap_or_default()))
        .collect();
    let canaries: BTreeSet<&str> = r.canaries.iter().map(String::as_str).collect();
    let mut a = Assessment {
        stage: Stage::Canary,
        admitted: BTreeSet::new(),
        all: false,
        soak_until: None,
        halt: None,
        failures: failures.clone(),
        next: String::new(),
    };
    let keep_ok = |a: &mut Assessment| a.admitted.extend(ok.iter().map(|m| (*m).to_owned()));
    if let Some(m) = &r.rolled_back {
        a.stage = Stage::RolledBack;
        a.halt = Some(m.clone());
        a.next = format!(
            "every member serves generation {} again; `ccm-agent fleet resume` starts generation {} over from the canaries",
            r.previous.generation, r.generation
        );
        return a;
    }
    let canary_failure = results
        .iter()
        .find(|(m, x)| !x.ok && canaries.contains(m.as_str()));
    let rolling_failures = results
        .iter()
        .filter(|(m, x)| !x.ok && !canaries.contains(m.as_str()))
        .count();
    let derived = if let Some((m, x)) = canary_failure {
        Some(Mark {
            by: m.clone(),
            reason: format!(
                "canary {m} failed: {}",
                x.detail.as_deref().unwrap_or(&x.result)
            ),
            at: x.at.clone(),
        })
    } else if rolling_failures > usize::try_from(r.failure_budget).unwrap_or(usize::MAX) {
        let (m, x) = results
            .iter()
            .find(|(m, x)| !x.ok && !canaries.contains(m.as_str()))
            .map(|(m, x)| (m.clone(), x.clone()))
            .unwrap_or_default();
        Some(Mark {
            by: m.clone(),
            reason: format!(
                "{rolling_failures} member(s) failed, over the failure budget of {}; first: {m}: {}",
                r.failure_budget,
                x.detail.as_deref().unwrap_or(&x.result)
            ),
            at: x.at,
        })
    } else {
        None
    };
    if let Some(h) = r.halted.clone().or(derived) {
        a.stage = Stage::Halted;
        a.halt = Some(h);
        keep_ok(&mut a);
        a.next = format!(
            "halted: members that reported success keep generation {}, the others stay on generation {}; repair and run `ccm-agent fleet resume`, or `ccm-agent fleet rollback`",
            r.generation, r.previous.generation
        );
        return a;
    }
    // Canary stage: every live canary reports success, then the soak.
    let waiting: Vec<&str> = canaries
        .iter()
        .filter(|c| !ok.contains(*c) && (live.contains(**c) || results.contains_key(**c)))
        .copied()
        .collect();
    let canary_ok: Vec<time::OffsetDateTime> = canaries
        .iter()
        .filter(|c| ok.contains(*c))
        .filter_map(|c| results.get(*c).and_then(|x| parse_time(&x.at)))
        .collect();
    a.admitted.extend(canaries.iter().map(|c| (*c).to_owned()));
    keep_ok(&mut a);
    if !waiting.is_empty() || canary_ok.is_empty() {
        a.next = if waiting.is_empty() {
            format!(
                "waiting for a canary ({}) to join and report",
                r.canaries.join(", ")
            )
        } else {
            format!(
                "waiting for canary {} to install generation {} and report",
                waiting.join(", "),
                r.generation
            )
        };
        return a;
    }
    let soak = if r.soak_skipped {
        time::Duration::ZERO
    } else {
        time::Duration::seconds(i64::try_from(r.canary_soak_secs).unwrap_or(i64::MAX))
    };
    let last = canary_ok.iter().max().copied().unwrap_or(now);
    let until = last + soak;
    if now < until {
        a.soak_until = Some(until);
        a.next = format!(
            "the canaries serve generation {}; soaking until {}, then batches of {}",
            r.generation,
            crate::values::rfc3339(until),
            r.batch
        );
        return a;
    }
    // Rolling: at most `batch` members without a result at once, in member-id order.
    let pending: Vec<&String> = live
        .iter()
        .filter(|m| !canaries.contains(m.as_str()) && !results.contains_key(*m))
        .collect();
    if pending.is_empty() {
        a.stage = Stage::Done;
        a.all = true;
        a.next = format!("every member serves generation {}", r.generation);
        return a;
    }
    a.stage = Stage::Rolling;
    let window = usize::try_from(r.batch.max(1)).unwrap_or(usize::MAX);
    let admitted: Vec<String> = pending.iter().take(window).map(|m| (*m).clone()).collect();
    a.next = format!(
        "rolling: {} of {} remaining member(s) switching now ({}), {} failure(s) of a budget of {}",
        admitted.len(),
        pending.len(),
        admitted.join(", "),
        rolling_failures,
        r.failure_budget
    );
    a.admitted.extend(admitted);
    a
}

/// Builds the rollout of generation `g` over `previous` with `settings`, for the publisher.
pub fn start(
    settings: &RolloutSettings,
    g: &Generation,
    previous: &Generation,
    live: &BTreeSet<String>,
    publisher: &str,
    emergency: bool,
    now: time::OffsetDateTime,
) -> Rollout {
    let soak_skipped = emergency && settings.emergency_skip_soak;
    Rollout {
        generation: g.generation,
        previous: previous.clone(),
        canaries: pick_canaries(&settings.canary, live, publisher),
        canary_soak_secs: settings.canary_soak.as_secs(),
        batch: batch_size(settings.batch, live.len()),
        failure_budget: settings.failure_budget,
        deploy_after: settings.deploy_after,
        emergency,
        soak_skipped,
        started_at: crate::values::rfc3339(now),
        halted: None,
        rolled_back: None,
        resumed: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> time::OffsetDateTime {
        parse_time(s).expect("time")
    }

    fn generation(n: u64) -> Generation {
        Generation {
            generation: n,
            cloud_id: format!("c{n}"),
            fingerprint_sha256: format!("F{n}"),
            not_after: "2030-01-01T00:00:00Z".into(),
            not_before: "2029-01-01T00:00:00Z".into(),
            issued_by: "m1".into(),
            source: "pca".into(),
        }
    }

    fn members(n: usize) -> BTreeSet<String> {
        (1..=n).map(|i| format!("m{i}")).collect()
    }

    fn rollout(canaries: &[&str], batch: u32, budget: u32) -> Rollout {
        Rollout {
            generation: 2,
            previous: generation(1),
            canaries: canaries.iter().map(|c| (*c).to_owned()).collect(),
            canary_soak_secs: 60,
            batch,
            failure_budget: budget,
            deploy_after: DeployAfter::Done,
            emergency: false,
            soak_skipped: false,
            started_at: "2029-06-01T00:00:00Z".into(),
            halted: None,
            rolled_back: None,
            resumed: None,
        }
    }

    fn ok(at: &str) -> MemberResult {
        MemberResult {
            ok: true,
            fingerprint_sha256: "F2".into(),
            detail: None,
            result: "ok".into(),
            at: at.into(),
        }
    }

    fn failed(detail: &str) -> MemberResult {
        MemberResult {
            ok: false,
            fingerprint_sha256: "F2".into(),
            detail: Some(detail.into()),
            result: "config_test_failed".into(),
            at: "2029-06-01T00:00:05Z".into(),
        }
    }

    #[test]
    fn canaries_first_then_the_soak_then_batches_then_done() {
        let r = rollout(&["m3"], 2, 0);
        let live = members(6);
        let mut results = BTreeMap::new();
        let now = t("2029-06-01T00:00:01Z");
        let a = assess(&r, &results, &live, now);
        assert_eq!(a.stage, Stage::Canary);
        assert!(a.admits("m3") && !a.admits("m1"), "{a:?}");
        assert!(a.next.contains("waiting for canary m3"), "{}", a.next);
        assert!(!a.deploys_released(&r));

        results.insert("m3".to_owned(), ok("2029-06-01T00:00:10Z"));
        let a = assess(&r, &results, &live, t("2029-06-01T00:00:30Z"));
        assert_eq!(a.stage, Stage::Canary, "soaking");
        assert_eq!(a.soak_until, Some(t("2029-06-01T00:01:10Z")));
        assert!(!a.admits("m1"));

        // After the soak: the first two others by id.
        let now = t("2029-06-01T00:01:10Z");
        let a = assess(&r, &results, &live, now);
        assert_eq!(a.stage, Stage::Rolling);
        assert!(a.admits("m1") && a.admits("m2") && !a.admits("m4"), "{a:?}");
        assert!(a.admits("m3"), "a canary keeps it");
        // One reports: the window moves on by one.
        results.insert("m1".to_owned(), ok("2029-06-01T00:01:20Z"));
        let a = assess(&r, &results, &live, now);
        assert!(a.admits("m1") && a.admits("m2") && a.admits("m4") && !a.admits("m5"));
        for m in ["m2", "m4", "m5", "m6"] {
            results.insert(m.to_owned(), ok("2029-06-01T00:01:30Z"));
        }
        let a = assess(&r, &results, &live, now);
        assert_eq!(a.stage, Stage::Done);
        assert!(
            a.admits("m9"),
            "a member that joins later installs it at once"
        );
        assert!(a.deploys_released(&r));
    }

    #[test]
    fn a_canary_failure_halts_and_the_others_keep_the_previous_generation() {
        let r = rollout(&["m2", "m4"], 1, 5);
        let live = members(4);
        let mut results = BTreeMap::new();
        results.insert("m2".to_owned(), ok("2029-06-01T00:00:10Z"));
        results.insert("m4".to_owned(), failed("nginx: [emerg] unknown directive"));
        let a = assess(&r, &results, &live, t("2029-06-02T00:00:00Z"));
        assert_eq!(a.stage, Stage::Halted);
        let h = a.halt.as_ref().expect("why");
        assert_eq!(h.by, "m4");
        assert!(h.reason.contains("unknown directive"), "{h:?}");
        assert!(
            a.admits("m2"),
            "a canary that succeeded keeps the new generation"
        );
        assert!(!a.admits("m4") && !a.admits("m1") && !a.admits("m3"));
        assert!(!a.deploys_released(&r));
    }

    #[test]
    fn rolling_failures_halt_only_past_the_budget() {
        let mut r = rollout(&["m1"], 3, 1);
        r.deploy_after = DeployAfter::Canary;
        let live = members(5);
        let mut results = BTreeMap::new();
        results.insert("m1".to_owned(), ok("2029-06-01T00:00:10Z"));
        results.insert("m2".to_owned(), failed("reload failed"));
        let now = t("2029-06-02T00:00:00Z");
        let a = assess(&r, &results, &live, now);
        assert_eq!(a.stage, Stage::Rolling, "{a:?}");
        assert!(!a.admits("m2"), "a failed member stays on the previous one");
        assert!(a.admits("m3") && a.admits("m4") && a.admits("m5"));
        assert!(a.deploys_released(&r), "deploy_after = canary");
        results.insert("m3".to_owned(), failed("served check"));
        let a = assess(&r, &results, &live, now);
        assert_eq!(a.stage, Stage::Halted);
        assert!(a.halt.expect("why").reason.contains("budget of 1"));
    }

    #[test]
    fn operator_halt_and_rollback() {
        let mut r = rollout(&["m1"], 1, 0);
        let live = members(3);
        let mut results = BTreeMap::new();
        results.insert("m1".to_owned(), ok("2029-06-01T00:00:10Z"));
        r.halted = Some(Mark {
            by: "ops@m2".into(),
            reason: "halted by an operator".into(),
            at: "2029-06-01T00:00:20Z".into(),
        });
        let a = assess(&r, &results, &live, t("2029-06-02T00:00:00Z"));
        assert_eq!(a.stage, Stage::Halted);
        assert!(a.admits("m1") && !a.admits("m2"));
        r.rolled_back = r.halted.take();
        let a = assess(&r, &results, &live, t("2029-06-02T00:00:00Z"));
        assert_eq!(a.stage, Stage::RolledBack);
        assert!(!a.admits("m1"), "everyone goes back");
    }

    #[test]
    fn an_emergency_generation_skips_the_soak() {
        let mut r = rollout(&["m1"], 1, 0);
        r.soak_skipped = true;
        let mut results = BTreeMap::new();
        results.insert("m1".to_owned(), ok("2029-06-01T00:00:10Z"));
        let a = assess(&r, &results, &members(2), t("2029-06-01T00:00:11Z"));
        assert_eq!(a.stage, Stage::Rolling);
        assert!(a.admits("m2"));
    }

    #[test]
    fn a_dead_canary_does_not_hold_the_rollout_once_another_succeeded() {
        let r = rollout(&["m1", "m9"], 1, 0);
        let mut results = BTreeMap::new();
        results.insert("m1".to_owned(), ok("2029-06-01T00:00:10Z"));
        let a = assess(&r, &results, &members(3), t("2029-06-02T00:00:00Z"));
        assert_eq!(a.stage, Stage::Rolling, "m9 is not alive: {a:?}");
        let r = rollout(&["m9"], 1, 0);
        let a = assess(&r, &BTreeMap::new(), &members(3), t("2029-06-02T00:00:00Z"));
        assert_eq!(a.stage, Stage::Canary, "no canary succeeded yet");
        assert!(a.next.contains("join"), "{}", a.next);
    }

    #[test]
    fn picking_canaries_and_batches() {
        let live = members(10);
        assert_eq!(pick_canaries(&Canary::Count(2), &live, "m5"), ["m1", "m10"]);
        assert_eq!(pick_canaries(&Canary::Percent(10), &live, "m5").len(), 1);
        assert_eq!(pick_canaries(&Canary::Percent(15), &live, "m5").len(), 2);
        let ids = Canary::Members(vec!["m7".into(), "gone".into()]);
        assert_eq!(pick_canaries(&ids, &live, "m5"), ["m7"]);
        let none = Canary::Members(vec!["gone".into()]);
        assert_eq!(pick_canaries(&none, &live, "m5"), ["m5"]);
        assert_eq!(batch_size(Batch::Percent(25), 10), 3);
        assert_eq!(batch_size(Batch::Percent(25), 0), 1);
        assert_eq!(batch_size(Batch::Count(4), 10), 4);
    }

    fn raw(text: &str) -> RawRollout {
        toml::from_str(text).expect("toml")
    }

    #[test]
    fn settings_merge_key_by_key_and_name_the_key_at_fault() {
        assert_eq!(check("certificates[0]", None, None), Ok(None));
        let fleet = raw("canary = \"10%\"\ncanary_soak = \"2m\"\nbatch = 4");
        let cert = raw("canary = [\"web-1\"]");
        let s = check("certificates[0]", Some(&fleet), Some(&cert))
            .expect("valid")
            .expect("enabled");
        assert_eq!(s.canary, Canary::Members(vec!["web-1".into()]));
        assert_eq!(s.canary_soak, Duration::from_secs(120));
        assert_eq!(s.batch, Batch::Count(4));
        assert!(s.emergency_skip_soak);
        let off = raw("enabled = false");
        assert_eq!(check("certificates[0]", Some(&fleet), Some(&off)), Ok(None));
        let bad = raw("canary = \"200%\"\nbatch = 0\ndeploy_after = \"later\"");
        let e = check("certificates[3]", None, Some(&bad)).expect_err("invalid");
        let keys: Vec<&str> = e.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "certificates[3].rollout.canary",
                "certificates[3].rollout.batch",
                "certificates[3].rollout.deploy_after"
            ]
        );
        let e = check(
            "certificates[0]",
            Some(&raw("canary_soak = \"soon\"")),
            None,
        )
        .expect_err("invalid");
        assert_eq!(e[0].key, "fleet.rollout.canary_soak");
    }
}
