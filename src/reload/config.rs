//! The per-certificate reload keys: `[[certificates.reload]]`, `[[certificates.verify]]`,
//! `verify_timeout` and `[certificates.hooks]`, as written (serde, unknown keys rejected) and
//! validated into a [`ReloadPlan`]. [`crate::config`] calls [`check`] for each certificate.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::{
    ApacheAction, Argv, DEFAULT_ACTION_TIMEOUT, DEFAULT_APACHE_BINARY, DEFAULT_HOOK_TIMEOUT,
    DEFAULT_NGINX_BINARY, Hooks, NginxAction, ReloadAction, ReloadPlan, SignalName, SystemdMode,
    VerifyEndpoint,
};
use crate::values::{Problem, format_duration, parse_duration};

/// Longest time limit of a reload command or hook.
pub const MAX_ACTION_TIMEOUT: Duration = Duration::from_secs(3600);
/// Longest verify window.
pub const MAX_VERIFY_TIMEOUT: Duration = Duration::from_secs(600);
/// The default verify address.
pub const DEFAULT_VERIFY_ADDRESS: &str = "127.0.0.1";

/// `[[certificates.reload]]`: one table for every type; [`check`] refuses keys the type does
/// not use.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawReload {
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub binary: Option<String>,
    pub config: Option<String>,
    pub prefix: Option<String>,
    pub pid_file: Option<String>,
    pub systemd_unit: Option<String>,
    pub unit: Option<String>,
    pub mode: Option<String>,
    pub signal: Option<String>,
    pub command: Option<Vec<String>>,
    pub timeout: Option<String>,
}

/// `[[certificates.verify]]`
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawVerify {
    pub address: Option<String>,
    pub port: Option<i64>,
    pub sni: Option<String>,
}

/// `[certificates.hooks]`: each of pre, deploy, post is a shell command string, or a list whose
/// items are shell command strings or argument arrays.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHooks {
    pub pre: Option<toml::Value>,
    pub deploy: Option<toml::Value>,
    pub post: Option<toml::Value>,
    pub timeout: Option<String>,
}

/// What [`check`] found.
#[derive(Debug, Default)]
pub struct Checked {
    pub plan: ReloadPlan,
    pub problems: Vec<Problem>,
    pub warnings: Vec<String>,
}

#[derive(Default)]
struct Ck {
    problems: Vec<Problem>,
    warnings: Vec<String>,
}

impl Ck {
    fn err(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem {
            key: key.into(),
            message: message.into(),
            position: None,
        });
    }

    fn duration(&mut self, key: &str, value: Option<&String>, max: Duration) -> Option<Duration> {
        let value = value?;
        match parse_duration(value) {
            Ok(d) if d.is_zero() => {
                self.err(key, "must be longer than zero");
                None
            }
            Ok(d) if d > max => {
                self.err(key, format!("must be at most {}", format_duration(max)));
                None
            }
            Ok(d) => Some(d),
            Err(e) => {
                self.err(key, e);
                None
            }
        }
    }

    fn abs_path(&mut self, key: &str, value: Option<&String>) -> Option<PathBuf> {
        let value = value?;
        if value.is_empty() || !Path::new(value).is_absolute() {
            self.err(key, format!("{value:?} must be an absolute path"));
            return None;
        }
        Some(PathBuf::from(value))
    }

    /// An absolute path, or a bare name looked up in `PATH`.
    fn program(&mut self, key: &str, value: &str) -> Option<String> {
        let ok = !value.is_empty()
            && !value.chars().any(char::is_whitespace)
            && (Path::new(value).is_absolute() || !value.contains('/'));
        if !ok {
            self.err(
                key,
                format!("{value:?} must be an absolute path or a program name found in PATH"),
            );
            return None;
        }
        Some(value.to_owned())
    }

    fn unit(&mut self, key: &str, value: &str) -> Option<String> {
        let ok = !value.is_empty()
            && !value.starts_with('-')
            && value
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b":-_.\\@".contains(&b));
        if !ok {
            self.err(key, format!("{value:?} is not a systemd unit name"));
            return None;
        }
        Some(value.to_owned())
    }
}

