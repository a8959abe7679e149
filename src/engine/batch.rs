//! The apply fragments of a host's changed steps, with consecutive changes a module can
//! merge ([`crate::modules::Batch`]: several `line` edits of one file) made into one.
//!
//! Only the applies of changed steps run, in step order, so two changed steps are
//! consecutive in the apply when every step between them is in sync: merging them changes
//! no order. A run of such steps is merged when they are of one module with a batch, have
//! the same key (the `line` module's: the path) and the same sensitivity (a failure's output
//! is shown for a step that is not sensitive: it must not come from a sensitive one's apply).
//! The merged fragment's frame is tagged with its first step ([`Tag::Apply`]); every step of
//! it takes that frame's status.

use crate::modules::{Change, Resource};
use crate::render::DesiredStep;

use super::script::Tag;

/// The apply fragments of the changes (by step index), and which frame carries each step.
pub(super) struct Fragments {
    pub fragments: Vec<(Tag, String)>,
    /// For each step: the step whose [`Tag::Apply`] frame carries its apply (itself, or the
    /// first step of its batch); `None` when it has no change.
    pub carrier: Vec<Option<usize>>,
}

/// What steps must share to be merged into one fragment: the module, the module's key
/// (the apply batch's here, the probe batch's in [`super::probes`]) and the sensitivity.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Key {
    module: &'static str,
    key: String,
    sensitive: bool,
}

impl Key {
    /// The key of `step` under the module's key function `key`; `None` when the module has
    /// none or it gives no key for this step.
    pub(super) fn of(
        step: &DesiredStep,
        key: Option<fn(&dyn Resource) -> Option<String>>,
    ) -> Option<Key> {
        Some(Key {
            module: step.module,
            key: key?(step.resource.as_ref())?,
            sensitive: step.sensitive,
        })
    }
}

fn key_of(step: &DesiredStep) -> Option<Key> {
    let key = crate::modules::lookup(step.module).and_then(|def| def.batch);
    Key::of(step, key.map(|b| b.key))
}

/// The apply fragments of `changes` (one per changed step, in order), merged where a module
/// can.
pub(super) fn apply_fragments(steps: &[DesiredStep], changes: &[Option<Change>]) -> Fragments {
    let mut out = Fragments {
        fragments: Vec::new(),
        carrier: vec![None; steps.len()],
    };
    let mut run: Vec<usize> = Vec::new();
    let mut run_key: Option<Key> = None;
    for (i, (s, c)) in steps.iter().zip(changes).enumerate() {
        if c.is_none() {
            continue;
        }
        let key = key_of(s);
        if key.is_none() || key != run_key {
            flush(steps, changes, &mut run, &mut out);
        }
        run.push(i);
        run_key = key;
    }
    flush(steps, changes, &mut run, &mut out);
    out
}

