//! Several `line` steps on one file, probed in one pass over it.
//!
//! The engine hands [`probe`] the `line` steps of one path that match an exact line (no
//! `regexp`; see [`super::super::ProbeBatch`]). The fragment tells the file's type once,
//! opens it once as [`sh::OPEN_P`] does, and one `awk` reads it once, counting for every
//! step the lines equal to its line and the number of the last one: for each step it
//! prints exactly what that step's own probe prints (`type=`, and for a file `exact=` and
//! `last_exact=`), after its member header. Lines are compared as byte strings (`LC_ALL=C`,
//! `awk` string comparison), as the step's own probe does with the same `awk` program. The
//! lines reach `awk` through a pipe, never through arguments: the process list shows only
//! their number.
//!
//! Processes: those of [`sh::OPEN_P`] and one `awk`, for any number of lines (the probes
//! one by one start three per line: their own checked open and the same `awk`).

use super::Line;
use crate::modules::sh::{self, quote};
use crate::modules::{all_of, member_header, Resource};

/// Counts, per step `j` (`n` steps, their lines read first from standard input, one per
/// line), the lines of the file given as operand equal to its line and the number of the
/// last one. Strings are compared with `""` appended, so `awk` never compares them as
/// numbers.
const AWK: &str = r#"BEGIN {
  for (j = 0; j < n; j++) {
    if ((getline v < "-") <= 0) exit 2
    v = v ""
    if (v in W) W[v] = W[v] " " j; else W[v] = j ""
    C[j] = 0; L[j] = 0
  }
}
{
  l = $0 ""
  if (l in W) { k = split(W[l], J, " "); for (i = 1; i <= k; i++) { C[J[i]]++; L[J[i]] = NR } }
}
END {
  for (j = 0; j < n; j++) {
    if (members) printf "@@plumb-member %d 0\ntype=file\n", j
    printf "exact=%d\nlast_exact=%d\n", C[j], L[j]
  }
}"#;

/// The commands that count, over descriptor 3, the lines equal to each of `values` ([`AWK`]):
/// with `members`, each value's output starts with its member header and `type=file`. The
/// probe of one step runs the same with one value and no header, so a batch and the steps
/// one by one match lines alike: byte strings split at newlines only (a NUL is a byte like
/// any other, where `grep` would call the file binary). The values reach `awk` through a
/// pipe from `printf`, a shell builtin: never through arguments or the environment (no
/// size limit of either applies).
pub(super) fn count_exact(values: &[&str], members: bool) -> String {
    let mut s = String::new();
    for (j, v) in values.iter().enumerate() {
        s += &format!("PLUMB_V{j}={}\n", quote(v));
    }
    s += "printf '%s\\n'";
    for j in 0..values.len() {
        s += &format!(" \"$PLUMB_V{j}\"");
    }
    s + &format!(
        " | awk -v n={} -v members={} {} /dev/fd/3 || exit 1\n",
        values.len(),
        u8::from(members),
        quote(AWK)
    )
}

/// What steps must share to be probed together: the path, for a step without a regexp.
pub(super) fn key(r: &dyn Resource) -> Option<String> {
    let l = r.as_any().downcast_ref::<Line>()?;
    l.params.regexp.is_none().then(|| l.params.path.clone())
}

