//! Cloud deploy against the emulator: PCA-issued certificates imported into SCM under a stable
//! name and pushed / batch-pushed / deployed to ELB and WAF; renewal replacing the SCM copy;
//! no repeated (billed) deploys; per-region and per-resource failures injected, reported and
//! retried alone; chunking past 10 regions and 20 resources; crash recovery; dry run.

use std::time::Duration;

use ccm_agent::cloud::Client;
use ccm_agent::cloud::Secret;
use ccm_agent::cloud::pca::Validity;
use ccm_agent::cloud::pca::cert::{ApplyCertificateRequest, ExportType};
use ccm_agent::cloud::scm::{ImportCertificateRequest, TargetService};
use ccm_agent::deploy::{
    self, Action, CertMaterial, CloudTarget, CopyAction, DeployReport, DeployRetry, DeploySpec,
    DeployStore, Resource, UnitResult, WafType,
};
use ccm_agent::emulator::pca::ca::create_active_ca_pair;
use ccm_agent::emulator::scm::{Deployment, KNOWN_REGIONS, demo_ca, demo_leaf};
use ccm_agent::emulator::{Emulator, EmulatorConfig, FaultRule, Shared};
use ccm_agent::pki;

const NAME: &str = "www";
const SCM_NAME: &str = "ccm-agent-www";
const EPS: &str = "2cb2878b-6cd1-460d-bd25-afe655159bdc";

struct Fixture {
    emu: Emulator,
    client: Client,
    ca_id: String,
    store: DeployStore,
    _dir: tempfile::TempDir,
}

impl Fixture {
    async fn start() -> Fixture {
        let emu = Emulator::start(EmulatorConfig::default())
            .await
            .expect("emulator");
        let client = emu.client().expect("client");
        let shared = emu.shared().clone();
        let (_, ca_id) = tokio::task::spawn_blocking(move || {
            create_active_ca_pair(&shared, "Deploy Test Root", "Deploy Test Issuing CA")
        })
        .await
        .expect("join")
        .expect("CA pair");
        let dir = tempfile::tempdir().expect("tempdir");
        let store = DeployStore::at(dir.path().join("deploy"));
        Fixture {
            emu,
            client,
            ca_id,
            store,
            _dir: dir,
        }
    }

    fn shared(&self) -> &Shared {
        self.emu.shared()
    }

    /// A real private certificate issued by the emulator's PCA, with its key.
    async fn pca_material(&self, cn: &str) -> CertMaterial {
        let id = self
            .client
            .apply_private_certificate(&ApplyCertificateRequest::new(
                &self.ca_id,
                cn,
                "EC256",
                "SHA256",
                Validity::days(30),
            ))
            .await
            .expect("apply");
        let exp = self
            .client
            .export_private_certificate(&id, ExportType::Other)
            .await
            .expect("export");
        CertMaterial::local(
            NAME,
            exp.certificate,
            exp.certificate_chain,
            Secret::new(exp.private_key.expect("PCA-generated key")),
        )
    }

    async fn run(&self, spec: &DeploySpec, m: &CertMaterial) -> DeployReport {
        deploy::deploy_certificate(&self.client, &self.store, spec, m, false)
            .await
            .expect("deploy run")
    }

    /// SCM certificates named `name`: (id, fingerprint).
    fn scm_copies(&self, name: &str) -> Vec<(String, String)> {
        self.shared().with_state(|st| {
            st.scm
                .certificates()
                .iter()
                .filter(|c| c.name == name)
                .map(|c| (c.id.clone(), c.fingerprint.clone()))
                .collect()
        })
    }

    fn deployments(&self) -> Vec<Deployment> {
        self.shared().with_state(|st| st.scm.deployments().to_vec())
    }

    fn mutating_requests(&self) -> Vec<String> {
        self.shared()
            .requests()
            .into_iter()
            .filter(|r| r.method != "GET")
            .map(|r| format!("{} {}", r.method, r.path))
            .collect()
    }
}

fn sha1_of(m: &CertMaterial) -> String {
    pki::parse_cert(&m.certificate_pem)
        .expect("leaf")
        .sha1_fingerprint_hex
        .to_ascii_lowercase()
}

