//! `ccm-agent fleet status`: members × certificates from one read of the fleet's keys, and
//! whether some live member lags behind the published generation.

use std::collections::BTreeSet;

use serde::Serialize;

use super::coordinator::FleetSnapshot;
use super::keys::UnitState;

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
    /// Its fingerprint is the published generation's.
    pub matches: bool,
    pub last_result: Option<String>,
    pub last_seen: Option<String>,
    /// Alive and behind the published generation.
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
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Report {
    pub certificates: Vec<Certificate>,
    pub rows: Vec<Row>,
    pub lagging: Vec<String>,
    /// Deploy units waiting for an operator (`certificate: unit`).
    pub needs_human: Vec<String>,
}

impl Report {
    /// Whether `fleet status` exits non-zero: a live member lags, or a unit needs a human.
    pub fn unhealthy(&self) -> bool {
        !self.lagging.is_empty() || !self.needs_human.is_empty()
    }

    pub fn from_snapshot(s: &FleetSnapshot) -> Report {
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
            report.certificates.push(Certificate {
                name: name.clone(),
                generation: published,
                fingerprint_sha256: g.map(|g| g.fingerprint_sha256.clone()),
                not_after: g.map(|g| g.not_after.clone()),
                lock_holder: s.locks.get(&name).cloned(),
                units,
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
                let matches = match (g, &fp) {
                    (Some(g), Some(fp)) => g.fingerprint_sha256.eq_ignore_ascii_case(fp),
                    _ => false,
                };
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
                    matches,
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
            out.push_str(&format!(
                "  {:<24} {:<6} {:>10}  {:<16}  {:<5}  {:<12}  {}\n",
                "MEMBER", "ALIVE", "GENERATION", "FINGERPRINT", "MATCH", "LAST RESULT", "LAST SEEN"
            ));
            for r in self.rows.iter().filter(|r| r.certificate == c.name) {
                out.push_str(&format!(
                    "  {:<24} {:<6} {:>10}  {:<16}  {:<5}  {:<12}  {}{}\n",
                    r.member,
                    if r.alive { "yes" } else { "gone" },
                    r.generation,
                    short(&r.fingerprint_sha256),
                    if r.matches { "yes" } else { "no" },
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
        let r = Report::from_snapshot(&s);
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
        let r = Report::from_snapshot(&s);
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
        let r = Report::from_snapshot(&s);
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
        let r = Report::from_snapshot(&s);
        assert_eq!(r.lagging, vec!["new (www)".to_owned()]);
    }
}
