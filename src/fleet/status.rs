//! `ccm-agent fleet status`: members × certificates from one read of the fleet's keys, and
//! whether some live member lags behind the published generation.

use std::collections::BTreeSet;

use serde::Serialize;

use super::coordinator::FleetSnapshot;
use super::keys::UnitState;
use super::rollout::{Mark, Stage};

/// One member's view of one certificate.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Row {
    pub certificate: String,
    pub member: String,
    /// Registered now (its lease is alive).
    pub alive: bool,
    /// The fleet generation its files are (0: none of the fleet's).
    pub generation: u64,
    pub fingerprint_sha256: Option<String>,
    /// The generation it should serve: the published one, or the previous one while the
    /// rollout does not admit it.
    pub target_generation: u64,
    /// Its fingerprint is its target generation's.
    pub matches: bool,
    /// Its activation result for the rollout of the published generation (`ok`, or the failure).
    pub rollout_result: Option<String>,
    pub last_result: Option<String>,
    pub last_seen: Option<String>,
    /// Alive and not serving its target generation.
    pub lagging: bool,
}

/// One certificate's fleet-wide state.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Certificate {
    pub name: String,
    pub generation: u64,
    pub fingerprint_sha256: Option<String>,
    pub not_after: Option<String>,
    pub lock_holder: Option<String>,
    /// Deploy units of the published generation by state.
    pub units: std::collections::BTreeMap<String, usize>,
    /// The published generation's staged rollout, if it has one.
    pub rollout: Option<RolloutView>,
}

