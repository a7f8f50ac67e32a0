//! The example configurations in `config/` validate, and the full example documents every key
//! the parser knows.

use std::path::{Path, PathBuf};

use ccm_agent::config::{CertificateSource, Config, PcaMode};

fn config_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("config")
}

fn toml_files() -> Vec<PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(config_dir())
        .expect("config/ exists")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    files
}

#[test]
fn every_example_validates() {
    let files = toml_files();
    assert!(files.len() >= 2, "{files:?}");
    for path in files {
        match Config::load(&path) {
            Ok(c) => assert!(
                !c.certificates.is_empty(),
                "{}: no certificates",
                path.display()
            ),
            Err(e) => panic!("{e}"),
        }
    }
}

#[test]
fn full_example_says_what_it_means() {
    let c = Config::load(&config_dir().join("ccm-agent.example.toml")).expect("valid");
    let names: Vec<_> = c.certificates.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["www", "api-internal", "shop"]);
    let www = &c.certificates[0];
    let CertificateSource::Pca(p) = &www.source else {
        panic!("www is pca")
    };
    assert_eq!(p.mode, PcaMode::Csr);
    assert_eq!(p.sans.len(), 4);
    assert_eq!(
        www.output.key,
        Path::new("/etc/ccm-agent/live/www/privkey.pem")
    );
    assert_eq!(www.output.key_mode, 0o640);
    let shop = &c.certificates[2];
    assert_eq!(shop.output.cert, None);
    assert_eq!(
        shop.output.fullchain.as_deref(),
        Some(Path::new("/etc/haproxy/certs/shop/fullchain.pem"))
    );
}

/// Each table's known keys, as serde lists them when it meets an unknown one.
fn known_keys(table_prefix: &str) -> Vec<String> {
    let text = format!("{table_prefix}\nzz_not_a_key = 1\n");
    let err = Config::from_str(&text, "probe").expect_err("unknown key");
    let msg = err.to_string();
    let list = msg
        .split("expected one of ")
        .nth(1)
        .or_else(|| msg.split("expected ").nth(1))
        .unwrap_or_else(|| panic!("no key list in {msg}"));
    list.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}

#[test]
fn full_example_documents_every_key() {
    let example =
        std::fs::read_to_string(config_dir().join("ccm-agent.example.toml")).expect("example");
    let documented = |key: &str| {
        example.lines().any(|line| {
            let line = line.trim_start_matches(['#', ' ']);
            line.starts_with(&format!("{key} ="))
                || line.contains(&format!("{{ {key} ="))
                || line.contains(&format!(", {key} ="))
                || line.contains(&format!("[{key}]"))
                || line.contains(&format!("[{key}."))
                || line.contains(&format!("[[{key}]]"))
                || line.contains(&format!(".{key}]"))
        })
    };
    let tables = [
        "",
        "[agent]",
        "[fleet]",
        "[metrics]",
        "[cloud]",
        "[cloud.auth]",
        "[defaults]",
        "[defaults.output]",
        "[defaults.pca]",
        "[defaults.pca.subject]",
        "[defaults.pca.validity]",
        "[[certificates]]",
        "[[certificates]]\n[certificates.pca]",
        "[[certificates]]\n[certificates.scm]",
        "[[certificates]]\n[certificates.output]",
        "[[certificates]]\n[certificates.deploy]",
        "[[certificates]]\n[[certificates.deploy.targets]]",
        "[[certificates]]\n[[certificates.deploy.targets]]\n[[certificates.deploy.targets.resources]]",
        "[[certificates]]\n[[certificates.reload]]",
        "[[certificates]]\n[[certificates.verify]]",
        "[[certificates]]\n[certificates.hooks]",
    ];
    let mut missing = Vec::new();
    for table in tables {
        let keys = known_keys(table);
        assert!(!keys.is_empty(), "{table}");
        for key in keys {
            if !documented(&key) {
                missing.push(format!("{table} {key}"));
            }
        }
    }
    assert!(missing.is_empty(), "undocumented keys: {missing:#?}");
}

