//! Per-host apply leases: never two applies on one host at once, whichever process makes
//! them (the daemon's rollout, automatic rollback or drift correction; `plumb apply --state`;
//! `plumb rollback`). Each lives in `host_leases` (v9), keyed by the host's `address:port`.
//!
//! A [`LeaseGuard`] takes the leases of all its hosts in one IMMEDIATE transaction, or none
//! (so two processes wanting overlapping sets can never each hold half: no deadlock), renews
//! them every [`LEASE_RENEW`] from a thread of its own (its own connection) while it lives,
//! and releases them when dropped. A lease its holder stopped renewing (the process was
//! killed) is free again [`LEASE_TTL`] after its last renewal. A lease held by someone else
//! is [`StateError::LeaseHeld`], naming the host, the holder and since when.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::{params, OptionalExtension};
use schemars::JsonSchema;
use serde::Serialize;

use super::error::LeaseHeld;
use super::query::collect_typed;
use super::report::rfc3339;
use super::{ms, now_ms, StateDb, StateError};

/// How long a lease holds without a renewal (a killed holder blocks its hosts this long).
pub const LEASE_TTL: Duration = Duration::from_secs(60);
/// How often a live [`LeaseGuard`] renews its leases.
pub const LEASE_RENEW: Duration = Duration::from_secs(15);

/// A host to lease: its key (`address:port`, the same host whatever environment names it)
/// and, for messages, its environment and name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseHost {
    pub key: String,
    pub environment: String,
    pub host: String,
}

impl LeaseHost {
    pub fn new(environment: &str, host: &str, address: &str, port: u16) -> LeaseHost {
        LeaseHost {
            key: format!("{address}:{port}"),
            environment: environment.to_string(),
            host: host.to_string(),
        }
    }
}

/// One lease as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct Lease {
    pub key: String,
    pub environment: String,
    pub host: String,
    pub holder: String,
    /// Unix milliseconds.
    pub taken_at: i64,
    /// Unix milliseconds; free after this unless renewed.
    pub expires_at: i64,
}

impl StateDb {
    /// Takes the leases of every one of `hosts` for `holder_id` (re-taking its own), or none:
    /// [`StateError::LeaseHeld`] for the first host another holder's live lease covers.
    pub fn take_leases(
        &self,
        hosts: &[LeaseHost],
        holder_id: &str,
        holder: &str,
    ) -> Result<(), StateError> {
        self.take_leases_at(hosts, holder_id, holder, now_ms(), LEASE_TTL)
    }

