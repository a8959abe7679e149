//! The probe fragments of a host's steps, with the steps a module can probe together
//! ([`crate::modules::ProbeBatch`]: the `line` steps of one file) made into one.
//!
//! Probes change nothing, so their order does not matter: steps of one module with the same
//! batch key and the same sensitivity are grouped wherever they stand (a sensitive step's
//! probe output, or failure, never reaches another step). A group's fragment is framed with
//! its first step's tag; [`Probes::results`] splits its output back into one result per
//! step ([`crate::modules::split_members`]), so the diff of every step reads exactly what
//! its own probe would have printed.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, Weak};

use crate::modules::{ProbeBatch, ProbeResult, Resource};
use crate::render::DesiredStep;

use super::batch::Key;
use super::script::{Parsed, Tag};

fn key_of(step: &DesiredStep) -> Option<Key> {
    let key = crate::modules::lookup(step.module).and_then(|def| def.probe_batch);
    Key::of(step, key.map(|b| b.key))
}

/// The probe fragments of some of a host's steps, and how to read each step's result. A
/// group larger than its module's [`crate::modules::ProbeBatch::max`] is probed in chunks.
pub(super) struct Probes {
    pub fragments: Vec<(Tag, String)>,
    /// Per fragment: the steps it probes, in the order of its members (one for a step
    /// probed alone); the fragment carries the first one's tag.
    members: Vec<Vec<usize>>,
    tag: fn(usize) -> Tag,
}

/// The fragments probing `which` (step indexes, in order) of `steps`, tagged with `tag`
/// (a fragment of several steps carries its first step's tag).
pub(super) fn probes(steps: &[DesiredStep], which: &[usize], tag: fn(usize) -> Tag) -> Probes {
    // Groups in the order of their first step; a step without a key is a group of one.
    let mut groups: Vec<Vec<usize>> = Vec::new();
    let mut by_key: BTreeMap<Key, usize> = BTreeMap::new();
    for &i in which {
        let Some(step) = steps.get(i) else { continue };
        match key_of(step) {
            Some(k) => {
                let g = *by_key.entry(k).or_insert_with(|| {
                    groups.push(Vec::new());
                    groups.len() - 1
                });
                groups[g].push(i);
            }
            None => groups.push(vec![i]),
        }
    }
    let mut out = Probes {
        fragments: Vec::with_capacity(groups.len()),
        members: Vec::with_capacity(groups.len()),
        tag,
    };
    for members in groups {
        out.push(steps, members);
    }
    out
}

/// Batched probe fragments already built, by their resources' addresses. A fragment is a
/// pure function of its resources, and hosts whose steps rendered alike share them
/// (`render::memo`), so a fleet of one role builds each batch once. Each entry holds its
/// resources weakly: that keeps their addresses from being reused while it exists (an
/// address names one resource), without keeping their contents; an entry whose resources
/// are gone is never used, and dropped at the next sweep (see [`Fragments`]).
static KEPT: Mutex<Option<Fragments>> = Mutex::new(None);

/// Most batched fragments kept.
pub const MAX_KEPT_FRAGMENTS: usize = 4_096;
/// The fewest entries at which entries whose resources are gone are swept.
const SWEEP_AT_LEAST: usize = 64;

/// The kept fragments, and when next to sweep out those whose resources are gone.
///
/// A sweep happens when the entries reach twice what the last one left (at least
/// [`SWEEP_AT_LEAST`]), so sweeping costs amortised O(1) an insert and dead entries never
/// outnumber live ones by more than that floor: a daemon whose drift checks each render new
/// resources keeps no more than `max(SWEEP_AT_LEAST, 2 × live)` entries, however long it runs.
/// Past [`MAX_KEPT_FRAGMENTS`] live ones, all are dropped.
struct Fragments {
    map: HashMap<Vec<usize>, Kept>,
    sweep_at: usize,
}

struct Kept {
    resources: Vec<Weak<dyn Resource>>,
    fragment: Arc<str>,
}

impl Kept {
    fn live(&self) -> bool {
        self.resources.iter().all(|w| w.strong_count() > 0)
    }
}

impl Fragments {
    fn new() -> Self {
        Fragments {
            map: HashMap::new(),
            sweep_at: SWEEP_AT_LEAST,
        }
    }

