//! The state is private: directory 0700, database (+ -wal, -shm), lock and key 0600 whatever
//! the umask; a directory or database others may access is refused, with the fix. And the
//! daemon refuses to start on a state whose history was deleted (check_not_reset).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use serde_json::json;

use super::*;
use crate::audit::KEY_FILE;

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

fn set_mode(p: &Path, m: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
}

/// Runs `f` in a child process with umask 0, so the umask of the test runner's other threads
/// is never changed: the child re-runs this test binary filtered to one test.
fn in_child_with_umask_0(test: &str) -> bool {
    if std::env::var_os("PLUMB_TEST_UMASK_CHILD").is_some() {
        return false;
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env("PLUMB_TEST_UMASK_CHILD", "1")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("1 passed"), "the child ran nothing: {text}");
    true
}

#[test]
fn created_private_whatever_the_umask() {
    const NAME: &str = "state::tests::private::created_private_whatever_the_umask";
    if in_child_with_umask_0(NAME) {
        return;
    }
    // SAFETY: only in the child, which runs this one test on one thread.
    unsafe { libc_umask(0) };
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("state");
    let db = StateDb::open(&dir).unwrap();
    let id = db.begin_run(&new_run(RunKind::Apply)).unwrap();
    db.finish_run(&id, RunResult::Converged, &json!({}))
        .unwrap();
    assert_eq!(mode(&dir), 0o700);
    for f in [DB_FILE, "plumb.db-wal", "plumb.db-shm", LOCK_FILE, KEY_FILE] {
        let p = dir.join(f);
        assert!(p.exists(), "{f} missing");
        assert_eq!(mode(&p), 0o600, "{f}");
    }
    // A file the umask would have made world-writable shows the umask really is 0 here.
    let probe = dir.join("probe");
    std::fs::write(&probe, "").unwrap();
    assert_eq!(mode(&probe), 0o666);
}

extern "C" {
    #[link_name = "umask"]
    fn libc_umask(mask: u32) -> u32;
}

#[test]
fn refuses_a_directory_or_database_others_may_read() {
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("state");
    std::fs::create_dir(&dir).unwrap();
    set_mode(&dir, 0o755);
    let err = StateDb::open(&dir).unwrap_err();
    assert_eq!(err.code(), "state.permissions");
    let msg = err.to_string();
    assert!(
        msg.contains(&format!("chmod 700 {}", dir.display())),
        "{msg}"
    );
    assert!(msg.contains("mode 755"), "{msg}");
    assert!(
        !dir.join(DB_FILE).exists(),
        "nothing is created in a refused directory"
    );
    assert!(!dir.join(KEY_FILE).exists());

    set_mode(&dir, 0o700);
    drop(StateDb::open(&dir).unwrap());
    set_mode(&dir.join(DB_FILE), 0o644);
    let err = StateDb::open(&dir).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains(&format!("chmod 600 {}", dir.join(DB_FILE).display())),
        "{msg}"
    );
    let err = StateDb::open_inspect(&dir).unwrap_err();
    assert_eq!(err.code(), "state.permissions");

    set_mode(&dir.join(DB_FILE), 0o600);
    set_mode(&dir, 0o750);
    assert_eq!(
        StateDb::open_inspect(&dir).unwrap_err().code(),
        "state.permissions"
    );
    set_mode(&dir, 0o700);
    StateDb::open_inspect(&dir).unwrap();
}

#[test]
fn a_fresh_state_directory_is_not_a_reset() {
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("state");
    check_not_reset(&dir, false).unwrap();
    let db = StateDb::open(&dir).unwrap();
    // Key created, no run yet: the check happens before open, and after a run it passes.
    let id = db.begin_run(&new_run(RunKind::Apply)).unwrap();
    db.finish_run(&id, RunResult::Converged, &json!({}))
        .unwrap();
    drop(db);
    check_not_reset(&dir, false).unwrap();
    check_not_reset(&dir, true).unwrap();
    let db = StateDb::open_inspect(&dir).unwrap();
    assert_eq!(
        db.runs(&RunFilter::default()).unwrap().len(),
        1,
        "no reset recorded"
    );
}

fn ran_before(dir: &Path) {
    let db = StateDb::open(dir).unwrap();
    let id = db.begin_run(&new_run(RunKind::Apply)).unwrap();
    db.finish_run(&id, RunResult::Converged, &json!({}))
        .unwrap();
    std::fs::create_dir(dir.join(MIRROR_DIR)).unwrap();
}

#[test]
fn deleted_history_is_refused_without_the_flag() {
    // The database file deleted.
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("state");
    ran_before(&dir);
    for f in [DB_FILE, "plumb.db-wal", "plumb.db-shm"] {
        let _ = std::fs::remove_file(dir.join(f));
    }
    let err = check_not_reset(&dir, false).unwrap_err();
    assert_eq!(err.code(), "state.reset");
    let msg = err.to_string();
    for needle in [KEY_FILE, MIRROR_DIR, "no plumb.db", "--accept-state-reset"] {
        assert!(msg.contains(needle), "{needle}: {msg}");
    }
    assert!(!dir.join(DB_FILE).exists(), "refusing creates nothing");

    // Only the mirror left (key deleted too), and the database emptied instead of deleted.
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("state");
    ran_before(&dir);
    std::fs::remove_file(dir.join(KEY_FILE)).unwrap();
    {
        let c = Connection::open(dir.join(DB_FILE)).unwrap();
        c.execute_batch("PRAGMA foreign_keys = ON; DELETE FROM runs;")
            .unwrap();
    }
    let msg = check_not_reset(&dir, false).unwrap_err().to_string();
    assert!(msg.contains("no runs in plumb.db"), "{msg}");
    assert!(msg.contains(MIRROR_DIR) && !msg.contains(KEY_FILE), "{msg}");
}

#[test]
fn an_accepted_reset_is_the_first_signed_record() {
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("state");
    ran_before(&dir);
    std::fs::remove_file(dir.join(DB_FILE)).unwrap();
    let _ = std::fs::remove_file(dir.join("plumb.db-wal"));
    let _ = std::fs::remove_file(dir.join("plumb.db-shm"));
    check_not_reset(&dir, true).unwrap();
    // Recorded once: the next start (flag left on) finds a history and records nothing.
    check_not_reset(&dir, true).unwrap();
    check_not_reset(&dir, false).unwrap();
    let db = StateDb::open(&dir).unwrap();
    let runs = db.runs(&RunFilter::default()).unwrap();
    assert_eq!(runs.len(), 1);
    let r = &runs[0];
    assert_eq!(
        (r.kind, r.trigger, r.chain_seq),
        (RunKind::StateReset, Trigger::Startup, Some(1))
    );
    assert_eq!(r.summary["database"], "missing");
    assert_eq!(r.summary["found"], json!([KEY_FILE, MIRROR_DIR]));
    assert_eq!(verify(&db).unwrap().records, 1);
}
