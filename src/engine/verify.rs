//! The verify of an apply, run at the end of the apply's own script: which steps it
//! re-probes, and what their probes mean.
//!
//! **The rule.** A step *acted* when its apply or its refresh (a handler) ran. The verify
//! re-probes every step that acted, and every step that shares a path, a service, a user or
//! a group with one that did ([`crate::modules::touch`]; a step whose effects cannot be named,
//! `Touches::Anything`, shares with every step). Each must be in sync: a step that acted and is
//! not failed to converge; a step that was in sync before the run and is not any more was
//! broken by the step it shares with, and both are reported, so two steps that disagree
//! about one file never pass as converged. A step that shares nothing with any step that
//! acted is not probed again: nothing plumb ran could have changed it.
//!
//! The selection is `O(n log n)` in the number of steps (an ordered index of the paths that
//! acted), so a host with many steps stays cheap however many changed.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Bound;

use crate::modules::touch::{HostPath, TouchKind};
use crate::modules::{Change, Touch, Touches};

use super::{StepOutcome, StepStatus};

/// One step the verify re-probes, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Recheck {
    /// The step's index in the host's steps.
    pub step: usize,
    /// `None`: the step acted. `Some((k, kind))`: it did not, but shares `kind` with step
    /// `k`, which did.
    pub because: Option<(usize, TouchKind)>,
}

/// What the steps that acted touch, indexed for lookups.
#[derive(Default)]
struct Index {
    /// The first step that acted and may touch anything.
    anything: Option<usize>,
    /// The first step that acted at all.
    first: Option<usize>,
    /// Each path a step that acted touches, with the first such step.
    paths: BTreeMap<String, usize>,
    /// Each service, user and group, with the first such step.
    names: HashMap<Touch, usize>,
}

impl Index {
    fn new(touches: &[Touches], acted: &BTreeSet<usize>) -> Index {
        let mut index = Index::default();
        for &k in acted {
            index.first.get_or_insert(k);
            match touches.get(k) {
                Some(Touches::Only(ts)) => {
                    for t in ts {
                        match t {
                            Touch::Path(p) => {
                                index.paths.entry(p.as_str().to_string()).or_insert(k);
                            }
                            t => {
                                index.names.entry(t.clone()).or_insert(k);
                            }
                        }
                    }
                }
                Some(Touches::Anything) | None => {
                    index.anything.get_or_insert(k);
                }
            }
        }
        index
    }

    /// The step that acted which `touch` shares with, if any.
    fn shares(&self, touch: &Touch) -> Option<usize> {
        match touch {
            Touch::Path(p) => self.path_shares(p),
            t => self.names.get(t).copied(),
        }
    }

    /// A step that acted on this path, a directory above it, or a path under it.
    fn path_shares(&self, p: &HostPath) -> Option<usize> {
        if let Some(k) = p.ancestors().find_map(|a| self.paths.get(a)) {
            return Some(*k);
        }
        let prefix = p.children_prefix();
        self.paths
            .range::<str, _>((Bound::Included(prefix.as_str()), Bound::Unbounded))
            .next()
            .filter(|(q, _)| q.starts_with(&prefix))
            .map(|(_, k)| *k)
    }

    /// Why step `j`, which did not act, must be verified, if it must.
    fn because(&self, touches: &Touches) -> Option<(usize, TouchKind)> {
        if let Some(k) = self.anything {
            return Some((k, TouchKind::Anything));
        }
        match touches {
            Touches::Anything => self.first.map(|k| (k, TouchKind::Anything)),
            Touches::Only(ts) => ts
                .iter()
                .find_map(|t| self.shares(t).map(|k| (k, t.kind()))),
        }
    }
}

/// The steps to verify after the steps in `acted` ran, in step order (see the module's
/// documentation for the rule). `touches` has one entry per step of the host.
pub(crate) fn rechecks(touches: &[Touches], acted: &BTreeSet<usize>) -> Vec<Recheck> {
    if acted.is_empty() {
        return Vec::new();
    }
    let index = Index::new(touches, acted);
    touches
        .iter()
        .enumerate()
        .filter_map(|(j, t)| {
            if acted.contains(&j) {
                return Some(Recheck {
                    step: j,
                    because: None,
                });
            }
            let because = index.because(t)?;
            Some(Recheck {
                step: j,
                because: Some(because),
            })
        })
        .collect()
}

/// Marks the outcome of every step verified by what its probe found (`after`, in the
/// order of `rechecks`); `steps` has one outcome per step of the host. Returns whether every
/// step verified is in sync.
pub(crate) fn verdicts(
    steps: &mut [StepOutcome],
    rechecks: &[Recheck],
    after: Vec<Result<Change, String>>,
) -> bool {
    let mut ok = true;
    for (rc, result) in rechecks.iter().zip(after) {
        let by = rc
            .because
            .and_then(|(k, kind)| Some((steps.get(k)?.step.address.clone(), kind)));
        let Some(outcome) = steps.get_mut(rc.step) else {
            continue;
        };
        let error = match result {
            Ok(c) if !c.is_change() => continue,
            Err(e) => format!("verify: {e}"),
            Ok(c) => {
                let error = match (&by, outcome.status) {
                    (Some((addr, kind)), _) => {
                        let why = match kind {
                            TouchKind::Anything => {
                                "one of them may change or read any part of the host".to_string()
                            }
                            k => format!("they share {k}"),
                        };
                        format!(
                            "in sync before this run, but not after step {addr} was applied \
                             ({}; {why}): the two steps disagree, make them agree",
                            c.kind
                        )
                    }
                    (None, StepStatus::InSync) => {
                        format!("not in sync after its refresh ({})", c.kind)
                    }
                    (None, _) => format!("still not in sync after apply ({})", c.kind),
                };
                if by.is_some() {
                    outcome.change = Some(outcome.step.redact(&c));
                }
                error
            }
        };
        ok = false;
        outcome.status = StepStatus::Failed;
        outcome.error = Some(error);
    }
    ok
}

