//! Automatic rollback: carrying out a [`RollbackOrder`] the policy gave for a failed wave.
//!
//! The hosts of the failed wave that took the bad commit are brought back to their last good
//! commit as a roll-forward to the old desired state: the target commit is re-verified against
//! today's trust root (a key removed since refuses it), checked out, validated and rendered
//! like any commit, applied to those hosts only, and health-checked with the target's own
//! checks. Each target commit is one `rollback` run, recorded (what failed, the failing
//! checks' output, the target and its signer) before it is alerted, and each (commit, host)
//! is rolled back at most once (`rollbacks` in the state). Later waves are never touched: the
//! order names only the failed wave's hosts. What to record and alert is the pure
//! [`policy::rollback_effects`].

use crate::engine;
use crate::health::CheckResult;
use crate::source::RangeOptions;
use crate::state::{NewRun, RollbackBy, RollbackOrigin, RunKind, StepMeta};

use super::policy::{self, short, Refusal, RollbackOrder, RollbackSummary};
use super::reconcile::{load_commit, Loaded};
use super::{lock, signer_of, Daemon, DaemonError, Wake};

impl Daemon {
    /// What the policy needs to decide on a failed rollout: the environment's `rollback:`,
    /// each host's last good commit, and the hosts already rolled back from this commit.
    pub(super) fn rollback_facts(
        &self,
        env: &str,
        loaded: &Loaded,
        rollout: &mut policy::Rollout,
    ) -> Result<(), DaemonError> {
        let db = lock(&self.db);
        let facts = &mut rollout.rollback;
        facts.mode = loaded.environment.settings.rollback;
        facts.last_good = db
            .last_good(env)?
            .into_iter()
            .map(|(host, good)| (host, good.commit))
            .collect();
        facts.already_rolled_back.clear();
        for h in &facts.took_commit {
            if db.rolled_back(env, &rollout.commit, h)? {
                facts.already_rolled_back.push(h.clone());
            }
        }
        Ok(())
    }

    /// Rolls the order's hosts back, one run per target commit; failures are logged, recorded
    /// and alerted, never returned (the failed rollout is already recorded).
    pub(super) async fn roll_back(&self, env: &str, wake: Wake, order: &RollbackOrder) {
        let by_target = order.by_target();
        for (target, hosts) in by_target {
            tracing::warn!(environment = %env, bad_commit = %order.bad_commit, target = %target, hosts = ?hosts, "rolling back to the last good commit");
            match self.roll_back_to(env, wake, order, target, hosts).await {
                Ok(()) => {}
                Err(e) => {
                    tracing::error!(environment = %env, target = %target, error = %e, code = e.code(), "rollback failed")
                }
            }
        }
    }

    async fn roll_back_to(
        &self,
        env: &str,
        wake: Wake,
        order: &RollbackOrder,
        target: &str,
        hosts: Vec<String>,
    ) -> Result<(), DaemonError> {
        let mut summary = RollbackSummary::start(RollbackBy::Daemon, order, target, &hosts);
        let prepared = self.prepare_target(env, target, &hosts).await?;
        // No other process applies these hosts meanwhile (see `leases`).
        let _leases = match &prepared {
            Ok((_, loaded)) => Some(self.lease_targets(env, order, target, loaded).await?),
            Err(_) => None,
        };
        let signer = prepared.as_ref().ok().map(|(s, _)| s.clone());
        summary.target_signer = signer.as_ref().map(|s| s.principal.clone());
        let signer_principal = summary.target_signer.clone();
        let run = lock(&self.db).begin_run(&NewRun {
            environment: env.to_string(),
            commit: Some(target.to_string()),
            signer,
            kind: RunKind::Rollback,
            trigger: wake.trigger(),
        })?;
        // At most one automatic rollback per (commit, host): claimed before anything runs, so
        // a daemon stopped mid-rollback does not roll back again.
        lock(&self.db).record_rollback(env, &order.bad_commit, &hosts, target, &run)?;
        match prepared {
            Err(why) => summary.refused = Some(why),
            Ok((_, loaded)) => {
                // Every change is the rollback's: back to the target, from the bad commit.
                let meta = StepMeta::rollback(
                    RollbackOrigin {
                        from: Some(order.bad_commit.clone()),
                        to: target.to_string(),
                        by: RollbackBy::Daemon,
                        run: run.clone(),
                    },
                    signer_principal.as_deref(),
                );
                let (failed, health) = self.apply_targets(&run, &loaded, &meta).await?;
                summary.failed_hosts = failed;
                summary.health = health;
            }
        }
        self.finish_rollback(env, (&run, target, signer_principal), summary)
    }

