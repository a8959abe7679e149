//! Property tests: parsing, validating and rendering never panic, whatever the input.

use std::path::Path;

use plumb::model::yaml::Node;
use proptest::prelude::*;

const PLUMB: &str = "name: prop\n";
const HOSTS: &str = "hosts:\n  - name: web-1\n    address: 10.0.0.11\n    labels:\n      role: web\n    vars:\n      n: 3\n      s: text\n";

fn repo_with_unit(dir: &Path, unit: &[u8]) {
    std::fs::create_dir_all(dir.join("environments/prod")).expect("mkdir");
    std::fs::create_dir_all(dir.join("units")).expect("mkdir");
    std::fs::write(dir.join("plumb.yaml"), PLUMB).expect("write");
    std::fs::write(dir.join("environments/prod/hosts.yaml"), HOSTS).expect("write");
    std::fs::write(dir.join("units/u.yaml"), unit).expect("write");
}

/// YAML-ish text: the characters that make YAML structure, plus some words.
fn yamlish() -> impl Strategy<Value = String> {
    proptest::collection::vec(
        prop_oneof![
            Just("steps:".to_string()),
            Just("\n".to_string()),
            Just("  ".to_string()),
            Just("- ".to_string()),
            Just("id: a".to_string()),
            Just("file:".to_string()),
            Just("path: /x".to_string()),
            Just("&a ".to_string()),
            Just("*a".to_string()),
            Just("[".to_string()),
            Just("]".to_string()),
            Just("{".to_string()),
            Just("}".to_string()),
            Just(": ".to_string()),
            Just("\"".to_string()),
            Just("'".to_string()),
            Just("|".to_string()),
            Just("---".to_string()),
            Just("!!str ".to_string()),
            Just("0644".to_string()),
            Just("{{ n }}".to_string()),
            "[ -~]{0,8}".prop_map(|s| s),
            any::<char>().prop_map(|c| c.to_string()),
        ],
        0..60,
    )
    .prop_map(|parts| parts.concat())
}

/// Strings full of template syntax, for parameters that get templated.
fn template_text() -> impl Strategy<Value = String> {
    proptest::collection::vec(
        prop_oneof![
            Just("{{".to_string()),
            Just("}}".to_string()),
            Just("{%".to_string()),
            Just("%}".to_string()),
            Just("{#".to_string()),
            Just("#}".to_string()),
            Just(" n ".to_string()),
            Just(" s ".to_string()),
            Just(" host.name ".to_string()),
            Just(" host.labels.role ".to_string()),
            Just(" nope ".to_string()),
            Just(" for i in range(n) ".to_string()),
            Just(" endfor ".to_string()),
            Just(" if n ".to_string()),
            Just(" endif ".to_string()),
            Just("|".to_string()),
            Just(" upper ".to_string()),
            Just("(".to_string()),
            Just(")".to_string()),
            Just("\"".to_string()),
            Just("'".to_string()),
            Just(" ~ ".to_string()),
            Just(" + ".to_string()),
            Just(" * 99999 ".to_string()),
            Just("\n".to_string()),
            "[ -~]{0,6}".prop_map(|s| s),
        ],
        0..30,
    )
    .prop_map(|parts| parts.concat())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn parse_never_panics_on_yamlish_text(text in yamlish()) {
        let _ = Node::parse(&text);
    }

    #[test]
    fn parse_never_panics_on_any_string(text in any::<String>()) {
        let _ = Node::parse(&text);
    }
}

proptest! {
    // Each case writes a repo to disk: fewer cases.
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn validate_never_panics_on_arbitrary_unit_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        let tmp = tempfile::tempdir().expect("tempdir");
        repo_with_unit(tmp.path(), &bytes);
        let (_, diags) = plumb::validate::validate(tmp.path());
        // Whatever it says, it says it about real positions.
        for d in diags.iter() {
            prop_assert!(d.line >= 1 && d.col >= 1, "{d:?}");
        }
    }

    #[test]
    fn validate_never_panics_on_yamlish_unit(text in yamlish()) {
        let tmp = tempfile::tempdir().expect("tempdir");
        repo_with_unit(tmp.path(), format!("steps:\n{text}").as_bytes());
        let _ = plumb::validate::validate(tmp.path());
    }

    /// Template syntax in a parameter and in a template file: render either succeeds or
    /// reports positioned errors, never panics.
    #[test]
    fn render_never_panics_on_template_syntax(param in template_text(), file in template_text()) {
        let tmp = tempfile::tempdir().expect("tempdir");
        // JSON is YAML: serde_json quotes the arbitrary string correctly.
        let unit = serde_json::json!({
            "steps": [
                {"id": "cmd", "command": {"run": format!("echo {param}")}},
                {"id": "conf", "file": {"path": "/etc/x.conf", "template": "x.j2"}},
                {"id": "line", "line": {"path": "/etc/y", "line": param.clone(), "create": true}},
            ]
        });
        repo_with_unit(tmp.path(), unit.to_string().as_bytes());
        std::fs::create_dir_all(tmp.path().join("templates")).expect("mkdir");
        std::fs::write(tmp.path().join("templates/x.j2"), &file).expect("write");
        let (repo, diags) = plumb::validate::validate(tmp.path());
        for d in diags.iter() {
            prop_assert!(d.line >= 1 && d.col >= 1, "{d:?}");
            if d.path == "templates/x.j2" {
                let lines = file.split('\n').count() as u32;
                prop_assert!(d.line <= lines.max(1), "{d:?} in {file:?}");
            }
        }
        // Render directly too (validate skips it when there are errors elsewhere).
        let _ = plumb::render::render_env(&repo, "prod", None);
    }
}