fn vars(v: &[(&str, &str)]) -> Vec<(String, String)> {
    v.iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// The container case: the packaged file, adjusted by `CCM_AGENT__*` variables.
#[test]
fn environment_variables_override_the_file_and_problems_name_them() {
    let path = config_dir().join("ccm-agent.minimal.toml");
    let c = Config::load_with_env(
        &path,
        vars(&[
            ("CCM_AGENT__AGENT__HOST_ID", "web-7f9c-1"),
            ("CCM_AGENT__AGENT__CONCURRENCY", "16"),
            ("CCM_AGENT__AGENT__STATE_DIR", "/data/ccm-agent"),
            ("CCM_AGENT__METRICS__LISTEN", "0.0.0.0:9464"),
            ("CCM_AGENT__AGENT__SCHEDULE", "*/10 * * * *"),
        ]),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.agent.host_id.as_deref(), Some("web-7f9c-1"));
    assert_eq!(c.agent.concurrency, 16);
    assert_eq!(c.agent.state_dir, Path::new("/data/ccm-agent"));
    assert_eq!(
        c.metrics.listen,
        Some("0.0.0.0:9464".parse().expect("address"))
    );
    assert_eq!(c.certificates.len(), 1, "the file's certificates stay");

    // A value the validation rejects: the message names the key and the variable.
    let e = Config::load_with_env(&path, vars(&[("CCM_AGENT__AGENT__CONCURRENCY", "0")]))
        .expect_err("concurrency 0");
    assert!(e.mentions("agent.concurrency"), "{e}");
    assert!(
        e.to_string().contains("with CCM_AGENT__AGENT__CONCURRENCY"),
        "{e}"
    );
    // An unknown key is an error, as in the file.
    let e = Config::load_with_env(&path, vars(&[("CCM_AGENT__AGENT__CONCURENCY", "4")]))
        .expect_err("unknown key")
        .to_string();
    assert!(
        e.contains("concurency") && e.contains("CCM_AGENT__AGENT__CONCURENCY"),
        "{e}"
    );
    // Without variables, the file alone (and its own errors keep their line numbers).
    let c = Config::load_with_env(&path, vars(&[("HOME", "/root")])).expect("valid");
    assert_eq!(c.agent.host_id, None);
}

/// The binary reads the variables: `ccm-agent check` reports a bad one and exits 2.
#[test]
fn check_reads_overrides_from_its_environment() {
    let path = config_dir().join("ccm-agent.minimal.toml");
    let run = |var: Option<(&str, &str)>| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_ccm-agent"));
        cmd.args(["check", "--config"]).arg(&path);
        if let Some((k, v)) = var {
            cmd.env(k, v);
        }
        cmd.output().expect("runs")
    };
    let ok = run(None);
    assert!(ok.status.success(), "{ok:?}");
    let bad = run(Some(("CCM_AGENT__AGENT__LOG_FORMAT", "xml")));
    assert_eq!(bad.status.code(), Some(2), "{bad:?}");
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(
        stderr.contains("agent.log_format") && stderr.contains("CCM_AGENT__AGENT__LOG_FORMAT"),
        "{stderr}"
    );
    // A secret is refused from a variable as from the file, and never echoed.
    let secret = run(Some((
        "CCM_AGENT__CLOUD__AUTH__SECRET_KEY",
        "do-not-print-this-secret",
    )));
    assert_eq!(secret.status.code(), Some(2), "{secret:?}");
    let out = format!(
        "{}{}",
        String::from_utf8_lossy(&secret.stdout),
        String::from_utf8_lossy(&secret.stderr)
    );
    assert!(out.contains("cloud.auth.secret_key"), "{out}");
    assert!(!out.contains("do-not-print-this-secret"), "{out}");
}

