use proptest::prelude::*;

use super::*;
use crate::engine::{HostPlan, RoundTrips, StepPlan, StepRef};
use crate::model::yaml::Pos;
use crate::model::{Host, StepAddress};
use crate::modules::{Change, ChangeKind, FieldChange, ProbeError, ProbeResult, Resource};
use crate::render::{DesiredHost, DesiredStep};

/// A resource whose target and desired state are given.
#[derive(Debug)]
struct Fake {
    target: String,
    desired: serde_json::Value,
}

impl Resource for Fake {
    fn target(&self) -> String {
        self.target.clone()
    }
    fn desired(&self) -> serde_json::Value {
        self.desired.clone()
    }
    fn probe(&self) -> String {
        String::new()
    }
    fn diff(&self, _: &ProbeResult) -> Result<Change, ProbeError> {
        Ok(Change::in_sync())
    }
    fn apply(&self, _: &Change) -> String {
        String::new()
    }
}

fn step(id: &str, module: &'static str, target: &str, desired: serde_json::Value) -> DesiredStep {
    DesiredStep {
        address: StepAddress::new("base", id),
        module,
        resource: std::sync::Arc::new(Fake {
            target: target.into(),
            desired,
        }),
        after: Vec::new(),
        notify: Vec::new(),
        sensitive: false,
        secrets: Vec::new(),
        path: "units/base.yaml".into(),
        pos: Pos { line: 7, col: 5 },
        prune: Default::default(),
    }
}

fn desired_host(steps: Vec<DesiredStep>) -> DesiredHost {
    DesiredHost {
        host: Host {
            name: "web1".into(),
            address: "10.0.0.1".into(),
            port: 22,
            user: None,
            become_: false,
            labels: [("role".to_string(), "web".to_string())].into(),
            vars: Default::default(),
            path: "environments/prod/hosts.yaml".into(),
            pos: Pos::START,
        },
        steps,
        skipped: Vec::new(),
        facts: None,
        orphans: Vec::new(),
    }
}

fn ctx(env: &str) -> Context {
    Context {
        environment: env.into(),
        commit: None,
        now: NowInput::at(time::macros::datetime!(2026-11-24 14:00 UTC)),
    }
}

fn starter() -> PolicySet {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/policies");
    let mut set = PolicySet::default();
    set.add_dirs(Origin::Operator, &[dir], false)
        .expect("starter pack");
    set
}

fn remove_ssh() -> DesiredHost {
    desired_host(vec![step(
        "ssh",
        "package",
        "openssh-server",
        serde_json::json!({"name": "openssh-server", "state": "absent"}),
    )])
}

#[test]
fn a_denial_names_the_rule_its_file_line_and_the_steps_position() {
    let set = starter();
    let input = desired_input(&ctx("staging"), &remove_ssh(), 1);
    let findings = set.evaluate(&input).expect("evaluates");
    assert_eq!(findings.len(), 1, "{findings:?}");
    let f = &findings[0];
    assert_eq!(f.rule, "ssh.deny_remove");
    assert!(
        f.rule_location.ends_with("examples/policies/ssh.rego:11"),
        "{f:?}"
    );
    assert_eq!(f.step.as_deref(), Some("base/ssh"));
    assert_eq!(f.step_location.as_deref(), Some("units/base.yaml:7:5"));
    assert_eq!(f.level, Level::Overridable);
    assert!(f
        .line()
        .starts_with("units/base.yaml:7:5: denied (overridable) by ssh.deny_remove"));
}

#[test]
fn allowed_desired_state_has_no_findings() {
    let h = desired_host(vec![step(
        "ssh",
        "package",
        "openssh-server",
        serde_json::json!({"name": "openssh-server", "state": "present", "version": "1:9.2"}),
    )]);
    let findings = starter()
        .evaluate(&desired_input(&ctx("production"), &h, 1))
        .expect("evaluates");
    assert!(findings.is_empty(), "{findings:?}");
}

