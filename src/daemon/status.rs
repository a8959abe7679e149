//! The status API over the state database: typed answers of `/api/status`, `/api/runs`,
//! `/api/runs/{id}` and `/api/drift`, each with a JSON Schema under `schemas/output/`
//! (`api-status`, `api-runs`, `api-run`, `api-drift`).

use std::sync::{Arc, Mutex};

use schemars::JsonSchema;
use serde::Serialize;
use serde_json::Value;

use crate::server::{DriftQuery, RunsQuery, StatusError, StatusSource};
use crate::state::{
    DriftFinding, LastApplied, Pin, RunDetail, RunFilter, RunId, RunRecord, StateDb,
};

use super::lock;

/// `GET /api/status`: every managed environment.
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[schemars(title = "plumb daemon API: GET /api/status")]
pub struct StatusResponse {
    pub environments: Vec<EnvironmentStatus>,
}

/// One environment in `GET /api/status`.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct EnvironmentStatus {
    pub environment: String,
    /// The commit last applied (the drift baseline); none before the first apply.
    pub last_applied: Option<LastApplied>,
    /// The newest run of any kind.
    pub last_run: Option<RunRecord>,
    /// Drift findings not resolved yet.
    pub open_drift: usize,
    /// Hosts pinned to an older commit by `plumb rollback` (until `plumb unpin` or a newer
    /// commit than `bad_commit`).
    pub pins: Vec<Pin>,
    /// Every `backup` step's backup as the last drift check observed it: snapshot age,
    /// last restore test (result, measured restore duration, files compared), problems.
    pub backups: Vec<super::backups::BackupStatus>,
}

/// `GET /api/runs`: runs, newest first.
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[schemars(title = "plumb daemon API: GET /api/runs")]
pub struct RunsResponse {
    pub runs: Vec<RunRecord>,
}

/// `GET /api/runs/{id}`: one run with its host and step results.
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[schemars(title = "plumb daemon API: GET /api/runs/{id}")]
#[serde(transparent)]
pub struct RunResponse(pub RunDetail);

/// `GET /api/drift`: drift findings, open and resolved (`resolved_at`), newest first.
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[schemars(title = "plumb daemon API: GET /api/drift")]
pub struct DriftResponse {
    pub drift: Vec<DriftFinding>,
}

/// The status API's source: the daemon's own read handle on the state database.
pub struct StateStatus {
    pub db: Arc<Mutex<StateDb>>,
    pub environments: Vec<String>,
    /// The backups the drift checks observed (in memory: empty until the first check).
    pub backups: super::backups::BackupBoard,
}

fn internal(e: impl std::fmt::Display) -> StatusError {
    StatusError::Internal(e.to_string())
}

fn to_value(v: &impl Serialize) -> Result<Value, StatusError> {
    serde_json::to_value(v).map_err(internal)
}

impl StateStatus {
    pub fn status_response(&self) -> Result<StatusResponse, StatusError> {
        let db = lock(&self.db);
        let mut environments = Vec::new();
        for env in &self.environments {
            let last_run = db
                .runs(&RunFilter {
                    environment: Some(env.clone()),
                    kind: None,
                    limit: Some(1),
                    ..RunFilter::default()
                })
                .map_err(internal)?;
            environments.push(EnvironmentStatus {
                environment: env.clone(),
                last_applied: db.last_applied(env).map_err(internal)?,
                last_run: last_run.into_iter().next(),
                open_drift: db.open_drift(env).map_err(internal)?.len(),
                pins: db.pins(Some(env)).map_err(internal)?,
                backups: self
                    .backups
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get(env)
                    .cloned()
                    .unwrap_or_default(),
            });
        }
        Ok(StatusResponse { environments })
    }

    pub fn runs_response(&self, q: &RunsQuery) -> Result<RunsResponse, StatusError> {
        let runs = lock(&self.db).runs(q).map_err(internal)?;
        Ok(RunsResponse { runs })
    }

    pub fn run_response(&self, id: &str) -> Result<Option<RunResponse>, StatusError> {
        let run = lock(&self.db)
            .run(&RunId(id.to_string()))
            .map_err(internal)?;
        Ok(run.map(RunResponse))
    }

    pub fn drift_response(&self, q: &DriftQuery) -> Result<DriftResponse, StatusError> {
        let drift = lock(&self.db).drift_history(q).map_err(internal)?;
        Ok(DriftResponse { drift })
    }
}

impl StatusSource for StateStatus {
    fn status(&self) -> Result<Value, StatusError> {
        to_value(&self.status_response()?)
    }

    fn runs(&self, q: &RunsQuery) -> Result<Value, StatusError> {
        to_value(&self.runs_response(q)?)
    }

    fn run(&self, id: &str) -> Result<Option<Value>, StatusError> {
        self.run_response(id)?.map(|r| to_value(&r)).transpose()
    }

    fn drift(&self, q: &DriftQuery) -> Result<Value, StatusError> {
        to_value(&self.drift_response(q)?)
    }
}