    /// Records a finished rollback (metrics, the signed run, the audit anchor) and alerts it.
    fn finish_rollback(
        &self,
        env: &str,
        (run, target, signer_principal): (&crate::state::RunId, &str, Option<String>),
        summary: RollbackSummary,
    ) -> Result<(), DaemonError> {
        let (result, alert) = policy::rollback_effects(&summary);
        let now = time::OffsetDateTime::now_utc();
        if summary.refused.is_none() {
            for h in summary
                .hosts
                .iter()
                .filter(|h| !summary.failed_hosts.contains(h))
            {
                self.metrics.host_applied(env, h, now);
            }
        }
        let metric = if result == crate::state::RunResult::Converged {
            crate::server::metrics::RunResult::Succeeded
        } else {
            crate::server::metrics::RunResult::Failed
        };
        self.metrics.run_finished(
            env,
            (crate::server::metrics::RunKind::Rollback, metric),
            std::time::Duration::ZERO,
            0,
            0,
        );
        lock(&self.db).finish_run(
            run,
            result,
            &policy::RunSummary::Rollback(summary).to_value(),
        )?;
        self.anchor_audit_head();
        let mut details = alert.details;
        if let Some(obj) = details.as_object_mut() {
            obj.insert("run".into(), run.0.clone().into());
        }
        let mut a = self.new_alert(
            alert.event,
            Some(env),
            Some(target),
            alert.hosts,
            alert.message,
            details,
        );
        a.signer = signer_principal;
        self.alert(a);
        Ok(())
    }

    /// The apply leases of the hosts rolled back to `target`.
    async fn lease_targets(
        &self,
        env: &str,
        order: &RollbackOrder,
        target: &str,
        loaded: &Loaded,
    ) -> Result<crate::state::LeaseGuard, DaemonError> {
        let what = format!(
            "automatic rollback of {} to {}",
            short(&order.bad_commit),
            short(target)
        );
        self.lease_hosts(env, loaded.hosts.iter().map(|h| &h.host), &what)
            .await
    }

    /// Re-verifies `target` against today's trust root, then checks it out, validates and
    /// renders it; `Err(why)` when it cannot be used (recorded with the run).
    async fn prepare_target(
        &self,
        env: &str,
        target: &str,
        hosts: &[String],
    ) -> Result<Result<(crate::state::Signer, Loaded), String>, DaemonError> {
        let Ok(oid) = git2::Oid::from_str(target) else {
            return Ok(Err(format!("`{target}` is not a commit id")));
        };
        let verdict = {
            let (source, signers) = (self.source.clone(), self.signers.clone());
            tokio::task::spawn_blocking(move || {
                source.verify(None, oid, &signers, RangeOptions::default())
            })
            .await
            .map_err(DaemonError::task("verifying signatures"))??
        };
        let signer = match verdict {
            Ok(r) => signer_of(&r.tip_signer),
            Err(rej) => {
                return Ok(Err(format!(
                    "the last good commit no longer verifies against today's trust root: {}",
                    rej.failure
                )))
            }
        };
        // Applied again: facts gathered afresh, as for a rollout.
        let facts = self.facts_source(true);
        let mut loaded = match load_commit(
            self.source.clone(),
            self.checkouts_dir(),
            oid,
            env,
            None,
            &facts,
            self.secrets.clone(),
        )
        .await
        {
            Ok(l) => l,
            Err(refusal) => {
                let why = match &refusal {
                    Refusal::Invalid { errors } => {
                        format!("{} validation errors", errors.len())
                    }
                    other => other.code().to_string(),
                };
                return Ok(Err(format!("the last good commit cannot be used: {why}")));
            }
        };
        // Only the hosts rolled back are applied.
        loaded.hosts.retain(|h| hosts.contains(&h.host.name));
        if loaded.hosts.len() != hosts.len() {
            return Ok(Err(
                "a host is not in the last good commit's inventory".to_string()
            ));
        }
        // What the bad commit added and the target does not declare is removed (prune on).
        super::reconcile::prune_hosts(&lock(&self.db), env, &loaded.repo, &mut loaded.hosts)?;
        Ok(Ok((signer, loaded)))
    }

