//! Render/plan side of prune: what a host no longer declares becomes a removal step (prune on)
//! or an orphan (prune off, or a module that never removes), and where the flag comes from.

use super::*;

/// A repo of `files` (path, text) on disk, loaded; a host `h` in environment `prod`.
fn repo(files: &[(&str, &str)]) -> (tempfile::TempDir, Repo) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut all = vec![
        ("plumb.yaml", "name: t\n"),
        (
            "environments/prod/hosts.yaml",
            "hosts:\n  - name: h\n    address: 10.0.0.1\n",
        ),
    ];
    all.extend_from_slice(files);
    for (path, text) in all {
        let p = dir.path().join(path);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(p, text).expect("write");
    }
    let (repo, diags) = crate::model::load::load(dir.path());
    assert!(!diags.has_errors(), "{:?}", diags.into_sorted());
    (dir, repo)
}

fn rendered(repo: &Repo) -> DesiredHost {
    crate::render::render_env(repo, "prod", None)
        .expect("renders")
        .remove(0)
}

const APP_V1: &str = "prune: true\nsteps:\n  - id: conf\n    file:\n      path: /etc/app.conf\n      content: \"secret-ish content\"\n      mode: \"0600\"\n  - id: dir\n    directory:\n      path: /etc/app\n  - id: pkg\n    package:\n      name: nginx\n";
const KEEP_V1: &str = "steps:\n  - id: k\n    file:\n      path: /etc/k\n      content: x\n";
const OTHER: &str = "steps:\n  - id: o\n    file:\n      path: /etc/o\n      content: o\n";

/// What plumb applied with version 1 of the repo (every step in sync).
fn managed_v1() -> Vec<Managed> {
    let (_d, v1) = repo(&[("units/app.yaml", APP_V1), ("units/keep.yaml", KEEP_V1)]);
    Managed::declared(&rendered(&v1))
}

fn removal_addresses(h: &DesiredHost) -> Vec<String> {
    h.steps
        .iter()
        .filter(|s| s.prune.removing)
        .map(|s| s.address.to_string())
        .collect()
}

fn orphans(h: &DesiredHost) -> Vec<(String, OrphanReason)> {
    h.orphans
        .iter()
        .map(|o| (o.address.clone(), o.reason))
        .collect()
}

#[test]
fn removed_under_prune_orphaned_otherwise_and_never_when_the_module_says() {
    let managed = managed_v1();
    assert_eq!(managed.len(), 4);
    // v2: app keeps `prune: true` but declares none of its steps; keep's step is gone too.
    let (_d, v2) = repo(&[
        (
            "units/app.yaml",
            "prune: true\nsteps:\n  - id: other\n    file:\n      path: /etc/other\n      content: o\n",
        ),
        ("units/keep.yaml", OTHER),
    ]);
    let mut h = rendered(&v2);
    add_removals(&v2, "prod", &mut h, &managed);
    // Removals come after the declared steps, in the reverse of their applied order (the
    // file before the directory that holds it).
    assert_eq!(removal_addresses(&h), ["app/dir", "app/conf"]);
    let conf = h
        .steps
        .iter()
        .find(|s| s.address.id == "conf")
        .expect("removal");
    assert_eq!(
        conf.resource.desired()["state"],
        "absent",
        "{:?}",
        conf.resource.desired()
    );
    assert_eq!(conf.resource.target(), "/etc/app.conf");
    assert!(crate::engine::StepRef::of(conf).removing);
    // The package: its module never removes by prune, and says why; keep/k: prune is off.
    assert_eq!(
        orphans(&h),
        [
            ("keep/k".to_string(), OrphanReason::PruneOff),
            ("app/pkg".to_string(), OrphanReason::ModuleNever),
        ]
    );
    let pkg = h
        .orphans
        .iter()
        .find(|o| o.address == "app/pkg")
        .expect("pkg");
    assert!(pkg.detail.as_deref().is_some_and(|d| !d.is_empty()));
    // Added again (a host rendered again): replaced, never doubled.
    add_removals(&v2, "prod", &mut h, &managed);
    assert_eq!(removal_addresses(&h), ["app/dir", "app/conf"]);
    assert_eq!(h.orphans.len(), 2);
    // What is still declared is never a removal nor an orphan.
    let (_d, same) = repo(&[("units/app.yaml", APP_V1), ("units/keep.yaml", KEEP_V1)]);
    let mut h = rendered(&same);
    add_removals(&same, "prod", &mut h, &managed);
    assert!(removal_addresses(&h).is_empty() && h.orphans.is_empty());
}