    pub(crate) fn take_leases_at(
        &self,
        hosts: &[LeaseHost],
        holder_id: &str,
        holder: &str,
        now: i64,
        ttl: Duration,
    ) -> Result<(), StateError> {
        self.write(|c, _| {
            let mut held = c.prepare_cached(
                "SELECT holder_id, holder, environment, host, taken_at, expires_at
                 FROM host_leases WHERE host_key = ?1",
            )?;
            let mut put = c.prepare_cached(
                "INSERT OR REPLACE INTO host_leases
                   (host_key, environment, host, holder_id, holder, taken_at, expires_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?;
            for h in hosts {
                let row = held
                    .query_row(params![h.key], |r| {
                        Ok((
                            r.get::<_, String>(0)?,
                            r.get::<_, String>(1)?,
                            r.get::<_, String>(2)?,
                            r.get::<_, String>(3)?,
                            r.get::<_, i64>(4)?,
                            r.get::<_, i64>(5)?,
                        ))
                    })
                    .optional()?;
                if let Some((id, who, env, host, since, until)) = row {
                    if id != holder_id && until > now {
                        return Err(StateError::LeaseHeld(Box::new(LeaseHeld {
                            key: h.key.clone(),
                            environment: env,
                            host,
                            holder: who,
                            since: rfc3339(since),
                            until: rfc3339(until),
                        })));
                    }
                }
                put.execute(params![
                    h.key,
                    h.environment,
                    h.host,
                    holder_id,
                    holder,
                    now,
                    now.saturating_add(ms(ttl))
                ])?;
            }
            Ok(())
        })
    }

    /// Extends every lease of `holder_id` to `LEASE_TTL` from now; returns how many it holds.
    pub fn renew_leases(&self, holder_id: &str) -> Result<usize, StateError> {
        self.write(|c, _| {
            Ok(c.execute(
                "UPDATE host_leases SET expires_at = ?2 WHERE holder_id = ?1",
                params![holder_id, now_ms().saturating_add(ms(LEASE_TTL))],
            )?)
        })
    }

    /// Releases every lease of `holder_id`.
    pub fn release_leases(&self, holder_id: &str) -> Result<(), StateError> {
        self.write(|c, _| {
            c.execute(
                "DELETE FROM host_leases WHERE holder_id = ?1",
                params![holder_id],
            )?;
            Ok(())
        })
    }

    /// Every lease not yet expired, by host key.
    pub fn leases(&self) -> Result<Vec<Lease>, StateError> {
        let read = || {
            let mut stmt = self.conn.prepare_cached(
                "SELECT host_key, environment, host, holder, taken_at, expires_at
                 FROM host_leases WHERE expires_at > ?1 ORDER BY host_key",
            )?;
            collect_typed(
                &mut stmt,
                params![now_ms()],
                (&self.path, "host_leases", "host_key"),
                |at, r| {
                    Ok(Lease {
                        key: at.get(r, "host_key")?,
                        environment: at.get(r, "environment")?,
                        host: at.get(r, "host")?,
                        holder: at.get(r, "holder")?,
                        taken_at: at.get(r, "taken_at")?,
                        expires_at: at.get(r, "expires_at")?,
                    })
                },
            )
        };
        read().map_err(|e| self.err(e))
    }
}

/// Leases held while this lives: renewed by a thread of its own, released on drop.
pub struct LeaseGuard {
    holder_id: String,
    stop: Option<mpsc::Sender<()>>,
    renewer: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for LeaseGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaseGuard")
            .field("holder_id", &self.holder_id)
            .finish()
    }
}

/// A holder id no other guard has, in this process or another.
fn new_holder_id() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!(
        "{}-{nanos}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

impl LeaseGuard {
    /// Takes the leases of `hosts` for `holder` (who, for people: it is named in the error
    /// another process gets), or fails with [`StateError::LeaseHeld`] taking none.
    pub fn take(db: &StateDb, hosts: &[LeaseHost], holder: &str) -> Result<LeaseGuard, StateError> {
        let holder_id = new_holder_id();
        let renewing = db.handle()?;
        db.take_leases(hosts, &holder_id, holder)?;
        let (stop, stopped) = mpsc::channel::<()>();
        let id = holder_id.clone();
        let renewer = std::thread::Builder::new()
            .name("plumb-lease".into())
            .spawn(move || renew_until_dropped(&renewing, &id, &stopped));
        match renewer {
            Ok(t) => Ok(LeaseGuard {
                holder_id,
                stop: Some(stop),
                renewer: Some(t),
            }),
            Err(e) => {
                let _ = db.release_leases(&holder_id);
                Err(StateError::Io {
                    path: db.path().to_path_buf(),
                    source: e,
                })
            }
        }
    }

    pub fn holder_id(&self) -> &str {
        &self.holder_id
    }
}

fn renew_until_dropped(db: &StateDb, holder_id: &str, stopped: &mpsc::Receiver<()>) {
    while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(LEASE_RENEW) {
        if let Err(e) = db.renew_leases(holder_id) {
            tracing::warn!(error = %e, code = e.code(), "could not renew host leases");
        }
    }
    if let Err(e) = db.release_leases(holder_id) {
        tracing::warn!(error = %e, code = e.code(), "could not release host leases; they expire by themselves");
    }
}

impl Drop for LeaseGuard {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.renewer.take() {
            let _ = t.join();
        }
    }
}
