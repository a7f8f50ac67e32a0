//! What the binary writes, read the way operators read it: through a pipe (no colour codes,
//! plain values), with stderr as the journal's stream (`JOURNAL_STREAM` naming it: an sd-daemon
//! priority on every line, no timestamp), and as JSON (the documented event fields). The agent
//! runs `ccm-agent renew` against the emulator with real files and a real pre hook that can be
//! made to fail, so the runs include an issue, an install, a reload, a rollback and failures.

use std::fs::File;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use ccm_agent::emulator::{Emulator, EmulatorConfig};
use serde_json::Value;

struct Setup {
    _rt: tokio::runtime::Runtime,
    _emu: Emulator,
    dir: tempfile::TempDir,
    cfg: PathBuf,
}

impl Setup {
    /// The emulator with an issuing CA, and a configuration with `web` (PCA, a pre hook that
    /// fails once `fail-hook` exists in the directory) and `broken` (a CA that does not exist).
    fn new() -> Self {
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        let (emu, ca_id) = rt.block_on(async {
            ccm_agent::cloud::install_crypto_provider();
            let emu = Emulator::start(EmulatorConfig::default())
                .await
                .expect("emulator");
            let shared = emu.shared().clone();
            let (_, sub) = tokio::task::spawn_blocking(move || {
                ccm_agent::emulator::pca::ca::create_active_ca_pair(
                    &shared,
                    "logs test root",
                    "logs test issuing CA",
                )
            })
            .await
            .expect("join")
            .expect("CA pair");
            (emu, sub)
        });
        let dir = tempfile::tempdir().expect("tempdir");
        let aksk = emu.aksk();
        let text = format!(
            r#"
[agent]
state_dir = "{dir}/state"
host_id = "test-host"

[cloud]
endpoint = "{endpoint}"
timeout = "5s"

[cloud.auth]
access_key = "{ak}"
secret_key_env = "CCM_TEST_SK"
domain_id = "{domain}"

[defaults.output]
base_dir = "{dir}/live"

[[certificates]]
name = "web"
[certificates.pca]
ca_id = "{ca_id}"
sans = ["dns:web.test.internal"]
validity = {{ type = "DAY", value = 30 }}
extended_key_usage = ["server_auth"]
[certificates.hooks]
pre = "test ! -e '{dir}/fail-hook'"

[[certificates]]
name = "broken"
[certificates.pca]
ca_id = "0b0c0d0e-0000-4000-8000-000000000000"
sans = ["dns:broken.test.internal"]
validity = {{ type = "DAY", value = 30 }}
"#,
            dir = dir.path().display(),
            endpoint = emu.base_url(),
            ak = aksk.access_key,
            domain = aksk.domain_id.unwrap_or_default(),
        );
        let cfg = dir.path().join("agent.toml");
        std::fs::write(&cfg, text).expect("write config");
        Setup {
            _rt: rt,
            _emu: emu,
            dir,
            cfg,
        }
    }

