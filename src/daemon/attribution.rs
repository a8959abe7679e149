//! Attribution of step changes (issue 19): which commit (and signer) last changed a step's
//! desired state, and whether a change is `intended` (a commit changed the desired state),
//! `corrective` (the host had drifted from what plumb had applied) or `manual` (a recorded
//! `plumb apply` changed it). Decided from rendered desired states only — the tip's, those of
//! the commits before it in the applied range, and the digests the state keeps of what was
//! last applied (`step_origins`) — so it costs no host round trip.

use std::collections::HashMap;

use sha2::{Digest, Sha256};

use crate::render::{DesiredHost, DesiredStep};
use crate::state::{Attribution, Cause, Origin, StepMeta, StepOrigin};

/// Most commits of one range whose desired states are rendered to find which one changed a
/// step; beyond it every changed step is attributed to the tip (the run's summary still lists
/// every commit with its signer).
pub(super) const MAX_RANGE_RENDERS: usize = 16;

/// sha256 of a step's rendered desired state (module and [`crate::modules::Resource::desired`],
/// where file content is already a hash).
pub(super) fn digest(step: &DesiredStep) -> String {
    let v = serde_json::json!({"module": step.module, "desired": step.resource.desired()});
    hex::encode(Sha256::digest(crate::audit::canonical_json(&v).as_bytes()))
}

/// Each step's desired-state digest on each host of a rendered commit, by (host, address).
pub(super) type Digests = HashMap<(String, String), String>;

/// The [`Digests`] of a rendered commit.
pub(super) fn digests(hosts: &[DesiredHost]) -> Digests {
    hosts
        .iter()
        .flat_map(|h| {
            h.steps
                .iter()
                .map(|s| ((h.host.name.clone(), s.address.to_string()), digest(s)))
        })
        .collect()
}

/// The commits of an applied range, for attribution.
#[derive(Debug, Clone)]
pub(super) struct RangeAttribution {
    /// The tip, with its signer.
    pub tip: Origin,
    /// The commits before the tip (oldest first) with their steps' digests; empty when the
    /// range is the tip alone or too long to render.
    pub earlier: Vec<(Origin, Digests)>,
}

impl RangeAttribution {
    pub fn tip_only(tip: Origin) -> RangeAttribution {
        RangeAttribution {
            tip,
            earlier: Vec::new(),
        }
    }

    /// The commit that last made the step's desired state what it is at the tip (`digest`):
    /// the oldest commit of the unbroken run of commits, ending at the tip, that have it.
    fn changed_by(&self, host: &str, address: &str, digest: &str) -> Origin {
        let key = (host.to_string(), address.to_string());
        let mut origin = &self.tip;
        for (o, digests) in self.earlier.iter().rev() {
            if digests.get(&key).map(String::as_str) != Some(digest) {
                break;
            }
            origin = o;
        }
        origin.clone()
    }

    /// How an apply of the tip classifies each step of `desired`, given what the state knows
    /// (`stored`), and the origin to store for each step once it is applied
    /// (address, digest, origin).
    pub fn host_meta(
        &self,
        desired: &DesiredHost,
        stored: &HashMap<String, StepOrigin>,
    ) -> (StepMeta, Vec<(String, String, Origin)>) {
        let mut meta = StepMeta::default();
        let mut origins = Vec::new();
        for step in &desired.steps {
            let address = step.address.to_string();
            let d = digest(step);
            let (a, origin) = match stored.get(&address) {
                Some(s) if s.digest == d => (unchanged(s), s.origin.clone()),
                _ => {
                    let origin = self.changed_by(&desired.host.name, &address, &d);
                    let a = Attribution {
                        cause: Cause::Intended,
                        origin: Some(origin.clone()),
                    };
                    (a, origin)
                }
            };
            meta.attribute(&address, a);
            origins.push((address, d, origin));
        }
        (meta, origins)
    }
}

/// A step whose desired state did not change: a difference is the host's, by a recorded
/// manual run or drift.
fn unchanged(s: &StepOrigin) -> Attribution {
    match &s.manual {
        Some(m) => Attribution {
            cause: Cause::Manual,
            origin: Some(m.clone()),
        },
        None => Attribution {
            cause: Cause::Corrective,
            origin: Some(s.origin.clone()),
        },
    }
}

/// How a drift check (or its correction) against the last applied commit classifies each
/// step of `desired`, and the origins to store once a correction applied it. A step the state
/// knows nothing of is attributed to `baseline`.
pub(super) fn drift_meta(
    desired: &DesiredHost,
    stored: &HashMap<String, StepOrigin>,
    baseline: &Origin,
) -> (StepMeta, Vec<(String, String, Origin)>) {
    let mut meta = StepMeta::default();
    let mut origins = Vec::new();
    for step in &desired.steps {
        let address = step.address.to_string();
        let (a, origin) = match stored.get(&address) {
            Some(s) if !s.digest.is_empty() => (unchanged(s), s.origin.clone()),
            Some(s) => {
                let mut a = unchanged(s);
                if a.cause == Cause::Corrective {
                    a.origin = Some(baseline.clone());
                }
                (a, baseline.clone())
            }
            None => (
                Attribution {
                    cause: Cause::Corrective,
                    origin: Some(baseline.clone()),
                },
                baseline.clone(),
            ),
        };
        meta.attribute(&address, a);
        origins.push((address, digest(step), origin));
    }
    (meta, origins)
}

/// The origins of the steps an apply left as desired (in sync or changed): those to store.
pub(super) fn applied_origins(
    run: &crate::engine::HostRun,
    origins: Vec<(String, String, Origin)>,
) -> Vec<(String, String, Origin)> {
    use crate::engine::StepStatus;
    let done: std::collections::HashSet<String> = run
        .steps
        .iter()
        .filter(|s| matches!(s.status, StepStatus::InSync | StepStatus::Changed))
        .map(|s| s.step.address.to_string())
        .collect();
    origins
        .into_iter()
        .filter(|(a, _, _)| done.contains(a))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin(c: &str, s: &str) -> Origin {
        Origin {
            commit: c.into(),
            signer: Some(s.into()),
            run: None,
            rollback: None,
        }
    }

    #[test]
    fn the_commit_that_last_changed_a_step_is_named() {
        let key = |a: &str| ("web1".to_string(), a.to_string());
        let attr = RangeAttribution {
            tip: origin("c3", "bob"),
            earlier: vec![
                (
                    origin("c1", "alice"),
                    HashMap::from([(key("a"), "A1".into()), (key("b"), "B0".into())]),
                ),
                (
                    origin("c2", "bob"),
                    HashMap::from([(key("a"), "A1".into()), (key("b"), "B2".into())]),
                ),
            ],
        };
        // `a` took its tip value in c1 (alice) and kept it; `b` in c2; `c` only at the tip.
        assert_eq!(attr.changed_by("web1", "a", "A1").commit, "c1");
        assert_eq!(attr.changed_by("web1", "b", "B2").commit, "c2");
        assert_eq!(attr.changed_by("web1", "c", "C3").commit, "c3");
        assert_eq!(
            attr.changed_by("web1", "b", "B2").signer.as_deref(),
            Some("bob")
        );
    }
}
