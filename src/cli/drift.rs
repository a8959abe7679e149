//! `plumb drift`: a plan that answers "has a host moved away from the repo?".

use super::plan::{PlanArgs, PlanKind};
use super::term::Term;

/// Exit 0 no drift, 2 drift found, 1 error.
pub fn run(args: PlanArgs, term: Term) -> anyhow::Result<u8> {
    super::plan::run(args, PlanKind::Drift, term)
}