    /// Applies the target's desired state to its hosts (recording each, its changes
    /// attributed as `meta` says), then runs the
    /// target's health checks on those that converged. Returns (failed hosts, checks).
    async fn apply_targets(
        &self,
        run: &crate::state::RunId,
        loaded: &Loaded,
        meta: &StepMeta,
    ) -> Result<(Vec<String>, Vec<CheckResult>), DaemonError> {
        let (connector, host_locks) = (&self.connector, &self.host_locks);
        let parallel = self.config.parallel as usize;
        let runs = engine::each_host(loaded.hosts.iter(), parallel, |h| async move {
            let _applying = host_locks.lock(&h.host.address, h.host.port).await;
            let t = engine::Connector::connect(connector, &h.host);
            engine::apply_host(h, t.as_ref()).await
        })
        .await;
        for (h, r) in loaded.hosts.iter().zip(&runs) {
            let declared = crate::prune::Managed::declared(h);
            lock(&self.db).record_host(run, r, meta, &declared)?;
        }
        let (failed, health) = crate::rollout::rollback::check_rolled_back(
            &runs,
            &loaded.environment.health_checks,
            connector,
            &loaded.repo,
        )
        .await;
        Ok((failed, health))
    }
}

#[cfg(test)]
mod tests {
    use crate::alert::AlertEvent;
    use crate::health::CheckResult;
    use crate::model::RollbackMode;
    use crate::state::RunResult;

    use super::super::policy::*;
    use super::super::tests::rollout;

    const BAD: &str = "0123456789abcdef0123";
    const GOOD: &str = "fedcba9876543210fedc";

    fn check(ok: bool) -> CheckResult {
        CheckResult {
            check: "app".into(),
            kind: "command".into(),
            host: "web-1".into(),
            ok,
            inconclusive: false,
            code: (!ok).then(|| "exit".into()),
            error: (!ok).then(|| "command exited with status 1: unhealthy".into()),
            attempts: 1,
            duration_ms: 5,
        }
    }

    /// The canary wave (web-1) took the bad commit and failed its health check; web-1's
    /// last good commit is GOOD.
    fn failed_canary() -> Rollout {
        let mut r = rollout(&["web-1"]);
        r.waves[0].failed_hosts.clear();
        r.waves[0].health = Some(vec![check(false)]);
        r.rollback.took_commit = vec!["web-1".into()];
        r.rollback.last_good = [("web-1".to_string(), GOOD.to_string())].into();
        r
    }

    #[test]
    fn a_failed_wave_is_rolled_back_to_each_hosts_last_good_commit() {
        let e = policy(&Ok(Outcome::Failed(failed_canary())));
        // Recorded and quarantined first, as any failure.
        assert_eq!(e.record, Some(RunResult::Failed));
        assert_eq!(e.mark, CommitMark::Failed);
        let order = e.rollback.expect("a rollback");
        assert_eq!(order.bad_commit, BAD);
        // Its cause travels with it into the rollback run: the failed run and its wave.
        assert_eq!(
            order.failed_run.as_ref().map(|r| r.0.as_str()),
            Some("01RUN")
        );
        assert_eq!(order.failed_wave.as_deref(), Some("canary"));
        assert_eq!(order.targets, vec![("web-1".to_string(), GOOD.to_string())]);
        assert_eq!(order.failed_checks, vec![check(false)]);
        let a = e.alert.expect("alert");
        assert!(
            a.message
                .contains("commit quarantined; rolling back web-1 to fedcba987654"),
            "{}",
            a.message
        );
        assert_eq!(a.details["rollback"]["decision"], "roll_back");
    }

