//! Runs one child process (a config test, a reload command, a hook) with a time limit, keeping
//! the tail of its output. The child gets its own process group so that a timeout kills
//! everything it started (a shell and its `sleep`), not only the direct child.

use std::fmt;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;

/// At most this much of each of stdout and stderr is kept (the end of it: errors come last).
pub const OUTPUT_LIMIT: usize = 8 * 1024;
/// After the child exits, its output is read for at most this long: a daemon it started may
/// hold the pipes open forever.
const DRAIN_GRACE: Duration = Duration::from_secs(2);

/// A command line: program and arguments, exactly as executed (no shell unless argv says so).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Argv(pub Vec<String>);

impl Argv {
    pub fn new<I, S>(args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Argv(args.into_iter().map(Into::into).collect())
    }

    /// `sh -c SCRIPT`, for hooks written as one string (certbot's hooks are shell commands).
    pub fn shell(script: impl Into<String>) -> Self {
        Argv(vec!["/bin/sh".into(), "-c".into(), script.into()])
    }

    pub fn program(&self) -> Option<&str> {
        self.0.first().map(String::as_str)
    }
}

impl fmt::Display for Argv {
    /// Shell-like quoting, for messages and `--dry-run` (not meant to be pasted into a shell).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, a) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            let plain = !a.is_empty()
                && a.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,@+%".contains(&b));
            if plain {
                f.write_str(a)?;
            } else {
                write!(f, "'{}'", a.replace('\'', r"'\''"))?;
            }
        }
        Ok(())
    }
}

/// What a finished child did.
#[derive(Clone, Debug)]
pub struct Finished {
    pub status: ExitStatus,
    /// The end of stdout (lossy UTF-8), at most [`OUTPUT_LIMIT`] bytes.
    pub stdout: String,
    /// The end of stderr (lossy UTF-8), at most [`OUTPUT_LIMIT`] bytes.
    pub stderr: String,
}

impl Finished {
    pub fn success(&self) -> bool {
        self.status.success()
    }
}

/// Why a child did not finish successfully. Every variant names the command; the messages carry
/// the child's stderr (the server's own words for what is wrong).
#[derive(Clone, Debug, thiserror::Error)]
pub enum RunError {
    #[error("`{argv}`: cannot start: {error}")]
    Spawn { argv: Argv, error: String },
    #[error(
        "`{argv}`: killed after {timeout:?} (time limit){}",
        output_suffix(stdout, stderr)
    )]
    Timeout {
        argv: Argv,
        timeout: Duration,
        stdout: String,
        stderr: String,
    },
    #[error("`{argv}`: {status}{}", output_suffix(stdout, stderr))]
    Failed {
        argv: Argv,
        status: ExitStatus,
        stdout: String,
        stderr: String,
    },
}

impl RunError {
    /// The child's stderr, if it ran.
    pub fn stderr(&self) -> &str {
        match self {
            RunError::Spawn { .. } => "",
            RunError::Timeout { stderr, .. } | RunError::Failed { stderr, .. } => stderr,
        }
    }
}

fn output_suffix(stdout: &str, stderr: &str) -> String {
    let (stdout, stderr) = (stdout.trim(), stderr.trim());
    match (stderr.is_empty(), stdout.is_empty()) {
        (false, _) => format!("; stderr: {stderr}"),
        (true, false) => format!("; stdout: {stdout}"),
        (true, true) => String::new(),
    }
}

/// Runs `argv` with `env` added to the agent's environment, stdin from /dev/null. A non-zero
/// exit is an error carrying stdout and stderr; so is running longer than `timeout`, after which
/// the child's whole process group is killed (SIGKILL).
pub async fn run(
    argv: &Argv,
    env: &[(String, String)],
    cwd: Option<&Path>,
    timeout: Duration,
) -> Result<Finished, RunError> {
    let Some(program) = argv.program() else {
        return Err(RunError::Spawn {
            argv: argv.clone(),
            error: "empty command".into(),
        });
    };
    let mut cmd = Command::new(program);
    cmd.args(&argv.0[1..])
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    if let Some(dir) = cwd {
        cmd.current_dir(dir);
    }
    let mut child = cmd.spawn().map_err(|e| RunError::Spawn {
        argv: argv.clone(),
        error: e.to_string(),
    })?;
    let pgid = child.id();
    let stdout = Arc::new(Mutex::new(Vec::new()));
    let stderr = Arc::new(Mutex::new(Vec::new()));
    let mut readers = Vec::new();
    if let Some(out) = child.stdout.take() {
        readers.push(tokio::spawn(collect(out, stdout.clone())));
    }
    if let Some(err) = child.stderr.take() {
        readers.push(tokio::spawn(collect(err, stderr.clone())));
    }
    let waited = tokio::time::timeout(timeout, child.wait()).await;
    let timed_out = waited.is_err();
    if timed_out {
        kill_group(pgid);
        let _ = child.kill().await;
    }
    // Read what is left, but do not wait for a daemon the child started that kept the pipes.
    let drain = async {
        for r in &mut readers {
            let _ = r.await;
        }
    };
    if tokio::time::timeout(DRAIN_GRACE, drain).await.is_err() {
        for r in &readers {
            r.abort();
        }
    }
    let text = |buf: &Arc<Mutex<Vec<u8>>>| {
        let guard = buf.lock().unwrap_or_else(|e| e.into_inner());
        String::from_utf8_lossy(&guard).into_owned()
    };
    let (stdout, stderr) = (text(&stdout), text(&stderr));
    match waited {
        Err(_) => Err(RunError::Timeout {
            argv: argv.clone(),
            timeout,
            stdout,
            stderr,
        }),
        Ok(Err(e)) => Err(RunError::Spawn {
            argv: argv.clone(),
            error: format!("waiting for it failed: {e}"),
        }),
        Ok(Ok(status)) if status.success() => Ok(Finished {
            status,
            stdout,
            stderr,
        }),
        Ok(Ok(status)) => Err(RunError::Failed {
            argv: argv.clone(),
            status,
            stdout,
            stderr,
        }),
    }
}

