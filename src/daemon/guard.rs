//! The guardrails' gate in a reconcile: every host of the environment observed once, the
//! plans judged by the operator's and the repo's policies, and the apply only when nothing
//! is denied, from those same observations (DESIGN.md decision 13: no extra round trip).

use std::collections::BTreeMap;
use std::sync::Mutex;

use crate::engine::{self, HostPlan, Observation};
use crate::policy::{self, Context, Origin, PolicySet, Verdict};

use super::policy::Refusal;
use super::reconcile::Loaded;
use super::Daemon;

/// Longest commit message read for `Plumb-Override:` trailers.
const MAX_MESSAGE_BYTES: usize = 64 * 1024;

/// A plan the policies allowed: the observations to apply from, by host name.
pub(super) struct Gate {
    pub observations: Mutex<BTreeMap<String, Observation>>,
    pub verdict: Verdict,
}

impl Gate {
    /// The observation of `host` (each is used once).
    pub fn take(&self, host: &str) -> Option<Observation> {
        self.observations.lock().ok()?.remove(host)
    }
}

fn invalid(e: &policy::PolicyError) -> Refusal {
    Refusal::Invalid {
        errors: vec![e.to_string()],
    }
}

impl Daemon {
    /// The commit's message (bounded), for its trailers.
    fn commit_message(&self, commit: git2::Oid) -> String {
        let Ok(repo) = self.source.open() else {
            return String::new();
        };
        let Ok(c) = repo.find_commit(commit) else {
            return String::new();
        };
        let bytes = c.message_bytes();
        String::from_utf8_lossy(&bytes[..bytes.len().min(MAX_MESSAGE_BYTES)]).into_owned()
    }

    /// The policies in force for this commit: the operator's (read now: an edit applies
    /// at the next reconcile) and the commit's `policies/*.rego`.
    fn policies_for(&self, loaded: &Loaded) -> Result<PolicySet, Refusal> {
        let cfg = self.config.policies.clone().unwrap_or_default();
        let mut set = PolicySet::default();
        set.add_dirs(Origin::Operator, &cfg.dirs, false)
            .map_err(|e| Refusal::Internal {
                error: format!("the operator's policies: {e}"),
            })?;
        let repo = policy::read_repo(&loaded.repo.files).map_err(|e| invalid(&e))?;
        set.add(Origin::Repo, repo).map_err(|e| invalid(&e))?;
        Ok(set)
    }

    /// Observes every host and judges the plans. `Ok(None)`: no policy is in force (each
    /// host is observed by its own apply). `Err`: the commit is refused, no host changed.
    pub(super) async fn policy_gate(
        &self,
        env: &str,
        tip: git2::Oid,
        signer: &str,
        loaded: &Loaded,
    ) -> Result<Option<Gate>, Refusal> {
        let set = self.policies_for(loaded)?;
        if set.is_empty() {
            return Ok(None);
        }
        let overrides = policy::overrides::parse(&self.commit_message(tip));
        let ctx = Context {
            environment: env.to_string(),
            commit: Some(policy::CommitInput {
                id: tip.to_string(),
                signer: Some(signer.to_string()),
                overrides: overrides
                    .iter()
                    .map(|o| policy::OverrideInput {
                        rule: o.rule.clone(),
                        reason: o.reason.clone(),
                    })
                    .collect(),
            }),
            now: policy::NowInput::at(time::OffsetDateTime::now_utc()),
        };
        // Pinned hosts are left out of the rollout, so out of the judgement too.
        let hosts: Vec<&crate::render::DesiredHost> = loaded
            .hosts
            .iter()
            .filter(|h| !loaded.pinned.contains(&h.host.name))
            .collect();
        let connector = &self.connector;
        let parallel = self.config.parallel as usize;
        let observations = engine::each_host(hosts.iter().copied(), parallel, |h| {
            let t = engine::Connector::connect(connector, &h.host);
            async move { engine::observe_host(h, t.as_ref()).await }
        })
        .await;
        let plans: Vec<&HostPlan> = observations.iter().map(|o| &o.plan).collect();
        // Evaluation is CPU work (bounded by the execution timer): on a multi-threaded
        // runtime, this worker hands its other tasks over while it judges.
        let judge = || policy::judge_plans(&set, &ctx, &hosts, &plans);
        let judged = match tokio::runtime::Handle::current().runtime_flavor() {
            tokio::runtime::RuntimeFlavor::MultiThread => tokio::task::block_in_place(judge),
            _ => judge(),
        };
        let findings = judged.map_err(|e| invalid(&e))?;
        let approvers = self
            .config
            .policies
            .as_ref()
            .map(|p| p.approvers.clone())
            .unwrap_or_default();
        let verdict = Verdict::judge(findings, &overrides, Some(signer), &approvers);
        if verdict.is_denied() {
            return Err(Refusal::Policy {
                violations: verdict.denied,
                overrides: verdict.overrides,
            });
        }
        for o in verdict.overrides.iter().filter(|o| o.accepted) {
            tracing::warn!(environment = %env, commit = %tip, rule = %o.rule, by = ?o.by, reason = %o.reason, "policy overridden");
        }
        let observations = observations
            .into_iter()
            .map(|o| (o.plan.host.name.clone(), o))
            .collect();
        Ok(Some(Gate {
            observations: Mutex::new(observations),
            verdict,
        }))
    }
}
