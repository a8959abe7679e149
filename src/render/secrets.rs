//! `secrets` in templates: an object that resolves `secrets.<name>` lazily through the
//! repo's [`Keyring`] and records every name read, so the step that read one is tainted
//! (made sensitive) and its secret names are known (for the audit record), whatever the
//! template did with the value.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use minijinja::value::{Object, ObjectRepr, Value};

use crate::model::jail::RepoFiles;
use crate::secrets::keyring::placeholder;
use crate::secrets::{Keyring, SecretError, SecretValue};

/// The `secrets` object of one step's render.
#[derive(Debug)]
pub struct StepSecrets {
    keyring: Keyring,
    files: RepoFiles,
    env: String,
    reads: Mutex<BTreeSet<String>>,
    error: Mutex<Option<SecretError>>,
}

impl StepSecrets {
    pub fn new(keyring: &Keyring, files: &RepoFiles, env: &str) -> Arc<StepSecrets> {
        Arc::new(StepSecrets {
            keyring: keyring.clone(),
            files: files.clone(),
            env: env.to_string(),
            reads: Mutex::default(),
            error: Mutex::default(),
        })
    }

    /// The names read so far (sorted).
    pub fn reads(&self) -> Vec<String> {
        let r = self.reads.lock().unwrap_or_else(|p| p.into_inner());
        r.iter().cloned().collect()
    }

    /// Whether the value of a secret read so far appears in `text` (an empty value never
    /// does). A secret that cannot be resolved again counts as appearing.
    pub fn appears_in(&self, text: &str) -> bool {
        self.reads().iter().any(
            |name| match self.keyring.resolve(&self.files, &self.env, name) {
                Ok(SecretValue::Plain(v)) => !v.as_str().is_empty() && text.contains(v.as_str()),
                Ok(SecretValue::Placeholder) => text.contains(&placeholder(name)),
                Err(_) => true,
            },
        )
    }

    /// The first secret that could not be resolved, if any.
    pub fn take_error(&self) -> Option<SecretError> {
        self.error.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    /// The template context of a step: `base` (the host's variables) plus `secrets`.
    pub fn context(self: &Arc<Self>, base: &Value) -> Value {
        minijinja::context! {
            secrets => Value::from_dyn_object(self.clone()),
            ..base.clone()
        }
    }
}

impl Object for StepSecrets {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        ObjectRepr::Plain
    }

    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        let name = key.as_str()?;
        self.reads
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.chars().take(crate::secrets::MAX_NAME).collect());
        match self.keyring.resolve(&self.files, &self.env, name) {
            Ok(SecretValue::Plain(text)) => Some(Value::from(text.as_str())),
            Ok(SecretValue::Placeholder) => Some(Value::from(placeholder(name))),
            Err(e) => {
                let mut slot = self.error.lock().unwrap_or_else(|p| p.into_inner());
                slot.get_or_insert(e);
                None
            }
        }
    }

    fn render(self: &Arc<Self>, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("(secrets)")
    }
}

/// Rewrites the errors of a step that read secrets: a reference that could not be resolved
/// says why (missing, not encrypted to the recipients, wrong identity...), at the reference;
/// any other error is told without its details, which could quote the value.
pub fn explain_errors(
    tracker: &StepSecrets,
    decl: &crate::model::StepDecl,
    errs: &mut [crate::diag::Diagnostic],
) {
    let failed = tracker.take_error();
    let reads = tracker.reads();
    if reads.is_empty() {
        return;
    }
    for d in errs.iter_mut() {
        let undefined = d.code == "template" && d.message.starts_with("undefined variable");
        match &failed {
            Some(e) if undefined => {
                d.code = e.code();
                d.message = format!("step `{}`: {e}", decl.id);
                d.hint = e.hint();
            }
            _ if undefined => {}
            _ => {
                d.message = format!(
                    "step `{}` reads secret `{}`: its {} error is hidden (it could show the value)",
                    decl.id,
                    reads.join("`, `"),
                    d.code
                );
                d.hint = Some(
                    "a secret is a string: check how the step uses it (filters, types), or \
                     render the step with a test value"
                        .into(),
                );
            }
        }
    }
}