    /// `ccm-agent ARGS --config CFG` with stdout piped and stderr as given, in an environment
    /// without the variables that change the log output unless `env` sets them.
    fn run(&self, args: &[&str], stderr: Stdio, env: &[(&str, String)]) -> Output {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ccm-agent"));
        cmd.args(args)
            .arg("--config")
            .arg(&self.cfg)
            .env("CCM_TEST_SK", ccm_agent::emulator::DEFAULT_SECRET_KEY)
            .env_remove("JOURNAL_STREAM")
            .env_remove("NO_COLOR")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr);
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().expect("run ccm-agent")
    }

    /// The next `web` install fails its pre hook (and is rolled back).
    fn fail_the_hook(&self) {
        std::fs::write(self.dir.path().join("fail-hook"), "").expect("marker");
    }

    fn web_fingerprint(&self) -> String {
        let pem = std::fs::read_to_string(self.dir.path().join("live/web/cert.pem"))
            .expect("web cert.pem");
        ccm_agent::pki::parse_cert(&pem)
            .expect("a certificate")
            .sha256_fingerprint_hex
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A file to use as stderr, and `JOURNAL_STREAM` naming it as systemd would (`DEV:INODE`).
fn journal_file(path: &Path) -> (File, String) {
    let file = File::create(path).expect("create stderr file");
    let meta = file.metadata().expect("stat");
    let stream = format!("{}:{}", meta.dev(), meta.ino());
    (file, stream)
}

#[test]
fn through_a_pipe_no_colour_codes_and_plain_values() {
    let s = Setup::new();
    let out = s.run(&["renew"], Stdio::piped(), &[]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "broken fails\n{stdout}{stderr}");
    assert!(!out.stdout.contains(&0x1b), "ESC in stdout:\n{stdout}");
    assert!(!out.stderr.contains(&0x1b), "ESC in stderr:\n{stderr}");

    // The command's own results: plain words, not Rust debug output.
    assert!(stdout.contains("web: renewed (certificate "), "{stdout}");
    assert!(stdout.contains("broken: FAILED ("), "{stdout}");
    assert!(!stdout.contains('{'), "{stdout}");
    // The logs: `action=renewed cloud_id=…`, not `action=Renewed { cloud_id: "…" }`.
    let updated = stderr
        .lines()
        .find(|l| l.contains("certificate updated") && l.contains("certificate=web"))
        .unwrap_or_else(|| panic!("no update line for web:\n{stderr}"));
    assert!(updated.contains(" action=renewed cloud_id="), "{updated}");
    assert!(
        !updated.contains('{') && !updated.contains('"'),
        "{updated}"
    );
}

#[test]
fn under_the_journal_every_line_carries_its_priority_and_no_timestamp() {
    let s = Setup::new();
    let path = s.dir.path().join("first.stderr");
    let (file, stream) = journal_file(&path);
    let first = s.run(&["renew"], file.into(), &[("JOURNAL_STREAM", stream)]);
    assert_eq!(first.status.code(), Some(1), "broken fails");
    s.fail_the_hook();
    let path2 = s.dir.path().join("second.stderr");
    let (file, stream) = journal_file(&path2);
    let second = s.run(
        &["renew", "--force", "web"],
        file.into(),
        &[("JOURNAL_STREAM", stream)],
    );
    assert_eq!(second.status.code(), Some(1), "the hook fails");
    let log = std::fs::read_to_string(&path).expect("read")
        + &std::fs::read_to_string(&path2).expect("read");

    let mut seen = std::collections::BTreeSet::new();
    for line in log.lines() {
        let (priority, rest) = line
            .strip_prefix('<')
            .and_then(|l| l.split_once('>'))
            .unwrap_or_else(|| panic!("no <N> prefix: {line:?}\n{log}"));
        // The level comes first: journald adds its own timestamp.
        let level = rest.split_whitespace().next().unwrap_or_default();
        let want = match level {
            "ERROR" => "3",
            "WARN" => "4",
            "INFO" => "6",
            "DEBUG" | "TRACE" => "7",
            other => panic!("line does not start with its level ({other:?}): {line:?}"),
        };
        assert_eq!(priority, want, "{line}");
        seen.insert(priority.to_owned());
    }
    for p in ["3", "4", "6"] {
        assert!(seen.contains(p), "no <{p}> line:\n{log}");
    }
    assert!(
        log.lines()
            .any(|l| l.starts_with("<3>ERROR") && l.contains("event=failed certificate=broken")),
        "{log}"
    );
    assert!(
        log.lines()
            .any(|l| l.starts_with("<4> WARN") && l.contains("event=rolled_back certificate=web")),
        "{log}"
    );

    // An error the command reports itself (a configuration that does not load) is an error
    // to the journal too.
    let path = s.dir.path().join("config.stderr");
    let (file, stream) = journal_file(&path);
    let out = Command::new(env!("CARGO_BIN_EXE_ccm-agent"))
        .args(["run", "--config"])
        .arg(s.dir.path().join("missing.toml"))
        .env("JOURNAL_STREAM", stream.clone())
        .stderr(file)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let err = std::fs::read_to_string(&path).expect("read");
    assert!(
        err.starts_with("<3>error: ") && err.contains("missing.toml"),
        "{err:?}"
    );

    // JOURNAL_STREAM names the journal's stream, not this stderr (a child of the service
    // writing to its own pipe): no prefixes.
    let out = s.run(
        &["renew", "--force", "web"],
        Stdio::piped(),
        &[("JOURNAL_STREAM", stream)],
    );
    let err = text(&out.stderr);
    assert!(
        !err.is_empty() && !err.lines().any(|l| l.starts_with('<')),
        "{err}"
    );
}

/// Every stderr line of a JSON run, parsed.
fn json_lines(out: &Output) -> Vec<Value> {
    text(&out.stderr)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
        .collect()
}

fn find<'a>(lines: &'a [Value], event: &str, certificate: &str) -> &'a Value {
    lines
        .iter()
        .find(|l| l["event"] == event && l["certificate"] == certificate)
        .unwrap_or_else(|| panic!("no {event} event for {certificate}: {lines:#?}"))
}

