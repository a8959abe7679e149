//! End-to-end: the checkout is a jail, through the daemon (issue 11, point 1). A signed commit
//! by an allowed signer that points `files/` entries at the daemon's own audit key and SSH
//! private key is refused before any host is contacted: nothing leaves the plumb machine.
//!
//! Run: `cargo nextest run --test e2e_jail` (or `cargo test --test e2e_jail -- --nocapture`).

mod common;
#[path = "common/daemon.rs"]
mod daemon;

use std::time::Duration;

use common::*;
use daemon::{http_get, DaemonFixture};

const GOOD_UNIT: &str = "steps:\n  - id: ok\n    file:\n      path: /etc/plumb-jail-ok\n      content: \"first\\n\"\n      mode: \"0644\"\n";

/// A unit copying `files/steal` and `files/steal-ssh` to every host.
const STEAL_UNIT: &str = concat!(
    "steps:\n",
    "  - id: ok\n    file:\n      path: /etc/plumb-jail-ok\n      content: \"first\\n\"\n      mode: \"0644\"\n",
    "  - id: steal\n    file:\n      path: /tmp/plumb-stolen-audit-key\n      source: steal\n      mode: \"0644\"\n",
    "  - id: steal-ssh\n    file:\n      path: /tmp/plumb-stolen-ssh-key\n      source: steal-ssh\n      mode: \"0644\"\n",
);

/// Doubles a string 64 times: 2^64 bytes if nothing stopped it.
const MEMORY_BOMB: &str = "{% set ns = namespace(s='x') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s }}\n";

const BOMB_UNIT: &str =
    "steps:\n  - id: ok\n    file:\n      path: /etc/plumb-jail-ok\n      template: bomb.j2\n";

#[test]
fn a_signed_symlink_to_the_daemons_keys_is_refused_and_nothing_leaves() {
    let _g = lock();
    let Some(mut f) = DaemonFixture::new(
        "a_signed_symlink_to_the_daemons_keys_is_refused",
        "jail",
        GOOD_UNIT,
    ) else {
        return;
    };
    let first = f.git(&["rev-parse", "HEAD"]);
    f.start_daemon();
    f.wait("the first commit applied", Duration::from_secs(180), || {
        f.applied(&first)
    });
    for k in 1..=HOSTS {
        assert_eq!(exec(&f.hosts, k, "cat /etc/plumb-jail-ok"), "first");
    }

    // An allowed signer commits symlinks to the daemon's audit key and its SSH private key.
    let audit_key = f.state_dir().join("daemon-ed25519.key");
    let ssh_key = f.hosts.dir.join("id_ed25519");
    assert!(audit_key.is_file(), "the daemon made its audit key");
    std::os::unix::fs::symlink(&audit_key, f.clone_dir().join("files/steal")).expect("symlink");
    std::os::unix::fs::symlink(&ssh_key, f.clone_dir().join("files/steal-ssh")).expect("symlink");
    std::fs::write(f.clone_dir().join("units/jail.yaml"), STEAL_UNIT).expect("write");
    let evil = f.commit_and_push("copy some files", true);
    f.wait(
        "the symlink commit refused",
        Duration::from_secs(60),
        || f.run_of("refused", &evil).is_some(),
    );
    let run = f.run_of("refused", &evil).expect("refused run");
    assert_eq!(run["result"], "refused", "{run:#}");
    // Refused for the links alone (the signature and the unit are fine), each error located.
    assert_eq!(run["summary"]["reason"], "invalid", "{run:#}");
    let errors: Vec<&str> = run["summary"]["errors"]
        .as_array()
        .map(|e| e.iter().filter_map(|e| e.as_str()).collect())
        .unwrap_or_default();
    assert_eq!(errors.len(), 2, "{run:#}");
    for (file, target) in [("files/steal:", &audit_key), ("files/steal-ssh:", &ssh_key)] {
        assert!(
            errors.iter().any(|e| e.starts_with(file)
                && e.contains("symlink")
                && e.contains(&target.display().to_string())),
            "the reason names the symlink {file}: {run:#}"
        );
    }
    assert!(f.run_of("apply", &evil).is_none(), "never applied");
    // The API shows the same refusal.
    let (code, api) = http_get(f.port, "/api/runs");
    assert_eq!(code, 200, "{api}");
    assert!(
        api.contains(&evil) && api.contains("symlink"),
        "/api/runs shows the refusal: {api}"
    );
    for k in 1..=HOSTS {
        assert_eq!(
            exec(
                &f.hosts,
                k,
                "ls /tmp/plumb-stolen-audit-key /tmp/plumb-stolen-ssh-key 2>/dev/null | wc -l"
            ),
            "0",
            "host {k} received no key"
        );
    }
    assert!(f.daemon_up(), "the daemon is still up");

    // Issue 11: a template whose string doubles in a loop (no per-operation bound stops it
    // in time) is validated in a child process under `validation.memory_limit`: the child
    // dies, the daemon records the commit refused (`limit`) and stays up.
    std::fs::remove_file(f.clone_dir().join("files/steal")).expect("rm");
    std::fs::remove_file(f.clone_dir().join("files/steal-ssh")).expect("rm");
    std::fs::create_dir_all(f.clone_dir().join("templates")).expect("mkdir");
    std::fs::write(f.clone_dir().join("templates/bomb.j2"), MEMORY_BOMB).expect("write");
    std::fs::write(f.clone_dir().join("units/jail.yaml"), BOMB_UNIT).expect("write");
    let bomb = f.commit_and_push("a template that doubles a string", true);
    f.wait("the memory bomb refused", Duration::from_secs(120), || {
        f.run_of("refused", &bomb).is_some()
    });
    let run = f.run_of("refused", &bomb).expect("refused run");
    assert_eq!(run["summary"]["reason"], "limit", "{run:#}");
    assert!(
        run["summary"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("validation.memory_limit")),
        "{run:#}"
    );
    assert!(f.daemon_up(), "the daemon is still up");
    for k in 1..=HOSTS {
        assert_eq!(exec(&f.hosts, k, "cat /etc/plumb-jail-ok"), "first");
    }

    // The next good commit (the links and the bomb removed) is applied.
    std::fs::remove_file(f.clone_dir().join("templates/bomb.j2")).expect("rm");
    std::fs::write(
        f.clone_dir().join("units/jail.yaml"),
        GOOD_UNIT.replace("first", "second"),
    )
    .expect("write");
    let good = f.commit_and_push("undo: no links", true);
    f.wait("the good commit applied", Duration::from_secs(120), || {
        f.applied(&good)
    });
    for k in 1..=HOSTS {
        assert_eq!(exec(&f.hosts, k, "cat /etc/plumb-jail-ok"), "second");
        assert_eq!(
            exec(
                &f.hosts,
                k,
                "ls /tmp/plumb-stolen-audit-key /tmp/plumb-stolen-ssh-key 2>/dev/null | wc -l"
            ),
            "0"
        );
    }
    assert!(f.daemon_up(), "the daemon is still up");
}
