//! A real Apache httpd for the tests: its own ServerRoot, pid file, runtime directory and logs
//! under a temp directory, one TLS virtual host on a loopback port. `extra.conf` (empty) is
//! included at server level and `key.conf` (the key directive) inside the virtual host, so a
//! test can break either.

use std::path::{Path, PathBuf};

use super::{Running, is_root, run};

const MODULE_DIRS: [&str; 3] = [
    "/usr/lib/apache2/modules",
    "/usr/lib64/httpd/modules",
    "/usr/lib/httpd/modules",
];

/// The server binary and the directory with mod_ssl.
pub struct Installed {
    pub binary: PathBuf,
    pub modules: PathBuf,
}

/// Apache and mod_ssl; when either is missing, a failure under CI, else `None` after printing
/// why the test is skipped.
#[track_caller]
pub fn find() -> Option<Installed> {
    let binary = super::required::binary(&["apache2", "httpd"], "apache2")?;
    let Some(modules) = MODULE_DIRS
        .iter()
        .map(Path::new)
        .find(|d| d.join("mod_ssl.so").is_file())
    else {
        super::required::missing(
            &format!("mod_ssl.so is not in {MODULE_DIRS:?}"),
            "apt-get install apache2",
        );
        return None;
    };
    Some(Installed {
        binary,
        modules: modules.to_path_buf(),
    })
}

impl Installed {
    /// Writes `dir/httpd.conf` serving `fullchain` and `key` for `sni` on 127.0.0.1:`port`;
    /// returns its path.
    pub fn write_config(
        &self,
        dir: &Path,
        port: u16,
        sni: &str,
        fullchain: &Path,
        key: &Path,
    ) -> PathBuf {
        for sub in ["run", "htdocs"] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
        }
        std::fs::write(dir.join("extra.conf"), "# included\n").unwrap();
        write_key_conf(dir, key);
        let load = |name: &str, file: &str| {
            let path = self.modules.join(file);
            if path.is_file() {
                format!("LoadModule {name} {}\n", path.display())
            } else {
                String::new() // built in
            }
        };
        // As root, children switch to User/Group; elsewhere the directives are ignored.
        let user = if is_root() {
            "User nobody\nGroup nogroup\n"
        } else {
            ""
        };
        let conf = dir.join("httpd.conf");
        let text = format!(
            r#"ServerRoot "{d}"
DefaultRuntimeDir "{d}/run"
PidFile "{d}/httpd.pid"
ErrorLog "{d}/error.log"
LogLevel notice
{user}Listen 127.0.0.1:{port}
{mpm}{authz}{socache}{ssl}ServerName {sni}
DocumentRoot "{d}/htdocs"
Include "{d}/extra.conf"
<VirtualHost 127.0.0.1:{port}>
    ServerName {sni}
    SSLEngine on
    SSLCertificateFile "{fullchain}"
    Include "{d}/key.conf"
</VirtualHost>
"#,
            d = dir.display(),
            mpm = load("mpm_event_module", "mod_mpm_event.so"),
            authz = load("authz_core_module", "mod_authz_core.so"),
            socache = load("socache_shmcb_module", "mod_socache_shmcb.so"),
            ssl = load("ssl_module", "mod_ssl.so"),
            fullchain = fullchain.display(),
        );
        std::fs::write(&conf, text).unwrap();
        conf
    }

    /// `apache2 -f CONF -k start`; the server is stopped when the result is dropped.
    pub fn start(&self, dir: &Path, conf: &Path) -> Running {
        run(&[
            self.binary.to_str().unwrap(),
            "-f",
            conf.to_str().unwrap(),
            "-k",
            "start",
        ]);
        Running {
            pid_file: pid_file(dir),
            error_log: dir.join("error.log"),
        }
    }
}

/// The pid file of the server configured in `dir`.
pub fn pid_file(dir: &Path) -> PathBuf {
    dir.join("httpd.pid")
}

/// Points the virtual host's key directive at `key`.
pub fn write_key_conf(dir: &Path, key: &Path) {
    std::fs::write(
        dir.join("key.conf"),
        format!("SSLCertificateKeyFile \"{}\"\n", key.display()),
    )
    .unwrap();
}