/// Emits the fragment(s) of `run` (changed steps to merge) and empties it.
fn flush(
    steps: &[DesiredStep],
    changes: &[Option<Change>],
    run: &mut Vec<usize>,
    out: &mut Fragments,
) {
    let items: Vec<(usize, &dyn Resource, &Change)> = run
        .drain(..)
        .filter_map(|i| Some((i, steps[i].resource.as_ref(), changes[i].as_ref()?)))
        .collect();
    let merged = match (items.as_slice(), items.first()) {
        ([_, _, ..], Some(&(first, _, _))) => {
            let pairs: Vec<(&dyn Resource, &Change)> =
                items.iter().map(|&(_, r, c)| (r, c)).collect();
            crate::modules::lookup(steps[first].module)
                .and_then(|def| def.batch)
                .and_then(|b| (b.apply)(&pairs))
                .map(|fragment| (first, fragment))
        }
        _ => None,
    };
    if let Some((first, fragment)) = merged {
        out.fragments.push((Tag::Apply(first), fragment));
        for &(i, _, _) in &items {
            out.carrier[i] = Some(first);
        }
        return;
    }
    for (i, r, c) in items {
        out.fragments.push((Tag::Apply(i), r.apply(c)));
        out.carrier[i] = Some(i);
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::super::*;
    use super::apply_fragments;
    use crate::model::yaml::Pos;
    use crate::modules::testing::NoRepo;
    use crate::modules::ChangeKind;
    use crate::render::DesiredStep;
    use crate::transport::LocalTransport;

    fn line(i: usize, params: serde_json::Value, sensitive: bool) -> DesiredStep {
        let def = crate::modules::lookup("line").expect("line is registered");
        let resource = (def.build)(params, &mut NoRepo).expect("valid line parameters");
        DesiredStep {
            address: StepAddress::new("u", format!("l{i}")),
            module: "line",
            resource: resource.into(),
            after: Vec::new(),
            notify: Vec::new(),
            sensitive,
            secrets: Vec::new(),
            path: "units/u.yaml".into(),
            pos: Pos::START,
            prune: Default::default(),
        }
    }

    fn on_local(steps: Vec<DesiredStep>) -> DesiredHost {
        DesiredHost {
            host: Host {
                name: "local".into(),
                address: "127.0.0.1".into(),
                port: 22,
                user: None,
                become_: false,
                labels: Default::default(),
                vars: Default::default(),
                path: "environments/test/hosts.yaml".into(),
                pos: Pos::START,
            },
            steps,
            skipped: Vec::new(),
            facts: None,
            orphans: Vec::new(),
        }
    }

    fn at(dir: &Path, name: &str) -> String {
        dir.join(name).display().to_string()
    }

    /// Changed `line` steps on one path merge when nothing else is applied between them:
    /// in-sync steps between them do not count, another path, a sensitive step or another
    /// module's change does.
    #[test]
    fn only_consecutive_changes_on_one_path_merge() {
        let (a, b) = ("/srv/a.conf", "/srv/b.conf");
        let lines = |p: &str, l: &str| serde_json::json!({"path": p, "line": l});
        let steps = vec![
            line(0, lines(a, "x"), false),
            line(1, lines(a, "in sync"), false),
            line(2, lines(a, "y"), false),
            line(3, lines(b, "z"), false),
            line(4, lines(a, "w"), false),
            line(5, lines(a, "secret"), true),
            line(6, lines(a, "v"), false),
            line(7, lines(a, "u"), false),
        ];
        let mut changes: Vec<Option<Change>> =
            vec![Some(Change::new(ChangeKind::Create)); steps.len()];
        changes[1] = None;
        let f = apply_fragments(&steps, &changes);
        let tags: Vec<Tag> = f.fragments.iter().map(|(t, _)| *t).collect();
        assert_eq!(tags, [0, 3, 4, 5, 6].map(Tag::Apply), "{:?}", f.carrier);
        assert_eq!(
            f.carrier,
            [
                Some(0),
                None,
                Some(0),
                Some(3),
                Some(4),
                Some(5),
                Some(6),
                Some(6)
            ]
        );
        // One fragment for steps 0 and 2: one awk, no process per line.
        assert_eq!(f.fragments[0].1.matches("awk ").count(), 1);
    }

    #[tokio::test]
    async fn forty_edits_of_one_file_converge_in_one_fragment() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = at(dir.path(), "app.conf");
        std::fs::write(&p, "#Port 22\nUseDNS yes\ndrop me\nkeep\nTail").expect("write");
        let mut steps: Vec<DesiredStep> = (0..36)
            .map(|i| {
                let params = serde_json::json!({"path": p, "line": format!("opt{i} = {i}")});
                line(i, params, false)
            })
            .collect();
        for (i, params) in [
            serde_json::json!({"path": p, "regexp": "^#?Port ", "line": "Port 2222"}),
            serde_json::json!({"path": p, "regexp": "^UseDNS", "state": "absent"}),
            serde_json::json!({"path": p, "line": "drop me", "state": "absent"}),
            serde_json::json!({"path": p, "regexp": "^Tail", "line": "Tail end"}),
        ]
        .into_iter()
        .enumerate()
        {
            steps.push(line(36 + i, params, false));
        }
        let desired = on_local(steps);
        let t = LocalTransport::new();
        let run = apply_host(&desired, &t).await;
        assert_eq!(
            run.status,
            HostStatus::Converged,
            "{:?} {:?}",
            run.error,
            run.steps
        );
        assert_eq!(run.changed(), 40);
        assert_eq!(
            run.round_trips.apply, 1,
            "apply and verify are one round trip"
        );
        let mut want: Vec<String> = vec!["Port 2222".into(), "keep".into(), "Tail end".into()];
        want.extend((0..36).map(|i| format!("opt{i} = {i}")));
        let got = std::fs::read_to_string(&p).expect("read");
        assert_eq!(got, want.join("\n") + "\n");
        let again = apply_host(&desired, &t).await;
        assert_eq!((again.changed(), again.round_trips.apply), (0, 0));
    }

    /// The file turns into a directory between the probe and the apply: every step of the
    /// batch fails, naming the cause and the steps it was applied with; nothing is written.
    #[tokio::test]
    async fn a_failed_batch_fails_each_of_its_steps_with_the_cause() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = at(dir.path(), "app.conf");
        std::fs::write(&p, "a\n").expect("write");
        let desired = on_local(
            (0..3)
                .map(|i| {
                    line(
                        i,
                        serde_json::json!({"path": p, "line": format!("l{i}")}),
                        false,
                    )
                })
                .collect(),
        );
        let t = LocalTransport::new();
        let observed = observe_host(&desired, &t).await;
        std::fs::remove_file(&p).expect("rm");
        std::fs::create_dir(&p).expect("mkdir");
        let run = apply_observed(&desired, &t, observed).await;
        assert_eq!(run.status, HostStatus::Failed);
        for s in &run.steps {
            assert_eq!(s.status, StepStatus::Failed, "{s:?}");
            let e = s.error.as_deref().unwrap_or_default();
            assert!(e.contains("is not a regular file"), "{e}");
            assert!(e.contains("applied as one with u/l0, u/l1, u/l2"), "{e}");
        }
        assert!(Path::new(&p).is_dir());
    }
}
