use super::*;

const CA: &str = "2cb2878b-6cd1-460d-bd25-afe655159bdc";

fn minimal(extra: &str) -> String {
    format!(
        r#"
[cloud]
region = "ap-southeast-1"

[defaults.output]
base_dir = "/etc/ccm-agent/live"

[[certificates]]
name = "www"
[certificates.pca]
ca_id = "{CA}"
validity = {{ type = "DAY", value = 90 }}
sans = ["dns:www.example.com"]
{extra}"#
    )
}

fn parse(text: &str) -> Config {
    match Config::from_str(text, "test.toml") {
        Ok(c) => c,
        Err(e) => panic!("{e}"),
    }
}

fn fail(text: &str) -> ConfigError {
    match Config::from_str(text, "test.toml") {
        Ok(c) => panic!("accepted: {c:#?}"),
        Err(e) => e,
    }
}

fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let map: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    move |k: &str| map.get(k).cloned()
}

#[test]
fn minimal_config_gets_every_default() {
    let c = parse(&minimal(""));
    assert_eq!(c.agent.state_dir, PathBuf::from("/var/lib/ccm-agent"));
    assert_eq!(c.agent.schedule.expression(), "0 0 * * * *");
    assert!(c.agent.check_on_start);
    assert_eq!(c.agent.concurrency, DEFAULT_CONCURRENCY);
    assert_eq!(c.agent.log_format, LogFormat::Text);
    assert_eq!(c.agent.retry_initial, DEFAULT_RETRY_INITIAL);
    assert_eq!(
        c.metrics.listen,
        Some("127.0.0.1:9464".parse().expect("addr"))
    );
    assert_eq!(
        c.cloud.endpoints.pca.as_str(),
        "https://ccm.ap-southeast-1.myhuaweicloud.com/"
    );
    assert_eq!(c.cloud.timeout, DEFAULT_CLOUD_TIMEOUT);
    assert_eq!(
        c.cloud.auth,
        AuthSettings::AkSk {
            access_key: SecretSource::Env(vec!["CLOUD_SDK_AK".into(), "HUAWEICLOUD_SDK_AK".into()]),
            secret_key: SecretSource::Env(vec!["CLOUD_SDK_SK".into(), "HUAWEICLOUD_SDK_SK".into()]),
            security_token: None,
            domain_id: None,
            project_id: None,
        }
    );
    let cert = &c.certificates[0];
    assert_eq!(cert.name, "www");
    assert_eq!(cert.renew, RenewPolicy::default());
    let CertificateSource::Pca(p) = &cert.source else {
        panic!("not pca")
    };
    assert_eq!(p.ca_id, CA);
    assert_eq!(p.mode, PcaMode::Csr);
    assert_eq!(p.key_algorithm, KeyAlgorithm::Ec256);
    assert_eq!(p.signature_algorithm, SignatureHash::Sha256);
    assert_eq!(p.common_name(), "www.example.com");
    assert_eq!(p.validity.to_api(), crate::cloud::pca::Validity::days(90));
    assert_eq!(p.revoke_superseded_after, None);
    let dir = Path::new("/etc/ccm-agent/live/www");
    assert_eq!(
        cert.output,
        Output {
            cert: Some(dir.join("cert.pem")),
            chain: Some(dir.join("chain.pem")),
            fullchain: Some(dir.join("fullchain.pem")),
            key: dir.join("privkey.pem"),
            pkcs12: None,
            owner: None,
            group: None,
            mode: 0o644,
            key_mode: 0o600,
        }
    );
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
}

#[test]
fn unknown_keys_are_rejected_with_their_position() {
    let e = fail("[agent]\nstate_dir = \"/x\"\nstat_dir = \"/y\"\n");
    let p = &e.problems[0];
    assert!(p.message.contains("unknown field `stat_dir`"), "{e}");
    assert_eq!(p.position, Some((3, 1)));
    assert!(e.to_string().starts_with("test.toml: "), "{e}");
    // Also deep inside a certificate.
    let e = fail(&minimal("colour = \"red\"\n"));
    assert!(
        e.problems[0].message.contains("unknown field `colour`"),
        "{e}"
    );
    assert_eq!(e.problems[0].position, Some((14, 1)));
}