fn spec(targets: Vec<CloudTarget>, attempts: u32) -> DeploySpec {
    DeploySpec {
        scm_name: SCM_NAME.into(),
        retry: DeployRetry {
            attempts,
            initial: Duration::from_millis(5),
            max: Duration::from_millis(20),
        },
        targets,
    }
}

fn elb_deploy(project: &str, ids: &[&str]) -> CloudTarget {
    CloudTarget::Deploy {
        service: TargetService::Elb,
        project_name: Some(project.into()),
        resources: ids.iter().map(|id| Resource::elb(*id)).collect(),
    }
}

fn batch_push(service: TargetService, regions: &[&str]) -> CloudTarget {
    CloudTarget::BatchPush {
        service,
        regions: regions.iter().map(|r| (*r).to_owned()).collect(),
    }
}

fn outcome<'a>(r: &'a DeployReport, target: &str) -> &'a UnitResult {
    &r.outcomes
        .iter()
        .find(|o| o.unit.target() == target)
        .unwrap_or_else(|| panic!("no outcome for {target}"))
        .result
}

fn standard_spec() -> DeploySpec {
    spec(
        vec![
            elb_deploy("ap-southeast-1", &["elb0001", "elb0002"]),
            batch_push(TargetService::Waf, &["ap-southeast-1", "cn-north-4"]),
            CloudTarget::Push {
                service: TargetService::Elb,
                region: "ap-southeast-3".into(),
            },
        ],
        3,
    )
}

