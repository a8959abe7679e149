//! `plumb policy test` and the policy gate of `plumb validate`, through the binary (no host).

use std::path::Path;
use std::process::Command;

fn plumb(args: &[&str], dir: &Path) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_plumb"))
        .args(args)
        .current_dir(dir)
        .env("NO_COLOR", "1")
        .output()
        .expect("plumb runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn starter() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/policies")
}

#[test]
fn the_starter_pack_tests_pass_through_the_binary() {
    let dir = starter();
    let (code, out, err) = plumb(
        &["policy", "test", dir.to_str().unwrap_or_default()],
        Path::new("."),
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("PASS ssh_test.test_removing_openssh_server_is_denied"),
        "{out}"
    );
    assert!(out.contains(" 0 failed"), "{out}");
    for rule in [
        "destructive",
        "sudoers",
        "pinned",
        "blast_radius",
        "maintenance",
        "restore",
    ] {
        assert!(out.contains(&format!("PASS {rule}_test.")), "{rule}: {out}");
    }
}

#[test]
fn a_failing_policy_test_exits_1() {
    let tmp = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        tmp.path().join("p_test.rego"),
        "package plumb.p\n\ntest_holds if true\n\ntest_breaks if 1 == 2\n",
    )
    .expect("write");
    let (code, out, err) = plumb(&["policy", "test", "."], tmp.path());
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        out.contains("FAIL p.test_breaks (./p_test.rego:5)"),
        "{out}"
    );
}

/// `plumb init`'s repo plus a unit with a sudoers file of the wrong mode.
fn repo_with_bad_sudoers(dir: &Path) {
    let (code, out, err) = plumb(&["init", "repo"], dir);
    assert_eq!(code, 0, "{out}{err}");
    std::fs::write(
        dir.join("repo/units/admin.yaml"),
        "applies_to:\n  role: web\nsteps:\n  - id: sudo\n    file:\n      path: /etc/sudoers.d/ops\n      content: \"ops ALL=(ALL) ALL\\n\"\n      mode: \"0644\"\n      owner: root\n",
    )
    .expect("write");
}

#[test]
fn validate_judges_the_desired_state_and_points_at_rule_and_step() {
    let tmp = tempfile::tempdir().expect("tempdir");
    repo_with_bad_sudoers(tmp.path());
    // No policy: valid.
    let (code, out, err) = plumb(&["validate", "repo"], tmp.path());
    assert_eq!(code, 0, "{out}{err}");
    // The operator's starter pack: invalid, at the step, naming the rule's file:line.
    let pack = starter();
    let (code, out, err) = plumb(
        &[
            "validate",
            "repo",
            "--policy",
            pack.to_str().unwrap_or_default(),
        ],
        tmp.path(),
    );
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("units/admin.yaml:4:"), "{err}");
    assert!(err.contains("sudoers.deny_mode"), "{err}");
    assert!(err.contains("examples/policies/sudoers.rego:"), "{err}");
    // The same rule as a repo policy (policies/*.rego) applies without --policy.
    std::fs::create_dir_all(tmp.path().join("repo/policies")).expect("mkdir");
    std::fs::copy(
        pack.join("sudoers.rego"),
        tmp.path().join("repo/policies/sudoers.rego"),
    )
    .expect("copy");
    let (code, _, err) = plumb(&["validate", "repo"], tmp.path());
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("policies/sudoers.rego:"), "{err}");
}