#[test]
fn toml_syntax_errors_keep_line_and_column() {
    let e = fail("[cloud]\nregion = \"x\n");
    assert_eq!(e.problems[0].position.map(|p| p.0), Some(2));
    assert!(e.to_string().contains("line 2"), "{e}");
    let e = fail("[cloud]\nregion = 5\n");
    assert!(e.problems[0].message.contains("string"), "{e}");
    assert_eq!(e.problems[0].position, Some((2, 10)));
}

#[test]
fn a_parse_error_does_not_echo_a_secret() {
    for text in [
        "[cloud.auth]\nsecret_key = \"TopSecret\n",
        "[cloud.auth]\nsecurity_token = TopSecret\n",
        "[cloud]\nauth = { password = \"TopSecret }\n",
        "[[certificates]]\nname = \"a\"\noutput = { pkcs12_password = 'TopSecret }\n",
        // Not a parse error but an unknown key: the line is echoed all the same.
        "[agent]\nPassword = \"TopSecret\"\n",
    ] {
        let e = fail(text);
        let shown = e.to_string();
        assert!(!shown.contains("TopSecret"), "{text:?}: {shown}");
        assert!(shown.contains("<redacted>"), "{text:?}: {shown}");
        assert!(e.problems[0].position.is_some(), "{text:?}: {shown}");
    }
    // Inside a multi-line string the line says nothing of whose value it is.
    let e = fail("[cloud.auth]\nsecret_key = \"\"\"\nTopSecret\\q\n\"\"\"\n");
    let shown = e.to_string();
    assert!(!shown.contains("TopSecret"), "{shown}");
    assert!(shown.contains("line 3"), "{shown}");
    // Other lines are still shown.
    let e = fail("[cloud]\nregion = \"ap-southeast-1\n");
    assert!(e.to_string().contains("region = \"ap-southeast-1"), "{e}");
}

#[test]
fn a_parse_error_echoes_at_most_a_window_of_a_long_line() {
    let long = format!("[cloud]\nregion = \"{}\n", "a".repeat(100_000));
    let e = fail(&long);
    let shown = e.to_string();
    assert!(shown.len() < 1000, "{} bytes: {shown}", shown.len());
    assert_eq!(e.problems[0].position, Some((2, 100_011)));
    // The caret stays under the column: the window ends there, marked as cut before it.
    let lines: Vec<&str> = shown.lines().collect();
    let (echo, caret) = (lines[2], lines[3]);
    assert!(
        echo.starts_with("2 | ...") && !echo.ends_with("..."),
        "{shown}"
    );
    assert_eq!(caret.find('^'), Some(echo.chars().count()), "{shown}");
    // A long line cut on both sides around an early column.
    let early = format!("[cloud]\nregion = 5{}\n", " ".repeat(100_000));
    let shown = fail(&early).to_string();
    assert!(shown.len() < 1000, "{} bytes: {shown}", shown.len());
    assert!(
        shown.contains("2 | region = 5") && shown.contains("   ..."),
        "{shown}"
    );
    // A type error quotes the value it rejected: capped too.
    let quoted = format!("[agent]\nconcurrency = \"{}\"\n", "a".repeat(100_000));
    let shown = fail(&quoted).to_string();
    assert!(shown.len() < 2000, "{} bytes: {shown}", shown.len());
    // Multi-byte characters are cut on character boundaries.
    let wide = format!("[cloud]\nregion = \"{}\n", "é".repeat(10_000));
    assert!(fail(&wide).to_string().chars().count() < 1000);
}

