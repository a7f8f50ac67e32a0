//! The rule for tests whose prerequisite is missing (`tests/required`): under CI the test fails
//! with the reason, elsewhere it passes after printing why it was skipped. Each case runs this
//! test binary again, on the ignored probe test below, with `CI` set or not.

#![allow(clippy::unwrap_used)]

mod required;

use std::process::{Command, Output};

const ABSENT: &str = "ccm-agent-test-no-such-program";

/// Not run on its own: the cases below run it in a child process with a chosen `CI`.
#[test]
#[ignore = "run by the tests below in a child process"]
fn probe_needs_an_absent_program() {
    let Some(path) = required::binary(&[ABSENT], "ccm-agent-test-package") else {
        return;
    };
    panic!("{ABSENT} was found at {}", path.display());
}

fn probe(ci: Option<&str>) -> Output {
    let exe = std::env::current_exe().unwrap();
    let mut cmd = Command::new(exe);
    cmd.args(["--ignored", "--exact", "probe_needs_an_absent_program"])
        .args(["--test-threads", "1", "--nocapture"])
        .env_remove("CI");
    if let Some(ci) = ci {
        cmd.env("CI", ci);
    }
    cmd.output().unwrap()
}

fn stderr(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn a_missing_program_fails_the_test_under_ci() {
    for ci in ["true", "1", "yes", "TRUE"] {
        let out = probe(Some(ci));
        let text = stderr(&out);
        assert!(!out.status.success(), "CI={ci}: the probe passed:\n{text}");
        assert!(
            text.contains(&format!("{ABSENT} is not installed"))
                && text.contains("apt-get install ccm-agent-test-package")
                && text.contains("CI is set"),
            "CI={ci}: {text}"
        );
    }
}

#[test]
fn a_missing_program_skips_with_a_reason_outside_ci() {
    for ci in [None, Some(""), Some("false"), Some("0")] {
        let out = probe(ci);
        let text = stderr(&out);
        assert!(out.status.success(), "CI={ci:?}: the probe failed:\n{text}");
        assert!(
            text.contains(&format!(
                "skipped: probe_needs_an_absent_program because {ABSENT} is not installed \
                 (apt-get install ccm-agent-test-package)"
            )),
            "CI={ci:?}: {text}"
        );
    }
}

#[test]
fn an_installed_program_is_found_in_path() {
    let sh = required::find_binary(&[ABSENT, "sh"]).unwrap();
    assert!(sh.ends_with("sh"), "{}", sh.display());
}
