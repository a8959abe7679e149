//! Step identity in results, and the **one** place where sensitive steps are redacted.
//!
//! Every result the engine returns (`StepPlan`, `StepOutcome`, `HandlerOutcome`) names its
//! step with a [`StepRef`] built by [`StepRef::of`], and every change or failure text in it
//! went through [`StepRef::redact`] or [`StepRef::failure`]. For a sensitive step the
//! target, field values, content, notes and output are already hidden there, so no
//! consumer (reports, state database, audit, alerts, logs, API) can leak them: it never
//! receives them.

use serde::Serialize;

use crate::model::StepAddress;
use crate::modules::{Change, ProbeError, ProbeResult};
use crate::render::DesiredStep;

/// What a sensitive step shows instead of a value.
pub const REDACTED: &str = "(sensitive)";

/// Which step a result is about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StepRef {
    pub address: StepAddress,
    /// The module's registered name.
    pub module: &'static str,
    /// What the step manages (`/etc/app.conf`, `nginx`); [`REDACTED`] for a sensitive step.
    pub target: String,
    pub sensitive: bool,
    /// The secrets the step reads (names only; such a step is sensitive).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<String>,
    /// A removal plumb added: the resource is no longer declared and prune is on for it.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub removing: bool,
}

impl StepRef {
    /// The reference to a rendered step, its target hidden when the step is sensitive.
    pub fn of(step: &DesiredStep) -> StepRef {
        StepRef {
            address: step.address.clone(),
            module: step.module,
            target: if step.sensitive {
                REDACTED.to_string()
            } else {
                step.resource.target()
            },
            sensitive: step.sensitive,
            secrets: step.secrets.clone(),
            removing: step.prune.removing,
        }
    }

    /// What a result may keep of `change`: all of it, or for a sensitive step the kind and
    /// field names only (values replaced by [`REDACTED`], no content, no notes).
    pub fn redact(&self, change: &Change) -> Change {
        let mut c = change.clone();
        if self.sensitive {
            c.fields = crate::modules::redact(&c.fields);
            c.content = None;
            c.notes.clear();
            if !self.secrets.is_empty() && c.kind != crate::modules::ChangeKind::InSync {
                // A rotation is an ordinary change; the record says which secrets it carries.
                c.fields.push(crate::modules::FieldChange {
                    field: crate::modules::Field::Secrets,
                    from: None,
                    to: Some(self.secrets.join(", ")),
                });
            }
        }
        c
    }

    /// Why a probe's output could not be understood.
    pub fn probe_error(&self, e: &ProbeError) -> String {
        if self.sensitive {
            "probe failed (details hidden: sensitive step)".to_string()
        } else {
            format!("probe failed: {e}")
        }
    }

    /// Why a fragment failed: its exit status and the end of its output (only the status
    /// for a sensitive step).
    pub fn failure(&self, r: &ProbeResult) -> String {
        if self.sensitive {
            return format!("exit status {} (output hidden: sensitive step)", r.status);
        }
        let err = tail(&r.stderr, 20);
        let out = tail(&r.stdout, 5);
        match (err.is_empty(), out.is_empty()) {
            (false, _) => format!("exit status {}: {err}", r.status),
            (true, false) => format!("exit status {}: {out}", r.status),
            (true, true) => format!("exit status {}", r.status),
        }
    }
}

/// The last `lines` lines of some output.
pub(crate) fn tail(bytes: &[u8], lines: usize) -> String {
    let text = String::from_utf8_lossy(bytes);
    let all: Vec<&str> = text.trim_end().lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
