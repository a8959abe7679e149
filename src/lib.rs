//! plumb: a GitOps reconciliation daemon for plain Linux hosts.
//!
//! The layers, from the repo inwards (see ARCHITECTURE.md for the invariants of each):
//! - [`model`] and [`schema`]: the declarations, their YAML with positions, their schemas;
//! - [`validate`] and [`render`]: checks and the desired steps per host, with no host contacted;
//! - [`modules`]: pure step modules (probe script, parse, diff, apply script);
//! - [`transport`] and [`engine`]: the only code that talks to hosts, one script per phase;
//! - [`policy`]: guardrails as code: Rego policies judge the desired state and the plan;
//! - [`report`]: the machine-readable results of each command;
//! - [`source`]: the signed config repo: mirror, signature policy, checkout, watch;
//! - [`health`]: health checks after each rollout wave (command via the transport, http, tcp);
//! - [`state`] and [`audit`]: the run history in SQLite, signed and hash-chained;
//! - [`server`] and [`alert`]: the daemon's HTTP side (probes, metrics, webhooks, status API)
//!   and its outgoing alerts (webhook, Slack, Alertmanager);
//! - [`daemon`]: the reconcile loop tying them together;
//! - [`cli`]: the command line; the only layer that knows about terminals.

pub mod alert;
pub mod audit;
pub mod cli;
pub mod daemon;
pub mod diag;
pub mod engine;
pub mod facts;
pub mod health;
pub mod limit;
pub mod model;
pub mod modules;
pub mod policy;
pub mod prune;
pub mod render;
pub mod report;
pub mod rollout;
pub mod schema;
pub mod schemagen;
pub mod secrets;
pub mod server;
pub mod source;
pub mod state;
pub mod transport;
pub mod validate;
pub mod yaml;