#[test]
fn the_plan_carries_changes_and_a_sysctl_change_outside_the_window_is_denied() {
    let h = desired_host(vec![step(
        "swappiness",
        "sysctl",
        "vm.swappiness",
        serde_json::json!({"name": "vm.swappiness", "value": "10"}),
    )]);
    let plan = HostPlan {
        host: h.host.clone(),
        facts: None,
        steps: vec![StepPlan {
            step: StepRef::of(&h.steps[0]),
            change: Ok(Change {
                fields: vec![FieldChange {
                    field: crate::modules::Field::Value,
                    from: Some("60".into()),
                    to: Some("10".into()),
                }],
                ..Change::new(ChangeKind::Modify)
            }),
        }],
        error: None,
        round_trips: RoundTrips::default(),
        duration: std::time::Duration::ZERO,
    };
    let input = plan_input(&ctx("staging"), &h, &plan, 1, 1);
    let findings = starter().evaluate(&input).expect("evaluates");
    assert_eq!(findings.len(), 1, "{findings:?}");
    assert_eq!(findings[0].rule, "maintenance.deny_sysctl");
    assert_eq!(findings[0].level, Level::Mandatory);
    // Desired state alone (validate) has no change to judge.
    let none = starter()
        .evaluate(&desired_input(&ctx("staging"), &h, 1))
        .expect("evaluates");
    assert!(none.is_empty());
}

fn findings_for_override() -> Vec<Finding> {
    starter()
        .evaluate(&desired_input(&ctx("staging"), &remove_ssh(), 1))
        .expect("evaluates")
}

#[test]
fn only_an_approvers_override_lifts_an_overridable_denial() {
    let trailer = overrides::parse(
        "remove ssh\n\nPlumb-Override: ssh.deny_remove host is retired\nPlumb-Override: bare\n",
    );
    assert_eq!(trailer.len(), 1, "a trailer needs a reason");
    let approvers = vec!["alice@example.com".to_string()];

    let v = Verdict::judge(
        findings_for_override(),
        &trailer,
        Some("alice@example.com"),
        &approvers,
    );
    assert!(!v.is_denied(), "{v:?}");
    assert_eq!(v.overridden.len(), 1);
    assert!(v.overrides[0].accepted);
    assert_eq!(v.overrides[0].by.as_deref(), Some("alice@example.com"));

    let v = Verdict::judge(
        findings_for_override(),
        &trailer,
        Some("mallory@example.com"),
        &approvers,
    );
    assert!(v.is_denied());
    assert!(!v.overrides[0].accepted);
    assert!(v.overrides[0]
        .refused_because
        .as_deref()
        .is_some_and(|r| r.contains("not an approver")));

    let v = Verdict::judge(findings_for_override(), &[], None, &approvers);
    assert!(v.is_denied());
}

#[test]
fn a_mandatory_denial_cannot_be_overridden() {
    let mut set = PolicySet::default();
    set.add(
        Origin::Operator,
        vec![(
            "p.rego".into(),
            "package plumb.x\ndeny contains \"no\" if true\n".into(),
        )],
    )
    .expect("compiles");
    let findings = set
        .evaluate(&desired_input(&ctx("e"), &remove_ssh(), 1))
        .expect("evaluates");
    let trailer = overrides::parse("Plumb-Override: x.deny because\n");
    let v = Verdict::judge(findings, &trailer, Some("a"), &["a".to_string()]);
    assert!(v.is_denied());
    assert!(v.overrides[0]
        .refused_because
        .as_deref()
        .is_some_and(|r| r.contains("mandatory")));
}

#[test]
fn a_repo_policy_cannot_make_an_operator_rule_overridable() {
    let mut set = PolicySet::default();
    set.add(
        Origin::Operator,
        vec![(
            "op.rego".into(),
            "package plumb.guard\ndeny_all contains \"no\" if true\n".into(),
        )],
    )
    .expect("compiles");
    set.add(
        Origin::Repo,
        vec![(
            "policies/weaken.rego".into(),
            "package plumb.guard\noverridable := {\"deny_all\"}\n".into(),
        )],
    )
    .expect("compiles");
    let findings = set
        .evaluate(&desired_input(&ctx("e"), &remove_ssh(), 1))
        .expect("evaluates");
    assert_eq!(findings.len(), 1);
    assert_eq!(findings[0].level, Level::Mandatory);
    assert_eq!(findings[0].origin, Origin::Operator);
}

