//! The probe fragments of a host's steps, with the steps a module can probe together
//! ([`crate::modules::ProbeBatch`]: the `line` steps of one file) made into one.
//!
//! Probes change nothing, so their order does not matter: steps of one module with the same
//! batch key and the same sensitivity are grouped wherever they stand (a sensitive step's
//! probe output, or failure, never reaches another step). A group's fragment is framed with
//! its first step's tag; [`Probes::results`] splits its output back into one result per
//! step ([`crate::modules::split_members`]), so the diff of every step reads exactly what
//! its own probe would have printed.

use std::collections::BTreeMap;

use crate::modules::{ProbeResult, Resource};
use crate::render::DesiredStep;

use super::script::{Parsed, Tag};

/// What a step must share with others to be probed with them.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct Key {
    module: &'static str,
    key: String,
    sensitive: bool,
}

fn key_of(step: &DesiredStep) -> Option<Key> {
    let batch = crate::modules::lookup(step.module)?.probe_batch?;
    Some(Key {
        module: step.module,
        key: (batch.key)(step.resource.as_ref())?,
        sensitive: step.sensitive,
    })
}

/// The probe fragments of some of a host's steps, and how to read each step's result.
pub(super) struct Probes {
    pub fragments: Vec<(Tag, String)>,
    /// Per fragment: the steps it probes, in the order of its members (one for a step
    /// probed alone).
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

impl Probes {
    /// Adds the fragment(s) of one group: one merged fragment when its module can, else
    /// one per step.
    fn push(&mut self, steps: &[DesiredStep], members: Vec<usize>) {
        let Some(&first) = members.first() else {
            return;
        };
        if members.len() > 1 {
            let resources: Vec<&dyn Resource> = members
                .iter()
                .map(|&i| steps[i].resource.as_ref())
                .collect();
            let merged = crate::modules::lookup(steps[first].module)
                .and_then(|def| def.probe_batch)
                .and_then(|b| (b.probe)(&resources));
            if let Some(fragment) = merged {
                self.fragments.push(((self.tag)(first), fragment));
                self.members.push(members);
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
        for ((tag, _), members) in self.fragments.iter().zip(&self.members) {
            let Some(frame) = parsed.get(*tag) else {
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
    use crate::modules::{split_members, ProbeResult};

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