#[tokio::test]
async fn pca_certificate_is_imported_then_deployed_pushed_and_never_repeated() {
    let f = Fixture::start().await;
    let m = f.pca_material("www.deploy.example").await;
    let spec = standard_spec();
    f.shared().clear_requests();

    let r = f.run(&spec, &m).await;
    assert!(r.is_complete(), "{r:#?}");
    assert_eq!(r.copy, Some(CopyAction::Imported));
    assert_eq!(r.count("deployed"), 5, "{}", r.summary());
    let copies = f.scm_copies(SCM_NAME);
    assert_eq!(copies.len(), 1);
    let (id, fp) = &copies[0];
    assert_eq!(fp, &sha1_of(&m), "the imported copy is this certificate");
    assert_eq!(r.scm_certificate_id.as_deref(), Some(id.as_str()));
    assert_eq!(f.shared().count_requests("scm.import_certificate"), 1);
    assert_eq!(f.shared().count_requests("scm.deploy_certificate"), 1);
    assert_eq!(f.shared().count_requests("scm.batch_push_certificate"), 1);
    assert_eq!(f.shared().count_requests("scm.push_certificate"), 1);

    // What the emulator recorded, target by target.
    let d = f.deployments();
    let deployed: Vec<(&str, &str, Option<&str>, Option<&str>)> = d
        .iter()
        .filter(|x| x.ok && &x.certificate_id == id)
        .map(|x| {
            (
                x.operation.as_str(),
                x.service.as_str(),
                x.project.as_deref(),
                x.resource_id.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        deployed,
        vec![
            ("deploy", "ELB", Some("ap-southeast-1"), Some("elb0001")),
            ("deploy", "ELB", Some("ap-southeast-1"), Some("elb0002")),
            ("batch_push", "WAF", Some("ap-southeast-1"), None),
            ("batch_push", "WAF", Some("cn-north-4"), None),
            ("push", "ELB", Some("ap-southeast-3"), None),
        ]
    );
    assert!(d.iter().all(|x| x.certificate_name == SCM_NAME));
    assert!(f.store.path(NAME).exists());

    // The same certificate again, also from a fresh process (state read from disk): no call.
    f.shared().clear_requests();
    let again = f.run(&spec, &m).await;
    assert_eq!(again.count("unchanged"), 5, "{}", again.summary());
    assert!(again.calls.is_empty());
    assert!(
        f.shared().requests().is_empty(),
        "{:?}",
        f.shared().requests()
    );
    assert_eq!(f.deployments().len(), d.len());
    let rows = again.metric_rows();
    assert!(rows.contains(&("ELB", "deploy", "elb0002".into(), "unchanged")));
}

#[tokio::test]
async fn renewal_imports_under_the_same_name_and_deletes_the_old_copy_after_deploying() {
    let f = Fixture::start().await;
    // A certificate someone else keeps in SCM under the same name: never adopted, never deleted.
    let ca = demo_ca(f.shared().now()).expect("ca");
    let (foreign_pem, foreign_key) = demo_leaf(
        &ca,
        "other.example",
        &[],
        f.shared().now() - time::Duration::days(1),
        f.shared().now() + time::Duration::days(60),
    )
    .expect("leaf");
    let foreign = f
        .client
        .scm_import_certificate(&ImportCertificateRequest::new(
            SCM_NAME,
            foreign_pem,
            foreign_key,
        ))
        .await
        .expect("import foreign")
        .certificate_id;

    let spec = standard_spec();
    let first = f.pca_material("www.deploy.example").await;
    let r1 = f.run(&spec, &first).await;
    assert!(r1.is_complete());
    let old_id = r1.scm_certificate_id.clone().expect("id");
    assert_ne!(old_id, foreign);

    let renewed = f.pca_material("www.deploy.example").await;
    assert_ne!(sha1_of(&first), sha1_of(&renewed));
    f.shared().clear_requests();
    let r2 = f.run(&spec, &renewed).await;
    assert!(r2.is_complete(), "{r2:#?}");
    assert_eq!(r2.copy, Some(CopyAction::Imported));
    assert_eq!(r2.count("deployed"), 5);
    let new_id = r2.scm_certificate_id.clone().expect("id");
    assert_ne!(new_id, old_id);
    assert_eq!(r2.deleted, vec![old_id.clone()]);

    // One copy of the agent's certificate remains (the renewed one), besides the foreign one.
    let mut copies = f.scm_copies(SCM_NAME);
    copies.sort();
    let mut want = vec![
        (new_id.clone(), sha1_of(&renewed)),
        (
            foreign.clone(),
            f.shared().with_state(|st| {
                st.scm
                    .certificate(&foreign)
                    .map(|c| c.fingerprint.clone())
                    .unwrap_or_default()
            }),
        ),
    ];
    want.sort();
    assert_eq!(copies, want);

    // The delete came after every push and deploy of the new copy.
    let reqs = f.shared().requests();
    let delete = reqs
        .iter()
        .find(|r| r.operation == "scm.delete_certificate")
        .expect("delete");
    assert!(delete.path.ends_with(&old_id));
    let last_push = reqs
        .iter()
        .filter(|r| r.path.ends_with("/deploy") || r.path.contains("push"))
        .map(|r| r.seq)
        .max()
        .expect("pushes");
    assert!(delete.seq > last_push);
    assert_eq!(f.shared().count_requests("scm.delete_certificate"), 1);
}

#[tokio::test]
async fn the_old_copy_stays_until_every_target_has_the_new_certificate() {
    let f = Fixture::start().await;
    let spec = spec(vec![elb_deploy("ap-southeast-1", &["r1", "r2"])], 2);
    let first = f.pca_material("keep.example").await;
    let old_id = f.run(&spec, &first).await.scm_certificate_id.expect("id");

    let renewed = f.pca_material("keep.example").await;
    let mut rule = FaultRule::new("scm.deploy_certificate");
    rule.target = Some("r2".into());
    rule.times = Some(2);
    f.shared().add_fault(rule);
    let r = f.run(&spec, &renewed).await;
    assert!(matches!(outcome(&r, "r2"), UnitResult::Failed(_)));
    assert!(r.deleted.is_empty());
    assert_eq!(
        f.scm_copies(SCM_NAME).len(),
        2,
        "old copy kept while r2 has it"
    );
    assert_eq!(f.shared().count_requests("scm.delete_certificate"), 0);

    f.shared().clear_requests();
    let r = f.run(&spec, &renewed).await;
    assert_eq!(*outcome(&r, "r2"), UnitResult::Deployed);
    assert_eq!(*outcome(&r, "r1"), UnitResult::Unchanged);
    assert_eq!(r.copy, Some(CopyAction::Reused));
    assert_eq!(r.deleted, vec![old_id]);
    assert_eq!(f.shared().count_requests("scm.import_certificate"), 0);
    assert_eq!(f.scm_copies(SCM_NAME).len(), 1);
}

#[tokio::test]
async fn partial_failures_are_reported_per_region_and_resource_and_only_those_retried() {
    let f = Fixture::start().await;
    let spec = spec(
        vec![
            batch_push(
                TargetService::Elb,
                &["ap-southeast-1", "cn-north-4", "cn-east-3"],
            ),
            elb_deploy("ap-southeast-1", &["res1", "res2", "res3"]),
        ],
        2,
    );
    let m = f.pca_material("partial.example").await;
    let fault = |op: &str, target: &str, times: u32| {
        let mut rule = FaultRule::new(op);
        rule.target = Some(target.into());
        rule.times = Some(times);
        rule
    };
    // Fails both attempts of this run.
    f.shared()
        .add_fault(fault("scm.batch_push_certificate", "cn-north-4", 2));
    f.shared()
        .add_fault(fault("scm.deploy_certificate", "res2", 2));
    // Fails once: succeeds on the run's second attempt.
    f.shared()
        .add_fault(fault("scm.deploy_certificate", "res3", 1));

    let r = f.run(&spec, &m).await;
    assert!(!r.is_complete());
    assert_eq!(
        *outcome(&r, "cn-north-4"),
        UnitResult::Failed("SCM.0201:Failed to push to ELB.".into())
    );
    assert_eq!(
        *outcome(&r, "res2"),
        UnitResult::Failed("SCM.0201:Failed to push to ELB.".into())
    );
    for ok in ["ap-southeast-1", "cn-east-3", "res1", "res3"] {
        assert_eq!(*outcome(&r, ok), UnitResult::Deployed, "{ok}");
    }
    let attempts = |t: &str| {
        r.outcomes
            .iter()
            .find(|o| o.unit.target() == t)
            .map(|o| o.attempts)
    };
    assert_eq!(attempts("res1"), Some(1));
    assert_eq!(attempts("res3"), Some(2));
    assert_eq!(attempts("res2"), Some(2));
    // Round 1: all units; round 2: only the failed ones.
    let call_targets: Vec<(Action, Vec<String>)> = r
        .calls
        .iter()
        .map(|c| (c.action, c.targets.clone()))
        .collect();
    let s = |v: &[&str]| v.iter().map(|x| (*x).to_owned()).collect::<Vec<_>>();
    assert_eq!(
        call_targets,
        vec![
            (
                Action::BatchPush,
                s(&["ap-southeast-1", "cn-north-4", "cn-east-3"])
            ),
            (Action::Deploy, s(&["res1", "res2", "res3"])),
            (Action::BatchPush, s(&["cn-north-4"])),
            (Action::Deploy, s(&["res2", "res3"])),
        ]
    );
    let rows = r.metric_rows();
    assert!(rows.contains(&("ELB", "batch-push", "cn-north-4".into(), "failed")));
    assert!(rows.contains(&("ELB", "deploy", "res2".into(), "failed")));
    assert!(rows.contains(&("ELB", "deploy", "res1".into(), "deployed")));
    assert_eq!(r.failed().count(), 2);
    assert_eq!(r.summary(), "4 deployed, 2 failed");

    // The next run (the faults are used up) calls only for the two failed units.
    let before = f.deployments().len();
    f.shared().clear_requests();
    let r2 = f.run(&spec, &m).await;
    assert!(r2.is_complete(), "{r2:#?}");
    assert_eq!(*outcome(&r2, "cn-north-4"), UnitResult::Deployed);
    assert_eq!(*outcome(&r2, "res2"), UnitResult::Deployed);
    assert_eq!(r2.count("unchanged"), 4);
    assert_eq!(f.shared().count_requests("scm.import_certificate"), 0);
    let new: Vec<(String, Option<String>, Option<String>)> = f.deployments()[before..]
        .iter()
        .map(|d| {
            (
                d.operation.clone(),
                d.project.clone(),
                d.resource_id.clone(),
            )
        })
        .collect();
    assert_eq!(
        new,
        vec![
            ("batch_push".into(), Some("cn-north-4".into()), None),
            (
                "deploy".into(),
                Some("ap-southeast-1".into()),
                Some("res2".into())
            ),
        ]
    );
}

#[tokio::test]
async fn a_failed_whole_call_fails_its_units_and_is_retried() {
    let f = Fixture::start().await;
    let spec = spec(vec![elb_deploy("ap-southeast-1", &["a1", "a2"])], 3);
    let m = f.pca_material("whole.example").await;
    let mut rule = FaultRule::error("scm.deploy_certificate", 400, "SCM.0201");
    rule.times = Some(1);
    f.shared().add_fault(rule);
    let r = f.run(&spec, &m).await;
    assert!(r.is_complete(), "{r:#?}");
    assert_eq!(r.calls.len(), 2);
    assert!(
        r.calls[0]
            .error
            .as_deref()
            .is_some_and(|e| e.contains("SCM.0201")),
        "{:?}",
        r.calls[0]
    );
    assert_eq!(r.calls[1].error, None);
    assert!(r.outcomes.iter().all(|o| o.attempts == 2));
}

#[tokio::test]
async fn more_than_10_regions_and_20_resources_are_split_into_calls() {
    let f = Fixture::start().await;
    let regions: Vec<&str> = KNOWN_REGIONS.iter().copied().take(25).collect();
    let ids: Vec<String> = (0..45).map(|i| format!("elb{i:04}")).collect();
    let id_refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let spec = spec(
        vec![
            batch_push(TargetService::Elb, &regions),
            elb_deploy("ap-southeast-1", &id_refs),
        ],
        1,
    );
    let m = f.pca_material("chunks.example").await;
    let r = f.run(&spec, &m).await;
    assert!(r.is_complete(), "{}", r.summary());
    assert_eq!(f.shared().count_requests("scm.batch_push_certificate"), 3);
    assert_eq!(f.shared().count_requests("scm.deploy_certificate"), 3);
    let sizes: Vec<(Action, usize)> = r
        .calls
        .iter()
        .map(|c| (c.action, c.targets.len()))
        .collect();
    assert_eq!(
        sizes,
        vec![
            (Action::BatchPush, 10),
            (Action::BatchPush, 10),
            (Action::BatchPush, 5),
            (Action::Deploy, 20),
            (Action::Deploy, 20),
            (Action::Deploy, 5),
        ]
    );
    let d = f.deployments();
    let mut pushed: Vec<String> = d
        .iter()
        .filter(|x| x.ok && x.operation == "batch_push")
        .filter_map(|x| x.project.clone())
        .collect();
    pushed.sort();
    let mut want: Vec<String> = regions.iter().map(|r| (*r).to_owned()).collect();
    want.sort();
    assert_eq!(pushed, want);
    let mut deployed: Vec<String> = d
        .iter()
        .filter(|x| x.ok && x.operation == "deploy")
        .filter_map(|x| x.resource_id.clone())
        .collect();
    deployed.sort();
    assert_eq!(deployed, ids);
}

#[tokio::test]
async fn waf_deploy_sends_type_and_enterprise_project() {
    let f = Fixture::start().await;
    let spec = spec(
        vec![CloudTarget::Deploy {
            service: TargetService::Waf,
            project_name: Some("cn-north-4".into()),
            resources: vec![
                Resource::waf("waf-premium-1", WafType::Premium, EPS),
                Resource::waf("waf-cloud-1", WafType::Cloud, "0"),
            ],
        }],
        1,
    );
    let m = f.pca_material("waf.example").await;
    let r = f.run(&spec, &m).await;
    assert!(r.is_complete(), "{r:#?}");
    let got: Vec<(String, String, Option<String>, Option<String>)> = f
        .deployments()
        .into_iter()
        .filter(|d| d.ok)
        .map(|d| {
            (
                d.service,
                d.resource_id.unwrap_or_default(),
                d.resource_type,
                d.enterprise_project_id,
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (
                "WAF".into(),
                "waf-premium-1".into(),
                Some("premium".into()),
                Some(EPS.into())
            ),
            (
                "WAF".into(),
                "waf-cloud-1".into(),
                Some("cloud".into()),
                Some("0".into())
            ),
        ]
    );
}

#[tokio::test]
async fn a_copy_imported_before_a_crash_is_adopted_not_imported_again() {
    let f = Fixture::start().await;
    let spec = spec(vec![elb_deploy("ap-southeast-1", &["c1"])], 1);
    let m = f.pca_material("crash.example").await;
    // What a run that crashed right after its import left behind: the copy, no state.
    let ccm_agent::deploy::Origin::Local { private_key } = &m.origin else {
        panic!("local");
    };
    let leaf = pki::parse_pem_chain(&m.certificate_pem).expect("pem")[0].to_pem();
    let crashed_id = f
        .client
        .scm_import_certificate(
            &ImportCertificateRequest::new(SCM_NAME, leaf, private_key.expose())
                .chain(m.chain_pem.clone()),
        )
        .await
        .expect("import")
        .certificate_id;
    assert!(!f.store.path(NAME).exists());
    f.shared().clear_requests();

    let r = f.run(&spec, &m).await;
    assert!(r.is_complete(), "{r:#?}");
    assert_eq!(r.copy, Some(CopyAction::Adopted));
    assert_eq!(r.scm_certificate_id.as_deref(), Some(crashed_id.as_str()));
    assert_eq!(f.shared().count_requests("scm.import_certificate"), 0);
    assert_eq!(f.scm_copies(SCM_NAME).len(), 1);
    let d = f.deployments();
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].certificate_id, crashed_id);
    let state = f.store.load(NAME).expect("state");
    assert_eq!(
        state.scm_copy.map(|c| c.id),
        Some(crashed_id),
        "recorded now"
    );
}

#[tokio::test]
async fn dry_run_lists_the_calls_and_sends_nothing() {
    let f = Fixture::start().await;
    let regions: Vec<&str> = KNOWN_REGIONS.iter().copied().take(12).collect();
    let ids: Vec<String> = (0..21).map(|i| format!("dry{i:02}")).collect();
    let id_refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let spec = spec(
        vec![
            batch_push(TargetService::Waf, &regions),
            elb_deploy("ap-southeast-1", &id_refs),
        ],
        1,
    );
    let m = f.pca_material("dry.example").await;
    f.shared().clear_requests();
    let r = deploy::deploy_certificate(&f.client, &f.store, &spec, &m, true)
        .await
        .expect("dry run");
    assert!(
        f.shared().requests().is_empty(),
        "{:?}",
        f.mutating_requests()
    );
    assert!(!f.store.path(NAME).exists(), "dry run writes no state");
    assert_eq!(r.count("planned"), 33);
    let p = &r.planned;
    assert_eq!(p.len(), 5, "{p:#?}");
    assert!(p[0].starts_with("POST /v3/scm/certificates/import name=\"ccm-agent-www\""));
    assert!(
        p[1].contains("/batch-push WAF regions=[af-north-1,"),
        "{}",
        p[1]
    );
    assert!(p[1].ends_with("(call 1 of 2)"));
    assert!(p[2].ends_with("(call 2 of 2)"));
    assert!(p[3].contains("/deploy ELB project=ap-southeast-1 resources=[dry00,"));
    assert!(p[4].contains("resources=[dry20] (call 2 of 2)"), "{}", p[4]);
    assert_eq!(deploy::describe(&f.store, &spec, &m).expect("describe"), *p);

    // After a real deploy, a renewal's dry run names the copy it would reuse and delete.
    let real = f.run(&spec, &m).await;
    let old = real.scm_certificate_id.clone().expect("id");
    let renewed = f.pca_material("dry.example").await;
    f.shared().clear_requests();
    let r = deploy::deploy_certificate(&f.client, &f.store, &spec, &renewed, true)
        .await
        .expect("dry run");
    assert!(f.shared().requests().is_empty());
    assert!(
        r.planned
            .iter()
            .any(|l| l.starts_with(&format!("DELETE /v3/scm/certificates/{old}"))),
        "{:#?}",
        r.planned
    );
    // Same certificate: nothing to do, said once.
    let lines = deploy::describe(&f.store, &spec, &m).expect("describe");
    assert_eq!(lines.len(), 1);
    assert!(lines[0].starts_with("nothing to deploy"), "{lines:?}");
}

#[tokio::test]
async fn an_scm_certificate_is_pushed_by_id_without_import_or_delete() {
    let f = Fixture::start().await;
    let ca = demo_ca(f.shared().now()).expect("ca");
    let (pem, key) = demo_leaf(
        &ca,
        "shop.example",
        &[],
        f.shared().now() - time::Duration::days(1),
        f.shared().now() + time::Duration::days(90),
    )
    .expect("leaf");
    let id = f
        .client
        .scm_import_certificate(&ImportCertificateRequest::new(
            "shop-2026",
            pem.clone(),
            key,
        ))
        .await
        .expect("import")
        .certificate_id;
    let m = CertMaterial::scm("shop", id.clone(), pem);
    let spec = spec(
        vec![
            batch_push(TargetService::Elb, &["ap-southeast-1"]),
            elb_deploy("ap-southeast-1", &["s1"]),
        ],
        1,
    );
    f.shared().clear_requests();
    let r = f.run(&spec, &m).await;
    assert!(r.is_complete());
    assert_eq!(r.copy, None);
    assert_eq!(r.scm_certificate_id.as_deref(), Some(id.as_str()));
    assert_eq!(f.shared().count_requests("scm.import_certificate"), 0);
    assert_eq!(f.shared().count_requests("scm.list_certificates"), 0);
    assert!(
        f.deployments()
            .iter()
            .all(|d| d.certificate_id == id && d.ok)
    );
    f.shared().clear_requests();
    let again = f.run(&spec, &m).await;
    assert_eq!(again.count("unchanged"), 2);
    assert!(f.shared().requests().is_empty());
}

#[tokio::test]
async fn a_copy_deleted_behind_the_agents_back_is_imported_again() {
    let f = Fixture::start().await;
    let m = f.pca_material("lost.example").await;
    let one = spec(vec![elb_deploy("ap-southeast-1", &["l1"])], 2);
    let first = f.run(&one, &m).await;
    let lost = first.scm_certificate_id.clone().expect("id");
    f.client
        .scm_delete_certificate(&lost)
        .await
        .expect("delete");

    // A target added later needs the (now missing) copy: the run fails it, without retrying
    // a copy that is gone, and forgets the copy.
    let two = spec(vec![elb_deploy("ap-southeast-1", &["l1", "l2"])], 2);
    let r = f.run(&two, &m).await;
    assert_eq!(*outcome(&r, "l1"), UnitResult::Unchanged);
    let UnitResult::Failed(msg) = outcome(&r, "l2") else {
        panic!("{r:#?}");
    };
    assert!(msg.contains("SCM.0008"), "{msg}");
    assert_eq!(r.calls.len(), 1, "no retry against a missing certificate");
    assert_eq!(f.store.load(NAME).expect("state").scm_copy, None);

    let r = f.run(&two, &m).await;
    assert_eq!(r.copy, Some(CopyAction::Imported));
    assert_eq!(*outcome(&r, "l2"), UnitResult::Deployed);
    assert_eq!(f.scm_copies(SCM_NAME).len(), 1);
}

#[test]
fn config_table_becomes_a_deploy_spec() {
    use ccm_agent::config::{Config, ConfigError};
    let base = |extra: &str| {
        format!(
            r#"
[cloud]
region = "ap-southeast-1"
[defaults.output]
base_dir = "/etc/ccm-agent/live"
[defaults.pca]
ca_id = "{EPS}"
validity = {{ type = "DAY", value = 90 }}

[[certificates]]
name = "www"
pca = {{ sans = ["dns:www.example.com"] }}
[certificates.deploy]
attempts = 2
[[certificates.deploy.targets]]
service = "WAF"
project_name = "cn-north-4"
resources = [{{ id = "w1", type = "premium", enterprise_project_id = "{EPS}" }}]
[[certificates.deploy.targets]]
service = "ELB"
regions = ["ap-southeast-1", "cn-north-4"]

[[certificates]]
name = "api"
pca = {{ sans = ["dns:api.example.com"] }}
{extra}
"#
        )
    };
    let c = Config::from_str(&base(""), "t.toml").unwrap_or_else(|e| panic!("{e}"));
    let www = c.certificate("www").expect("www");
    let d = www.deploy.as_ref().expect("deploy spec");
    assert_eq!(d.scm_name, "ccm-agent-www");
    assert_eq!(d.retry.attempts, 2);
    assert_eq!(
        d.targets,
        vec![
            CloudTarget::Deploy {
                service: TargetService::Waf,
                project_name: Some("cn-north-4".into()),
                resources: vec![Resource::waf("w1", WafType::Premium, EPS)],
            },
            batch_push(TargetService::Elb, &["ap-southeast-1", "cn-north-4"]),
        ]
    );
    assert_eq!(c.certificate("api").expect("api").deploy, None);

    let clash = "[certificates.deploy]\nscm_name = \"ccm-agent-www\"\n[[certificates.deploy.targets]]\nservice = \"ELB\"\nregion = \"cn-north-4\"\n";
    let err: ConfigError = Config::from_str(&base(clash), "t.toml").expect_err("clash");
    assert!(err.mentions("certificates[1].deploy.scm_name"), "{err}");
    let typo = "[certificates.deploy]\n[[certificates.deploy.targets]]\nservice = \"ELB\"\nregoin = \"cn-north-4\"\n";
    let err = Config::from_str(&base(typo), "t.toml").expect_err("typo");
    assert!(err.to_string().contains("regoin"), "{err}");
    let waf = "[certificates.deploy]\n[[certificates.deploy.targets]]\nservice = \"WAF\"\nresources = [{ id = \"w\" }]\n";
    let err = Config::from_str(&base(waf), "t.toml").expect_err("waf type");
    assert!(
        err.mentions("certificates[1].deploy.targets[0].resources[0].type"),
        "{err}"
    );
}

#[tokio::test]
async fn a_run_stopped_midway_keeps_what_it_deployed() {
    let f = Fixture::start().await;
    let spec = spec(
        vec![
            batch_push(TargetService::Elb, &["ap-southeast-1", "cn-north-4"]),
            elb_deploy("ap-southeast-1", &["slow1"]),
        ],
        1,
    );
    let m = f.pca_material("stop.example").await;
    // Far longer than the wait below: the deploy call is surely still in flight when the run is
    // dropped. One use only, so the emulator counting it down tells that the call has arrived.
    let mut slow = FaultRule::new("scm.deploy_certificate");
    slow.latency_ms = 120_000;
    slow.times = Some(1);
    f.shared().add_fault(slow);
    // Shutdown (or a crash) while the deploy call hangs: the batch-push is already recorded.
    // The run is dropped as soon as the deploy call has reached the emulator: it is sent only
    // after the import and the batch-push have finished and their results were saved.
    let run = deploy::deploy_certificate(&f.client, &f.store, &spec, &m, false);
    let deploy_in_flight = async {
        let start = std::time::Instant::now();
        while f.shared().faults().iter().any(|r| r.times == Some(1)) {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "the deploy call never reached the emulator: {:?}",
                f.mutating_requests()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::select! {
        r = run => panic!("the run should still be waiting: {r:#?}"),
        () = deploy_in_flight => {}
    }
    let st = f.store.load(NAME).expect("state");
    let mut keys: Vec<&String> = st.deployed.keys().collect();
    keys.sort();
    assert_eq!(
        keys,
        vec!["batch-push/ELB/ap-southeast-1", "batch-push/ELB/cn-north-4"]
    );

    f.shared().clear_faults();
    f.shared().clear_requests();
    let r = f.run(&spec, &m).await;
    assert!(r.is_complete(), "{r:#?}");
    assert_eq!(r.count("unchanged"), 2);
    assert_eq!(f.shared().count_requests("scm.batch_push_certificate"), 0);
    assert_eq!(f.shared().count_requests("scm.import_certificate"), 0);
    assert_eq!(r.copy, Some(CopyAction::Reused));
}