#[test]
fn the_units_flag_wins_then_the_recorded_one_then_the_environments() {
    let managed = managed_v1();
    let keep_k = managed.iter().find(|m| m.address == "keep/k").expect("k");
    let app_conf = managed
        .iter()
        .find(|m| m.address == "app/conf")
        .expect("conf");
    assert_eq!((keep_k.unit_flag, app_conf.unit_flag), (None, Some(true)));
    // The environment turns prune on: keep/k (its unit says nothing) is removed...
    let env_on = ("environments/prod/env.yaml", "prune: true\n");
    let (_d, r) = repo(&[env_on, ("units/keep.yaml", OTHER)]);
    assert!(prune_on(&r, "prod", keep_k));
    // ...unless its unit, still there, says `prune: false`.
    let keep_off =
        "prune: false\nsteps:\n  - id: o\n    file:\n      path: /etc/o\n      content: o\n";
    let (_d, r) = repo(&[env_on, ("units/keep.yaml", keep_off)]);
    assert!(!prune_on(&r, "prod", keep_k));
    // A unit deleted with `prune: true` takes its resources with it, whatever the env says.
    let (_d, r) = repo(&[("units/keep.yaml", OTHER)]);
    assert!(prune_on(&r, "prod", app_conf));
    let mut h = rendered(&r);
    add_removals(&r, "prod", &mut h, &managed);
    assert_eq!(removal_addresses(&h), ["app/dir", "app/conf"]);
    // The unit is back without a flag: the recorded one still holds; with `prune: false`
    // it wins.
    let app_plain = "steps:\n  - id: other\n    file:\n      path: /etc/other\n      content: o\n";
    let (_d, r) = repo(&[("units/app.yaml", app_plain), ("units/keep.yaml", OTHER)]);
    assert!(prune_on(&r, "prod", app_conf));
    let app_off = "prune: false\nsteps:\n  - id: other\n    file:\n      path: /etc/other\n      content: o\n";
    let (_d, r) = repo(&[("units/app.yaml", app_off), ("units/keep.yaml", OTHER)]);
    assert!(!prune_on(&r, "prod", app_conf));
    let mut h = rendered(&r);
    add_removals(&r, "prod", &mut h, &managed);
    assert!(removal_addresses(&h).is_empty());
    assert_eq!(h.orphans.len(), 4);
}

/// A sensitive step's managed record keeps its identity (path) and never its content; its
/// target is hidden like everywhere else.
#[test]
fn a_sensitive_steps_record_keeps_no_content() {
    let unit = "prune: true\nsteps:\n  - id: conf\n    sensitive: true\n    file:\n      path: /etc/app.conf\n      content: \"hunter2-content\"\n      mode: \"0600\"\n";
    let (_d, r) = repo(&[("units/app.yaml", unit)]);
    let m = Managed::declared(&rendered(&r)).remove(0);
    assert!(m.sensitive);
    assert_eq!(m.target, crate::engine::step::REDACTED);
    assert_eq!(
        m.removal,
        Removal::Absent {
            params: serde_json::json!({"path": "/etc/app.conf", "state": "absent"})
        }
    );
    let text = serde_json::to_string(&m.removal).expect("json");
    assert!(!text.contains("hunter2"), "{text}");
    // Every module's prune parameters keep no content-like key.
    for def in crate::modules::REGISTRY {
        let p = serde_json::json!({"path": "/x", "name": "n", "content": "C", "source": "S",
            "template": "T", "value": "V", "line": "L", "key": "K", "password": "P"});
        if let Ok(params) = def.prune_params(&p) {
            for k in ["content", "source", "template", "password"] {
                assert!(params.get(k).is_none(), "{}: {params}", def.name);
            }
        }
    }
    // Its removal keeps it sensitive, and an orphan of it hides its target.
    let (_d, empty) = repo(&[("units/other.yaml", OTHER)]);
    let mut h = rendered(&empty);
    add_removals(&empty, "prod", &mut h, std::slice::from_ref(&m));
    let removal = h.steps.iter().find(|s| s.prune.removing).expect("removal");
    assert!(removal.sensitive);
    assert_eq!(
        crate::engine::StepRef::of(removal).target,
        crate::engine::step::REDACTED
    );
}

#[test]
fn a_removal_that_cannot_be_built_is_an_orphan_saying_why() {
    let bad = Managed {
        address: "app/x".into(),
        module: "no-such-module".into(),
        target: "/x".into(),
        sensitive: false,
        unit: "app".into(),
        unit_flag: Some(true),
        removal: Removal::Absent {
            params: serde_json::json!({"path": "/x", "state": "absent"}),
        },
        order: 0,
    };
    let (_d, r) = repo(&[("units/other.yaml", OTHER)]);
    let mut h = rendered(&r);
    add_removals(&r, "prod", &mut h, &[bad]);
    assert_eq!(
        orphans(&h),
        [("app/x".to_string(), OrphanReason::Unbuildable)]
    );
    assert!(h.orphans[0]
        .detail
        .as_deref()
        .is_some_and(|d| d.contains("no-such-module")));
}

/// A rendered step keeps its removal as text and gives back the very value it was given:
/// keys in their order, numbers as written, nested values, and a reason unchanged.
#[test]
fn a_step_gives_back_its_removal_unchanged() {
    let params = serde_json::json!({
        "path": "/etc/z \"quoted\" é",
        "state": "absent",
        "a": [1, -2, 3.25, 18446744073709551615u64, null, true],
        "nested": {"b": {"y": 1, "x": 2}},
    });
    let mut p = crate::prune::StepPrune::default();
    p.set_removal(Removal::Absent {
        params: params.clone(),
    });
    let Removal::Absent { params: back } = p.removal() else {
        panic!("not an absent removal: {:?}", p.removal());
    };
    assert_eq!(back, params);
    // Key order is kept too (what the state records as JSON text).
    assert_eq!(back.to_string(), params.to_string());
    let never = Removal::Never {
        reason: "why".into(),
    };
    p.set_removal(never.clone());
    assert_eq!(p.removal(), never);
}