/// Runs `ccm-agent ARGS --config PATH` with no environment overrides; returns exit code and
/// everything it printed.
fn run_with_config(args: &[&str], path: &Path) -> (Option<i32>, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ccm-agent"))
        .args(args)
        .arg("--config")
        .arg(path)
        .env_remove("CCM_AGENT_CONFIG")
        .output()
        .expect("runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

/// The commands that load a configuration first: each must refuse it the same way.
const CONFIG_COMMANDS: [&[&str]; 3] = [&["check"], &["run"], &["renew", "www"]];

#[test]
fn a_malformed_secret_line_is_not_echoed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let minimal = std::fs::read_to_string(config_dir().join("ccm-agent.minimal.toml"))
        .expect("minimal example");
    let cases = [
        "[cloud.auth]\nsecret_key = \"TopSecret\n".to_owned(),
        format!("{minimal}\n[cloud.auth]\npassword = 'TopSecret\n"),
        "[cloud]\nauth = { secret_key = \"TopSecret }\n".to_owned(),
    ];
    for (i, text) in cases.iter().enumerate() {
        let path = dir.path().join(format!("bad{i}.toml"));
        std::fs::write(&path, text).expect("write config");
        for args in CONFIG_COMMANDS {
            let (code, out) = run_with_config(args, &path);
            assert_eq!(code, Some(2), "{args:?} {text:?}: {out}");
            assert!(
                !out.contains("TopSecret"),
                "{args:?} echoed the secret: {out}"
            );
            assert!(
                out.contains("TOML parse error at line") && out.contains("<redacted>"),
                "{args:?}: {out}"
            );
        }
    }
}

#[test]
fn an_error_in_a_huge_line_prints_a_bounded_message() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut text = std::fs::read_to_string(config_dir().join("ccm-agent.minimal.toml"))
        .expect("minimal example");
    text.push_str("\nnote = \"");
    text.push_str(&"a".repeat(10 << 20));
    text.push('\n');
    let path = dir.path().join("huge.toml");
    std::fs::write(&path, &text).expect("write config");
    for args in CONFIG_COMMANDS {
        let (code, out) = run_with_config(args, &path);
        assert_eq!(code, Some(2), "{args:?}");
        assert!(
            out.len() < 2000,
            "{args:?} printed {} bytes: {}",
            out.len(),
            &out[..out.len().min(2000)]
        );
        assert!(
            out.contains("huge.toml") && out.contains("line 20"),
            "{args:?}: {out}"
        );
    }
}

/// Drop-ins: `include` patterns add the `[[certificates]]` of each matching file, in name order,
/// relative to the main file; hidden files and other extensions are skipped.
#[test]
fn drop_ins_add_certificates_in_name_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let conf_d = d.join("conf.d");
    std::fs::create_dir(&conf_d).expect("conf.d");
    let cert = |name: &str| {
        format!(
            "[[certificates]]\nname = \"{name}\"\n[certificates.pca]\n\
             ca_id = \"2cb2878b-6cd1-460d-bd25-afe655159bdc\"\nsans = [\"dns:{name}.internal\"]\n\
             validity = {{ type = \"DAY\", value = 30 }}\n"
        )
    };
    std::fs::write(conf_d.join("20-b.toml"), cert("b")).expect("b");
    std::fs::write(conf_d.join("10-a.toml"), cert("a")).expect("a");
    std::fs::write(conf_d.join(".30-c.toml.swp"), cert("hidden")).expect("hidden");
    std::fs::write(conf_d.join("40-d.toml.dpkg-old"), cert("old")).expect("old");
    let main = format!(
        "include = [\"conf.d/*.toml\", \"{}\"]\n[cloud]\nregion = \"ap-southeast-1\"\n\
         [cloud.auth]\naccess_key = \"AK\"\nsecret_key_env = \"SK\"\n\
         [defaults.output]\nbase_dir = \"{}/live\"\n{}",
        d.join("extra.toml").display(),
        d.display(),
        cert("main")
    );
    std::fs::write(d.join("extra.toml"), cert("extra")).expect("extra");
    std::fs::write(d.join("agent.toml"), main).expect("main");
    let c = Config::load(&d.join("agent.toml")).unwrap_or_else(|e| panic!("{e}"));
    let names: Vec<&str> = c.certificates.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["main", "a", "b", "extra"]);
    assert_eq!(c.include_dirs, [conf_d, d.to_path_buf()]);

    // Without the directory, a wildcard adds nothing; a named file must exist.
    std::fs::remove_dir_all(d.join("conf.d")).expect("rm conf.d");
    let c = Config::load(&d.join("agent.toml")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.certificates.len(), 2);
    std::fs::remove_file(d.join("extra.toml")).expect("rm extra");
    let e = Config::load(&d.join("agent.toml")).expect_err("missing named drop-in");
    assert!(
        e.to_string().contains("include[1]") && e.to_string().contains("extra.toml: no such file"),
        "{e}"
    );
}

