//! Per-host apply leases: all or none, a live one is a clear error naming its holder, an
//! expired one is free, a guard renews and releases, and a recorder handle beside the
//! daemon's sees the daemon's leases.

use std::time::Duration;

use super::private_tmp;
use crate::state::{LeaseGuard, LeaseHost, StateDb, StateError, LEASE_TTL};

fn h(name: &str, addr: &str) -> LeaseHost {
    LeaseHost::new("prod", name, addr, 22)
}

#[test]
fn a_held_lease_names_its_holder_and_takes_nothing() {
    let dir = private_tmp();
    let daemon = StateDb::open(dir.path()).unwrap();
    // A person's `plumb rollback`, beside the running daemon (no exclusive lock needed).
    let cli = StateDb::open_recorder(dir.path()).unwrap();
    let now = crate::state::now_ms();
    daemon
        .take_leases_at(
            &[h("web1", "10.0.0.1")],
            "daemon-1",
            "the plumb daemon (pid 7): rollout of abc to prod",
            now,
            LEASE_TTL,
        )
        .unwrap();
    let err = cli
        .take_leases_at(
            &[h("web2", "10.0.0.2"), h("web1", "10.0.0.1")],
            "cli-1",
            "plumb rollback (pid 9)",
            now + 1,
            LEASE_TTL,
        )
        .unwrap_err();
    let StateError::LeaseHeld(ref held) = err else {
        panic!("{err:?}");
    };
    assert_eq!(
        (held.host.as_str(), held.key.as_str()),
        ("web1", "10.0.0.1:22"),
        "{err}"
    );
    assert_eq!(
        held.holder,
        "the plumb daemon (pid 7): rollout of abc to prod"
    );
    assert_eq!(err.code(), "state.lease_held");
    let msg = err.to_string();
    assert!(
        msg.contains("host web1 (10.0.0.1:22) of environment prod is being applied by the plumb daemon (pid 7)"),
        "{msg}"
    );
    assert!(msg.contains("wait for it to finish"), "{msg}");
    // All or none: web2 was free, but it was not taken either.
    let held: Vec<String> = cli.leases().unwrap().into_iter().map(|l| l.host).collect();
    assert_eq!(held, vec!["web1".to_string()]);
    // The holder may take its own again (and more with it).
    daemon
        .take_leases_at(
            &[h("web1", "10.0.0.1"), h("web2", "10.0.0.2")],
            "daemon-1",
            "the plumb daemon (pid 7)",
            now + 2,
            LEASE_TTL,
        )
        .unwrap();
    // Released: the person's apply goes ahead.
    daemon.release_leases("daemon-1").unwrap();
    cli.take_leases_at(
        &[h("web1", "10.0.0.1")],
        "cli-1",
        "plumb rollback (pid 9)",
        now + 3,
        LEASE_TTL,
    )
    .unwrap();
}

#[test]
fn a_lease_its_holder_stopped_renewing_expires() {
    let dir = private_tmp();
    let db = StateDb::open_recorder(dir.path()).unwrap();
    let now = crate::state::now_ms();
    let ttl = Duration::from_secs(60);
    db.take_leases_at(
        &[h("web1", "10.0.0.1")],
        "killed",
        "plumb apply (pid 3)",
        now,
        ttl,
    )
    .unwrap();
    // Still live one millisecond before it expires.
    let live = db.take_leases_at(
        &[h("web1", "10.0.0.1")],
        "next",
        "plumb apply (pid 4)",
        now + 59_999,
        ttl,
    );
    assert!(matches!(live, Err(StateError::LeaseHeld(_))), "{live:?}");
    // The killed holder never renewed: the lease is free after its TTL.
    db.take_leases_at(
        &[h("web1", "10.0.0.1")],
        "next",
        "plumb apply (pid 4)",
        now + 60_000,
        ttl,
    )
    .unwrap();
    assert_eq!(db.leases().unwrap()[0].holder, "plumb apply (pid 4)");
}

#[test]
fn a_guard_holds_renews_and_releases_its_hosts() {
    let dir = private_tmp();
    let daemon = StateDb::open(dir.path()).unwrap();
    let cli = StateDb::open_recorder(dir.path()).unwrap();
    let hosts = [h("web1", "10.0.0.1"), h("web2", "10.0.0.2")];
    let guard = LeaseGuard::take(&cli, &hosts, "plumb rollback (pid 9)").unwrap();
    let leases = daemon.leases().unwrap();
    assert_eq!(leases.len(), 2);
    assert!(leases
        .iter()
        .all(|l| l.expires_at - l.taken_at == LEASE_TTL.as_millis() as i64));
    // The daemon cannot take either host while the guard lives.
    let err = LeaseGuard::take(&daemon, &hosts[1..], "the plumb daemon").unwrap_err();
    assert!(err.to_string().contains("plumb rollback (pid 9)"), "{err}");
    // Renewal extends the guard's leases only.
    assert_eq!(cli.renew_leases(guard.holder_id()).unwrap(), 2);
    assert_eq!(cli.renew_leases("someone-else").unwrap(), 0);
    drop(guard);
    assert!(daemon.leases().unwrap().is_empty(), "released on drop");
    let _daemons = LeaseGuard::take(&daemon, &hosts, "the plumb daemon").unwrap();
}