/// Where a rollout stands, for people and for `--json`.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct RolloutView {
    pub generation: u64,
    pub previous_generation: u64,
    pub stage: Stage,
    pub canaries: Vec<String>,
    pub batch: u32,
    pub failure_budget: u32,
    pub emergency: bool,
    pub soak_skipped: bool,
    pub soak_until: Option<String>,
    /// Why it is halted or rolled back, and by whom.
    pub halt: Option<Mark>,
    /// Members whose activation failed, with what failed (the server's stderr included).
    pub failures: Vec<Failure>,
    /// What happens next.
    pub next: String,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Failure {
    pub member: String,
    pub detail: String,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Report {
    pub certificates: Vec<Certificate>,
    pub rows: Vec<Row>,
    pub lagging: Vec<String>,
    /// Deploy units waiting for an operator (`certificate: unit`).
    pub needs_human: Vec<String>,
    /// Rollouts that are halted (`certificate: why`).
    pub halted: Vec<String>,
}

impl Report {
    /// Whether `fleet status` exits non-zero: a live member lags, a unit needs a human, or a
    /// rollout is halted.
    pub fn unhealthy(&self) -> bool {
        !self.lagging.is_empty() || !self.needs_human.is_empty() || !self.halted.is_empty()
    }

    pub fn from_snapshot(s: &FleetSnapshot, now: time::OffsetDateTime) -> Report {
        let alive: BTreeSet<&str> = s.members.iter().map(|m| m.member_id.as_str()).collect();
        let mut names: BTreeSet<String> = s.generations.keys().cloned().collect();
        for m in &s.members {
            for serve in &m.serves {
                let (name, mode) = serve.split_once(':').unwrap_or((serve.as_str(), ""));
                if mode != "local" {
                    names.insert(name.to_owned());
                }
            }
        }
        names.extend(s.statuses.iter().map(|st| st.name.clone()));
        let mut report = Report {
            certificates: Vec::new(),
            rows: Vec::new(),
            lagging: Vec::new(),
            needs_human: Vec::new(),
            halted: Vec::new(),
        };
        for name in names {
            let g = s.generations.get(&name);
            let published = g.map_or(0, |g| g.generation);
            let mut units = std::collections::BTreeMap::new();
            if let Some(progress) = s.units.get(&name).and_then(|u| u.get(&published)) {
                for (unit, p) in progress {
                    *units.entry(p.state.as_str().to_owned()).or_insert(0) += 1;
                    if p.state == UnitState::NeedsHuman {
                        report.needs_human.push(format!("{name}: {unit}"));
                    }
                }
            }
            let assessed = s.assess(&name, now);
            let rollout = assessed.as_ref().map(|(_, r, a)| RolloutView {
                generation: r.generation,
                previous_generation: r.previous.generation,
                stage: a.stage,
                canaries: r.canaries.clone(),
                batch: r.batch,
                failure_budget: r.failure_budget,
                emergency: r.emergency,
                soak_skipped: r.soak_skipped,
                soak_until: a.soak_until.map(crate::values::rfc3339),
                halt: a.halt.clone(),
                failures: a
                    .failures
                    .iter()
                    .map(|(m, d)| Failure {
                        member: m.clone(),
                        detail: d.clone(),
                    })
                    .collect(),
                next: a.next.clone(),
            });
            if let Some(v) = &rollout
                && v.stage == Stage::Halted
            {
                let why = v.halt.as_ref().map_or("", |h| h.reason.as_str());
                report.halted.push(format!("{name}: {why}"));
            }
            report.certificates.push(Certificate {
                name: name.clone(),
                generation: published,
                fingerprint_sha256: g.map(|g| g.fingerprint_sha256.clone()),
                not_after: g.map(|g| g.not_after.clone()),
                lock_holder: s.locks.get(&name).cloned(),
                units,
                rollout,
            });
            let mut members: BTreeSet<&str> = s
                .members
                .iter()
                .filter(|m| {
                    m.serves
                        .iter()
                        .any(|x| x.split_once(':').is_some_and(|(n, _)| n == name))
                })
                .map(|m| m.member_id.as_str())
                .collect();
            members.extend(
                s.statuses
                    .iter()
                    .filter(|st| st.name == name)
                    .map(|st| st.member.as_str()),
            );
            for member in members {
                let st = s
                    .statuses
                    .iter()
                    .find(|st| st.name == name && st.member == member);
                let fp = st.and_then(|st| st.fingerprint_sha256.clone());
                let target = match &assessed {
                    Some((_, r, a)) if !a.admits(member) => Some(&r.previous),
                    _ => g,
                };
                let matches = match (target, &fp) {
                    (Some(t), Some(fp)) => t.fingerprint_sha256.eq_ignore_ascii_case(fp),
                    _ => false,
                };
                let rollout_result = assessed.as_ref().and_then(|(g, _, _)| {
                    let x = s.results.get(&name)?.get(&g.generation)?.get(member)?;
                    Some(if x.ok {
                        "ok".to_owned()
                    } else {
                        format!("failed ({})", x.result)
                    })
                });
                let is_alive = alive.contains(member);
                // per-host: every member has its own certificate; only shared ones must match.
                let shared = st.map_or_else(
                    || {
                        s.members.iter().any(|m| {
                            m.member_id == member && m.serves.contains(&format!("{name}:shared"))
                        })
                    },
                    |st| st.mode == "shared",
                );
                let lagging = is_alive && shared && g.is_some() && !matches;
                if lagging {
                    report.lagging.push(format!("{member} ({name})"));
                }
                report.rows.push(Row {
                    certificate: name.clone(),
                    member: member.to_owned(),
                    alive: is_alive,
                    generation: st.map_or(0, |st| st.generation),
                    fingerprint_sha256: fp,
                    target_generation: target.map_or(0, |t| t.generation),
                    matches,
                    rollout_result,
                    last_result: st.map(|st| st.last_result.clone()),
                    last_seen: st.map(|st| st.last_seen.clone()),
                    lagging,
                });
            }
        }
        report
    }

    /// The table for people.
    pub fn to_text(&self) -> String {
        let short = |fp: &Option<String>| {
            fp.as_deref()
                .map(|f| f.chars().take(16).collect::<String>())
                .unwrap_or_else(|| "-".into())
        };
        let mut out = String::new();
        for c in &self.certificates {
            let units: Vec<String> = c.units.iter().map(|(k, n)| format!("{n} {k}")).collect();
            out.push_str(&format!(
                "certificate {}: generation {}, fingerprint {}, not after {}, lock {}, deploy units: {}\n",
                c.name,
                c.generation,
                short(&c.fingerprint_sha256),
                c.not_after.as_deref().unwrap_or("-"),
                c.lock_holder.as_deref().unwrap_or("free"),
                if units.is_empty() { "none".to_owned() } else { units.join(", ") }
            ));
            if let Some(v) = &c.rollout {
                out.push_str(&format!(
                    "  rollout of generation {} (over {}): {}; canaries {}, batch {}, failure budget {}{}\n",
                    v.generation,
                    v.previous_generation,
                    v.stage,
                    v.canaries.join(", "),
                    v.batch,
                    v.failure_budget,
                    if v.soak_skipped { ", soak skipped (emergency)" } else { "" }
                ));
                if let Some(h) = &v.halt {
                    out.push_str(&format!("  {}: {} (at {})\n", v.stage, h.reason, h.at));
                }
                for f in &v.failures {
                    out.push_str(&format!("  failed on {}:\n", f.member));
                    for line in f.detail.lines() {
                        out.push_str(&format!("    | {line}\n"));
                    }
                }
                out.push_str(&format!("  next: {}\n", v.next));
            }
            out.push_str(&format!(
                "  {:<24} {:<6} {:>10} {:>6}  {:<16}  {:<5}  {:<12}  {:<12}  {}\n",
                "MEMBER",
                "ALIVE",
                "GENERATION",
                "TARGET",
                "FINGERPRINT",
                "MATCH",
                "ROLLOUT",
                "LAST RESULT",
                "LAST SEEN"
            ));
            for r in self.rows.iter().filter(|r| r.certificate == c.name) {
                out.push_str(&format!(
                    "  {:<24} {:<6} {:>10} {:>6}  {:<16}  {:<5}  {:<12}  {:<12}  {}{}\n",
                    r.member,
                    if r.alive { "yes" } else { "gone" },
                    r.generation,
                    r.target_generation,
                    short(&r.fingerprint_sha256),
                    if r.matches { "yes" } else { "no" },
                    r.rollout_result.as_deref().unwrap_or("-"),
                    r.last_result.as_deref().unwrap_or("-"),
                    r.last_seen.as_deref().unwrap_or("-"),
                    if r.lagging { "  LAGGING" } else { "" }
                ));
            }
        }
        if self.certificates.is_empty() {
            out.push_str("no fleet certificates yet\n");
        }
        for l in &self.lagging {
            out.push_str(&format!("lagging: {l}\n"));
        }
        for h in &self.halted {
            out.push_str(&format!("rollout halted: {h}\n"));
        }
        for u in &self.needs_human {
            out.push_str(&format!(
                "needs a human (outcome of a deploy call unknown): {u}\n"
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::keys::{Generation, Member, MemberStatus, UnitProgress};

    fn member(id: &str, serves: &str) -> Member {
        Member {
            member_id: id.into(),
            host_id: id.into(),
            version: "t".into(),
            serves: vec![serves.into()],
            started_at: "2026-01-01T00:00:00Z".into(),
        }
    }

    fn status(member: &str, name: &str, mode: &str, generation: u64, fp: &str) -> MemberStatus {
        MemberStatus {
            member: member.into(),
            name: name.into(),
            mode: mode.into(),
            generation,
            fingerprint_sha256: Some(fp.into()),
            last_result: "ok".into(),
            last_seen: "2026-01-01T00:00:00Z".into(),
        }
    }

    fn generation(n: u64, fp: &str) -> Generation {
        Generation {
            generation: n,
            cloud_id: "c".into(),
            fingerprint_sha256: fp.into(),
            not_after: "2030-01-01T00:00:00Z".into(),
            not_before: "2029-01-01T00:00:00Z".into(),
            issued_by: "a".into(),
            source: "pca".into(),
        }
    }

    #[test]
    fn a_live_shared_member_behind_lags_and_a_gone_one_does_not() {
        let mut s = FleetSnapshot {
            members: vec![member("a", "www:shared"), member("b", "www:shared")],
            ..FleetSnapshot::default()
        };
        s.generations.insert("www".into(), generation(2, "AA"));
        s.statuses = vec![
            status("a", "www", "shared", 2, "aa"),
            status("b", "www", "shared", 1, "BB"),
            status("gone", "www", "shared", 1, "BB"),
        ];
        let r = Report::from_snapshot(&s, time::OffsetDateTime::now_utc());
        assert_eq!(r.lagging, vec!["b (www)".to_owned()]);
        assert!(r.unhealthy());
        let gone = r.rows.iter().find(|x| x.member == "gone").expect("row");
        assert!(!gone.alive && !gone.lagging);
        let a = r.rows.iter().find(|x| x.member == "a").expect("row");
        assert!(a.matches, "fingerprints compare without case");
        assert!(r.to_text().contains("LAGGING"));
    }

    #[test]
    fn per_host_members_never_lag_and_needs_human_is_unhealthy() {
        let mut s = FleetSnapshot {
            members: vec![member("a", "api:per-host"), member("b", "api:per-host")],
            ..FleetSnapshot::default()
        };
        s.generations.insert("api".into(), generation(1, "AA"));
        s.statuses = vec![
            status("a", "api", "per-host", 1, "AA"),
            status("b", "api", "per-host", 0, "BB"),
        ];
        let r = Report::from_snapshot(&s, time::OffsetDateTime::now_utc());
        assert!(r.lagging.is_empty(), "{r:?}");
        assert!(!r.unhealthy());
        s.units
            .entry("api".into())
            .or_default()
            .entry(1)
            .or_default()
            .insert(
                "push/ELB/r1".into(),
                UnitProgress {
                    state: UnitState::NeedsHuman,
                    member: "a".into(),
                    at: "t".into(),
                    scm_id: None,
                    detail: None,
                },
            );
        let r = Report::from_snapshot(&s, time::OffsetDateTime::now_utc());
        assert_eq!(r.needs_human, vec!["api: push/ELB/r1".to_owned()]);
        assert!(r.unhealthy());
        assert_eq!(r.certificates[0].units.get("needs_human"), Some(&1));
    }

    #[test]
    fn a_member_without_a_status_yet_lags_behind_a_shared_generation() {
        let mut s = FleetSnapshot {
            members: vec![member("a", "www:shared"), member("new", "www:shared")],
            ..FleetSnapshot::default()
        };
        s.generations.insert("www".into(), generation(1, "AA"));
        s.statuses = vec![status("a", "www", "shared", 1, "AA")];
        let r = Report::from_snapshot(&s, time::OffsetDateTime::now_utc());
        assert_eq!(r.lagging, vec!["new (www)".to_owned()]);
    }
}
