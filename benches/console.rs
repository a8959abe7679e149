//! The console's pages against a big state database: every page kind rendered from SQLite.
//! A benchmark binary (`harness = false`), never part of `cargo test`:
//!
//! ```sh
//! cargo bench --bench console -- --hosts 1000 --runs 10000 --hosts-per-run 100 [--state DIR]
//! ```
//!
//! With `--state DIR` the database is kept there, and a database already filled there is
//! used as it is (the fill of 10,000 runs takes minutes; `fill_s` is then null).
//!
//! It fills a state database through the same API the daemon writes with (signed runs, one
//! `record_host` per host result, drift checks that open and resolve findings): `--runs` runs
//! over an environment of `--hosts` hosts, each run reaching a window of `--hosts-per-run`
//! hosts (one rollout in ten, the rest drift checks, one in twenty of those finding drift on
//! its hosts), so every host has a long history. Then it renders each page kind through the
//! console's own `ConsoleSource::page` (query + HTML), `--iterations` times, and prints one
//! JSON object: the fill time, the database size and, per page, min / median / max in ms.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;

use plumb::daemon::console::{ConsoleState, PAGE_SIZE};
use plumb::engine::{
    HostPlan, HostRun, HostStatus, RoundTrips, StepOutcome, StepPlan, StepRef, StepStatus,
};
use plumb::model::yaml::Pos;
use plumb::model::{Host, StepAddress};
use plumb::modules::{Change, ChangeKind};
use plumb::server::access::Principal;
use plumb::server::console::{ConsoleSource, Page};
use plumb::state::console::PageAt;
use plumb::state::{NewRun, RunFilter, RunKind, RunResult, Signer, StateDb, StepMeta, Trigger};

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(|v| v.parse().expect("a number"))
        .unwrap_or(default)
}

fn host(i: usize) -> Host {
    Host {
        name: format!("host-{i:05}"),
        address: format!("10.0.{}.{}", i / 256, i % 256),
        port: 22,
        user: None,
        become_: false,
        labels: BTreeMap::from([("role".into(), "app".into())]),
        vars: Default::default(),
        path: "environments/prod/hosts.yaml".into(),
        pos: Pos::START,
    }
}

fn step(i: usize) -> StepRef {
    StepRef {
        address: StepAddress::parse(&format!("app/step{i:02}")).expect("unit/id"),
        module: "file",
        target: format!("/etc/app/f{i:02}.conf"),
        sensitive: false,
        secrets: Vec::new(),
        removing: false,
    }
}

fn change() -> Change {
    Change::new(ChangeKind::Modify).field(
        "mode".parse().expect("a known field"),
        Some("0644".into()),
        Some("0600".into()),
    )
}

fn applied(h: Host, n: usize) -> HostRun {
    HostRun {
        host: h,
        facts: None,
        status: HostStatus::Converged,
        error: None,
        steps: (0..2)
            .map(|s| StepOutcome {
                step: step(n % 50 + s),
                status: StepStatus::Changed,
                change: Some(change()),
                error: None,
                duration_ms: 3,
            })
            .collect(),
        handlers: Vec::new(),
        round_trips: RoundTrips::default(),
        duration: Duration::from_millis(40),
    }
}

fn checked(h: Host, drifted: bool) -> HostPlan {
    HostPlan {
        host: h,
        facts: None,
        steps: vec![StepPlan {
            step: step(7),
            change: Ok(if drifted { change() } else { Change::in_sync() }),
        }],
        error: None,
        round_trips: RoundTrips::default(),
        duration: Duration::from_millis(5),
    }
}

fn commit(n: usize) -> String {
    format!("{:040x}", n as u128 * 0x9e37_79b9_7f4a_7c15)
}

/// Fills the database; returns the id of the last rollout and its commit.
fn fill(db: &StateDb, hosts: usize, runs: usize, per_run: usize) -> (String, String) {
    let mut last = (String::new(), String::new());
    for n in 0..runs {
        let rollout = n % 10 == 0;
        let new = NewRun {
            environment: "prod".into(),
            commit: Some(commit(n / 10)),
            signer: Some(Signer {
                principal: if n % 20 == 0 { "alice" } else { "bob" }.into(),
                fingerprint: "SHA256:bench".into(),
            }),
            kind: if rollout {
                RunKind::Apply
            } else {
                RunKind::DriftCheck
            },
            trigger: if rollout {
                Trigger::Push
            } else {
                Trigger::Drift
            },
        };
        let id = db.begin_run(&new).expect("begin");
        let first = (n * per_run) % hosts;
        for k in 0..per_run {
            let h = host((first + k) % hosts);
            if rollout {
                db.record_host(&id, &applied(h, n), &StepMeta::default(), &[])
                    .expect("record");
            } else {
                db.record_drift_check(
                    &id,
                    &checked(h, n % 20 == 1),
                    &plumb::state::StepMeta::default(),
                )
                .expect("record");
            }
        }
        let result = if rollout {
            RunResult::Converged
        } else {
            RunResult::NoChange
        };
        db.finish_run(&id, result, &json!({})).expect("finish");
        if rollout {
            last = (id.0.clone(), commit(n / 10));
        }
    }
    last
}