#[test]
fn every_problem_is_reported_with_its_key() {
    let text = format!(
        r#"
[agent]
schedule = "0 25 * * *"
concurrency = 0
state_dir = "relative/dir"
log_format = "xml"

[metrics]
listen = "localhost"

[cloud]
region = "ap-southeast-1"
endpoint = "https://x.example.com"
[cloud.auth]
secret_key = "inline-secret-value"

[defaults]
renew_before = "30d"
renew_at_fraction = 0.5

[[certificates]]
name = "a"
renew_at_fraction = 1.5
jitter = 0.9
[certificates.pca]
ca_id = "not-a-uuid"
validity = {{ type = "YEAR", value = 21 }}
sans = ["dns:a.example.com", "ip:300.1.1.1", "fax:123"]
[certificates.output]
dir = "/srv/a"
mode = 644
key_mode = "0644"

[[certificates]]
name = "a"
renew_before = "tomorrow"
[certificates.scm]
id = "scs1"
name = "both"
[certificates.output]
dir = "/srv/a"

[[certificates]]
name = "bad name!"
[certificates.pca]
ca_id = "{CA}"
key_algorithm = "RSA1024"
signature_algorithm = "MD5"
validity = {{ type = "WEEK", value = 1 }}
extended_key_usage = ["server_auth", "world_domination"]
sans = ["dns:c.example.com"]
[certificates.output]
key = "relative.pem"
"#
    );
    let e = fail(&text);
    let expected = [
        "agent.schedule",
        "agent.concurrency",
        "agent.state_dir",
        "agent.log_format",
        "metrics.listen",
        "cloud.endpoint",
        "cloud.auth.secret_key",
        "defaults.renew_at_fraction",
        "certificates[0].renew_at_fraction",
        "certificates[0].jitter",
        "certificates[0].pca.ca_id",
        "certificates[0].pca.validity.value",
        "certificates[0].pca.sans[1]",
        "certificates[0].pca.sans[2]",
        "certificates[0].output.mode",
        "certificates[0].output.key_mode",
        "certificates[1].renew_before",
        "certificates[1].scm",
        "certificates[2].name",
        "certificates[2].pca.key_algorithm",
        "certificates[2].pca.signature_algorithm",
        "certificates[2].pca.validity.type",
        "certificates[2].pca.extended_key_usage[1]",
        "certificates[2].output.key",
    ];
    for key in expected {
        assert!(
            e.problems.iter().any(|p| p.key == key),
            "no problem for {key}:\n{e}"
        );
    }
    let text = e.to_string();
    assert!(text.starts_with("test.toml: "), "{text}");
    assert!(
        text.contains("\"RSA1024\" is not one of RSA2048, RSA4096, EC256, EC384"),
        "{text}"
    );
    assert!(text.contains("secret_key_env"), "{text}");
    // A secret written in the file never appears in the error.
    assert!(!text.contains("inline-secret-value"), "{text}");
}

#[test]
fn duplicate_names_and_colliding_paths() {
    let text = format!(
        r#"
[cloud]
endpoint = "http://127.0.0.1:8443"
[defaults.pca]
ca_id = "{CA}"
validity = {{ type = "DAY", value = 30 }}
[[certificates]]
name = "a"
pca = {{ sans = ["dns:a.example"] }}
output = {{ dir = "/srv/tls" }}
[[certificates]]
name = "a"
pca = {{ sans = ["dns:b.example"] }}
output = {{ dir = "/srv/other", key = "/srv/tls/./privkey.pem" }}
[[certificates]]
name = "c"
pca = {{ sans = ["dns:c.example"] }}
output = {{ cert = "/srv/c.pem", key = "/srv/c.pem" }}
"#
    );
    let e = fail(&text);
    assert!(
        e.problems
            .iter()
            .any(|p| p.key == "certificates[1].name" && p.message.contains("certificates[0]")),
        "{e}"
    );
    assert!(
        e.problems
            .iter()
            .any(|p| p.key == "certificates[1].output.key"
                && p.message.contains("certificates[0].output.key")),
        "{e}"
    );
    assert!(
        e.problems
            .iter()
            .any(|p| p.key == "certificates[2].output.key"
                && p.message.contains("certificates[2].output.cert")),
        "{e}"
    );
}