/// Validates one certificate's reload keys. `prefix` is like `certificates[0].`.
pub fn check(
    prefix: &str,
    reload: &[RawReload],
    verify: &[RawVerify],
    verify_timeout: Option<&String>,
    hooks: Option<&RawHooks>,
) -> Checked {
    let mut c = Ck::default();
    let mut plan = ReloadPlan::default();
    for (i, r) in reload.iter().enumerate() {
        if let Some(a) = check_action(&mut c, &format!("{prefix}reload[{i}]."), r) {
            plan.actions.push(a);
        }
    }
    for (i, v) in verify.iter().enumerate() {
        if let Some(e) = check_verify(&mut c, &format!("{prefix}verify[{i}]."), v) {
            plan.verify.push(e);
        }
    }
    let key = format!("{prefix}verify_timeout");
    if let Some(d) = c.duration(&key, verify_timeout, MAX_VERIFY_TIMEOUT) {
        plan.verify_timeout = d;
    }
    if verify_timeout.is_some() && verify.is_empty() {
        c.warnings.push(format!(
            "{key}: ignored: no [[verify]] endpoints are configured"
        ));
    }
    if let Some(h) = hooks {
        plan.hooks = check_hooks(&mut c, &format!("{prefix}hooks."), h);
    }
    if !plan.actions.is_empty() && verify.is_empty() {
        c.warnings.push(format!(
            "{prefix}reload: the served certificate is not checked after a reload (no \
             [[verify]] endpoints): a reload the server rejected silently goes unnoticed"
        ));
    }
    Checked {
        plan,
        problems: c.problems,
        warnings: c.warnings,
    }
}