    fn get(&self, key: &[usize]) -> Option<&Arc<str>> {
        self.map.get(key).filter(|k| k.live()).map(|k| &k.fragment)
    }

    fn insert(&mut self, key: Vec<usize>, kept: Kept) {
        if self.map.len() >= self.sweep_at {
            self.map.retain(|_, k| k.live());
            if self.map.len() >= MAX_KEPT_FRAGMENTS {
                self.map.clear();
            }
            self.map.shrink_to_fit();
            self.sweep_at = (2 * self.map.len()).max(SWEEP_AT_LEAST);
        }
        self.map.insert(key, kept);
    }
}

/// The batch probe of `resources`: built once while they live (see [`KEPT`]).
fn batch_fragment(b: &ProbeBatch, resources: &[&Arc<dyn Resource>]) -> Option<String> {
    let key: Vec<usize> = resources
        .iter()
        .map(|r| Arc::as_ptr(r).cast::<()>() as usize)
        .collect();
    {
        let kept = KEPT.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(fragment) = kept.as_ref().and_then(|f| f.get(&key)) {
            return Some(fragment.to_string());
        }
    }
    let plain: Vec<&dyn Resource> = resources.iter().map(|r| r.as_ref()).collect();
    let fragment = (b.probe)(&plain)?;
    let mut kept = KEPT.lock().unwrap_or_else(|p| p.into_inner());
    kept.get_or_insert_with(Fragments::new).insert(
        key,
        Kept {
            resources: resources.iter().map(|r| Arc::downgrade(r)).collect(),
            fragment: Arc::from(fragment.as_str()),
        },
    );
    Some(fragment)
}

impl Probes {
    /// Adds the fragment(s) of one group: one merged fragment when its module can, else
    /// one per step.
    fn push(&mut self, steps: &[DesiredStep], members: Vec<usize>) {
        let Some(&first) = members.first() else {
            return;
        };
        let batch = crate::modules::lookup(steps[first].module).and_then(|def| def.probe_batch);
        if let (Some(b), true) = (batch, members.len() > 1) {
            let chunks: Option<Vec<(Vec<usize>, String)>> = members
                .chunks(b.max.max(1))
                .map(|chunk| {
                    // A chunk of one (the rest of a group) is that step's own probe: its
                    // output has no member header, as [`Probes::results`] expects.
                    if let [one] = chunk {
                        return Some((vec![*one], steps[*one].resource.probe()));
                    }
                    let resources: Vec<&Arc<dyn Resource>> =
                        chunk.iter().map(|&i| &steps[i].resource).collect();
                    Some((chunk.to_vec(), batch_fragment(&b, &resources)?))
                })
                .collect();
            if let Some(chunks) = chunks {
                for (chunk, fragment) in chunks {
                    self.fragments.push(((self.tag)(chunk[0]), fragment));
                    self.members.push(chunk);
                }
                return;
            }
        }
        for i in members {
            self.fragments
                .push(((self.tag)(i), steps[i].resource.probe()));
            self.members.push(vec![i]);
        }
    }