fn string<'a>(line: &'a Value, field: &str) -> &'a str {
    match line[field].as_str() {
        Some(s) if !s.is_empty() => s,
        _ => panic!("{field} missing or empty: {line}"),
    }
}

#[test]
fn json_events_carry_the_documented_fields() {
    let s = Setup::new();
    let out = s.run(&["--log-format", "json", "renew"], Stdio::piped(), &[]);
    assert_eq!(out.status.code(), Some(1), "broken fails");
    let lines = json_lines(&out);
    for l in &lines {
        for field in ["timestamp", "level", "target", "message"] {
            string(l, field);
        }
    }

    let issued = find(&lines, "issued", "web");
    let cloud_id = string(issued, "cloud_id");
    string(issued, "reason");

    let installed = find(&lines, "installed", "web");
    assert_eq!(string(installed, "cloud_id"), cloud_id, "{installed}");
    string(installed, "reason");
    assert_eq!(installed["action"], "renewed", "{installed}");
    let fingerprint = string(installed, "fingerprint").to_owned();
    assert_eq!(fingerprint, s.web_fingerprint());

    let reloaded = find(&lines, "reloaded", "web");
    assert_eq!(reloaded["fingerprint"], fingerprint.as_str(), "{reloaded}");

    let failed = find(&lines, "failed", "broken");
    assert_eq!(failed["level"], "ERROR", "{failed}");
    string(failed, "error_kind");
    string(failed, "error");

    // The per-certificate outcome: action and cloud id as separate fields.
    let updated = lines
        .iter()
        .find(|l| l["message"] == "certificate updated" && l["certificate"] == "web")
        .unwrap_or_else(|| panic!("no update for web: {lines:#?}"));
    assert_eq!(updated["action"], "renewed", "{updated}");
    assert_eq!(updated["cloud_id"], cloud_id, "{updated}");

    // A renewal whose pre hook fails is rolled back to the certificate installed above.
    s.fail_the_hook();
    let out = s.run(
        &["--log-format", "json", "renew", "--force", "web"],
        Stdio::piped(),
        &[],
    );
    assert_eq!(out.status.code(), Some(1), "the hook fails");
    let lines = json_lines(&out);
    let rolled_back = find(&lines, "rolled_back", "web");
    assert_eq!(rolled_back["level"], "WARN", "{rolled_back}");
    assert_eq!(rolled_back["reason"], "pre hook", "{rolled_back}");
    assert_eq!(
        rolled_back["error_kind"], "pre_hook_failed",
        "{rolled_back}"
    );
    assert_eq!(
        rolled_back["fingerprint"],
        fingerprint.as_str(),
        "{rolled_back}"
    );
    let failed = find(&lines, "failed", "web");
    assert_eq!(failed["error_kind"], "pre_hook_failed", "{failed}");
    string(failed, "error");
    assert_eq!(
        s.web_fingerprint(),
        fingerprint,
        "the old certificate is back"
    );
}