fn check_action(c: &mut Ck, p: &str, r: &RawReload) -> Option<ReloadAction> {
    const TYPES: &str = "nginx, apache, systemd, signal, command";
    let Some(kind) = r.kind.as_deref() else {
        c.err(format!("{p}type"), format!("missing: one of {TYPES}"));
        return None;
    };
    let allowed: &[&str] = match kind {
        "nginx" => &[
            "binary",
            "config",
            "prefix",
            "pid_file",
            "systemd_unit",
            "timeout",
        ],
        "apache" => &["binary", "config", "pid_file", "systemd_unit", "timeout"],
        "systemd" => &["unit", "mode", "timeout"],
        "signal" => &["pid_file", "signal"],
        "command" => &["command", "timeout"],
        other => {
            c.err(
                format!("{p}type"),
                format!("{other:?} is not one of {TYPES}"),
            );
            return None;
        }
    };
    let given = [
        ("binary", r.binary.is_some()),
        ("config", r.config.is_some()),
        ("prefix", r.prefix.is_some()),
        ("pid_file", r.pid_file.is_some()),
        ("systemd_unit", r.systemd_unit.is_some()),
        ("unit", r.unit.is_some()),
        ("mode", r.mode.is_some()),
        ("signal", r.signal.is_some()),
        ("command", r.command.is_some()),
        ("timeout", r.timeout.is_some()),
    ];
    let before = c.problems.len();
    for (key, present) in given {
        if present && !allowed.contains(&key) {
            c.err(
                format!("{p}{key}"),
                format!(
                    "not used by type = {kind:?} (it takes {})",
                    allowed.join(", ")
                ),
            );
        }
    }
    let timeout = c
        .duration(
            &format!("{p}timeout"),
            r.timeout.as_ref(),
            MAX_ACTION_TIMEOUT,
        )
        .unwrap_or(DEFAULT_ACTION_TIMEOUT);
    let binary = |c: &mut Ck, default: &str| {
        let b = r.binary.as_deref().unwrap_or(default);
        c.program(&format!("{p}binary"), b).map(PathBuf::from)
    };
    let config = c.abs_path(&format!("{p}config"), r.config.as_ref());
    let pid_file = c.abs_path(&format!("{p}pid_file"), r.pid_file.as_ref());
    let systemd_unit = r
        .systemd_unit
        .as_deref()
        .and_then(|u| c.unit(&format!("{p}systemd_unit"), u));
    if r.pid_file.is_some() && r.systemd_unit.is_some() && kind != "signal" {
        c.err(
            format!("{p}systemd_unit"),
            "set either pid_file (reload by signal) or systemd_unit, not both",
        );
    }
    let action = match kind {
        "nginx" => {
            let prefix = c.abs_path(&format!("{p}prefix"), r.prefix.as_ref());
            binary(c, DEFAULT_NGINX_BINARY).map(|binary| {
                ReloadAction::Nginx(NginxAction {
                    binary,
                    config,
                    prefix,
                    pid_file,
                    systemd_unit,
                    timeout,
                })
            })
        }
        "apache" => binary(c, DEFAULT_APACHE_BINARY).map(|binary| {
            ReloadAction::Apache(ApacheAction {
                binary,
                config,
                pid_file,
                systemd_unit,
                timeout,
            })
        }),
        "systemd" => {
            let mode = match r.mode.as_deref() {
                None => Some(SystemdMode::Reload),
                Some(m) => {
                    let found = SystemdMode::ALL
                        .iter()
                        .find(|(n, _)| *n == m)
                        .map(|(_, v)| *v);
                    if found.is_none() {
                        c.err(
                            format!("{p}mode"),
                            format!("{m:?} is not one of reload, restart, reload-or-restart"),
                        );
                    }
                    found
                }
            };
            let unit = match r.unit.as_deref() {
                Some(u) => c.unit(&format!("{p}unit"), u),
                None => {
                    c.err(format!("{p}unit"), "missing: the unit to reload");
                    None
                }
            };
            match (unit, mode) {
                (Some(unit), Some(mode)) => Some(ReloadAction::Systemd {
                    unit,
                    mode,
                    timeout,
                }),
                _ => None,
            }
        }
        "signal" => {
            let signal = match r.signal.as_deref() {
                None => Some(SignalName::Hup),
                Some(s) => {
                    let found = SignalName::parse(s);
                    if found.is_none() {
                        let names: Vec<_> = SignalName::ALL.iter().map(|(n, _)| *n).collect();
                        c.err(
                            format!("{p}signal"),
                            format!("{s:?} is not one of {}", names.join(", ")),
                        );
                    }
                    found
                }
            };
            if r.pid_file.is_none() {
                c.err(format!("{p}pid_file"), "missing: the pid file to signal");
            }
            match (pid_file, signal) {
                (Some(pid_file), Some(signal)) => Some(ReloadAction::Signal { pid_file, signal }),
                _ => None,
            }
        }
        _ => match r.command.as_deref() {
            None | Some([]) => {
                c.err(
                    format!("{p}command"),
                    "missing: the program and its arguments, as an array",
                );
                None
            }
            Some(argv) => {
                c.program(&format!("{p}command"), &argv[0])
                    .map(|_| ReloadAction::Command {
                        argv: Argv(argv.to_vec()),
                        timeout,
                    })
            }
        },
    };
    if c.problems.len() > before {
        return None;
    }
    action
}

fn check_verify(c: &mut Ck, p: &str, v: &RawVerify) -> Option<VerifyEndpoint> {
    let address = v
        .address
        .clone()
        .unwrap_or_else(|| DEFAULT_VERIFY_ADDRESS.to_owned());
    let address_ok = !address.is_empty()
        && (address.parse::<std::net::IpAddr>().is_ok()
            || rustls::pki_types::DnsName::try_from(address.as_str()).is_ok());
    if !address_ok {
        c.err(
            format!("{p}address"),
            format!("{address:?} is not a host name or IP address"),
        );
    }
    let port = match v.port {
        Some(n) if (1..=65535).contains(&n) => u16::try_from(n).ok(),
        Some(n) => {
            c.err(format!("{p}port"), format!("{n} is not within 1..=65535"));
            None
        }
        None => {
            c.err(format!("{p}port"), "missing: the TLS port to check");
            None
        }
    };
    if let Some(sni) = &v.sni
        && rustls::pki_types::DnsName::try_from(sni.as_str()).is_err()
    {
        c.err(format!("{p}sni"), format!("{sni:?} is not a DNS name"));
        return None;
    }
    if !address_ok {
        return None;
    }
    Some(VerifyEndpoint {
        address,
        port: port?,
        sni: v.sni.clone(),
    })
}

