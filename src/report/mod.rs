//! Reports: the stable, machine-readable results of each command (`--output json`, with
//! schemas under `schemas/output/`), and their plain-text forms. Colour and terminal
//! concerns belong to `cli`; everything here is deterministic text or data.

use schemars::JsonSchema;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::diag::{render_plain, Diagnostic, Diagnostics, SourceMap};
use crate::render::DesiredHost;

pub mod plan;

/// `plumb validate --output json`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct ValidateReport {
    pub valid: bool,
    pub errors: usize,
    pub warnings: usize,
    pub diagnostics: Vec<Diagnostic>,
}

impl ValidateReport {
    pub fn new(diags: Diagnostics) -> ValidateReport {
        let errors = diags.error_count();
        let warnings = diags.warning_count();
        ValidateReport {
            valid: errors == 0,
            errors,
            warnings,
            diagnostics: diags.into_sorted(),
        }
    }

    pub fn to_text(&self, sources: &SourceMap) -> String {
        let mut out = String::new();
        for d in &self.diagnostics {
            out.push_str(&render_plain(d, sources));
        }
        out.push_str(&summary_line(self.errors, self.warnings));
        out
    }
}

pub fn summary_line(errors: usize, warnings: usize) -> String {
    let plural = |n: usize, w: &str| {
        if n == 1 {
            format!("{n} {w}")
        } else {
            format!("{n} {w}s")
        }
    };
    if errors == 0 {
        format!("valid ({})\n", plural(warnings, "warning"))
    } else {
        format!(
            "invalid: {}, {}\n",
            plural(errors, "error"),
            plural(warnings, "warning")
        )
    }
}

/// `plumb render --output json`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct RenderReport {
    pub environment: String,
    pub hosts: Vec<RenderedHost>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct RenderedHost {
    pub name: String,
    pub address: String,
    pub port: u16,
    pub user: Option<String>,
    #[serde(rename = "become")]
    pub become_: bool,
    pub steps: Vec<RenderedStep>,
    /// Steps (or loop iterations) a `when:` left out of this host's desired state.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skipped: Vec<crate::render::SkippedStep>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct RenderedStep {
    /// `<unit>/<id>`.
    pub address: String,
    pub module: String,
    pub target: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub after: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notify: Vec<String>,
    pub sensitive: bool,
    /// The desired state; `null` for sensitive steps.
    pub desired: serde_json::Value,
    /// What the step writes, as digest and size (never for sensitive steps).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content_digest: Option<ContentDigest>,
    /// File content as text (only with `--show-content`, never for sensitive steps).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
}

/// Bytes described without showing them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct ContentDigest {
    /// Lowercase hex SHA-256.
    pub sha256: String,
    pub size: usize,
}

impl ContentDigest {
    pub fn of(bytes: &[u8]) -> ContentDigest {
        ContentDigest {
            sha256: hex::encode(Sha256::digest(bytes)),
            size: bytes.len(),
        }
    }
}

/// Describes bytes without showing them.
pub fn content_summary(bytes: &[u8]) -> serde_json::Value {
    serde_json::json!({ "sha256": hex::encode(Sha256::digest(bytes)), "size": bytes.len() })
}

impl RenderReport {
    pub fn new(env: &str, hosts: &[DesiredHost], show_content: bool) -> RenderReport {
        RenderReport {
            environment: env.to_string(),
            hosts: hosts
                .iter()
                .map(|h| RenderedHost {
                    name: h.host.name.clone(),
                    address: h.host.address.clone(),
                    port: h.host.port,
                    user: h.host.user.clone(),
                    become_: h.host.become_,
                    steps: h
                        .steps
                        .iter()
                        .map(|s| RenderedStep {
                            address: s.address.to_string(),
                            module: s.module.to_string(),
                            // The engine's step reference: a sensitive step's target hidden.
                            target: crate::engine::StepRef::of(s).target,
                            after: s.after.iter().map(ToString::to_string).collect(),
                            notify: s.notify.iter().map(ToString::to_string).collect(),
                            sensitive: s.sensitive,
                            desired: if s.sensitive {
                                serde_json::Value::Null
                            } else {
                                s.resource.desired()
                            },
                            content_digest: match (s.sensitive, s.resource.content()) {
                                (false, Some(c)) => Some(ContentDigest::of(c)),
                                _ => None,
                            },
                            content: match (show_content && !s.sensitive, s.resource.content()) {
                                (true, Some(c)) => Some(String::from_utf8_lossy(c).into_owned()),
                                _ => None,
                            },
                        })
                        .collect(),
                    skipped: h.skipped.clone(),
                })
                .collect(),
        }
    }

    pub fn to_text(&self) -> String {
        let mut out = String::new();
        for h in &self.hosts {
            out.push_str(&format!(
                "host {} ({}:{}) — {} steps\n",
                h.name,
                h.address,
                h.port,
                h.steps.len()
            ));
            for (i, s) in h.steps.iter().enumerate() {
                out.push_str(&format!(
                    "  {:>3}. {} [{}] {}\n",
                    i + 1,
                    s.address,
                    s.module,
                    s.target
                ));
                if s.sensitive {
                    out.push_str("       (sensitive: desired state hidden)\n");
                    continue;
                }
                if let serde_json::Value::Object(o) = &s.desired {
                    // Content is described once, by `content_digest` below.
                    let digest_shown = s.content_digest.is_some();
                    for (k, v) in o.iter().filter(|(k, _)| !(digest_shown && *k == "content")) {
                        let v = match v {
                            serde_json::Value::String(s) => s.clone(),
                            other => other.to_string(),
                        };
                        out.push_str(&format!("       {k}: {v}\n"));
                    }
                }
                if !s.after.is_empty() {
                    out.push_str(&format!("       after: {}\n", s.after.join(", ")));
                }
                if !s.notify.is_empty() {
                    out.push_str(&format!("       notify: {}\n", s.notify.join(", ")));
                }
                if let Some(d) = &s.content_digest {
                    out.push_str(&format!(
                        "       content: sha256:{} ({} bytes)\n",
                        d.sha256, d.size
                    ));
                }
                if let Some(c) = &s.content {
                    out.push_str("       content text: |\n");
                    for line in c.lines() {
                        out.push_str(&format!("         {line}\n"));
                    }
                }
            }
            for s in &h.skipped {
                out.push_str(&format!("    - {} skipped: {}\n", s.address, s.reason));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression: `render` printed `content:` twice for a file (the desired state's content
    /// description, then the digest).
    #[test]
    fn render_text_describes_content_once() {
        let digest = ContentDigest::of(b"hello\n");
        let report = RenderReport {
            environment: "prod".into(),
            hosts: vec![RenderedHost {
                name: "web-1".into(),
                address: "10.0.0.1".into(),
                port: 22,
                user: None,
                become_: false,
                steps: vec![RenderedStep {
                    address: "base/motd".into(),
                    module: "file".into(),
                    target: "/etc/motd".into(),
                    after: Vec::new(),
                    notify: Vec::new(),
                    sensitive: false,
                    desired: serde_json::json!({
                        "path": "/etc/motd",
                        "content": {"sha256": digest.sha256, "size": digest.size},
                    }),
                    content_digest: Some(digest.clone()),
                    content: None,
                }],
                skipped: Vec::new(),
            }],
        };
        let text = report.to_text();
        assert_eq!(text.matches("content:").count(), 1, "{text}");
        assert!(text.contains(&format!(
            "       content: sha256:{} (6 bytes)\n",
            digest.sha256
        )));
        assert!(text.contains("       path: /etc/motd\n"));
    }
}