    #[test]
    fn no_rollback_when_off_irreversible_already_done_or_nothing_to_go_back_to() {
        type Tweak = fn(&mut Rollout);
        let cases: [(&str, Tweak); 4] = [
            ("`rollback: off`", |r| r.rollback.mode = RollbackMode::Off),
            ("a person must decide", |r| {
                r.rollback.irreversible = vec!["web-1: base/hello: package removal".into()]
            }),
            ("rolled back once already", |r| {
                r.rollback.already_rolled_back = vec!["web-1".into()]
            }),
            ("no last good commit for web-1", |r| {
                r.rollback.last_good.clear()
            }),
        ];
        for (why, tweak) in cases {
            let mut r = failed_canary();
            tweak(&mut r);
            let e = policy(&Ok(Outcome::Failed(r)));
            assert_eq!(e.rollback, None, "{why}");
            assert_eq!(e.mark, CommitMark::Failed, "{why}");
            let a = e.alert.expect("alert");
            assert!(a.message.contains(why), "{why}: {}", a.message);
        }
        // The irreversible change is named in the alert.
        let mut r = failed_canary();
        r.rollback.irreversible = vec!["web-1: base/hello: package removal".into()];
        let a = policy(&Ok(Outcome::Failed(r))).alert.expect("alert");
        assert!(
            a.message.contains("web-1: base/hello: package removal"),
            "{}",
            a.message
        );
        assert_eq!(
            a.details["rollback"]["irreversible"][0],
            "web-1: base/hello: package removal"
        );
    }

    #[test]
    fn the_last_good_commit_being_the_bad_one_is_no_target() {
        let mut r = failed_canary();
        r.rollback.last_good = [("web-1".to_string(), BAD.to_string())].into();
        assert_eq!(policy(&Ok(Outcome::Failed(r))).rollback, None);
    }

    fn summary(ok: bool) -> RollbackSummary {
        RollbackSummary {
            by: crate::state::RollbackBy::Daemon,
            rollback_of: BAD.into(),
            failed_run: Some(crate::state::RunId("01FAILED".into())),
            failed_wave: Some("canary".into()),
            reason: "wave `canary`: health checks failed".into(),
            failed_checks: vec![check(false)],
            target: GOOD.into(),
            target_signer: Some("alice@example.com".into()),
            hosts: vec!["web-1".into()],
            failed_hosts: Vec::new(),
            health: vec![check(ok)],
            refused: None,
        }
    }

    #[test]
    fn a_rollback_is_recorded_and_alerted_with_its_reason_target_and_signer() {
        let (result, a) = rollback_effects(&summary(true));
        assert_eq!(result, RunResult::Converged);
        assert_eq!(a.event, AlertEvent::RolledBack);
        assert_eq!(
            a.message,
            "rolled back web-1 from 0123456789ab to their last good commit fedcba987654 \
             (signed by alice@example.com): wave `canary`: health checks failed"
        );
        assert_eq!(
            a.details["failed_checks"][0]["error"],
            "command exited with status 1: unhealthy"
        );

        let (result, a) = rollback_effects(&summary(false));
        assert_eq!(result, RunResult::Failed);
        assert_eq!(a.event, AlertEvent::RunFailed);
        assert!(
            a.message.contains("its health checks failed"),
            "{}",
            a.message
        );

        let mut refused = summary(true);
        refused.refused = Some("the last good commit no longer verifies".into());
        let (result, a) = rollback_effects(&refused);
        assert_eq!(result, RunResult::Failed);
        assert!(a.message.contains("no longer verifies"), "{}", a.message);
    }
}