#[test]
fn structured_violations_and_warnings() {
    let mut set = PolicySet::default();
    let rego = "package plumb.s\n\nviolation contains {\"msg\": \"bad\", \"step\": s.address} if {\n  some s in input.steps\n}\nwarn_x contains \"careful\" if true\n";
    set.add(Origin::Repo, vec![("policies/s.rego".into(), rego.into())])
        .expect("compiles");
    let findings = set
        .evaluate(&desired_input(&ctx("e"), &remove_ssh(), 1))
        .expect("evaluates");
    assert_eq!(findings.len(), 2, "{findings:?}");
    assert_eq!(findings[0].rule_location, "policies/s.rego:3");
    assert_eq!(
        findings[0].step_location.as_deref(),
        Some("units/base.yaml:7:5")
    );
    assert_eq!(findings[1].level, Level::Advisory);
}

#[test]
fn a_policy_that_does_not_compile_is_an_error_naming_its_file() {
    let mut set = PolicySet::default();
    let e = set
        .add(
            Origin::Repo,
            vec![(
                "policies/bad.rego".into(),
                "package plumb.b\ndeny contains if {\n".into(),
            )],
        )
        .expect_err("does not compile");
    assert_eq!(e.code(), "compile");
    assert!(e.to_string().starts_with("policies/bad.rego"), "{e}");
}