#[test]
fn defaults_merge_key_by_key() {
    let text = format!(
        r#"
[cloud]
region = "eu-west-101"
[defaults]
renew_before = "20d"
jitter = 0.2
max_jitter = "2d"
[defaults.output]
base_dir = "/etc/tls"
group = "www-data"
key_mode = "0640"
key = "key.pem"
chain = ""
[defaults.pca]
ca_id = "{CA}"
mode = "apply"
key_algorithm = "RSA4096"
validity = {{ type = "MONTH", value = 3 }}
subject = {{ organization = "Example", country = "DE" }}
revoke_superseded = true

[[certificates]]
name = "one"
renew_at_fraction = 0.5
[certificates.pca]
key_algorithm = "EC384"
subject = {{ common_name = "one.example", organization = "Other" }}
sans = ["dns:one.example", {{ type = "IP", value = "2001:db8::1" }}, "email:ops@example.com", "uri:spiffe://example/one"]
[certificates.output]
owner = 0
mode = "0444"

[[certificates]]
name = "two"
emergency_before = "3d"
pca = {{ sans = ["DNS:two.example"], revoke_grace = "1h" }}
"#
    );
    let c = parse(&text);
    let one = c.certificate("one").expect("one");
    assert_eq!(
        one.renew,
        RenewPolicy {
            point: RenewPoint::AtFraction(0.5),
            jitter: 0.2,
            max_jitter: Some(Duration::from_secs(2 * 86400)),
            emergency_before: None,
        }
    );
    let CertificateSource::Pca(p) = &one.source else {
        panic!("pca")
    };
    assert_eq!(p.mode, PcaMode::Apply);
    assert_eq!(p.key_algorithm, KeyAlgorithm::Ec384);
    assert_eq!(
        p.subject,
        DistinguishedName {
            common_name: Some("one.example".into()),
            country: Some("DE".into()),
            organization: Some("Other".into()),
            ..DistinguishedName::default()
        }
    );
    assert_eq!(
        p.sans,
        vec![
            SubjectAltName::Dns("one.example".into()),
            SubjectAltName::Ip("2001:db8::1".parse().expect("ip")),
            SubjectAltName::Email("ops@example.com".into()),
            SubjectAltName::Uri("spiffe://example/one".into()),
        ]
    );
    assert_eq!(p.sans[1].kind(), "IP");
    assert_eq!(p.revoke_superseded_after, Some(DEFAULT_REVOKE_GRACE));
    assert_eq!(one.output.key, PathBuf::from("/etc/tls/one/key.pem"));
    assert_eq!(one.output.chain, None);
    assert_eq!(one.output.owner, Some(Owner::Id(0)));
    assert_eq!(one.output.group, Some(Owner::Name("www-data".into())));
    assert_eq!((one.output.mode, one.output.key_mode), (0o444, 0o640));

    let two = c.certificate("two").expect("two");
    assert_eq!(
        two.renew.point,
        RenewPoint::Before(Duration::from_secs(20 * 86400))
    );
    assert_eq!(
        two.renew.emergency_before,
        Some(Duration::from_secs(3 * 86400))
    );
    let CertificateSource::Pca(p) = &two.source else {
        panic!("pca")
    };
    assert_eq!(p.common_name(), "two.example");
    assert_eq!(p.revoke_superseded_after, Some(Duration::from_secs(3600)));
    assert_eq!(two.output.mode, DEFAULT_MODE);
}

#[test]
fn renew_before_must_fit_the_validity() {
    let text = minimal("").replace("value = 90", "value = 20") + "[certificates.output]\n";
    let text = text.replace(
        "name = \"www\"",
        "name = \"www\"\nrenew_before = \"30d\"\nemergency_before = \"21d\"",
    );
    let e = fail(&text);
    assert!(e.mentions("certificates[0].renew_before"), "{e}");
    assert!(e.mentions("certificates[0].emergency_before"), "{e}");
    assert!(e.to_string().contains("20 DAY"), "{e}");
}

#[test]
fn scm_sources() {
    let base = r#"
[cloud]
region = "ap-southeast-1"
[[certificates]]
name = "s"
output = { dir = "/srv/s" }
"#;
    for (table, expected) in [
        (
            "id = \"scs1554192131150\"",
            ScmSelector::Id("scs1554192131150".into()),
        ),
        (
            "name = \"shop-2026\"",
            ScmSelector::Name("shop-2026".into()),
        ),
        (
            "domain = \"Shop.Example.com\"",
            ScmSelector::Domain("shop.example.com".into()),
        ),
    ] {
        let c = parse(&format!("{base}[certificates.scm]\n{table}\n"));
        assert_eq!(c.certificates[0].source, CertificateSource::Scm(expected));
    }
    let e = fail(&format!("{base}[certificates.scm]\n"));
    assert!(
        e.to_string()
            .contains("exactly one of id, name, domain (found none)"),
        "{e}"
    );
    let e = fail(&format!("{base}source = \"scm\"\n"));
    assert!(e.mentions("certificates[0].scm"), "{e}");
    let e = fail(base);
    assert!(e.mentions("certificates[0].source"), "{e}");
    let e = fail(&format!("{base}source = \"acme\"\n"));
    assert!(
        e.to_string().contains("\"acme\" is not one of pca, scm"),
        "{e}"
    );
}

