//! `ccm-agent demo` end to end, as a user runs it: the binary starts the emulator and the
//! agent, writes certificates, and renews them on its fast clock.

use std::io::{BufRead, BufReader};
use std::time::{Duration, Instant};

#[test]
fn demo_installs_and_renews_on_its_own() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_ccm-agent"))
        .args(["demo", "--speed", "600", "--duration", "40", "--metrics-listen", "127.0.0.1:0", "--dir"])
        .arg(dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn demo");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = Vec::new();
    let start = Instant::now();
    let mut changed_after_start = false;
    let mut cycles = 0;
    for line in BufReader::new(stdout).lines() {
        let Ok(line) = line else { break };
        if line.contains("check:") {
            cycles += 1;
            // "N managed, M changed, ...": a later pass that changed something is a renewal.
            if cycles > 1 && !line.contains(" 0 changed") {
                changed_after_start = true;
            }
        }
        lines.push(line);
        if changed_after_start || start.elapsed() > Duration::from_secs(60) {
            break;
        }
    }
    let _ = std::process::Command::new("kill").args(["-INT", &child.id().to_string()]).status();
    let status = child.wait().expect("wait");
    let out = lines.join("\n");
    assert!(out.contains("ccm-agent demo is running"), "{out}");
    assert!(out.contains("/metrics"), "{out}");
    for name in ["web", "api", "demo-app"] {
        let cert = dir.path().join("live").join(name).join("cert.pem");
        let pem = std::fs::read_to_string(&cert).unwrap_or_else(|e| panic!("{}: {e}\n{out}", cert.display()));
        ccm_agent::pki::parse_cert(&pem).expect("a real certificate");
    }
    assert!(changed_after_start, "no renewal seen within a minute:\n{out}");
    assert!(status.success() || status.code() == Some(0) || status.code().is_none(), "{status:?}");
    assert!(dir.path().join("ccm-agent.toml").exists());
}