fn check_hooks(c: &mut Ck, p: &str, h: &RawHooks) -> Hooks {
    let timeout = c
        .duration(
            &format!("{p}timeout"),
            h.timeout.as_ref(),
            MAX_ACTION_TIMEOUT,
        )
        .unwrap_or(DEFAULT_HOOK_TIMEOUT);
    Hooks {
        pre: hook_list(c, &format!("{p}pre"), h.pre.as_ref()),
        deploy: hook_list(c, &format!("{p}deploy"), h.deploy.as_ref()),
        post: hook_list(c, &format!("{p}post"), h.post.as_ref()),
        timeout,
    }
}

/// `"cmd"`, or `["cmd 1", ["/bin/prog", "arg"]]`.
fn hook_list(c: &mut Ck, key: &str, v: Option<&toml::Value>) -> Vec<Argv> {
    let bad = "must be a shell command string, or a list of shell command strings and \
               argument arrays";
    let items: Vec<&toml::Value> = match v {
        None => return Vec::new(),
        Some(toml::Value::String(_)) => v.into_iter().collect(),
        Some(toml::Value::Array(a)) => a.iter().collect(),
        Some(_) => {
            c.err(key, bad);
            return Vec::new();
        }
    };
    let mut out = Vec::new();
    for (i, item) in items.into_iter().enumerate() {
        let k = format!("{key}[{i}]");
        match item {
            toml::Value::String(s) if !s.trim().is_empty() => out.push(Argv::shell(s.clone())),
            toml::Value::String(_) => c.err(k, "empty command"),
            toml::Value::Array(args) => {
                let strings: Option<Vec<String>> =
                    args.iter().map(|a| a.as_str().map(str::to_owned)).collect();
                match strings {
                    Some(argv) if !argv.is_empty() => {
                        if c.program(&k, &argv[0]).is_some() {
                            out.push(Argv(argv));
                        }
                    }
                    Some(_) => c.err(k, "empty command"),
                    None => c.err(k, "an argument array holds only strings"),
                }
            }
            _ => c.err(k, bad),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::config::Config;

    fn with(extra: &str) -> String {
        format!(
            r#"
[cloud]
region = "ap-southeast-1"

[[certificates]]
name = "www"
output = {{ dir = "/etc/tls/www" }}
scm = {{ domain = "www.example.com" }}
{extra}"#
        )
    }

    fn plan(extra: &str) -> (ReloadPlan, Vec<String>) {
        match Config::from_str(&with(extra), "t.toml") {
            Ok(c) => (c.certificates[0].reload.clone(), c.warnings),
            Err(e) => panic!("{e}"),
        }
    }

    fn problems(extra: &str) -> Vec<String> {
        match Config::from_str(&with(extra), "t.toml") {
            Ok(c) => panic!("accepted: {:#?}", c.certificates[0].reload),
            Err(e) => e.problems.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn empty_by_default() {
        let (p, _) = plan("");
        assert!(p.is_empty());
        assert_eq!(p, ReloadPlan::default());
    }

    #[test]
    fn every_type() {
        let (p, warnings) = plan(
            r#"
verify_timeout = "10s"
[[certificates.reload]]
type = "nginx"
binary = "/usr/sbin/nginx"
config = "/etc/nginx/nginx.conf"
prefix = "/etc/nginx"
pid_file = "/run/nginx.pid"
timeout = "20s"
[[certificates.reload]]
type = "apache"
binary = "apache2ctl"
systemd_unit = "apache2.service"
[[certificates.reload]]
type = "systemd"
unit = "haproxy.service"
mode = "reload-or-restart"
[[certificates.reload]]
type = "signal"
pid_file = "/run/sidecar.pid"
signal = "SIGUSR1"
[[certificates.reload]]
type = "command"
command = ["/usr/local/bin/reload-envoy", "--drain", "5s"]
timeout = "90s"
[[certificates.verify]]
port = 443
sni = "www.example.com"
[[certificates.verify]]
address = "::1"
port = 8443
[certificates.hooks]
pre = "logger about to reload"
deploy = ["touch /run/renewed", ["/usr/bin/env", "A=b c"]]
timeout = "5s"
"#,
        );
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(
            p.actions[0],
            ReloadAction::Nginx(NginxAction {
                binary: "/usr/sbin/nginx".into(),
                config: Some("/etc/nginx/nginx.conf".into()),
                prefix: Some("/etc/nginx".into()),
                pid_file: Some("/run/nginx.pid".into()),
                systemd_unit: None,
                timeout: Duration::from_secs(20),
            })
        );
        assert_eq!(
            p.actions[1],
            ReloadAction::Apache(ApacheAction {
                binary: "apache2ctl".into(),
                config: None,
                pid_file: None,
                systemd_unit: Some("apache2.service".into()),
                timeout: DEFAULT_ACTION_TIMEOUT,
            })
        );
        assert_eq!(
            p.actions[2],
            ReloadAction::Systemd {
                unit: "haproxy.service".into(),
                mode: SystemdMode::ReloadOrRestart,
                timeout: DEFAULT_ACTION_TIMEOUT,
            }
        );
        assert_eq!(
            p.actions[3],
            ReloadAction::Signal {
                pid_file: "/run/sidecar.pid".into(),
                signal: SignalName::Usr1,
            }
        );
        assert_eq!(
            p.actions[4],
            ReloadAction::Command {
                argv: Argv::new(["/usr/local/bin/reload-envoy", "--drain", "5s"]),
                timeout: Duration::from_secs(90),
            }
        );
        assert_eq!(
            p.verify,
            vec![
                VerifyEndpoint {
                    address: "127.0.0.1".into(),
                    port: 443,
                    sni: Some("www.example.com".into()),
                },
                VerifyEndpoint {
                    address: "::1".into(),
                    port: 8443,
                    sni: None,
                },
            ]
        );
        assert_eq!(p.verify_timeout, Duration::from_secs(10));
        assert_eq!(p.hooks.pre, vec![Argv::shell("logger about to reload")]);
        assert_eq!(
            p.hooks.deploy,
            vec![
                Argv::shell("touch /run/renewed"),
                Argv::new(["/usr/bin/env", "A=b c"])
            ]
        );
        assert!(p.hooks.post.is_empty());
        assert_eq!(p.hooks.timeout, Duration::from_secs(5));
    }

    #[test]
    fn reload_without_verify_warns() {
        let (_, warnings) = plan("[[certificates.reload]]\ntype = \"nginx\"\n");
        assert!(
            warnings.iter().any(|w| w.contains("not checked")),
            "{warnings:?}"
        );
    }

    #[test]
    fn mistakes_are_named() {
        let p = problems(
            r#"
verify_timeout = "1h"
[[certificates.reload]]
binary = "nginx"
[[certificates.reload]]
type = "lighttpd"
[[certificates.reload]]
type = "nginx"
unit = "nginx.service"
config = "nginx.conf"
[[certificates.reload]]
type = "nginx"
pid_file = "/run/nginx.pid"
systemd_unit = "nginx.service"
[[certificates.reload]]
type = "signal"
signal = "KILL"
[[certificates.reload]]
type = "command"
command = []
timeout = "0s"
[[certificates.reload]]
type = "systemd"
unit = "--now"
mode = "stop"
[[certificates.reload]]
type = "apache"
binary = "bin/apachectl"
[[certificates.verify]]
address = "not a host"
port = 70000
sni = "bad name!"
[[certificates.verify]]
address = "localhost"
[certificates.hooks]
pre = 3
deploy = ["", [], ["x", 1]]
timeout = "2h"
"#,
        );
        let expect = [
            "certificates[0].verify_timeout: must be at most 10m",
            "certificates[0].reload[0].type: missing",
            "certificates[0].reload[1].type: \"lighttpd\" is not one of",
            "certificates[0].reload[2].unit: not used by type = \"nginx\"",
            "certificates[0].reload[2].config: \"nginx.conf\" must be an absolute path",
            "certificates[0].reload[3].systemd_unit: set either pid_file",
            "certificates[0].reload[4].signal: \"KILL\" is not one of",
            "certificates[0].reload[4].pid_file: missing",
            "certificates[0].reload[5].timeout: must be longer than zero",
            "certificates[0].reload[5].command: missing",
            "certificates[0].reload[6].mode: \"stop\" is not one of",
            "certificates[0].reload[6].unit: \"--now\" is not a systemd unit name",
            "certificates[0].reload[7].binary: \"bin/apachectl\" must be an absolute path or a program name",
            "certificates[0].verify[0].address: \"not a host\"",
            "certificates[0].verify[0].port: 70000 is not within",
            "certificates[0].verify[0].sni: \"bad name!\" is not a DNS name",
            "certificates[0].verify[1].port: missing",
            "certificates[0].hooks.timeout: must be at most 1h",
            "certificates[0].hooks.pre: must be a shell command string",
            "certificates[0].hooks.deploy[0]: empty command",
            "certificates[0].hooks.deploy[1]: empty command",
            "certificates[0].hooks.deploy[2]: an argument array holds only strings",
        ];
        for e in expect {
            assert!(p.iter().any(|m| m.starts_with(e)), "{e}\nnot in {p:#?}");
        }
        assert_eq!(p.len(), expect.len(), "{p:#?}");
    }

    #[test]
    fn unknown_keys_are_refused() {
        let text = with("[[certificates.reload]]\ntype = \"nginx\"\nbinnary = \"x\"\n");
        let e = Config::from_str(&text, "t.toml").unwrap_err();
        assert!(e.to_string().contains("binnary"), "{e}");
        let text = with("[certificates.hooks]\npre_hook = \"x\"\n");
        assert!(Config::from_str(&text, "t.toml").is_err());
        let text = with("[[certificates.verify]]\nport = 1\nhost = \"x\"\n");
        assert!(Config::from_str(&text, "t.toml").is_err());
    }

    #[test]
    fn the_full_example_reloads_nginx_and_checks_www() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/config/ccm-agent.example.toml");
        let c = Config::load(Path::new(path)).unwrap();
        let p = &c.certificates[0].reload;
        assert_eq!(
            describe_lines(p),
            [
                "pre hook: `/bin/sh -c 'logger -t ccm-agent \"installing $CCM_CERT_NAME\"'` (time limit 1m)",
                "nginx: config test `/usr/sbin/nginx -c /etc/nginx/nginx.conf -t`",
                "nginx: reload SIGHUP to the pid in /run/nginx.pid",
                "verify: 127.0.0.1:443 (SNI www.example.com) serves the new certificate within 30s",
                "deploy hook: `/usr/local/bin/notify-cmdb --cert www` (time limit 1m)",
                "deploy hook: `/bin/sh -c 'cp \"$CCM_FULLCHAIN_PATH\" /srv/share/'` (time limit 1m)",
                "on failure: restore the previous files, reload again, check the old certificate",
            ]
        );
        assert!(c.certificates[1].reload.is_empty());
    }

    fn describe_lines(p: &ReloadPlan) -> Vec<String> {
        super::super::describe(p)
    }
}