#[test]
fn endpoints_region_single_or_per_service() {
    let with_cloud = |cloud: &str| format!("[cloud]\n{cloud}\n");
    let c = parse(&with_cloud("endpoint = \"http://127.0.0.1:8443\""));
    assert_eq!(c.cloud.endpoints.scm.as_str(), "http://127.0.0.1:8443/");
    assert_eq!(c.cloud.endpoints.iam.as_str(), "http://127.0.0.1:8443/");
    assert!(
        c.warnings.iter().any(|w| w.starts_with("certificates")),
        "{:?}",
        c.warnings
    );
    let c = parse(&with_cloud(
        "region = \"ap-southeast-1\"\niam_endpoint = \"https://iam.example.com\"",
    ));
    assert_eq!(c.cloud.endpoints.iam.as_str(), "https://iam.example.com/");
    assert_eq!(
        c.cloud.endpoints.scm.as_str(),
        "https://scm.ap-southeast-1.myhuaweicloud.com/"
    );
    let c = parse(&with_cloud(
        "scm_endpoint = \"https://scm.x\"\npca_endpoint = \"https://pca.x\"\niam_endpoint = \"https://iam.x\"",
    ));
    assert_eq!(c.cloud.endpoints.pca.as_str(), "https://pca.x/");
    let e = fail(&with_cloud("scm_endpoint = \"https://scm.x\""));
    assert!(
        e.to_string()
            .contains("missing cloud.pca_endpoint, cloud.iam_endpoint"),
        "{e}"
    );
    let e = fail(&with_cloud("region = \"Evil.com/x\""));
    assert!(e.mentions("cloud.region"), "{e}");
    let e = fail(&with_cloud("endpoint = \"ftp://x\""));
    assert!(e.mentions("cloud.endpoint"), "{e}");
    let e = fail("");
    assert!(e.mentions("cloud"), "{e}");
}

#[test]
fn credentials_from_environment_defaults() {
    let c = parse("[cloud]\nregion = \"ap-southeast-1\"\n");
    let creds = c
        .resolve_credentials(&env_of(&[
            ("HUAWEICLOUD_SDK_AK", "AK2"),
            ("HUAWEICLOUD_SDK_SK", "SK2"),
            ("CLOUD_SDK_AK", "AK1"),
            ("CLOUD_SDK_SK", ""),
        ]))
        .expect("resolves");
    let Credentials::AkSk(aksk) = &creds else {
        panic!("aksk")
    };
    // CLOUD_SDK_* first; an empty variable counts as unset.
    assert_eq!(aksk.access_key, "AK1");
    assert_eq!(aksk.secret_key.expose(), "SK2");
    assert!(!format!("{creds:?}").contains("SK2"));

    let e = c.resolve_credentials(&env_of(&[])).expect_err("missing");
    assert!(
        e.mentions("cloud.auth.access_key") && e.mentions("cloud.auth.secret_key"),
        "{e}"
    );
    assert!(
        e.to_string()
            .contains("$CLOUD_SDK_SK / $HUAWEICLOUD_SDK_SK"),
        "{e}"
    );
}

#[test]
fn credentials_from_files_and_systemd_credentials() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("sk"), "file-secret\n").expect("write");
    std::fs::write(dir.path().join("token"), "tok\r\n").expect("write");
    std::fs::write(dir.path().join("empty"), "\n").expect("write");
    let text = format!(
        r#"
[cloud]
region = "ap-southeast-1"
[cloud.auth]
access_key = "AKINLINE"
secret_key_file = "{}"
security_token_file = "token"
domain_id = "abc123"
"#,
        dir.path().join("sk").display()
    );
    let c = parse(&text);
    let dir_str = dir.path().display().to_string();
    let creds = c
        .resolve_credentials(&env_of(&[("CREDENTIALS_DIRECTORY", &dir_str)]))
        .expect("resolves");
    let Credentials::AkSk(aksk) = creds else {
        panic!("aksk")
    };
    assert_eq!(aksk.access_key, "AKINLINE");
    assert_eq!(aksk.secret_key.expose(), "file-secret");
    assert_eq!(
        aksk.security_token
            .as_ref()
            .map(crate::cloud::Secret::expose),
        Some("tok")
    );
    assert_eq!(aksk.domain_id.as_deref(), Some("abc123"));

    // Without $CREDENTIALS_DIRECTORY a credential name cannot be found.
    let e = c.resolve_credentials(&env_of(&[])).expect_err("no dir");
    assert!(e.mentions("cloud.auth.security_token"), "{e}");
    assert!(e.to_string().contains("CREDENTIALS_DIRECTORY"), "{e}");

    let empty = text.replace("\"token\"", "\"empty\"");
    let e = parse(&empty)
        .resolve_credentials(&env_of(&[("CREDENTIALS_DIRECTORY", &dir_str)]))
        .expect_err("empty");
    assert!(e.to_string().contains("empty"), "{e}");

    let e = fail(&text.replace("\"token\"", "\"../token\""));
    assert!(e.mentions("cloud.auth.security_token_file"), "{e}");
}