/// One fragment probing every step of `resources` (exact `line` steps on one path); `None`
/// when one is not, or they do not share a path.
pub(super) fn probe(resources: &[&dyn Resource]) -> Option<String> {
    let lines = all_of::<Line>(resources, |l| l.params.regexp.is_none())?;
    let path = &lines.first()?.params.path;
    if lines.iter().any(|l| &l.params.path != path) {
        return None;
    }
    let mut s = format!(
        "LC_ALL=C; export LC_ALL\n{}\np={}; plumb_ty \"$p\"\nif [ \"$t\" = file ]; then\n{}\n",
        sh::TYPE_FN,
        quote(path),
        sh::OPEN_P
    );
    let values: Vec<&str> = lines.iter().map(|l| l.line()).collect();
    s += &count_exact(&values, true);
    s += "else\n";
    for j in 0..lines.len() {
        s += &format!(
            "printf '%s\\ntype=%s\\n' '{}' \"$t\"\n",
            member_header(j, 0)
        );
    }
    s += "fi";
    Some(s)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::super::DEF;
    use crate::modules::testing::{batch_reads_as_one_by_one, built};
    use crate::modules::Resource;

    fn lines(path: &str, values: &[String]) -> Vec<Box<dyn Resource>> {
        values
            .iter()
            .map(|v| built(DEF.build, serde_json::json!({"path": path, "line": v})))
            .collect()
    }

    /// Every member of the batch reads what its own probe prints.
    fn same_as_one_by_one(path: &str, values: &[String]) {
        let steps = lines(path, values);
        let refs: Vec<&dyn Resource> = steps.iter().map(|r| r.as_ref()).collect();
        let batch = super::probe(&refs).expect("exact lines of one path batch");
        let names: Vec<&str> = values.iter().map(String::as_str).collect();
        batch_reads_as_one_by_one(&batch, &refs, &names);
    }

    fn value() -> impl Strategy<Value = String> {
        prop_oneof![
            Just(String::new()),
            Just("a".to_string()),
            Just("1".to_string()),
            Just("1.0".to_string()),
            Just(" a".to_string()),
            Just("a\r".to_string()),
            Just("x = 'q' $(touch /tmp/pwned) \\n".to_string()),
            "[a1 .\\\\'\"$é-]{0,6}",
        ]
    }

    fn content() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(
            prop_oneof![
                Just(b"a".to_vec()),
                Just(b"1".to_vec()),
                Just(b"01".to_vec()),
                Just(b"1.0".to_vec()),
                Just(b" a".to_vec()),
                Just(b"a\r".to_vec()),
                Just(b"\0a".to_vec()),
                Just(b"\xff".to_vec()),
                Just(Vec::new()),
                "[a1 .\\\\'\"$é-]{0,6}".prop_map(String::into_bytes),
            ],
            0..12,
        )
        .prop_flat_map(|ls| {
            let joined = ls.join(&b'\n');
            (Just(joined), any::<bool>())
        })
        .prop_map(|(mut bytes, nl)| {
            if nl {
                bytes.push(b'\n');
            }
            bytes
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
        #[test]
        fn a_batch_reads_what_the_probes_one_by_one_read(
            file in content(),
            values in proptest::collection::vec(value(), 2..6),
        ) {
            let dir = tempfile::tempdir().expect("tempdir");
            let path = dir.path().join("f.conf");
            std::fs::write(&path, &file).expect("write");
            same_as_one_by_one(&path.display().to_string(), &values);
        }
    }

    /// Not a file: every member reads the type alone, as its own probe prints it.
    #[test]
    fn a_missing_file_a_directory_and_a_symlink_read_as_the_probes_one_by_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let values = ["a".to_string(), "b".to_string()];
        let absent = dir.path().join("absent");
        same_as_one_by_one(&absent.display().to_string(), &values);
        same_as_one_by_one(&dir.path().display().to_string(), &values);
        let link = dir.path().join("link");
        std::os::unix::fs::symlink("/etc/passwd", &link).expect("symlink");
        same_as_one_by_one(&link.display().to_string(), &values);
    }

    /// Lines longer than one argument or environment string may be (128 KiB) are counted
    /// all the same: they reach `awk` through a pipe.
    #[test]
    fn long_lines_are_counted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("f.conf");
        let long = "x".repeat(300_000);
        std::fs::write(&path, format!("a\n{long}\nb\n{long}\n")).expect("write");
        same_as_one_by_one(
            &path.display().to_string(),
            &[long.clone(), long, "b".into()],
        );
        let one = lines(&path.display().to_string(), &["x".repeat(300_000)]);
        let out = crate::modules::testing::run_sh(&one[0].probe());
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "type=file\nexact=2\nlast_exact=4\n"
        );
    }

    #[test]
    fn steps_with_a_regexp_or_on_another_path_are_not_batched() {
        let a = lines("/srv/a", &["x".into()]);
        let b = lines("/srv/b", &["x".into()]);
        let re = built(
            DEF.build,
            serde_json::json!({"path": "/srv/a", "line": "x", "regexp": "^x"}),
        );
        assert_eq!(super::key(re.as_ref()), None);
        assert_eq!(super::key(a[0].as_ref()).as_deref(), Some("/srv/a"));
        assert!(super::probe(&[a[0].as_ref(), b[0].as_ref()]).is_none());
        assert!(super::probe(&[a[0].as_ref(), re.as_ref()]).is_none());
    }

    /// One `awk` (and the two `stat`s of the safe open) for any number of lines; the lines
    /// never appear in a command's arguments.
    #[test]
    fn one_pass_for_many_lines_and_no_line_in_the_process_list() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("f.conf");
        std::fs::write(&path, "secret-1\nother\n").expect("write");
        let values: Vec<String> = (0..40).map(|i| format!("secret-{i}")).collect();
        let steps = lines(&path.display().to_string(), &values);
        let refs: Vec<&dyn Resource> = steps.iter().map(|r| r.as_ref()).collect();
        let batch = super::probe(&refs).expect("batch");
        let (result, argv) = crate::modules::testing::run_logging_argv(&batch);
        assert_eq!(
            result.status,
            0,
            "{}",
            String::from_utf8_lossy(&result.stderr)
        );
        let commands: Vec<&str> = argv.lines().filter_map(|l| l.split(' ').next()).collect();
        assert_eq!(
            commands.iter().filter(|c| **c == "awk").count(),
            1,
            "{argv}"
        );
        assert!(!commands.contains(&"grep"), "{argv}");
        assert!(!argv.contains("secret-"), "{argv}");
    }
}