#[test]
fn a_runaway_policy_is_stopped_by_the_time_limit() {
    let mut set = PolicySet::default();
    // 10^12 iterations: only the execution timer ends it.
    let rego = "package plumb.slow\ndeny contains x if {\n  some a in numbers.range(1, 1000000)\n  some b in numbers.range(1, 1000000)\n  x := a * b\n  x < 0\n}\n";
    set.add(
        Origin::Repo,
        vec![("policies/slow.rego".into(), rego.into())],
    )
    .expect("compiles");
    let started = std::time::Instant::now();
    let e = set
        .evaluate(&desired_input(&ctx("e"), &remove_ssh(), 1))
        .expect_err("stopped");
    assert_eq!(e.code(), "eval");
    assert!(
        started.elapsed() < EVAL_TIME_LIMIT * 4,
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn the_starter_pack_tests_pass() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/policies");
    let mut set = PolicySet::default();
    set.add_dirs(Origin::Operator, &[dir], true).expect("loads");
    let results = set.run_tests();
    assert!(results.len() >= 20, "{results:?}");
    let failed: Vec<_> = results.iter().filter(|r| !r.passed).collect();
    assert!(failed.is_empty(), "{failed:?}");
}

#[test]
fn a_failing_test_rule_fails() {
    let mut set = PolicySet::default();
    set.add(
        Origin::Operator,
        vec![(
            "t_test.rego".into(),
            "package plumb.t\ntest_ok if true\ntest_bad if 1 == 2\n".into(),
        )],
    )
    .expect("compiles");
    let r = set.run_tests();
    assert_eq!(r.len(), 2);
    assert!(r[0].passed && !r[1].passed, "{r:?}");
}

fn sensitive_step(secret: &str) -> DesiredStep {
    DesiredStep {
        sensitive: true,
        secrets: vec!["db_password".into()],
        resource: std::sync::Arc::new(Fake {
            target: format!("/etc/{secret}"),
            desired: serde_json::json!({"path": format!("/etc/{secret}"), "content": secret, "n": [secret, 3]}),
        }),
        ..step("secret", "file", "", serde_json::Value::Null)
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Whatever a sensitive step holds, the input document (desired and plan) never
    /// contains it.
    #[test]
    fn the_input_never_contains_a_sensitive_value(secret in "[A-Za-z0-9_+=/-]{12,40}") {
        let h = desired_host(vec![sensitive_step(&secret), step("ssh", "package", "openssh-server", serde_json::json!({"name": "openssh-server"}))]);
        let r = StepRef::of(&h.steps[0]);
        let raw = Change {
            fields: vec![FieldChange { field: crate::modules::Field::Content, from: Some(secret.clone()), to: Some(secret.clone()) }],
            notes: vec![secret.clone()],
            ..Change::new(ChangeKind::Modify)
        };
        let plan = HostPlan {
            host: h.host.clone(),
            facts: None,
            steps: vec![StepPlan { change: Ok(r.redact(&raw)), step: r }],
            error: None,
            round_trips: RoundTrips::default(),
            duration: std::time::Duration::ZERO,
        };
        for input in [desired_input(&ctx("e"), &h, 1), plan_input(&ctx("e"), &h, &plan, 1, 1)] {
            let text = serde_json::to_string(&input).unwrap();
            prop_assert!(!text.contains(&secret), "{}", text);
            prop_assert!(text.contains("openssh-server"));
        }
    }
}

/// What a backup step's probe observes: the last restore test ended `result`, its last
/// success `success_age` seconds before the probe (`None`: never).
fn backup_seen(
    result: crate::modules::backup::TestResult,
    success_age: Option<i64>,
) -> crate::modules::backup::BackupObserved {
    use crate::modules::backup::{BackupObserved, RepoState, RestoreTestObserved};
    let now = 2_000_000_000;
    BackupObserved {
        now,
        repository: RepoState::Ok,
        latest_snapshot: Some(now - 3_000),
        restore_test: Some(RestoreTestObserved {
            result,
            failure: None,
            finished: now - 600,
            last_success: success_age.map(|a| now - a),
            restore_ms: 4_250,
            files_compared: 17,
            files_mismatched: 0,
        }),
        interval_seconds: 86_400,
        restore_test_interval_seconds: 7 * 86_400,
    }
}

/// A host with a backup and a directory being removed, planned with the backup's probe
/// answering `backup` (`Err`: the probe failed).
fn backup_and_removal(
    backup: Result<Option<crate::modules::backup::BackupObserved>, String>,
) -> (DesiredHost, HostPlan) {
    let h = desired_host(vec![
        step(
            "app",
            "backup",
            "app",
            serde_json::json!({"name": "app", "password": "(sensitive)"}),
        ),
        step(
            "old",
            "directory",
            "/srv/old",
            serde_json::json!({"path": "/srv/old", "state": "absent"}),
        ),
    ]);
    let backup_change = backup.map(|seen| Change {
        observed: crate::modules::Facts {
            backup: seen.map(Box::new),
            ..Default::default()
        },
        ..Change::in_sync()
    });
    let plan = HostPlan {
        host: h.host.clone(),
        facts: None,
        steps: vec![
            StepPlan {
                step: StepRef::of(&h.steps[0]),
                change: backup_change,
            },
            StepPlan {
                step: StepRef::of(&h.steps[1]),
                change: Ok(Change::new(ChangeKind::Remove)),
            },
        ],
        error: None,
        round_trips: RoundTrips::default(),
        duration: std::time::Duration::ZERO,
    };
    (h, plan)
}

#[test]
fn the_plan_input_carries_each_backups_facts_and_irreversible_changes() {
    use crate::modules::backup::TestResult;
    let (h, plan) = backup_and_removal(Ok(Some(backup_seen(TestResult::Ok, Some(7_200)))));
    let input = plan_input(&ctx("production"), &h, &plan, 1, 1);
    let json = serde_json::to_value(&input).expect("serializes");
    let b = &json["host"]["backups"][0];
    assert_eq!(b["name"], "app", "{json}");
    assert_eq!(b["step"], "base/app");
    assert_eq!(b["snapshot_age_seconds"], 3_000);
    assert_eq!(b["restore_verified_age_seconds"], 7_200);
    assert_eq!(b["observed"]["restore_test"]["result"], "ok");
    assert_eq!(b["observed"]["restore_test"]["restore_ms"], 4_250);
    assert_eq!(b["observed"]["restore_test"]["files_compared"], 17);
    assert_eq!(b["observed"]["restore_test"]["files_mismatched"], 0);
    assert_eq!(b["problems"], serde_json::json!([]));
    assert_eq!(json["host"]["backups"].as_array().map(Vec::len), Some(1));
    assert_eq!(json["steps"][1]["change"]["kind"], "remove");
    assert_eq!(
        json["steps"][1]["change"]["irreversible"],
        "directory removal (its contents are not restored)"
    );
    assert!(json["steps"][0]["change"].get("irreversible").is_none());
    // The desired state alone knows nothing of backups.
    let desired = desired_input(&ctx("production"), &h, 1);
    assert!(desired.host.backups.is_empty());
}

#[test]
fn a_removal_needs_a_recent_verified_restore_of_the_hosts_backups() {
    use crate::modules::backup::TestResult;
    let set = starter();
    let judge = |backup| {
        let (h, plan) = backup_and_removal(backup);
        set.evaluate(&plan_input(&ctx("production"), &h, &plan, 1, 1))
            .expect("evaluates")
    };
    let recent = judge(Ok(Some(backup_seen(TestResult::Ok, Some(3_600)))));
    assert!(recent.is_empty(), "{recent:?}");
    let hours = 3_600;
    for (backup, why) in [
        (
            Ok(Some(backup_seen(TestResult::Ok, Some(200 * hours)))),
            "the last verified restore is 200 hours old",
        ),
        (
            Ok(Some(backup_seen(TestResult::Failed, Some(hours)))),
            "its last restore test failed",
        ),
        (
            Ok(Some(backup_seen(TestResult::Ok, None))),
            "no restore test has succeeded yet",
        ),
        (
            Err("probe failed (details hidden: sensitive step)".to_string()),
            "its probe failed",
        ),
    ] {
        let found = judge(backup);
        assert_eq!(found.len(), 1, "{why}: {found:?}");
        let f = &found[0];
        assert_eq!(f.rule, "restore.deny_unverified_restore");
        assert_eq!(f.level, Level::Overridable);
        assert_eq!(f.step.as_deref(), Some("base/old"));
        assert_eq!(f.step_location.as_deref(), Some("units/base.yaml:7:5"));
        assert!(f.message.contains(why), "{why}: {}", f.message);
        assert!(f.message.contains("backup app of web1"), "{}", f.message);
    }
}

/// What the `input` document was before it was built directly: through `serde_json`.
fn via_json<T: serde::Serialize>(x: &T) -> regorus::Value {
    regorus::Value::from(serde_json::to_value(x).expect("serializes"))
}

#[test]
fn the_direct_input_is_the_json_input() {
    use crate::modules::backup::TestResult;
    for backup in [
        Ok(Some(backup_seen(TestResult::Ok, Some(7_200)))),
        Ok(Some(backup_seen(TestResult::Failed, None))),
        Ok(None),
        Err("probe failed".to_string()),
    ] {
        let (h, plan) = backup_and_removal(backup);
        let input = plan_input(&ctx("production"), &h, &plan, 3, 1);
        assert_eq!(rego::to_value(&input).expect("maps"), via_json(&input));
        let desired = desired_input(&ctx("production"), &h, 3);
        assert_eq!(rego::to_value(&desired).expect("maps"), via_json(&desired));
        assert_eq!(input_value(&input), via_json(&input));
    }
    // What it does not map is left to the `serde_json` path.
    let keyed = BTreeMap::from([(1u8, 2u8)]);
    assert!(rego::to_value(&keyed).is_err());
    assert!(rego::to_value(&u128::MAX).is_err());
}

#[test]
fn hosts_judged_one_by_one_find_what_prebuilt_inputs_find() {
    use crate::modules::backup::TestResult;
    let set = starter();
    let c = ctx("production");
    let pairs: Vec<(DesiredHost, HostPlan)> = (0..40)
        .map(|i| {
            backup_and_removal(if i % 3 == 0 {
                Ok(Some(backup_seen(TestResult::Ok, Some(3_600))))
            } else {
                Ok(Some(backup_seen(TestResult::Failed, Some(3_600))))
            })
        })
        .collect();
    let hosts: Vec<&DesiredHost> = pairs.iter().map(|(h, _)| h).collect();
    let plans: Vec<&HostPlan> = pairs.iter().map(|(_, p)| p).collect();
    let inputs: Vec<PolicyInput> = hosts
        .iter()
        .zip(&plans)
        .map(|(h, p)| plan_input(&c, h, p, hosts.len(), hosts.len()))
        .collect();
    let streamed = judge_plans(&set, &c, &hosts, &plans).expect("evaluates");
    let prebuilt = set.evaluate_all(&inputs).expect("evaluates");
    assert_eq!(streamed, prebuilt);
    // 26 of the 40 hosts have a failed restore test; all 40 change: the blast radius too.
    let restore = streamed
        .iter()
        .filter(|f| f.rule == "restore.deny_unverified_restore")
        .count();
    assert_eq!(restore, 26, "{streamed:?}");
}

fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<u64>().prop_map(serde_json::Value::from),
        any::<f64>().prop_map(serde_json::Value::from),
        ".{0,8}".prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::from),
            prop::collection::btree_map(".{0,6}", inner, 0..6)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #[test]
    fn any_parameters_map_as_through_json(v in json_value()) {
        prop_assert_eq!(rego::to_value(&v).expect("maps"), via_json(&v));
    }
}

