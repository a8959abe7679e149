//! The console's reads: each gives what the plain scan it replaced gives (the scans are
//! kept here as the oracle), on a small database written through the daemon's own API.

use std::collections::BTreeMap;

use rusqlite::params;
use serde_json::json;

use super::*;
use crate::engine::HostStatus;
use crate::state::console::{CommitHost, HostLatest, PageAt, RunsPage};

const C1: &str = "ab9f000000000000000000000000000000000001";
const C2: &str = "aba0000000000000000000000000000000000002";
const C3: &str = "abff000000000000000000000000000000000003";

fn run_in(db: &StateDb, env: &str, kind: RunKind, commit: &str) -> RunId {
    db.begin_run(&NewRun {
        environment: env.into(),
        commit: Some(commit.into()),
        ..new_run(kind)
    })
    .unwrap()
}

/// Two environments sharing host names, applies, drift checks, hosts not reached, an
/// unreachable host and one marked unhealthy after it converged; runs often start in the
/// same millisecond (the pages then order by id).
fn history(db: &StateDb) -> Vec<RunId> {
    let mut ids = Vec::new();
    for n in 0..12 {
        let env = if n % 3 == 2 { "staging" } else { "prod" };
        let commit = [C1, C2, C3][n / 4];
        let kind = if n % 2 == 0 {
            RunKind::Apply
        } else {
            RunKind::DriftCheck
        };
        let id = run_in(db, env, kind, commit);
        let skipped = (7 - n % 4) % 4;
        for h in 0..4 {
            if h == skipped {
                continue; // this run does not reach that host
            }
            let name = format!("web{h}");
            if kind == RunKind::Apply {
                let status = if (n + h) % 5 == 0 {
                    HostStatus::Unreachable
                } else {
                    HostStatus::Converged
                };
                db.record_host(&id, &host_run(&name, h % 2, status), &meta(), &[])
                    .unwrap();
            } else {
                let drifted: &[&str] = if (n + h) % 3 == 0 { &["base/a"] } else { &[] };
                db.record_drift_check(&id, &plan(&name, drifted), &meta())
                    .unwrap();
            }
        }
        // A host not reached: its newest result stays the one before.
        db.record_not_reached(
            &id,
            &[format!("web{skipped}")],
            &NotReached {
                reason: NotReachedReason::Quarantined,
                detail: "wave canary failed".into(),
            },
        )
        .unwrap();
        if n == 10 {
            db.mark_unhealthy(&id, "web2", "health check `http` failed")
                .unwrap();
        }
        db.finish_run(&id, RunResult::Converged, &json!({}))
            .unwrap();
        if n % 4 == 1 {
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        ids.push(id);
    }
    ids
}

/// The scan the fleet page ran before `host_latest`.
fn latest_by_scan(db: &StateDb, env: &str) -> Vec<HostLatest> {
    let mut stmt = db
        .conn()
        .prepare(
            "SELECT h.host, h.status, h.error, r.id, r.kind, r.started_at, r.commit_id
             FROM host_results h JOIN runs r ON r.id = h.run_id
             WHERE h.id IN (SELECT MAX(h2.id) FROM host_results h2
                 JOIN runs r2 ON r2.id = h2.run_id WHERE r2.environment = ?1
                 AND h2.status != 'not_reached'
                 GROUP BY h2.host)
             ORDER BY h.host",
        )
        .unwrap();
    let rows = stmt
        .query_map(params![env], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, Option<String>>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, String>(4)?,
                r.get::<_, i64>(5)?,
                r.get::<_, Option<String>>(6)?,
            ))
        })
        .unwrap();
    rows.map(|r| {
        let (host, status, error, run, kind, at, commit) = r.unwrap();
        HostLatest {
            host,
            status: serde_json::from_value(json!(status)).unwrap(),
            error,
            run: RunId(run),
            kind: serde_json::from_value(json!(kind)).unwrap(),
            at,
            commit,
        }
    })
    .collect()
}

