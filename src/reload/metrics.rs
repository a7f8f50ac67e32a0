//! The reload's metrics: reloads by result, whether the served certificate matched at the last
//! check, and failed hooks. The daemon registers them in its registry and records every
//! [`super::apply_after_install`] result.

use prometheus::{IntCounterVec, IntGaugeVec, Opts, Registry};

use super::{ReloadError, ReloadReport, Stage};

#[derive(Clone, Debug)]
pub struct ReloadMetrics {
    /// `ccm_agent_reloads_total{name, result}`: `ok`, `config_test_failed`,
    /// `reload_failed`, `verify_failed`, `pre_hook_failed`.
    pub reloads: IntCounterVec,
    /// `ccm_agent_rollbacks_total{name, result}`: `complete` or `incomplete`.
    pub rollbacks: IntCounterVec,
    /// `ccm_agent_served_certificate_match{name}`: 1 when every endpoint served the
    /// installed certificate at the last check (the old one again, after a rollback), 0 when
    /// one did not. Absent until checked.
    pub served_match: IntGaugeVec,
    /// `ccm_agent_hook_failures_total{name, hook}`: `pre`, `deploy`, `post`.
    pub hook_failures: IntCounterVec,
}

impl ReloadMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let m = ReloadMetrics {
            reloads: IntCounterVec::new(
                Opts::new(
                    "ccm_agent_reloads_total",
                    "Server reloads after a certificate change, by result.",
                ),
                &["name", "result"],
            )?,
            rollbacks: IntCounterVec::new(
                Opts::new(
                    "ccm_agent_rollbacks_total",
                    "Rollbacks after a failed reload or check, by whether they completed.",
                ),
                &["name", "result"],
            )?,
            served_match: IntGaugeVec::new(
                Opts::new(
                    "ccm_agent_served_certificate_match",
                    "1 if the endpoints served the installed certificate at the last check.",
                ),
                &["name"],
            )?,
            hook_failures: IntCounterVec::new(
                Opts::new("ccm_agent_hook_failures_total", "Failed hooks, by hook."),
                &["name", "hook"],
            )?,
        };
        registry.register(Box::new(m.reloads.clone()))?;
        registry.register(Box::new(m.rollbacks.clone()))?;
        registry.register(Box::new(m.served_match.clone()))?;
        registry.register(Box::new(m.hook_failures.clone()))?;
        Ok(m)
    }

    /// Records one [`super::apply_after_install`] result. An unchanged install records nothing.
    pub fn observe(&self, name: &str, result: &Result<ReloadReport, ReloadError>) {
        match result {
            Ok(r) if !r.ran => {}
            Ok(r) => {
                self.reloads.with_label_values(&[name, "ok"]).inc();
                if !r.verified.is_empty() {
                    self.served_match.with_label_values(&[name]).set(1);
                }
                for s in &r.steps {
                    self.count_hook(name, s.stage, s.outcome.is_err());
                }
            }
            Err(e) => {
                self.reloads
                    .with_label_values(&[name, e.result_label()])
                    .inc();
                let done = if e.rollback.complete() {
                    "complete"
                } else {
                    "incomplete"
                };
                self.rollbacks.with_label_values(&[name, done]).inc();
                // After a rollback the installed certificate is the old one again.
                match (&e.rollback.old_served, e.stage) {
                    (Some(Ok(())), _) => self.served_match.with_label_values(&[name]).set(1),
                    (Some(Err(_)), _) | (None, Stage::Verify) => {
                        self.served_match.with_label_values(&[name]).set(0)
                    }
                    (None, _) => {}
                }
                for s in &e.steps {
                    self.count_hook(name, s.stage, s.outcome.is_err());
                }
            }
        }
    }

    fn count_hook(&self, name: &str, stage: Stage, failed: bool) {
        let hook = match stage {
            Stage::PreHook => "pre",
            Stage::DeployHook => "deploy",
            Stage::PostHook => "post",
            _ => return,
        };
        if failed {
            self.hook_failures.with_label_values(&[name, hook]).inc();
        }
    }
}
