use std::sync::Arc;

use proptest::prelude::*;

use super::*;
use crate::render::{render_env, render_host, DesiredHost};

/// Writes `text` to `rel` under `root`, making its directories.
fn write(root: &std::path::Path, rel: &str, text: &str) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
    std::fs::write(p, text).expect("write");
}

/// A repo of `hosts` (name, rack, tier) whose unit reads the host's variables every way a
/// template can: a plain path, an attribute of a map, a filter,
/// an item lookup, a loop, an instance's params, `host.name`, a `template:` file, one that
/// includes another, and `debug()`.
fn repo(hosts: &[(String, String, String)]) -> (tempfile::TempDir, Repo) {
    let dir = tempfile::tempdir().expect("tempdir");
    let w = |p: &str, s: &str| write(dir.path(), p, s);
    w("plumb.yaml", "name: memo\n");
    let mut inv = String::from("hosts:\n");
    for (i, (name, rack, tier)) in hosts.iter().enumerate() {
        inv.push_str(&format!(
            "  - name: {name}\n    address: 10.0.0.{}\n    labels: {{role: app}}\n    vars:\n      rack: \"{rack}\"\n      tier: \"{tier}\"\n      place: {{rack: \"{rack}\", row: 1}}\n",
            i + 1
        ));
    }
    w("environments/prod/hosts.yaml", &inv);
    w(
        "environments/prod/env.yaml",
        "vars:\n  region: eu\ninstances:\n  - name: shop\n    unit: site\n    applies_to: {role: app}\n    params: {port: 81}\n",
    );
    w("templates/plain.j2", "{{ region }} {{ place.rack }}\n");
    w("templates/outer.j2", "{% include 'inner.j2' %}\n");
    w("templates/inner.j2", "{{ tier }}\n");
    w(
        "units/site.yaml",
        "params:\n  port: {type: integer}\nsteps:\n  - id: conf\n    file:\n      path: \"/srv/{{ instance.name }}-{{ rack }}.conf\"\n      content: \"{{ port }}\\n\"\n",
    );
    w(
        "units/app.yaml",
        "applies_to: {role: app}\nvars:\n  workers: [a, b]\nsteps:\n\
         \x20 - id: rack\n    file:\n      path: /srv/rack\n      content: \"{{ rack }}\\n\"\n\
         \x20 - id: upper\n    file:\n      path: /srv/upper\n      content: \"{{ tier | upper }}\\n\"\n\
         \x20 - id: item\n    file:\n      path: /srv/item\n      content: \"{{ place['rack'] }} {{ place.row }}\\n\"\n\
         \x20 - id: name\n    file:\n      path: /srv/name\n      content: \"{{ host.name }}\\n\"\n\
         \x20 - id: each\n    loop: \"{{ workers }}\"\n    file:\n      path: \"/srv/w-{{ item }}\"\n      content: \"{{ loop.index }} {{ rack }}\\n\"\n\
         \x20 - id: plain\n    file:\n      path: /srv/plain\n      template: plain.j2\n\
         \x20 - id: outer\n    file:\n      path: /srv/outer\n      template: outer.j2\n\
         \x20 - id: debug\n    file:\n      path: /srv/debug\n      content: \"{{ debug() | length }}\\n\"\n\
         \x20 - id: const\n    directory:\n      path: /srv/d\n",
    );
    let (repo, diags) = crate::validate::validate(dir.path());
    assert!(!diags.has_errors(), "{:?}", diags.into_sorted());
    (dir, repo)
}