    /// Each probed step's result, by step index; a step whose fragment printed no frame
    /// is missing.
    pub fn results(&self, parsed: &Parsed) -> BTreeMap<usize, ProbeResult> {
        let mut out = BTreeMap::new();
        for members in &self.members {
            let Some(frame) = members.first().and_then(|&i| parsed.get((self.tag)(i))) else {
                continue;
            };
            match members.as_slice() {
                [one] => {
                    out.insert(*one, frame.result.clone());
                }
                many => {
                    let split = crate::modules::split_members(&frame.result, many.len());
                    out.extend(many.iter().copied().zip(split));
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::super::script::{self, Mode, Tag};
    use super::probes;
    use crate::model::yaml::Pos;
    use crate::model::StepAddress;
    use crate::modules::testing::{built, run_sh};
    use crate::modules::{split_members, ProbeResult};
    use crate::render::DesiredStep;
    use std::sync::Arc;

    use super::KEPT;

    fn step(i: usize, module: &'static str, params: serde_json::Value) -> DesiredStep {
        let def = crate::modules::lookup(module).expect("registered");
        DesiredStep {
            address: StepAddress::new("u", format!("s{i}")),
            module,
            resource: built(def.build, params).into(),
            after: Vec::new(),
            notify: Vec::new(),
            sensitive: i % 5 == 4,
            secrets: Vec::new(),
            path: "units/u.yaml".into(),
            pos: Pos::START,
            prune: Default::default(),
        }
    }

    /// Sixteen files (two of them sensitive), lines of two files and a directory, mixed:
    /// files in chunks of at most seven, sensitive ones apart, each line file in one
    /// fragment; run as one script, every step reads what its own probe reads.
    #[test]
    fn groups_are_chunked_kept_apart_by_sensitivity_and_read_back_per_step() {
        let dir = tempfile::tempdir().expect("tempdir");
        let at = |n: &str| dir.path().join(n).display().to_string();
        std::fs::write(at("a.conf"), "x\ny\n").expect("write");
        std::fs::write(at("f3"), "hello\n").expect("write");
        let mut steps = Vec::new();
        // Fifteen files that are not sensitive: chunks of 7, 7 and 1.
        for i in 0..23 {
            let s = match i % 11 {
                9 => step(
                    i,
                    "line",
                    serde_json::json!({"path": at("a.conf"), "line": "y"}),
                ),
                10 => step(
                    i,
                    "line",
                    serde_json::json!({"path": at("b.conf"), "line": "y"}),
                ),
                _ if i == 8 => step(i, "directory", serde_json::json!({"path": at("")})),
                _ => step(
                    i,
                    "file",
                    serde_json::json!({"path": at(&format!("f{i}")), "content": "hello\n"}),
                ),
            };
            steps.push(s);
        }
        let all: Vec<usize> = (0..steps.len()).collect();
        let p = probes(&steps, &all, Tag::Probe);
        let tags: Vec<Tag> = p.fragments.iter().map(|(t, _)| *t).collect();
        // Files 0..7 (not 4), then the sensitive files 4, 14, 19 ... ; lines per path.
        let sizes: Vec<usize> = p.members.iter().map(Vec::len).collect();
        assert!(sizes.iter().all(|n| *n <= 7), "{sizes:?}");
        assert_eq!(sizes.iter().sum::<usize>(), steps.len());
        assert!(p.members.iter().all(|m| {
            m.iter()
                .all(|&i| steps[i].sensitive == steps[m[0]].sensitive)
        }));
        assert!(tags.len() < steps.len() / 2, "{tags:?}");
        let out = run_sh(&script::build(&p.fragments, Mode::Observe));
        let parsed = script::parse(&out.stdout);
        assert_eq!(parsed.completed, Some(true));
        let results = p.results(&parsed);
        for (i, s) in steps.iter().enumerate() {
            let own = run_sh(&s.resource.probe());
            let got = &results[&i];
            assert_eq!(
                (&got.stdout, got.status),
                (&own.stdout, own.status),
                "step {i}"
            );
        }
    }

    /// A batch fragment is built once for the same resources (hosts sharing their steps),
    /// and never served for other resources, even ones with equal parameters, nor once its
    /// resources are gone.
    #[test]
    fn a_kept_fragment_is_only_ever_its_own_resources() {
        let files = |base: &str| -> Vec<DesiredStep> {
            (0..3)
                .map(|i| {
                    step(
                        i * 5,
                        "file",
                        serde_json::json!({"path": format!("{base}/f{i}"), "content": "x\n"}),
                    )
                })
                .collect()
        };
        let all = [0, 1, 2];
        let a = files("/srv/kept-a");
        let first = probes(&a, &all, Tag::Probe).fragments;
        // Another host with the same (shared) resources: the kept fragment, same text.
        let shared: Vec<DesiredStep> = a.iter().map(Clone::clone).collect();
        assert_eq!(probes(&shared, &all, Tag::Probe).fragments, first);
        let key: Vec<usize> = a
            .iter()
            .map(|s| Arc::as_ptr(&s.resource).cast::<()>() as usize)
            .collect();
        let kept = |key: &Vec<usize>| {
            KEPT.lock()
                .unwrap_or_else(|p| p.into_inner())
                .as_ref()
                .is_some_and(|f| f.map.contains_key(key))
        };
        assert!(kept(&key), "kept under its resources' addresses");
        // Equal parameters, other resources: built for them, never the kept one's text
        // for another path.
        let b = files("/srv/kept-b");
        let other = probes(&b, &all, Tag::Probe).fragments;
        assert_ne!(other, first);
        assert!(other[0].1.contains("/srv/kept-b/f0") && !other[0].1.contains("kept-a"));
        // Gone: the entry is never used again (its weak references keep the addresses).
        drop((a, shared));
        let c = files("/srv/kept-c");
        let third = probes(&c, &all, Tag::Probe).fragments;
        assert!(third[0].1.contains("/srv/kept-c/f0"));
    }

    /// Entries of resources that are gone are swept: a daemon's drift checks, each with new
    /// resources, leave at most [`SWEEP_AT_LEAST`] behind, however many checks it runs; and
    /// entries that live are never swept.
    #[test]
    fn fragments_of_resources_that_are_gone_are_swept() {
        let files = |round: usize| -> Vec<DesiredStep> {
            (0..2)
                .map(|i| {
                    step(
                        i * 5,
                        "file",
                        serde_json::json!({"path": format!("/srv/r{round}/f{i}"), "content": "x\n"}),
                    )
                })
                .collect()
        };
        let entries = || {
            KEPT.lock()
                .unwrap_or_else(|p| p.into_inner())
                .as_ref()
                .map_or(0, |f| f.map.len())
        };
        // A plan whose resources stay (a fleet of distinct hosts): every entry is kept.
        let live: Vec<Vec<DesiredStep>> = (0..300).map(files).collect();
        for steps in &live {
            probes(steps, &[0, 1], Tag::Probe);
        }
        assert_eq!(entries(), 300, "live entries are never swept");
        drop(live);
        // Then drift checks, each with resources of its own that are gone after it.
        let mut most = 0;
        for round in 300..2_300 {
            probes(&files(round), &[0, 1], Tag::Probe);
            if round > 1_000 {
                most = most.max(entries());
            }
        }
        assert!(most <= super::SWEEP_AT_LEAST, "{most} entries kept");
    }

    fn out(stdout: &str, status: i32) -> ProbeResult {
        ProbeResult {
            stdout: stdout.as_bytes().to_vec(),
            stderr: b"boom".to_vec(),
            status,
        }
    }

    #[test]
    fn members_split_in_order_with_their_own_status() {
        let r = out(
            "@@plumb-member 0 0\ntype=file\nexact=1\n@@plumb-member 1 1\ncannot open\n@@plumb-member 2 0\ntype=absent\n",
            0,
        );
        let m = split_members(&r, 3);
        assert_eq!(m[0].stdout, b"type=file\nexact=1\n");
        assert_eq!(
            (m[1].status, m[1].stderr.as_slice()),
            (1, &b"cannot open\n"[..])
        );
        assert!(m[1].stdout.is_empty());
        assert_eq!(
            (m[2].status, m[2].stdout.as_slice()),
            (0, &b"type=absent\n"[..])
        );
    }

    /// A failed fragment, a member missing, out of order, repeated or not announced: every
    /// member gets the failure, none another's output.
    #[test]
    fn anything_but_every_member_in_order_fails_them_all() {
        for (stdout, status) in [
            ("@@plumb-member 0 0\na=1\n@@plumb-member 1 0\na=2\n", 2),
            ("@@plumb-member 0 0\na=1\n", 0),
            ("@@plumb-member 1 0\na=1\n@@plumb-member 0 0\na=2\n", 0),
            ("@@plumb-member 0 0\na=1\n@@plumb-member 0 0\na=2\n", 0),
            ("a=0\n@@plumb-member 0 0\na=1\n@@plumb-member 1 0\na=2\n", 0),
            (
                "@@plumb-member 0 0\n@@plumb-member 1 0\n@@plumb-member 2 0\n",
                0,
            ),
            ("@@plumb-member 0 0 x\n@@plumb-member 1 0\n", 0),
        ] {
            let m = split_members(&out(stdout, status), 2);
            assert_eq!(m.len(), 2, "{stdout}");
            for r in m {
                assert_ne!(r.status, 0, "{stdout}");
                assert!(r.stdout.is_empty(), "{stdout}");
                assert!(!r.stderr.is_empty(), "{stdout}");
            }
        }
    }
}
