//! Security regressions that need a real host: each reproduces an attack from the red-team
//! pass against real sshd hosts in Docker and shows it fails.
//!
//! Run one: `cargo test --test e2e_security sensitive_values_stay_off_the_process_list -- --nocapture`.

mod common;

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;

/// A sensitive command, its guard, and a sensitive line value run on the host without ever
/// appearing in its process list (issue: `sh -c '<text>'` and `grep -e '<value>'` showed them
/// to every user of the host for as long as they ran).
#[test]
fn sensitive_values_stay_off_the_process_list() {
    let _g = lock();
    let Some(hosts) = fresh_hosts("sensitive_values_stay_off_the_process_list") else {
        return;
    };
    let mark = "s3cr3t-0f-pr0cess-l1st";
    let unit = format!(
        "steps:\n\
         \x20 - id: token\n\
         \x20   sensitive: true\n\
         \x20   command:\n\
         \x20     run: \"sleep 3; echo {mark}-run > /root/token-ran; : > /root/{mark}-unless\"\n\
         \x20     unless: \"sleep 2; test -e /root/{mark}-unless\"\n\
         \x20 - id: password-line\n\
         \x20   sensitive: true\n\
         \x20   line:\n\
         \x20     path: /root/app.env\n\
         \x20     line: \"PASSWORD={mark}-line\"\n\
         \x20     create: true\n"
    );
    let repo = one_host_repo(&hosts, "secret", &unit);

    // Watch the host's process list for as long as plumb runs.
    let seen = Arc::new(Mutex::new(String::new()));
    let done = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (seen, done) = (seen.clone(), done.clone());
        let container = hosts.container(1);
        std::thread::spawn(move || {
            let mut polls = 0;
            while !done.load(Ordering::Relaxed) && polls < 2_000 {
                let out = Command::new("docker")
                    .args(["exec", &container, "ps", "-eo", "args", "--no-headers"])
                    .output();
                if let Ok(out) = out {
                    seen.lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push_str(&String::from_utf8_lossy(&out.stdout));
                }
                polls += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            polls
        })
    };
    let (code, report, err) = plumb(&hosts, &["apply"], repo.path());
    done.store(true, Ordering::Relaxed);
    let polls = watcher.join().expect("watcher");
    assert_eq!(code, 0, "apply failed:\n{report:#}\n{err}");
    assert_eq!(
        exec(&hosts, 1, "cat /root/token-ran"),
        format!("{mark}-run"),
        "the command did not run"
    );
    let seen = seen.lock().unwrap_or_else(|p| p.into_inner()).clone();
    // The watcher really saw plumb's processes (so an empty result means something).
    assert!(polls >= 20, "only {polls} looks at the process list");
    assert!(
        seen.contains("sleep 3") || seen.contains("sleep 2"),
        "the watcher never saw the running step: its observations are worthless:\n{seen}"
    );
    assert!(
        !seen.contains(mark),
        "a sensitive value was on the host's process list:\n{}",
        seen.lines()
            .filter(|l| l.contains(mark))
            .collect::<Vec<_>>()
            .join("\n")
    );
    // Nor in anything plumb printed.
    assert!(!report.to_string().contains(mark), "{report:#}");
    assert!(!err.contains(mark), "{err}");
}