#[test]
fn password_auth() {
    let text = r#"
[cloud]
region = "ap-southeast-1"
[cloud.auth]
method = "password"
user_name = "agent"
domain_name = "acct"
password_env = "MY_PW"
"#;
    let c = parse(text);
    let creds = c
        .resolve_credentials(&env_of(&[("MY_PW", "hunter2")]))
        .expect("resolves");
    let Credentials::Password(id) = &creds else {
        panic!("password")
    };
    assert_eq!(id.user_name, "agent");
    assert_eq!(id.domain_name, "acct");
    assert_eq!(id.project_name.as_deref(), Some("ap-southeast-1"));
    assert_eq!(id.password.expose(), "hunter2");
    assert!(!format!("{creds:?}").contains("hunter2"));

    let e = fail(&text.replace("user_name = \"agent\"", "access_key_env = \"AK\""));
    assert!(
        e.mentions("cloud.auth.user_name") && e.mentions("cloud.auth.access_key_env"),
        "{e}"
    );
    let e = fail(&text.replace("password_env = \"MY_PW\"", "password = \"hunter2\""));
    assert!(e.mentions("cloud.auth.password"), "{e}");
    assert!(!e.to_string().contains("hunter2"), "{e}");
}

#[test]
fn output_rules() {
    // No dir and no base_dir: explicit absolute paths are needed.
    let text = format!(
        r#"
[cloud]
region = "ap-southeast-1"
[[certificates]]
name = "x"
pca = {{ ca_id = "{CA}", validity = {{ type = "DAY", value = 9 }}, sans = ["dns:x.example"] }}
"#
    );
    let e = fail(&text);
    assert!(
        e.mentions("certificates[0].output.key") && e.mentions("certificates[0].output.cert"),
        "{e}"
    );
    let c = parse(&format!(
        "{text}output = {{ fullchain = \"/srv/x/full.pem\", key = \"/srv/x/key.pem\", pkcs12 = \"/srv/x/x.p12\", pkcs12_password_file = \"/run/pw\" }}\n"
    ));
    let out = &c.certificates[0].output;
    assert_eq!(out.cert, None);
    assert_eq!(out.fullchain, Some(PathBuf::from("/srv/x/full.pem")));
    assert_eq!(
        out.pkcs12,
        Some(Pkcs12Output {
            path: PathBuf::from("/srv/x/x.p12"),
            password: Some(SecretSource::File(PathBuf::from("/run/pw"))),
        })
    );
    assert_eq!(out.paths().len(), 3);
    // dir in defaults, base_dir in a certificate, absolute names in defaults.
    let e = fail(&format!(
        "{text}output = {{ base_dir = \"/srv\" }}\n[defaults.output]\ndir = \"/srv\"\nkey = \"/srv/k.pem\"\npkcs12_password = \"x\"\n"
    ));
    for key in [
        "certificates[0].output.base_dir",
        "defaults.output.dir",
        "defaults.output.key",
        "defaults.output.pkcs12_password",
    ] {
        assert!(e.problems.iter().any(|p| p.key == key), "{key}: {e}");
    }
}

#[test]
fn names_and_modes() {
    for bad in ["", ".hidden", "a/b", "a b", "é"] {
        let text = minimal("").replace("name = \"www\"", &format!("name = {bad:?}"));
        let e = fail(&text);
        assert!(e.mentions("certificates[0].name"), "{bad:?}: {e}");
    }
    for good in ["a", "web_1.example-com", "A.B"] {
        let text = minimal("").replace("name = \"www\"", &format!("name = {good:?}"));
        assert_eq!(parse(&text).certificates[0].name, good);
    }
    let text = minimal("[certificates.output]\nkey_mode = \"0604\"\n");
    let e = fail(&text);
    assert!(e.to_string().contains("0604 lets other users"), "{e}");
}

