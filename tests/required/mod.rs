//! Prerequisites a test cannot provide itself (nginx, Apache, Prometheus, promtool, an NSS
//! module, root). When one is missing, [`missing`] decides: under CI (`CI` set to a true value,
//! as `.ci/run` runs) the test fails, so an install step that went missing cannot turn the suite
//! green; elsewhere the test prints `skipped: TEST because ...` to stderr and returns.

#![allow(dead_code)]

use std::path::PathBuf;

/// Whether `CI` is set to a true value (anything but empty, `0`, `false`, `no` or `off`).
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| {
        let v = v.trim().to_ascii_lowercase();
        !matches!(v.as_str(), "" | "0" | "false" | "no" | "off")
    })
}

/// `because` says what is missing, `hint` how to get it. Panics under CI; otherwise prints why
/// the calling test is skipped, and the caller returns.
#[track_caller]
pub fn missing(because: &str, hint: &str) {
    let current = std::thread::current();
    let test = current.name().unwrap_or("this test");
    if in_ci() {
        panic!("{test}: {because} ({hint}); CI is set, so a missing prerequisite fails the test");
    }
    eprintln!("skipped: {test} because {because} ({hint})");
}

/// The first of `names` found in PATH or the sbin directories, where Debian puts servers.
pub fn find_binary(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs: Vec<PathBuf> = std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from))
        .collect();
    names
        .iter()
        .flat_map(|n| dirs.iter().map(move |d| d.join(n)))
        .find(|p| p.is_file())
}

/// The first of `names` that is installed; when none is, [`missing`] (a failure under CI, a
/// printed skip elsewhere) and `None`. `package` names the Debian package that provides it.
#[track_caller]
pub fn binary(names: &[&str], package: &str) -> Option<PathBuf> {
    let found = find_binary(names);
    if found.is_none() {
        missing(
            &format!("{} is not installed", names.join(" or ")),
            &format!("apt-get install {package}"),
        );
    }
    found
}