fn time_page(source: &ConsoleState, page: &Page, iterations: usize) -> serde_json::Value {
    let mut ms: Vec<f64> = (0..iterations)
        .map(|_| {
            let t = Instant::now();
            let html = source.page(page, &Principal::Anonymous).expect("page");
            assert!(html.is_some_and(|h| h.len() > 200), "{page:?} rendered");
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    ms.sort_by(f64::total_cmp);
    json!({
        "min_ms": round(ms[0]),
        "median_ms": round(ms[ms.len() / 2]),
        "max_ms": round(ms[ms.len() - 1]),
    })
}

fn round(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

fn size(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// The cursor after the runs listed in `ids` (the run the next page continues from).
fn deep(ids: Vec<String>) -> PageAt {
    ids.last()
        .map(|id| PageAt::Before(plumb::state::RunId(id.clone())))
        .expect("enough runs for a deep page")
}

fn string_arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

/// The state directory and its database.
struct Filled {
    /// Removed when dropped (without `--state`).
    _tmp: Option<tempfile::TempDir>,
    dir: std::path::PathBuf,
    db: StateDb,
    /// The last rollout and its commit.
    last: (String, String),
    /// How long the fill took (`None`: the database was filled before).
    fill_s: Option<f64>,
}

/// The state directory (`--state DIR`, kept; else a temporary one) and its database,
/// filled unless it already holds runs.
fn state(hosts: usize, runs: usize, per_run: usize) -> Filled {
    let (tmp, dir) = match string_arg("--state") {
        Some(dir) => (None, std::path::PathBuf::from(dir)),
        None => {
            let t = tempfile::tempdir().expect("tempdir");
            let s = t.path().join("state");
            (Some(t), s)
        }
    };
    std::fs::create_dir_all(&dir).expect("mkdir");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    }
    let db = StateDb::open(&dir).expect("open state");
    let filled = db
        .runs(&RunFilter {
            kind: Some(RunKind::Apply),
            limit: Some(1),
            ..RunFilter::default()
        })
        .expect("runs");
    let (last, fill_s) = match filled.first() {
        Some(r) => ((r.id.0.clone(), r.commit.clone().expect("a commit")), None),
        None => {
            let t = Instant::now();
            let last = fill(&db, hosts, runs, per_run);
            (last, Some(t.elapsed().as_secs_f64()))
        }
    };
    Filled {
        _tmp: tmp,
        dir,
        db,
        last,
        fill_s,
    }
}

fn main() {
    let hosts = arg("--hosts", 1000);
    let runs = arg("--runs", 10_000);
    let per_run = arg("--hosts-per-run", 100).min(hosts);
    let iterations = arg("--iterations", 20).max(1);
    let Filled {
        _tmp,
        dir: state,
        db,
        last: (run, commit),
        fill_s,
    } = state(hosts, runs, per_run);
    let host_name = host(hosts / 2).name;
    // Page 21 of each list: the cursor is the last run of the first 20 pages.
    let env_deep = deep(
        db.runs_page("prod", &PageAt::Newest, PAGE_SIZE * 20)
            .expect("runs")
            .items
            .into_iter()
            .map(|r| r.id.0)
            .collect(),
    );
    let host_deep = deep(
        db.host_runs("prod", &host_name, &PageAt::Newest, PAGE_SIZE * 10)
            .expect("host runs")
            .items
            .into_iter()
            .map(|r| r.run.id.0)
            .collect(),
    );

    let inventory = BTreeMap::from([(
        "prod".to_string(),
        (0..hosts).map(|i| (host(i).name, host(i).labels)).collect(),
    )]);
    // The daemon verifies the whole chain at start-up and keeps the result; the audit page
    // then verifies only the records written since (none here).
    let t = Instant::now();
    db.check_chain().expect("verify the chain");
    let verify_s = t.elapsed().as_secs_f64();
    let source = ConsoleState {
        db: Arc::new(Mutex::new(db)),
        environments: vec!["prod".into()],
        inventory: Arc::new(Mutex::new(inventory)),
    };
    let pages = [
        ("fleet", Page::Fleet { label: None }),
        (
            "environment",
            Page::Environment {
                name: "prod".into(),
                at: PageAt::Newest,
            },
        ),
        (
            "environment_page_21",
            Page::Environment {
                name: "prod".into(),
                at: env_deep,
            },
        ),
        ("run", Page::Run { id: run }),
        (
            "host",
            Page::Host {
                env: "prod".into(),
                name: host_name.clone(),
                at: PageAt::Newest,
            },
        ),
        (
            "host_page_11",
            Page::Host {
                env: "prod".into(),
                name: host_name,
                at: host_deep,
            },
        ),
        (
            "drift",
            Page::Drift {
                env: Some("prod".into()),
            },
        ),
        ("drift_all_environments", Page::Drift { env: None }),
        // The fill's commit ids start with 21 zeros: a 12-digit prefix matches every run
        // (the worst case of a prefix); the full id matches the commit's own ten runs.
        (
            "commit_prefix_of_every_run",
            Page::Commit {
                id: commit[..12].to_string(),
            },
        ),
        ("commit", Page::Commit { id: commit.clone() }),
        ("audit", Page::Audit),
    ];
    let mut figures = serde_json::Map::new();
    for (name, page) in &pages {
        figures.insert((*name).into(), time_page(&source, page, iterations));
    }
    let out = json!({
        "hosts": hosts,
        "runs": runs,
        "hosts_per_run": per_run,
        "iterations": iterations,
        "fill_s": fill_s.map(round),
        "verify_at_start_s": round(verify_s),
        "db_mb": round(size(&state) as f64 / 1e6),
        "pages": figures,
    });
    println!("{}", serde_json::to_string_pretty(&out).expect("json"));
}