/// Everything a host is given, as text. Not the `debug` step: `debug()` prints the template
/// engine's own state too (the names it gave inline templates), which differs between a
/// thread that rendered other hosts first and one that did not, memo or not.
fn given(h: &DesiredHost) -> Vec<String> {
    h.steps
        .iter()
        .filter(|s| s.address.id != "debug")
        .map(|s| {
            format!(
                "{} {} {:?} {:?} {:?} {:?} {}",
                s.address,
                s.module,
                s.resource.desired(),
                s.resource.content().map(String::from_utf8_lossy),
                s.after,
                s.prune,
                s.sensitive,
            )
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// The memo's soundness: hosts rendered together on one thread (sharing what they read
    /// alike) get exactly what each is given rendered alone. Racks and tiers come from small
    /// sets, so most hosts share some steps and differ in others.
    #[test]
    fn a_kept_render_is_the_render(
        vars in proptest::collection::vec(("[ab]{1,2}", "[xy]{1,2}"), 2..12)
    ) {
        let hosts: Vec<(String, String, String)> = vars
            .into_iter()
            .enumerate()
            .map(|(i, (rack, tier))| (format!("h{i}"), rack, tier))
            .collect();
        let (_dir, repo) = repo(&hosts);
        let together = render_env(&repo, "prod", None).expect("renders");
        for (h, host) in together.iter().zip(&repo.environments["prod"].hosts) {
            let alone = render_host(&repo, "prod", host).expect("renders");
            prop_assert_eq!(given(h), given(&alone));
        }
    }
}

/// Hosts that read the same values share one rendered resource; a step that reads
/// `host.name` is rendered for each.
#[test]
fn hosts_that_read_alike_share_the_step() {
    let hosts: Vec<(String, String, String)> = (0..10)
        .map(|i| (format!("h{i}"), "a".to_string(), "x".to_string()))
        .collect();
    let (_dir, repo) = repo(&hosts);
    let rendered = render_env(&repo, "prod", None).expect("renders");
    let step = |h: &DesiredHost, id: &str| {
        Arc::clone(
            &h.steps
                .iter()
                .find(|s| s.address.id == id)
                .expect("step")
                .resource,
        )
    };
    for id in ["rack", "upper", "item", "each[a]", "plain", "const"] {
        assert!(
            Arc::ptr_eq(&step(&rendered[0], id), &step(&rendered[9], id)),
            "{id} is shared"
        );
    }
    for id in ["name", "outer", "debug"] {
        assert!(
            !Arc::ptr_eq(&step(&rendered[0], id), &step(&rendered[9], id)),
            "{id} reads the host (its name, or the whole context)"
        );
    }
}

#[test]
fn what_a_step_reads_is_found_statically() {
    let hosts = vec![("h0".to_string(), "a".to_string(), "x".to_string())];
    let (_dir, repo) = repo(&hosts);
    let jinja = super::super::jinja(&repo);
    let unit = repo.units.iter().find(|u| u.name == "app").expect("unit");
    let reads = |id: &str| {
        let decl = unit.steps.iter().find(|s| s.id == id).expect("decl");
        analyse(&jinja, &repo, decl)
    };
    let paths = |p: &[&str]| Reads::Paths(p.iter().map(|s| s.to_string()).collect());
    assert_eq!(reads("rack"), paths(&["rack"]));
    assert_eq!(reads("upper"), paths(&["tier"]));
    assert_eq!(reads("item"), paths(&["place", "place.row"]));
    assert_eq!(reads("each"), paths(&["item", "loop.index", "rack"]));
    assert_eq!(reads("plain"), paths(&["place.rack", "region"]));
    assert_eq!(reads("outer"), Reads::Everything);
    assert_eq!(reads("debug"), Reads::Everything);
    assert_eq!(reads("const"), paths(&[]));
}

#[test]
fn a_key_holds_each_value_as_deep_as_the_context_has_it() {
    let ctx = serde_json::json!({"tier": "x", "place": {"rack": "a"}});
    let key = |path: &str| {
        let mut k = String::new();
        push_value(&mut k, &ctx, path);
        k
    };
    assert_eq!(key("tier.upper"), "\u{1}tier.upper\u{2}\"x\"");
    assert_eq!(key("place.rack"), "\u{1}place.rack\u{2}\"a\"");
    assert_eq!(key("place.row"), "\u{1}place.row\u{2}{\"rack\":\"a\"}");
    assert_eq!(key("range"), "\u{1}range\u{2}!");
}

/// A step that reads secrets is never kept, nor is one whose template name is templated
/// analysed past "everything".
#[test]
fn secrets_are_never_kept_and_templated_names_read_everything() {
    let dir = tempfile::tempdir().expect("tempdir");
    let w = |p: &str, s: &str| write(dir.path(), p, s);
    w("plumb.yaml", "name: memo\n");
    w(
        "environments/prod/hosts.yaml",
        "hosts:\n  - name: h0\n    address: 10.0.0.1\n    vars: {which: plain}\n",
    );
    w("templates/plain.j2", "x\n");
    w(
        "units/app.yaml",
        "steps:\n  - id: pw\n    file:\n      path: /srv/pw\n      content: \"{{ secrets.db }}\"\n\
         \x20 - id: named\n    file:\n      path: /srv/n\n      template: \"{{ which }}.j2\"\n",
    );
    let (repo, diags) = crate::model::load::load(dir.path());
    assert!(!diags.has_errors(), "{:?}", diags.into_sorted());
    let jinja = super::super::jinja(&repo);
    let unit = &repo.units[0];
    assert_eq!(analyse(&jinja, &repo, &unit.steps[0]), Reads::Never);
    assert_eq!(analyse(&jinja, &repo, &unit.steps[1]), Reads::Everything);
}

/// A declaration whose input differs on every host stops being looked up, and keeps at most
/// `GIVE_UP_MISSES` renders.
#[test]
fn a_step_that_differs_per_host_is_given_up() {
    let hosts: Vec<(String, String, String)> = (0..60)
        .map(|i| (format!("h{i}"), "a".to_string(), "x".to_string()))
        .collect();
    let (_dir, repo) = repo(&hosts);
    let t = super::super::Templater::new(&repo);
    for host in &repo.environments["prod"].hosts {
        super::super::render_host_in(&t, "prod", host).expect("renders");
    }
    let memo = t.memo.borrow();
    let of = |id: &str| {
        memo.tally
            .iter()
            .find(|(k, _)| k.ends_with(&format!("\u{0}app\u{0}{id}")))
            .map(|(_, t)| *t)
            .expect("tallied")
    };
    assert_eq!(of("name").misses, GIVE_UP_MISSES, "given up");
    assert_eq!(of("rack").hits, 59);
    let kept_names = memo
        .kept
        .keys()
        .filter(|k| k.contains("\u{0}app\u{0}name\u{1}"))
        .count();
    assert_eq!(kept_names, GIVE_UP_MISSES as usize);
}
