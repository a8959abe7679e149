//! Schemas of the `--output json` reports.

use schemars::JsonSchema;
use serde_json::Value;

use crate::audit::AuditVerifyReport;
use crate::report::plan::{ApplyReport, PlanReport};
use crate::report::{RenderReport, ValidateReport};
use crate::state::report::HistoryReport;

fn one<T: JsonSchema>(name: &str) -> (String, Value) {
    let file = format!("output/{name}.schema.json");
    let schema = super::generator().into_root_schema_for::<T>();
    let v = super::finish(&file, schema);
    (file, v)
}

/// Every report schema, as `(path under schemas/, schema)`.
pub fn generate() -> Vec<(String, Value)> {
    vec![
        one::<ValidateReport>("validate"),
        one::<RenderReport>("render"),
        one::<PlanReport>("plan"),
        one::<ApplyReport>("apply"),
        one::<crate::source::VerifyReport>("verify"),
        one::<HistoryReport>("history"),
        one::<crate::state::report::HistoryEntry>("history-entry"),
        one::<crate::state::report::DriftHistoryReport>("drift-history"),
        one::<AuditVerifyReport>("audit-verify"),
        one::<crate::daemon::status::StatusResponse>("api-status"),
        one::<crate::daemon::status::RunsResponse>("api-runs"),
        one::<crate::daemon::status::RunResponse>("api-run"),
        one::<crate::daemon::status::DriftResponse>("api-drift"),
        one::<crate::daemon::policy::RunSummary>("run-summary"),
        one::<crate::facts::FactsReport>("facts"),
        one::<crate::policy::EvalReport>("policy-eval"),
        one::<Vec<crate::policy::TestResult>>("policy-test"),
        one::<crate::cli::pin::RollbackReport>("rollback"),
        one::<crate::cli::pin::UnpinReport>("unpin"),
    ]
}