/// `host_latest` is written with every result: the fleet's newest results are exactly
/// what a scan of every result finds, per environment, with `not_reached` left out and a
/// later change of status (unhealthy) seen.
#[test]
fn newest_results_are_kept_on_write_and_match_a_scan() {
    let dir = private_tmp();
    let db = StateDb::open(dir.path()).unwrap();
    history(&db);
    for env in ["prod", "staging"] {
        let kept = db.latest_host_results(env).unwrap();
        assert_eq!(kept, latest_by_scan(&db, env), "{env}");
        assert_eq!(kept.len(), 4, "{env}: every host has a result");
    }
    let prod = db.latest_host_results("prod").unwrap();
    assert!(
        prod.iter().any(|h| h.status == HostResultStatus::Unhealthy),
        "{prod:?}"
    );
    assert!(db.latest_host_results("nowhere").unwrap().is_empty());

    // One more result moves only that host's row.
    let id = run_in(&db, "prod", RunKind::Apply, C3);
    db.record_host(&id, &host_run("web2", 1, HostStatus::Failed), &meta(), &[])
        .unwrap();
    let now = db.latest_host_results("prod").unwrap();
    assert_eq!(now, latest_by_scan(&db, "prod"));
    let web2 = now.iter().find(|h| h.host == "web2").unwrap();
    assert_eq!(
        (web2.run.clone(), web2.status),
        (id, HostResultStatus::Failed)
    );
    let rows: i64 = db
        .conn()
        .query_row("SELECT COUNT(*) FROM host_latest", [], |r| r.get(0))
        .unwrap();
    assert_eq!(rows, 8, "one row per environment and host");
}

/// A database from before `host_latest` gets it filled by the migration.
#[test]
fn the_migration_fills_the_newest_results_of_older_databases() {
    let dir = private_tmp();
    let db = StateDb::open(dir.path()).unwrap();
    history(&db);
    let expected = latest_by_scan(&db, "prod");
    db.conn()
        .execute_batch(
            "DROP TABLE host_latest; DROP INDEX runs_by_commit; DROP INDEX runs_by_env_kind;
             DROP INDEX runs_unsigned; DROP INDEX drift_by_run; DROP INDEX drift_by_seen;
             DROP INDEX drift_by_env_seen; DROP INDEX drift_by_host_seen;
             DROP INDEX drift_open_by_seen; DROP INDEX drift_open_by_env_seen;
             PRAGMA user_version = 10;",
        )
        .unwrap();
    drop(db);
    let db = StateDb::open(dir.path()).unwrap();
    assert_eq!(schema::user_version(db.conn()).unwrap(), SCHEMA_VERSION);
    assert_eq!(db.latest_host_results("prod").unwrap(), expected);
}

fn walk<T>(mut page: impl FnMut(&PageAt) -> RunsPage<T>, id: impl Fn(&T) -> RunId) -> Vec<RunId> {
    let mut all = Vec::new();
    let mut at = PageAt::Newest;
    loop {
        let p = page(&at);
        assert!(p.items.len() <= 3);
        assert_eq!(p.newer, at != PageAt::Newest);
        all.extend(p.items.iter().map(&id));
        match (p.older, p.items.last()) {
            (true, Some(last)) => at = PageAt::Before(id(last)),
            _ => return all,
        }
    }
}

/// Keyset pages list every run once, newest first, as the plain list does; a page back
/// (`After`) is the page before it.
#[test]
fn keyset_pages_list_every_run_once_in_order() {
    let dir = private_tmp();
    let db = StateDb::open(dir.path()).unwrap();
    history(&db);
    let plain: Vec<RunId> = db
        .runs(&RunFilter {
            environment: Some("prod".into()),
            ..RunFilter::default()
        })
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(plain.len(), 8);
    let paged = walk(|at| db.runs_page("prod", at, 3).unwrap(), |r| r.id.clone());
    assert_eq!(paged, plain);

    let second = db
        .runs_page("prod", &PageAt::Before(plain[2].clone()), 3)
        .unwrap();
    let back = db
        .runs_page("prod", &PageAt::After(second.items[0].id.clone()), 3)
        .unwrap();
    let ids: Vec<RunId> = back.items.iter().map(|r| r.id.clone()).collect();
    assert_eq!(ids, plain[..3].to_vec());
    assert!(!back.newer && back.older);

    // A host's history: the runs that reached it (not_reached included), as a filter by host.
    let plain: Vec<RunId> = db
        .runs(&RunFilter {
            environment: Some("prod".into()),
            host: Some("web1".into()),
            ..RunFilter::default()
        })
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert!(plain.len() > 3, "{plain:?}");
    let paged = walk(
        |at| db.host_runs("prod", "web1", at, 3).unwrap(),
        |h| h.run.id.clone(),
    );
    assert_eq!(paged, plain);
    let gone = db
        .runs_page("prod", &PageAt::Before(RunId("NOSUCHRUN".into())), 3)
        .unwrap();
    assert!(gone.items.is_empty(), "an unknown cursor is an empty page");
}