#[test]
fn metrics_can_be_disabled_and_warn_when_public() {
    let c = parse(&format!("{}\n[metrics]\nenabled = false\n", minimal("")));
    assert_eq!(c.metrics.listen, None);
    let c = parse(&format!(
        "[metrics]\nlisten = \"0.0.0.0:9464\"\n{}",
        minimal("")
    ));
    assert!(
        c.warnings.iter().any(|w| w.starts_with("metrics.listen")),
        "{:?}",
        c.warnings
    );
}

#[test]
fn load_names_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("agent.toml");
    let e = Config::load(&path).expect_err("missing file");
    assert!(
        e.to_string().starts_with(&path.display().to_string()),
        "{e}"
    );
    std::fs::write(&path, minimal("")).expect("write");
    let c = Config::load(&path).expect("loads");
    assert_eq!(c.source_name, path.display().to_string());
}

// ---- fleet ----

const FLEET: &str = r#"
[fleet]
endpoints = ["http://127.0.0.1:2379", "http://127.0.0.2:2379"]
"#;

/// One PCA certificate; `cert_keys` go in `[[certificates]]`, `pca_keys` in its pca table.
fn with_fleet(fleet: &str, cert_keys: &str) -> String {
    with_fleet_pca(fleet, cert_keys, "")
}

fn with_fleet_pca(fleet: &str, cert_keys: &str, pca_keys: &str) -> String {
    format!(
        r#"
[agent]
host_id = "web-1"
{fleet}
[cloud]
region = "ap-southeast-1"

[defaults.output]
base_dir = "/etc/ccm-agent/live"

[[certificates]]
name = "www"
{cert_keys}
[certificates.pca]
ca_id = "{CA}"
validity = {{ type = "DAY", value = 90 }}
sans = ["dns:www.example.com"]
{pca_keys}
"#
    )
}

#[test]
fn fleet_defaults_and_modes() {
    if !crate::fleet::config::COMPILED_IN {
        let e = fail(&with_fleet(FLEET, ""));
        assert!(e.mentions("fleet"), "{e}");
        assert!(e.to_string().contains("cargo feature `fleet`"), "{e}");
        return;
    }
    let c = parse(&with_fleet(FLEET, "fleet = \"per-host\""));
    let f = c.fleet.as_ref().expect("fleet");
    assert_eq!(f.endpoints.len(), 2);
    assert_eq!(f.prefix, "/ccm-agent");
    assert_eq!(f.lease_ttl, Duration::from_secs(10));
    assert_eq!(f.member_id, "web-1", "the host id by default");
    assert!(f.emergency_local);
    assert!(f.tls.is_none() && f.auth.is_none());
    assert_eq!(c.certificates[0].fleet, crate::fleet::FleetMode::PerHost);
    // Without a mode, a certificate stays local.
    let c = parse(&with_fleet(FLEET, ""));
    assert_eq!(c.certificates[0].fleet, crate::fleet::FleetMode::Local);

    let full = r#"
[fleet]
endpoints = ["https://etcd-1:2379"]
prefix = "/prod/ccm"
lease_ttl = "30s"
member_id = "web-1.example"
tls_ca = "/etc/ccm-agent/etcd-ca.pem"
tls_cert = "/etc/ccm-agent/etcd.pem"
tls_key = "/etc/ccm-agent/etcd-key.pem"
user = "ccm"
password_file = "etcd-password"
emergency_local = false
"#;
    let c = parse(&with_fleet_pca(
        full,
        "fleet = \"shared\"",
        "mode = \"apply\"",
    ));
    assert_eq!(c.certificates[0].fleet, crate::fleet::FleetMode::Shared);
    let f = c.fleet.expect("fleet");
    assert_eq!(f.prefix, "/prod/ccm");
    assert_eq!(f.lease_ttl, Duration::from_secs(30));
    assert_eq!(f.member_id, "web-1.example");
    let tls = f.tls.expect("tls");
    assert_eq!(tls.ca, Some(PathBuf::from("/etc/ccm-agent/etcd-ca.pem")));
    assert!(tls.identity.is_some());
    let auth = f.auth.expect("auth");
    assert_eq!(auth.user, "ccm");
    assert_eq!(
        auth.password,
        SecretSource::Credential("etcd-password".into())
    );
    assert!(!f.emergency_local);
}

