//! A real nginx for the tests: its own prefix, pid file, temp directories and logs under a temp
//! directory, one TLS server on a loopback port. `extra.conf` (empty) is included in the `http`
//! block, so a test can break the configuration.

use std::path::{Path, PathBuf};

use super::{Running, run};

/// The nginx binary; when it is missing, a failure under CI, else `None` after printing why the
/// test is skipped.
#[track_caller]
pub fn find() -> Option<PathBuf> {
    super::required::binary(&["nginx"], "nginx")
}

/// Writes `dir/nginx.conf` serving `fullchain` and `key` for `sni` on 127.0.0.1:`port`; returns
/// its path.
pub fn write_config(dir: &Path, port: u16, sni: &str, fullchain: &Path, key: &Path) -> PathBuf {
    let conf = dir.join("nginx.conf");
    let t = dir.join("temp");
    std::fs::create_dir_all(&t).unwrap();
    std::fs::write(dir.join("extra.conf"), "# included\n").unwrap();
    std::fs::write(
        &conf,
        format!(
            r#"pid {pid};
error_log {d}/error.log notice;
worker_processes 1;
events {{ worker_connections 64; }}
http {{
    access_log {d}/access.log;
    client_body_temp_path {t}/body;
    proxy_temp_path {t}/proxy;
    fastcgi_temp_path {t}/fastcgi;
    uwsgi_temp_path {t}/uwsgi;
    scgi_temp_path {t}/scgi;
    include {d}/extra.conf;
    server {{
        listen 127.0.0.1:{port} ssl;
        server_name {sni};
        ssl_certificate {fullchain};
        ssl_certificate_key {key};
        location / {{ return 200 "ok\n"; }}
    }}
}}
"#,
            pid = pid_file(dir).display(),
            d = dir.display(),
            t = t.display(),
            fullchain = fullchain.display(),
            key = key.display(),
        ),
    )
    .unwrap();
    conf
}

/// `nginx -p DIR -c CONF` (it daemonizes); the server is stopped when the result is dropped.
pub fn start(binary: &Path, dir: &Path, conf: &Path) -> Running {
    run(&[
        binary.to_str().unwrap(),
        "-p",
        dir.to_str().unwrap(),
        "-c",
        conf.to_str().unwrap(),
    ]);
    Running {
        pid_file: pid_file(dir),
        error_log: dir.join("error.log"),
    }
}

/// The pid file of the server configured in `dir`.
pub fn pid_file(dir: &Path) -> PathBuf {
    dir.join("nginx.pid")
}
