//! A private etcd server for a test: loopback ports picked free, a temporary data directory,
//! killed when dropped. It can be stopped and started again on the same ports and data (an
//! outage). Missing etcd is a skip, or a failure under CI (`tests/required`).

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::required;

pub struct Etcd {
    bin: PathBuf,
    child: Option<Child>,
    client_port: u16,
    peer_port: u16,
    /// Plain-HTTP /health and /metrics beside a TLS client port.
    metrics_port: u16,
    dir: tempfile::TempDir,
    /// Server TLS with client certificates: (CA, certificate, key) PEM files.
    tls: Option<(PathBuf, PathBuf, PathBuf)>,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

impl Etcd {
    /// Starts one; `None` (the caller returns) when etcd is not installed outside CI.
    pub fn start() -> Option<Etcd> {
        let bin = required::binary(&["etcd"], "etcd-server")?;
        let mut e = Etcd {
            bin,
            child: None,
            client_port: free_port(),
            peer_port: free_port(),
            metrics_port: free_port(),
            dir: tempfile::tempdir().expect("tempdir"),
            tls: None,
        };
        e.launch();
        Some(e)
    }

    /// Starts one that serves clients over TLS only and requires a client certificate signed
    /// by `ca` (`--client-cert-auth`).
    pub fn start_tls(ca: PathBuf, cert: PathBuf, key: PathBuf) -> Option<Etcd> {
        let bin = required::binary(&["etcd"], "etcd-server")?;
        let mut e = Etcd {
            bin,
            child: None,
            client_port: free_port(),
            peer_port: free_port(),
            metrics_port: free_port(),
            dir: tempfile::tempdir().expect("tempdir"),
            tls: Some((ca, cert, key)),
        };
        e.launch();
        Some(e)
    }

    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.client_port)
    }

    /// Plain HTTP: /health and /metrics.
    pub fn metrics_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.metrics_port)
    }

    fn launch(&mut self) {
        let client = self.url();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let log = std::fs::File::create(self.dir.path().join("etcd.log")).expect("log");
        let mut cmd = Command::new(&self.bin);
        cmd.arg("--listen-metrics-urls").arg(self.metrics_url());
        if let Some((ca, cert, key)) = &self.tls {
            cmd.arg("--cert-file")
                .arg(cert)
                .arg("--key-file")
                .arg(key)
                .arg("--client-cert-auth")
                .arg("--trusted-ca-file")
                .arg(ca);
        }
        let child = cmd
            .arg("--name")
            .arg("test")
            .arg("--data-dir")
            .arg(self.dir.path().join("data"))
            .arg("--listen-client-urls")
            .arg(&client)
            .arg("--advertise-client-urls")
            .arg(&client)
            .arg("--listen-peer-urls")
            .arg(&peer)
            .arg("--initial-advertise-peer-urls")
            .arg(&peer)
            .arg("--initial-cluster")
            .arg(format!("test={peer}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start etcd");
        self.child = Some(child);
        self.wait_healthy();
    }

    fn wait_healthy(&self) {
        let start = Instant::now();
        loop {
            let ok = healthy_raw(self.metrics_port);
            if ok {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "etcd did not become healthy: {}",
                std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Kills the server (SIGKILL: an outage, not a clean shutdown).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same ports and data.
    pub fn restart(&mut self) {
        self.stop();
        self.launch();
    }
}

/// GET /health over a plain TCP connection (no curl needed).
fn healthy_raw(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    if s.write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.contains("\"health\":\"true\"")
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
    }
}
