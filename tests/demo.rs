//! `ccm-agent demo` end to end, as a user runs it: the binary starts the emulator and the
//! agent, writes certificates, and renews them on its fast clock.

use std::io::{BufRead, BufReader};
use std::time::{Duration, Instant};

#[test]
fn demo_installs_and_renews_on_its_own() {
    let dir = tempfile::tempdir().expect("tempdir");
    // stdout and stderr on one pipe, as `ccm-agent demo 2>&1 | tee log` sees them.
    let (reader, writer) = std::io::pipe().expect("pipe");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_ccm-agent"))
        .args([
            "demo",
            "--speed",
            "600",
            "--duration",
            "40",
            "--metrics-listen",
            "127.0.0.1:0",
            "--dir",
        ])
        .arg(dir.path())
        .env_remove("JOURNAL_STREAM")
        .env_remove("NO_COLOR")
        .env_remove("RUST_LOG")
        .stdout(writer.try_clone().expect("dup pipe"))
        .stderr(writer)
        .spawn()
        .expect("spawn demo");
    // The parent's copies of the write end are gone (moved into the command, dropped with it
    // at spawn): the reader sees EOF when the demo exits.
    let mut lines = Vec::new();
    let start = Instant::now();
    let mut changed_after_start = false;
    let mut passes = 0;
    for line in BufReader::new(reader).lines() {
        let Ok(line) = line else { break };
        if line.contains("check finished") {
            passes += 1;
            // "N managed, M changed, ...": a later pass that changed something is a renewal.
            if passes > 1 && !line.contains(" 0 changed") {
                changed_after_start = true;
            }
        }
        lines.push(line);
        if changed_after_start || start.elapsed() > Duration::from_secs(60) {
            break;
        }
    }
    let _ = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status();
    let status = child.wait().expect("wait");
    let out = lines.join("\n");
    assert!(out.contains("ccm-agent demo is running"), "{out}");
    assert!(out.contains("/metrics"), "{out}");
    for name in ["web", "api", "demo-app"] {
        let cert = dir.path().join("live").join(name).join("cert.pem");
        let pem = std::fs::read_to_string(&cert)
            .unwrap_or_else(|e| panic!("{}: {e}\n{out}", cert.display()));
        ccm_agent::pki::parse_cert(&pem).expect("a real certificate");
    }
    assert!(
        changed_after_start,
        "no renewal seen within a minute:\n{out}"
    );
    // Each pass appears once: its summary ("N managed, M changed, …") is on its one log line.
    let summaries = lines.iter().filter(|l| l.contains(" managed, ")).count();
    assert_eq!(summaries, passes, "a pass reported twice:\n{out}");
    // Through a pipe: no colour codes.
    assert!(!out.contains('\x1b'), "ESC in piped output:\n{out}");
    assert!(
        status.success() || status.code() == Some(0) || status.code().is_none(),
        "{status:?}"
    );
    assert!(dir.path().join("ccm-agent.toml").exists());
}
