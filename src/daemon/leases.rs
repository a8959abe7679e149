//! The daemon's side of the per-host apply leases (`state::LeaseGuard`): a rollout, an
//! automatic rollback and a drift correction take the leases of the hosts they apply before
//! touching them, so a person's `plumb rollback` or `plumb apply --state` on the same state
//! never applies a host at the same time. A lease another process holds is waited for (its
//! holder renews it while it works; a killed holder's expires after `state::LEASE_TTL`), at
//! most [`LEASE_WAIT`]; then the run is not made and the next trigger tries again.

use std::time::{Duration, Instant};

use crate::state::{LeaseGuard, LeaseHost, StateError};

use super::{lock, Daemon, DaemonError};

/// How long the daemon waits for hosts another process is applying.
pub(super) const LEASE_WAIT: Duration = Duration::from_secs(600);
/// How often it looks again.
const LEASE_POLL: Duration = Duration::from_millis(250);

impl Daemon {
    /// Takes the apply leases of `hosts` (of `env`) for `what` (`rollout of <commit>`...),
    /// waiting while another process holds one.
    pub(super) async fn lease_hosts<'a>(
        &self,
        env: &str,
        hosts: impl IntoIterator<Item = &'a crate::model::Host>,
        what: &str,
    ) -> Result<LeaseGuard, DaemonError> {
        let hosts: Vec<LeaseHost> = hosts
            .into_iter()
            .map(|h| LeaseHost::new(env, &h.name, &h.address, h.port))
            .collect();
        let holder = format!(
            "the plumb daemon (pid {}): {what} in {env}",
            std::process::id()
        );
        let started = Instant::now();
        let mut said = false;
        loop {
            let held = match LeaseGuard::take(&lock(&self.db), &hosts, &holder) {
                Ok(g) => return Ok(g),
                Err(e @ StateError::LeaseHeld(_)) if started.elapsed() < LEASE_WAIT => {
                    e.to_string()
                }
                Err(e) => return Err(e.into()),
            };
            if !said {
                tracing::warn!(environment = %env, error = %held, "waiting for a host another process is applying");
                said = true;
            }
            tokio::time::sleep(LEASE_POLL).await;
        }
    }
}