/// Every error in a drop-in names the drop-in and the key inside it.
#[test]
fn drop_in_errors_name_the_file_and_the_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let conf_d = d.join("conf.d");
    std::fs::create_dir(&conf_d).expect("conf.d");
    std::fs::write(
        d.join("agent.toml"),
        format!(
            "include = [\"{}/*.toml\"]\n[cloud]\nregion = \"ap-southeast-1\"\n\
             [cloud.auth]\naccess_key = \"AK\"\nsecret_key_env = \"SK\"\n\
             [defaults.output]\nbase_dir = \"{}/live\"\n",
            conf_d.display(),
            d.display()
        ),
    )
    .expect("main");
    let load = || {
        Config::load(&d.join("agent.toml"))
            .expect_err("invalid")
            .to_string()
    };
    let web = conf_d.join("web.toml").display().to_string();

    // A validation error: the file, then the key within it.
    std::fs::write(
        conf_d.join("web.toml"),
        "[[certificates]]\nname = \"web\"\n[certificates.pca]\nsans = [\"dns:web.internal\"]\n\
         validity = { type = \"DAY\", value = 30 }\n",
    )
    .expect("web");
    let e = load();
    assert!(
        e.contains(&format!("{web}: certificates[0].pca.ca_id: missing")),
        "{e}"
    );

    // The same name in two drop-ins: both are named.
    let ok = "[[certificates]]\nname = \"web\"\n[certificates.pca]\n\
              ca_id = \"2cb2878b-6cd1-460d-bd25-afe655159bdc\"\nsans = [\"dns:web.internal\"]\n\
              validity = { type = \"DAY\", value = 30 }\n";
    std::fs::write(conf_d.join("web.toml"), ok).expect("web");
    std::fs::write(
        conf_d.join("zz.toml"),
        ok.replace("dns:web.internal", "dns:zz.internal"),
    )
    .expect("zz");
    let e = load();
    let zz = conf_d.join("zz.toml").display().to_string();
    assert!(
        e.contains(&format!("{zz}: certificates[0].name"))
            && e.contains(&format!("already the name of {web}: certificates[0]")),
        "{e}"
    );
    std::fs::remove_file(conf_d.join("zz.toml")).expect("rm zz");

    // A syntax error: the drop-in's own line and column; a secret on that line is not echoed.
    std::fs::write(
        conf_d.join("bad.toml"),
        "[[certificates]]\nname = \"bad\"\npassword = \"TopSecret\n",
    )
    .expect("bad");
    let e = load();
    let bad = conf_d.join("bad.toml").display().to_string();
    assert!(e.contains(&bad) && e.contains("line 3"), "{e}");
    assert!(!e.contains("TopSecret"), "{e}");

    // A drop-in holds certificates only.
    std::fs::write(conf_d.join("bad.toml"), "[agent]\nconcurrency = 2\n").expect("bad");
    let e = load();
    assert!(e.contains(&bad) && e.contains("agent"), "{e}");
    std::fs::remove_file(conf_d.join("bad.toml")).expect("rm bad");

    // Wildcards only in the file name.
    std::fs::write(
        d.join("agent.toml"),
        "include = [\"/etc/*/conf.d/*.toml\"]\n[cloud]\nregion = \"ap-southeast-1\"\n\
         [cloud.auth]\naccess_key = \"AK\"\nsecret_key_env = \"SK\"\n",
    )
    .expect("main");
    let e = load();
    assert!(
        e.contains("include[0]") && e.contains("only the file name"),
        "{e}"
    );
}