#[test]
fn shared_csr_certificate_is_refused_naming_it_and_why() {
    // The default PCA mode is CSR.
    let e = fail(&with_fleet(FLEET, "fleet = \"shared\""));
    assert!(e.mentions("certificates[0].fleet"), "{e}");
    let text = e.to_string();
    assert!(text.contains("\"www\""), "{text}");
    assert!(text.contains("never leaves"), "{text}");
}

#[test]
fn fleet_modes_need_a_fleet_section() {
    let e = fail(&with_fleet_pca(
        "",
        "fleet = \"shared\"",
        "mode = \"apply\"",
    ));
    assert!(e.mentions("certificates[0].fleet"), "{e}");
    assert!(e.to_string().contains("no [fleet] section"), "{e}");
    let e = fail(&with_fleet("", "fleet = \"everywhere\""));
    assert!(
        e.to_string().contains("not one of local, shared, per-host"),
        "{e}"
    );
}

#[test]
fn fleet_section_problems_name_their_keys() {
    if !crate::fleet::config::COMPILED_IN {
        return;
    }
    let cases: &[(&str, &str)] = &[
        ("[fleet]\n", "fleet.endpoints"),
        ("[fleet]\nendpoints = []\n", "fleet.endpoints"),
        (
            "[fleet]\nendpoints = [\"etcd:2379\"]\n",
            "fleet.endpoints[0]",
        ),
        (
            "[fleet]\nendpoints = [\"http://e:2379\"]\nprefix = \"ccm\"\n",
            "fleet.prefix",
        ),
        (
            "[fleet]\nendpoints = [\"http://e:2379\"]\nprefix = \"/ccm/\"\n",
            "fleet.prefix",
        ),
        (
            "[fleet]\nendpoints = [\"http://e:2379\"]\nlease_ttl = \"1s\"\n",
            "fleet.lease_ttl",
        ),
        (
            "[fleet]\nendpoints = [\"http://e:2379\"]\nmember_id = \"a b\"\n",
            "fleet.member_id",
        ),
        (
            "[fleet]\nendpoints = [\"http://e:2379\"]\npassword = \"hunter2\"\nuser = \"u\"\n",
            "fleet.password",
        ),
        (
            "[fleet]\nendpoints = [\"http://e:2379\"]\nuser = \"u\"\n",
            "fleet.password_env",
        ),
        (
            "[fleet]\nendpoints = [\"http://e:2379\"]\npassword_env = \"P\"\n",
            "fleet.user",
        ),
        (
            "[fleet]\nendpoints = [\"https://e:2379\"]\ntls_cert = \"/c.pem\"\n",
            "fleet.tls_key",
        ),
        (
            "[fleet]\nendpoints = [\"http://e:2379\"]\ntls_ca = \"/ca.pem\"\n",
            "fleet.endpoints",
        ),
        (
            "[fleet]\nendpoints = [\"https://e:2379\"]\ntls_ca = \"ca.pem\"\n",
            "fleet.tls_ca",
        ),
    ];
    for (fleet, key) in cases {
        let e = fail(&with_fleet(fleet, ""));
        assert!(e.mentions(key), "{fleet}: {e}");
        assert!(!e.to_string().contains("hunter2"), "{e}");
    }
}

#[test]
fn fleet_password_resolves_like_other_secrets() {
    if !crate::fleet::config::COMPILED_IN {
        return;
    }
    let c = parse(&with_fleet(
        "[fleet]\nendpoints = [\"http://e:2379\"]\nuser = \"ccm\"\npassword_env = \"ETCD_PW\"\n",
        "",
    ));
    let auth = c.fleet.expect("fleet").auth.expect("auth");
    let pw = auth
        .password
        .resolve(&env_of(&[("ETCD_PW", "s3cret")]))
        .expect("resolves");
    assert_eq!(pw.expose(), "s3cret");
    let err = auth.password.resolve(&env_of(&[])).expect_err("unset");
    assert!(err.contains("$ETCD_PW"), "{err}");
}