/// Appends what `r` yields to `buf`, keeping only the last [`OUTPUT_LIMIT`] bytes.
async fn collect(mut r: impl AsyncRead + Unpin, buf: Arc<Mutex<Vec<u8>>>) {
    let mut chunk = [0u8; 4096];
    loop {
        match r.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                let mut b = buf.lock().unwrap_or_else(|e| e.into_inner());
                b.extend_from_slice(&chunk[..n]);
                if b.len() > OUTPUT_LIMIT {
                    let cut = b.len() - OUTPUT_LIMIT;
                    b.drain(..cut);
                }
            }
        }
    }
}

fn kill_group(pgid: Option<u32>) {
    let pid = pgid
        .and_then(|p| i32::try_from(p).ok())
        .and_then(rustix::process::Pid::from_raw);
    if let Some(pid) = pid {
        // The group may be gone already; nothing to do then.
        let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test]
    async fn output_and_status() {
        let ok = run(
            &Argv::shell("echo out; echo err >&2"),
            &[],
            None,
            Duration::from_secs(10),
        )
        .await
        .unwrap();
        assert_eq!(ok.stdout, "out\n");
        assert_eq!(ok.stderr, "err\n");

        let e = run(
            &Argv::shell("echo broken config >&2; exit 3"),
            &[],
            None,
            Duration::from_secs(10),
        )
        .await
        .unwrap_err();
        assert!(matches!(e, RunError::Failed { .. }));
        assert_eq!(e.stderr(), "broken config\n");
        let msg = e.to_string();
        assert!(msg.contains("exit status: 3"), "{msg}");
        assert!(msg.contains("stderr: broken config"), "{msg}");
    }

    #[tokio::test]
    async fn env_is_passed() {
        let ok = run(
            &Argv::new(["/bin/sh", "-c", "printf %s \"$CCM_X\""]),
            &[("CCM_X".into(), "a b".into())],
            None,
            Duration::from_secs(10),
        )
        .await
        .unwrap();
        assert_eq!(ok.stdout, "a b");
    }

    #[tokio::test]
    async fn timeout_kills_the_whole_group() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("grandchild.pid");
        // A grandchild in the background writes its pid and sleeps; the shell waits for it.
        let script = format!(
            "sh -c 'echo $$ > {p}; exec sleep 30' & while [ ! -s {p} ]; do sleep 0.01; done; \
             echo started; wait",
            p = pid_file.display()
        );
        let start = std::time::Instant::now();
        let e = run(&Argv::shell(script), &[], None, Duration::from_secs(2))
            .await
            .unwrap_err();
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{:?}",
            start.elapsed()
        );
        match &e {
            RunError::Timeout { stdout, .. } => assert_eq!(stdout, "started\n"),
            other => panic!("{other:?}"),
        }
        // The grandchild went with the group: gone, or a zombie nobody has reaped yet.
        let pid = std::fs::read_to_string(&pid_file).unwrap();
        let stat = format!("/proc/{}/stat", pid.trim());
        let dead = || match std::fs::read_to_string(&stat) {
            Err(_) => true,
            Ok(s) => s
                .rsplit(") ")
                .next()
                .is_some_and(|rest| rest.starts_with('Z')),
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !dead() && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(
            dead(),
            "a process of the group outlived the timeout: {stat}"
        );
    }

    #[tokio::test]
    async fn missing_program() {
        let e = run(
            &Argv::new(["/nonexistent/nginx", "-t"]),
            &[],
            None,
            Duration::from_secs(1),
        )
        .await
        .unwrap_err();
        assert!(matches!(e, RunError::Spawn { .. }), "{e}");
        assert!(e.to_string().contains("/nonexistent/nginx"), "{e}");
    }

    #[test]
    fn display_quotes() {
        let a = Argv::new(["nginx", "-g", "daemon off;", "it's"]);
        assert_eq!(a.to_string(), r"nginx -g 'daemon off;' 'it'\''s'");
    }

    #[tokio::test]
    async fn output_is_bounded() {
        let ok = run(
            &Argv::shell("head -c 100000 /dev/zero | tr '\\0' x; echo END"),
            &[],
            None,
            Duration::from_secs(10),
        )
        .await
        .unwrap();
        assert_eq!(ok.stdout.len(), OUTPUT_LIMIT);
        assert!(ok.stdout.ends_with("xEND\n"));
    }
}
