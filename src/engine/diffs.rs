//! Diffs made once per shared resource and probe result, for the hosts of one
//! [`super::plan_all`] or [`super::observe_all`].
//!
//! Hosts whose steps rendered alike share their resources (`render::memo`), and hosts in
//! the same state print the same probe output for them. A module's `diff` is a pure function
//! of its resource and the probe's result (the modules' contract, held by the compliance
//! harness), so the change found for one such host is the change of every other: it is
//! cloned, not parsed and diffed again. A resource only one step holds is diffed as before.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::modules::{Change, ProbeError, ProbeResult, Resource};
use crate::render::DesiredStep;

/// The diffs of one pass over many hosts, by their resource's address: the few distinct
/// probe results seen for a shared resource (in sync, and one or two kinds of drift), each
/// with its change. Each entry holds its resource, so the address it is found by names that
/// resource for as long as the entry exists.
#[derive(Default)]
pub(super) struct Diffs(Mutex<HashMap<usize, Seen>>);

/// Distinct probe results kept per resource; past them, the oldest goes.
const RESULTS_PER_RESOURCE: usize = 4;

struct Seen {
    _resource: Arc<dyn Resource>,
    results: Vec<(ProbeResult, Change)>,
}

impl Diffs {
    /// `s`'s change for `result`: what its resource's `diff` returns.
    pub(super) fn diff(&self, s: &DesiredStep, result: &ProbeResult) -> Result<Change, ProbeError> {
        if Arc::strong_count(&s.resource) < 2 {
            return s.resource.diff(result);
        }
        let key = Arc::as_ptr(&s.resource).cast::<()>() as usize;
        {
            let seen = self.0.lock().unwrap_or_else(|p| p.into_inner());
            let kept = seen
                .get(&key)
                .and_then(|seen| seen.results.iter().find(|(r, _)| r == result));
            if let Some((_, change)) = kept {
                return Ok(change.clone());
            }
        }
        let change = s.resource.diff(result)?;
        let mut seen = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let entry = seen.entry(key).or_insert_with(|| Seen {
            _resource: s.resource.clone(),
            results: Vec::new(),
        });
        if entry.results.len() >= RESULTS_PER_RESOURCE {
            entry.results.remove(0);
        }
        entry.results.push((result.clone(), change.clone()));
        Ok(change)
    }
}