#[cfg(test)]
mod tests {
    use super::*;

    fn only(paths: &[&str]) -> Touches {
        Touches::only(paths.iter().map(|p| Touch::path(p)))
    }

    fn steps_of(r: &[Recheck]) -> Vec<(usize, Option<usize>)> {
        r.iter()
            .map(|r| (r.step, r.because.map(|(k, _)| k)))
            .collect()
    }

    #[test]
    fn a_change_rechecks_what_shares_a_path_and_nothing_else() {
        let touches = [
            only(&["/etc/app"]),                    // 0: a directory
            only(&["/etc/app/app.conf"]),           // 1: a file in it
            only(&["/etc/app/app.conf"]),           // 2: another step on that file
            only(&["/etc/other.conf"]),             // 3: unrelated
            only(&["/etc/app-old/x"]),              // 4: a look-alike prefix
            Touches::only([Touch::service("app")]), // 5
            only(&["/etc/app/conf.d/a.conf"]),      // 6: under the directory, not the file
        ];
        let r = rechecks(&touches, &BTreeSet::from([1]));
        assert_eq!(steps_of(&r), [(0, Some(1)), (1, None), (2, Some(1))]);
        let r = rechecks(&touches, &BTreeSet::from([0]));
        assert_eq!(
            steps_of(&r),
            [(0, None), (1, Some(0)), (2, Some(0)), (6, Some(0))]
        );
        assert!(rechecks(&touches, &BTreeSet::new()).is_empty());
    }

    #[test]
    fn anything_shares_with_every_step_both_ways() {
        let touches = [
            only(&["/a"]),
            Touches::Anything,
            only(&["/b"]),
            Touches::only([Touch::service("web")]),
        ];
        // A step that may touch anything acted: everything is verified.
        let r = rechecks(&touches, &BTreeSet::from([1]));
        assert_eq!(
            steps_of(&r),
            [(0, Some(1)), (1, None), (2, Some(1)), (3, Some(1))]
        );
        // Any step acted: the step that may read anything is verified, others are not.
        let r = rechecks(&touches, &BTreeSet::from([2]));
        assert_eq!(steps_of(&r), [(1, Some(2)), (2, None)]);
        assert_eq!(r[0].because.map(|(_, k)| k), Some(TouchKind::Anything));
    }

    #[test]
    fn services_users_and_groups_share_by_name() {
        let touches = [
            Touches::only([
                Touch::service("app.service"),
                Touch::path("/etc/systemd/system/app.service"),
            ]),
            Touches::only([Touch::service("app")]),
            Touches::only([Touch::User("app".into()), Touch::Group("app".into())]),
            Touches::only([Touch::path("/srv/x"), Touch::User("app".into())]),
            Touches::only([Touch::Group("web".into())]),
        ];
        let r = rechecks(&touches, &BTreeSet::from([0]));
        assert_eq!(steps_of(&r), [(0, None), (1, Some(0))]);
        assert_eq!(r[1].because.map(|(_, k)| k), Some(TouchKind::Service));
        let r = rechecks(&touches, &BTreeSet::from([2]));
        assert_eq!(steps_of(&r), [(2, None), (3, Some(2))]);
    }

    #[test]
    fn the_root_shares_with_every_path() {
        let touches = [only(&["/"]), only(&["/x/y"]), only(&["/z"])];
        assert_eq!(
            steps_of(&rechecks(&touches, &BTreeSet::from([1]))),
            [(0, Some(1)), (1, None)]
        );
        assert_eq!(
            steps_of(&rechecks(&touches, &BTreeSet::from([0]))),
            [(0, None), (1, Some(0)), (2, Some(0))]
        );
    }

    /// The index agrees with the pairwise rule (`Touch::shares`) on every step.
    #[test]
    fn the_index_agrees_with_the_pairwise_rule() {
        let paths = [
            "/", "/a", "/a/b", "/a/b/c", "/a/bc", "/a-b", "/b", "/b/a", "/a/b/c/d",
        ];
        let touches: Vec<Touches> = paths.iter().map(|p| only(&[p])).collect();
        for acted in 0..paths.len() {
            let r = rechecks(&touches, &BTreeSet::from([acted]));
            let want: Vec<usize> = (0..paths.len())
                .filter(|&j| j == acted || Touch::path(paths[j]).shares(&Touch::path(paths[acted])))
                .collect();
            assert_eq!(
                r.iter().map(|r| r.step).collect::<Vec<_>>(),
                want,
                "{}",
                paths[acted]
            );
        }
    }
}