/// A commit prefix is a range: the same runs as a `LIKE` prefix, whatever its last digit
/// (`9` and `f` included) and case; the hosts it reached with their newest result among
/// those runs, as reading each run's results gives.
#[test]
fn commit_prefixes_are_ranges_and_list_the_hosts_reached() {
    let dir = private_tmp();
    let db = StateDb::open(dir.path()).unwrap();
    history(&db);
    for prefix in ["ab", "ab9", "AB9F", "aba", "abf", "abff0", "abc", C2] {
        let like: Vec<RunId> = {
            let mut stmt = db
                .conn()
                .prepare(
                    "SELECT id FROM runs WHERE commit_id LIKE ?1 || '%'
                     ORDER BY started_at DESC, id DESC LIMIT 5",
                )
                .unwrap();
            let rows = stmt
                .query_map(params![prefix.to_ascii_lowercase()], |r| r.get(0))
                .unwrap();
            rows.map(|r| RunId(r.unwrap())).collect()
        };
        let runs = db.commit_runs(prefix, 5).unwrap();
        let got: Vec<RunId> = runs.iter().map(|r| r.id.clone()).collect();
        assert_eq!(got, like, "{prefix}");

        let mut reached: BTreeMap<(String, String), (HostResultStatus, RunId)> = BTreeMap::new();
        for r in runs.iter().rev() {
            for h in db.run(&r.id).unwrap().unwrap().hosts {
                reached.insert((r.environment.clone(), h.host), (h.status, r.id.clone()));
            }
        }
        let expected: Vec<CommitHost> = reached
            .into_iter()
            .map(|((environment, host), (status, run))| CommitHost {
                environment,
                host,
                status,
                run,
            })
            .collect();
        assert_eq!(db.commit_hosts(prefix, 5).unwrap(), expected, "{prefix}");
    }
    assert_eq!(db.commit_runs("ab9", 50).unwrap().len(), 4);
    assert!(db.commit_runs("", 50).unwrap().is_empty());
}

/// The newest run of a kind, however many runs of other kinds came after it; one run's
/// record without its results.
#[test]
fn latest_run_of_a_kind() {
    let dir = private_tmp();
    let db = StateDb::open(dir.path()).unwrap();
    let ids = history(&db);
    let plain = db
        .runs(&RunFilter {
            environment: Some("staging".into()),
            kind: Some(RunKind::DriftCheck),
            limit: Some(1),
            ..RunFilter::default()
        })
        .unwrap();
    let got = db.latest_run("staging", RunKind::DriftCheck).unwrap();
    assert_eq!(got.map(|r| r.id), plain.first().map(|r| r.id.clone()));
    assert!(ids.contains(&plain[0].id));
    assert!(db
        .latest_run("staging", RunKind::Rollback)
        .unwrap()
        .is_none());
    // A run's record alone is the record of its detail.
    let alone = db.run_record(&ids[4]).unwrap().unwrap();
    let detail = db.run(&ids[4]).unwrap().unwrap().run;
    assert_eq!(
        (
            alone.id,
            alone.hosts,
            alone.changes,
            alone.commit,
            alone.hash
        ),
        (
            detail.id,
            detail.hosts,
            detail.changes,
            detail.commit,
            detail.hash
        )
    );
    assert!(db.run_record(&RunId("NOSUCHRUN".into())).unwrap().is_none());
}