/// Hosts drawn from one pool of shared steps (as `render::memo` shares them), each with its
/// own name and changes: judged together (shared step values, rule values reused for equal
/// step lists) they get exactly the findings each gets judged alone, for the starter pack
/// and for a package that reads the host's name.
#[test]
fn judging_together_is_judging_each_host_alone() {
    use crate::modules::backup::TestResult;
    let mut set = starter();
    set.add(
        Origin::Repo,
        vec![(
            "policies/names.rego".into(),
            "package plumb.names\nimport rego.v1\n\ndeny_odd contains msg if {\n\tendswith(input.host.name, \"1\")\n\tsome step in input.steps\n\tstep.module == \"package\"\n\tmsg := sprintf(\"%s on %s\", [step.address, input.host.name])\n}\n".into(),
        )],
    )
    .expect("compiles");
    assert!(!set.sets[1].shared_only.contains("plumb.names"));
    assert!(set.sets[0].shared_only.contains("plumb.ssh"));
    assert!(!set.sets[0].shared_only.contains("plumb.restore"));
    let pool = |i: usize| match i % 4 {
        0 => step(
            "ssh",
            "package",
            "openssh-server",
            serde_json::json!({"name": "openssh-server", "state": "absent"}),
        ),
        1 => step(
            "sudo",
            "file",
            "/etc/sudoers.d/app",
            serde_json::json!({"path": "/etc/sudoers.d/app", "state": "present", "mode": "0644"}),
        ),
        2 => step("app", "backup", "app", serde_json::json!({"name": "app"})),
        _ => step(
            "old",
            "directory",
            "/srv/old",
            serde_json::json!({"path": "/srv/old", "state": "absent"}),
        ),
    };
    let shared: Vec<DesiredStep> = (0..4).map(pool).collect();
    let c = ctx("production");
    proptest!(ProptestConfig::with_cases(32), |(hosts in prop::collection::vec(
        (prop::collection::vec(0usize..4, 1..5), prop::collection::vec(0u8..3, 4), 0u8..3),
        1..40,
    ))| {
        let pairs: Vec<(DesiredHost, HostPlan)> = hosts
            .iter()
            .enumerate()
            .map(|(n, (picks, changes, backup))| {
                let mut h = desired_host(picks.iter().map(|&p| shared[p].clone()).collect());
                h.host.name = format!("web{n}");
                let steps = h
                    .steps
                    .iter()
                    .zip(changes)
                    .map(|(s, c)| StepPlan {
                        step: StepRef::of(s),
                        change: match (s.module, c, backup) {
                            ("backup", _, 0) => Ok(Change {
                                observed: crate::modules::Facts {
                                    backup: Some(Box::new(backup_seen(TestResult::Failed, None))),
                                    ..Default::default()
                                },
                                ..Change::in_sync()
                            }),
                            ("backup", _, _) => Ok(Change::in_sync()),
                            (_, 0, _) => Ok(Change::in_sync()),
                            (_, 1, _) => Ok(Change::new(ChangeKind::Remove)),
                            _ => Err("probe failed".to_string()),
                        },
                    })
                    .collect();
                let plan = HostPlan {
                    host: h.host.clone(),
                    facts: None,
                    steps,
                    error: None,
                    round_trips: RoundTrips::default(),
                    duration: std::time::Duration::ZERO,
                };
                (h, plan)
            })
            .collect();
        let hosts: Vec<&DesiredHost> = pairs.iter().map(|(h, _)| h).collect();
        let plans: Vec<&HostPlan> = pairs.iter().map(|(_, p)| p).collect();
        let changed = plans.iter().filter(|p| p.changes() > 0).count();
        let together = judge_plans(&set, &c, &hosts, &plans).expect("evaluates");
        let mut alone = Vec::new();
        for (h, p) in hosts.iter().zip(&plans) {
            alone.extend(set.evaluate(&plan_input(&c, h, p, hosts.len(), changed)).expect("evaluates"));
        }
        prop_assert_eq!(together, alone);
    });
}
