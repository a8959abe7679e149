//! End-to-end scenarios against real sshd hosts in Docker (`integration/testhosts`).
//!
//! Each scenario starts from fresh hosts (`testhosts up 3` replaces them in seconds) and
//! drives the `plumb` binary exactly as a user would, then checks the hosts independently
//! with `docker exec`, never through plumb. Without a Docker engine every scenario prints a
//! loud SKIPPED line; with `PLUMB_REQUIRE_E2E=1` (set by `.ci/run`) it fails instead.
//!
//! Run one scenario: `cargo test --test e2e drift_is_found_and_corrected -- --nocapture`.

mod common;

use std::process::Command;

use common::*;
use serde_json::Value;

#[test]
fn fresh_converge_then_idempotent() {
    let _g = lock();
    let Some(hosts) = fresh_hosts("fresh_converge_then_idempotent") else {
        return;
    };
    let repo = webapp_repo(&hosts);

    let (code, report, err) = plumb(&hosts, &["apply"], repo.path());
    assert_eq!(code, 0, "apply did not converge:\n{report:#}\n{err}");
    assert_eq!(report["converged"], true);
    for k in 1..=HOSTS {
        let h = host_report(&report, &hosts.name(k));
        assert_eq!(
            h["round_trips"],
            serde_json::json!({"probe": 1, "apply": 1}),
            "{h:#}"
        );
    }

    // Independent checks, with docker exec.
    for k in 1..=HOSTS {
        assert_eq!(
            exec(&hosts, k, "getent passwd app | cut -d: -f6,7"),
            "/var/lib/app:/usr/sbin/nologin"
        );
        assert_eq!(
            exec(
                &hosts,
                k,
                "stat -c '%a %U %G' /var/lib/app /srv/app /var/log/app"
            ),
            "750 app app\n755 app app\n2750 app adm"
        );
        assert_eq!(exec(&hosts, k, "cat /proc/sys/net/core/somaxconn"), "4096");
        assert!(exec(&hosts, k, "cat /etc/cron.d/app-log-cleanup")
            .contains("17 3 * * * app find /var/log/app"));
    }
    for k in [1, 2] {
        let want = rendered_content(repo.path(), &hosts.name(k), "web/app-conf");
        assert_eq!(
            exec(
                &hosts,
                k,
                "sha256sum /etc/plumb-demo/app.conf | cut -d' ' -f1"
            ),
            sha256(want.as_bytes())
        );
        assert_eq!(
            exec(&hosts, k, "stat -c '%a %U %G' /etc/plumb-demo/app.conf"),
            "640 root app"
        );
        assert_eq!(
            exec(
                &hosts,
                k,
                "systemctl is-active plumb-demo; systemctl is-enabled plumb-demo"
            ),
            "active\nenabled"
        );
        assert_eq!(
            exec(&hosts, k, "dpkg-query -W -f '${Version}' plumb-hello"),
            "1.1"
        );
    }
    for k in [1, 2] {
        assert_eq!(
            demo_starts(&hosts, k),
            1,
            "started by its step, not restarted again by the handler"
        );
    }
    assert!(
        rendered_content(repo.path(), &hosts.name(1), "web/app-conf").contains('8'),
        "host var workers=8 wins"
    );
    assert_eq!(
        exec(&hosts, 3, "dpkg-query -W -f '${Version}' plumb-hello"),
        "1.0",
        "host var pins db"
    );
    assert_eq!(
        exec(&hosts, 3, "cat /var/lib/app/db/VERSION"),
        exec(&hosts, 3, "plumb-hello")
    );

    // A second apply changes nothing and spends one round trip per host.
    let (code, again, _) = plumb(&hosts, &["apply"], repo.path());
    assert_eq!(code, 0);
    assert_eq!(again["total_changed"], 0, "{again:#}");
    for k in 1..=HOSTS {
        assert_eq!(
            host_report(&again, &hosts.name(k))["round_trips"],
            serde_json::json!({"probe": 1, "apply": 0})
        );
    }
    let (code, plan, _) = plumb(&hosts, &["plan"], repo.path());
    assert_eq!(code, 0, "plan after apply must exit 0: {plan:#}");
}

#[test]
fn drift_is_found_and_corrected() {
    let _g = lock();
    let Some(hosts) = fresh_hosts("drift_is_found_and_corrected") else {
        return;
    };
    let repo = webapp_repo(&hosts);
    assert_eq!(plumb(&hosts, &["apply"], repo.path()).0, 0);
    assert_eq!(
        plumb(&hosts, &["drift"], repo.path()).0,
        0,
        "no drift right after apply"
    );

    exec(&hosts, 1, "echo 'hand edit' >> /etc/plumb-demo/app.conf");
    exec(&hosts, 2, "chmod 0700 /srv/app");
    exec(&hosts, 2, "systemctl stop plumb-demo");
    exec(
        &hosts,
        3,
        "DEBIAN_FRONTEND=noninteractive apt-get remove -y -q plumb-hello >/dev/null 2>&1",
    );

    let (code, report, err) = plumb(&hosts, &["drift"], repo.path());
    assert_eq!(code, 2, "drift must exit 2:\n{report:#}\n{err}");
    let mut found: Vec<(String, String)> = Vec::new();
    for h in report["hosts"].as_array().expect("hosts") {
        for s in h["steps"].as_array().expect("steps") {
            found.push((
                h["name"].as_str().unwrap_or("").to_string(),
                s["address"].as_str().unwrap_or("").to_string(),
            ));
        }
    }
    found.sort();
    let expected: Vec<(String, String)> = [
        ("plumb-host-1", "web/app-conf"),
        ("plumb-host-2", "base/app-srv"),
        ("plumb-host-2", "web/demo-service"),
        ("plumb-host-3", "base/hello"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    assert_eq!(
        found, expected,
        "drift must name exactly what changed:\n{report:#}"
    );

    assert_eq!(plumb(&hosts, &["apply"], repo.path()).0, 0);
    let (code, report, _) = plumb(&hosts, &["drift"], repo.path());
    assert_eq!(code, 0, "drift after correction: {report:#}");
    assert_eq!(
        exec(
            &hosts,
            2,
            "stat -c %a /srv/app; systemctl is-active plumb-demo"
        ),
        "755\nactive"
    );
}

#[test]
fn an_unreachable_host_spares_the_others() {
    let _g = lock();
    let Some(hosts) = fresh_hosts("an_unreachable_host_spares_the_others") else {
        return;
    };
    let repo = webapp_repo(&hosts);
    disconnect(&hosts, 2);

    // Every host at once: with the waves, host 2's wave would stop the apply before host 3's
    // (e2e_rollback covers that).
    let (code, report, _) = plumb(
        &hosts,
        &["apply", "--no-waves", "--connect-timeout", "3"],
        repo.path(),
    );
    assert_eq!(code, 1, "a failed host makes apply exit 1");
    assert_eq!(host_report(&report, "plumb-host-1")["status"], "converged");
    assert_eq!(host_report(&report, "plumb-host-3")["status"], "converged");
    let h2 = host_report(&report, "plumb-host-2");
    assert_eq!(h2["status"], "unreachable", "{h2:#}");
    assert!(
        !h2["error"].as_str().unwrap_or("").is_empty(),
        "the reason is reported"
    );

    reconnect(&hosts, 2);
    let (code, report, _) = plumb(&hosts, &["apply"], repo.path());
    assert_eq!(code, 0, "once back, the host converges: {report:#}");
    assert!(
        host_report(&report, "plumb-host-2")["changed"]
            .as_u64()
            .unwrap_or(0)
            > 0
    );
    assert_eq!(host_report(&report, "plumb-host-1")["changed"], 0);
}

#[test]
fn a_bad_commit_touches_nothing() {
    let _g = lock();
    let Some(hosts) = fresh_hosts("a_bad_commit_touches_nothing") else {
        return;
    };
    let repo = webapp_repo(&hosts);
    assert_eq!(plumb(&hosts, &["apply"], repo.path()).0, 0);
    let before: Vec<String> = (1..=HOSTS).map(|k| fingerprint(&hosts, k)).collect();

    // A commit that changes the config AND has a schema error elsewhere.
    let env = repo.path().join("environments/production/env.yaml");
    let text = std::fs::read_to_string(&env)
        .expect("env.yaml")
        .replace("log_level: warn", "log_level: debug");
    std::fs::write(&env, text).expect("write");
    let unit = repo.path().join("units/base.yaml");
    let text = std::fs::read_to_string(&unit)
        .expect("base.yaml")
        .replace("mode: \"0750\"", "mode: 0750");
    std::fs::write(&unit, text).expect("write");

    let (code, report, _) = plumb(&hosts, &["apply"], repo.path());
    assert_eq!(code, 1);
    assert_eq!(
        report["valid"], false,
        "the validation report is printed: {report:#}"
    );
    let after: Vec<String> = (1..=HOSTS).map(|k| fingerprint(&hosts, k)).collect();
    assert_eq!(before, after, "no host was touched");
}

#[test]
fn a_config_change_restarts_its_service_once() {
    let _g = lock();
    let Some(hosts) = fresh_hosts("a_config_change_restarts_its_service_once") else {
        return;
    };
    let repo = webapp_repo(&hosts);
    assert_eq!(plumb(&hosts, &["apply"], repo.path()).0, 0);
    let before = [demo_starts(&hosts, 1), demo_starts(&hosts, 2)];

    let (code, report, _) = plumb(&hosts, &["apply"], repo.path());
    assert_eq!((code, report["total_changed"].as_u64()), (0, Some(0)));
    assert_eq!(
        [demo_starts(&hosts, 1), demo_starts(&hosts, 2)],
        before,
        "no change restarts nothing"
    );

    let env = repo.path().join("environments/production/env.yaml");
    let text = std::fs::read_to_string(&env)
        .expect("env.yaml")
        .replace("log_level: warn", "log_level: debug");
    std::fs::write(&env, text).expect("write");
    let (code, report, _) = plumb(&hosts, &["apply"], repo.path());
    assert_eq!(code, 0, "{report:#}");
    let h1 = host_report(&report, "plumb-host-1");
    assert_eq!(
        h1["handlers"],
        serde_json::json!([{"address": "web/demo-service", "ok": true}])
    );
    assert_eq!(
        [demo_starts(&hosts, 1), demo_starts(&hosts, 2)],
        [before[0] + 1, before[1] + 1],
        "exactly one restart"
    );
}

#[test]
fn hostile_paths_and_content_land_byte_for_byte() {
    let _g = lock();
    let Some(hosts) = fresh_hosts("hostile_paths_and_content_land_byte_for_byte") else {
        return;
    };
    let dir = "/srv/we ird/'q\"uote/$(touch /tmp/pwned)/`touch /tmp/pwned2`/*";
    let content = "a 'single' and \"double\" quote\n$(touch /tmp/pwned3)\n`touch /tmp/pwned4`\n$HOME \\ * ? [a]\ttab\nno newline at end";
    let unit = serde_json::json!({
        "steps": [
            {"id": "parent", "directory": {"path": "/srv/we ird/'q\"uote/$(touch /tmp/pwned)/`touch /tmp/pwned2`"}},
            {"id": "dir", "directory": {"path": dir, "mode": "0755"}},
            {"id": "text", "file": {"path": format!("{dir}/f *.txt"), "content": content, "mode": "0600"}},
            {"id": "blob", "file": {"path": format!("{dir}/blob;rm -rf $HOME"), "source": "blob.bin"}},
            {"id": "line", "line": {"path": format!("{dir}/lines"), "line": "x=$(id) `id` 'q' \"d\" \\n", "create": true}},
        ]
    });
    // JSON is YAML: the hostile strings are written exactly.
    let repo = one_host_repo(
        &hosts,
        "hostile",
        &serde_json::to_string_pretty(&unit).expect("json"),
    );
    let r = repo.path();
    std::fs::create_dir_all(r.join("files")).expect("mkdir");
    let binary: Vec<u8> = (0..=255u8)
        .chain([0xff, 0xfe, 0x00, b'\n', 0xc3, 0x28])
        .collect();
    std::fs::write(r.join("files/blob.bin"), &binary).expect("write");

    let (code, report, err) = plumb(&hosts, &["apply"], r);
    assert_eq!(code, 0, "{report:#}\n{err}");
    let q = |s: &str| format!("'{}'", s.replace('\'', "'\\''"));
    assert_eq!(
        exec(
            &hosts,
            1,
            &format!(
                "sha256sum < {} | cut -d' ' -f1",
                q(&format!("{dir}/f *.txt"))
            )
        ),
        sha256(content.as_bytes())
    );
    assert_eq!(
        exec(
            &hosts,
            1,
            &format!(
                "sha256sum < {} | cut -d' ' -f1",
                q(&format!("{dir}/blob;rm -rf $HOME"))
            )
        ),
        sha256(&binary)
    );
    assert_eq!(
        exec(
            &hosts,
            1,
            &format!("stat -c %a {}", q(&format!("{dir}/f *.txt")))
        ),
        "600"
    );
    assert_eq!(
        exec(&hosts, 1, &format!("cat {}", q(&format!("{dir}/lines")))),
        "x=$(id) `id` 'q' \"d\" \\n"
    );
    assert_eq!(
        exec(&hosts, 1, "ls /tmp/pwned* 2>/dev/null | wc -l"),
        "0",
        "nothing executed"
    );
    let (code, again, _) = plumb(&hosts, &["apply"], r);
    assert_eq!(
        (code, again["total_changed"].as_u64()),
        (0, Some(0)),
        "{again:#}"
    );
}

#[test]
fn a_host_lost_mid_apply_converges_next_time() {
    let _g = lock();
    let Some(hosts) = fresh_hosts("a_host_lost_mid_apply_converges_next_time") else {
        return;
    };
    let repo = webapp_repo(&hosts);
    // Units apply in name order: this slow step opens every host's apply script.
    std::fs::write(
        repo.path().join("units/aaa-slow.yaml"),
        "steps:\n  - id: slow\n    command:\n      run: \"sleep 6 && touch /var/tmp/slow-done\"\n      creates: /var/tmp/slow-done\n",
    )
    .expect("write unit");
    // Every host at once (`--no-waves`): host 2's wave would otherwise stop the apply
    // before host 3's.
    let child = Command::new(env!("CARGO_BIN_EXE_plumb"))
        .arg("apply")
        .arg(repo.path())
        .args([
            "--no-waves",
            "--env",
            "production",
            "--output",
            "json",
            "--color",
            "never",
            "--identity",
        ])
        .arg(hosts.dir.join("id_ed25519"))
        .arg("--known-hosts")
        .arg(hosts.dir.join("known_hosts"))
        .env("PLUMB_SECRETS_IDENTITY", demo_secrets_identity(&hosts.dir))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("plumb apply starts");
    // Wait until host 2 is inside its apply script (the slow step runs), then cut it off.
    let start = std::time::Instant::now();
    while exec(
        &hosts,
        2,
        "pgrep -f 'sleep [6]' >/dev/null && echo yes || echo no",
    ) != "yes"
    {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(60),
            "the apply never reached host 2"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    disconnect(&hosts, 2);
    let out = child.wait_with_output().expect("plumb apply ends");
    let report: Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    assert_eq!(out.status.code(), Some(1), "{report:#}");
    assert_eq!(
        host_report(&report, "plumb-host-1")["status"],
        "converged",
        "{report:#}"
    );
    assert_eq!(host_report(&report, "plumb-host-3")["status"], "converged");
    let h2 = host_report(&report, "plumb-host-2");
    assert_eq!(h2["status"], "unreachable", "{h2:#}");
    assert!(
        h2["error"].as_str().unwrap_or("").contains("during apply"),
        "{h2:#}"
    );

    reconnect(&hosts, 2);
    let (code, report, _) = plumb(&hosts, &["apply"], repo.path());
    assert_eq!(
        code, 0,
        "back on the network, the host converges: {report:#}"
    );
    assert_eq!(exec(&hosts, 2, "systemctl is-active plumb-demo"), "active");
    assert_eq!(
        exec(
            &hosts,
            2,
            "find /etc/plumb-demo /etc/default /etc/cron.d /etc/sysctl.d -name '.plumb.*' | wc -l"
        ),
        "0",
        "no half-written file left"
    );
}

/// A test host never changes the machine running it: host-wide sysctls (and the mounts that
/// could make them writable) are out of reach of anything run over SSH, as root included,
/// while the container's own `net.*` sysctls stay writable for the sysctl module.
#[test]
fn test_hosts_cannot_change_this_machine() {
    let _g = lock();
    let Some(hosts) = fresh_hosts("test_hosts_cannot_change_this_machine") else {
        return;
    };
    let ours = std::fs::read_to_string("/proc/sys/vm/swappiness").expect("read swappiness");
    let want: u32 = if ours.trim() == "7" { 8 } else { 7 };

    // Through plumb, exactly as a repo author would try it.
    let repo = one_host_repo(
        &hosts,
        "hostwide",
        &format!(
            "steps:\n  - id: swappiness\n    sysctl: {{name: vm.swappiness, value: \"{want}\"}}\n"
        ),
    );
    let (code, report, err) = plumb(&hosts, &["apply"], repo.path());
    assert_eq!(code, 1, "a host-wide sysctl must fail:\n{report:#}\n{err}");
    assert_eq!(host_report(&report, "plumb-host-1")["status"], "failed");

    // And by hand over SSH, as root, including the remounts that would open the way.
    let ssh = |cmd: &str| {
        sh(Command::new("ssh")
            .arg("-F")
            .arg(hosts.dir.join("ssh_config"))
            .arg(hosts.container(1))
            .arg(cmd))
    };
    for attack in [
        format!("sudo sh -c 'echo {want} > /proc/sys/vm/swappiness'"),
        "sudo mount -o remount,rw /proc/sys".to_string(),
        "sudo mount -o remount,rw /sys/fs/cgroup".to_string(),
        format!("sudo sh -c 'mount -t proc proc /mnt && echo {want} > /mnt/sys/vm/swappiness'"),
    ] {
        let (code, out, err) = ssh(&attack);
        assert_ne!(
            code, 0,
            "`{attack}` succeeded on a test host:\n{out}\n{err}"
        );
    }
    let (code, _, err) = ssh("sudo sh -c 'echo 1234 > /proc/sys/net/core/somaxconn'");
    assert_eq!(code, 0, "namespaced sysctls must stay writable: {err}");
    assert_eq!(
        std::fs::read_to_string("/proc/sys/vm/swappiness").expect("read swappiness"),
        ours,
        "this machine's vm.swappiness changed"
    );
}

/// Hosts 1..3 labelled `role: ok | flood | hang`, a file every host gets, and one command
/// step for the flooding host and one for the hanging host.
fn flood_and_hang_repo(hosts: &Hosts) -> tempfile::TempDir {
    let repo = tempfile::tempdir().expect("tempdir");
    let r = repo.path();
    std::fs::create_dir_all(r.join("environments/production")).expect("mkdir");
    std::fs::create_dir_all(r.join("units")).expect("mkdir");
    std::fs::write(
        r.join("plumb.yaml"),
        "defaults: {user: deploy, become: true}\n",
    )
    .expect("write");
    let mut inventory = String::from("hosts:\n");
    for (k, role) in [(1, "ok"), (2, "flood"), (3, "hang")] {
        inventory.push_str(&format!(
            "  - name: {}\n    address: {}\n    labels: {{role: {role}}}\n",
            hosts.name(k),
            hosts.addresses[k - 1]
        ));
    }
    std::fs::write(r.join("environments/production/hosts.yaml"), inventory).expect("write");
    let units = [
        (
            "all",
            "steps:\n  - id: marker\n    file:\n      path: /etc/plumb-marker\n      content: \"converged\\n\"\n",
        ),
        (
            "flood",
            "applies_to: {role: flood}\nsteps:\n  - id: noisy\n    command:\n      run: yes plumb-flood\n",
        ),
        (
            "hang",
            "applies_to: {role: hang}\nsteps:\n  - id: stuck\n    command:\n      run: sleep 3600\n",
        ),
    ];
    for (name, yaml) in units {
        std::fs::write(r.join(format!("units/{name}.yaml")), yaml).expect("write");
    }
    repo
}

/// A host that floods its output and one that hangs each fail alone, within the limits:
/// the flood is cut at the frame limit, the hang at `--apply-timeout` plus `--verify-timeout`
/// (the apply round trip ends with the verify); host 1 converges and
/// plumb exits 1 in bounded time.
#[test]
fn a_flooding_host_and_a_hung_host_spare_the_others() {
    let _g = lock();
    let Some(hosts) = fresh_hosts("a_flooding_host_and_a_hung_host_spare_the_others") else {
        return;
    };
    let repo = flood_and_hang_repo(&hosts);
    let start = std::time::Instant::now();
    let (code, report, err) = plumb(
        &hosts,
        &[
            "apply",
            "--apply-timeout",
            "15s",
            "--verify-timeout",
            "5s",
            "--observe-timeout",
            "1m",
        ],
        repo.path(),
    );
    let took = start.elapsed();
    assert_eq!(code, 1, "{report:#}\n{err}");
    assert!(took < std::time::Duration::from_secs(90), "took {took:?}");
    assert_eq!(
        host_report(&report, &hosts.name(1))["status"],
        "converged",
        "{report:#}"
    );
    let flood = host_report(&report, &hosts.name(2));
    assert_eq!(flood["status"], "failed", "{flood:#}");
    assert!(
        flood["error"]
            .as_str()
            .unwrap_or_default()
            .contains("flood/noisy printed more than 4194304 bytes"),
        "{flood:#}"
    );
    let hang = host_report(&report, &hosts.name(3));
    assert_eq!(hang["status"], "failed", "{hang:#}");
    assert!(
        hang["error"]
            .as_str()
            .unwrap_or_default()
            .contains("did not answer within 20s"),
        "{hang:#}"
    );
    assert_eq!(exec(&hosts, 1, "cat /etc/plumb-marker"), "converged");
    // The flood was cut on the host: nothing of it is left in its temporary directories.
    let tmp_kib = exec(&hosts, 2, "du -sk /tmp | cut -f1")
        .parse::<u64>()
        .unwrap_or(u64::MAX);
    assert!(
        tmp_kib < 8 * 1024,
        "the flood filled the host's /tmp: {tmp_kib} KiB"
    );
}

/// Runs plumb with `XDG_RUNTIME_DIR` pointing at `runtime`, so its ssh control directory is
/// `runtime/plumb-ssh`.
fn plumb_in(
    hosts: &Hosts,
    runtime: &std::path::Path,
    args: &[&str],
    repo: &std::path::Path,
) -> Command {
    let mut cmd = plumb_command(hosts, args, repo);
    cmd.env("XDG_RUNTIME_DIR", runtime);
    cmd
}

/// Starts `plumb apply` on host 3 (the hanging one) and waits until its ssh master is up
/// under `base` (and a little longer, so the apply is in flight).
fn apply_until_master(
    hosts: &Hosts,
    runtime: &std::path::Path,
    base: &std::path::Path,
    repo: &std::path::Path,
    stderr: std::process::Stdio,
) -> std::process::Child {
    let child = plumb_in(hosts, runtime, &["apply", "--host", &hosts.name(3)], repo)
        .stdout(std::process::Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("plumb starts");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while ssh_under(base).is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    std::thread::sleep(std::time::Duration::from_secs(2));
    child
}

/// ssh processes whose command line names `dir` (masters use a socket under it).
fn ssh_under(dir: &std::path::Path) -> Vec<String> {
    let (_, out, _) = sh(Command::new("pgrep")
        .args(["-a", "-f"])
        .arg(format!("ssh .*{}", dir.display())));
    out.lines().map(str::to_string).collect()
}

/// No orphans: after plumb exits (done, SIGTERM, SIGINT), no ssh master of it remains; a
/// master left by a plumb that was SIGKILLed is closed, and its socket removed, by the next
/// plumb.
#[test]
fn ssh_masters_do_not_outlive_plumb() {
    let _g = lock();
    let Some(hosts) = fresh_hosts("ssh_masters_do_not_outlive_plumb") else {
        return;
    };
    let repo = flood_and_hang_repo(&hosts);
    let runtime = tempfile::tempdir().expect("tmp");
    let base = runtime.path().join("plumb-ssh");

    // A normal run: its master is gone when it exits.
    let out = plumb_in(
        &hosts,
        runtime.path(),
        &["plan", "--host", &hosts.name(1)],
        repo.path(),
    )
    .output()
    .expect("plumb runs");
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        ssh_under(&base),
        Vec::<String>::new(),
        "a master outlived plumb"
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&base)
            .expect("control dir")
            .permissions()
            .mode()
            & 0o777,
        0o700
    );

    // SIGTERM (and SIGINT) mid-apply, on the hanging host: plumb closes its master and exits 1.
    for signal in ["TERM", "INT"] {
        let child = apply_until_master(
            &hosts,
            runtime.path(),
            &base,
            repo.path(),
            std::process::Stdio::piped(),
        );
        sh(Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(child.id().to_string()));
        let out = child.wait_with_output().expect("plumb exits");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "SIG{signal}: {err}");
        assert!(
            err.contains(&format!("interrupted by SIG{signal}")),
            "{err}"
        );
        assert_eq!(
            ssh_under(&base),
            Vec::<String>::new(),
            "SIG{signal} left a master"
        );
    }

    // A plumb killed mid-apply (on the hanging host) leaves its master behind...
    let mut child = apply_until_master(
        &hosts,
        runtime.path(),
        &base,
        repo.path(),
        std::process::Stdio::null(),
    );
    child.kill().expect("SIGKILL");
    let _ = child.wait();
    let pid_dir = base.join(child.id().to_string());
    assert!(pid_dir.exists(), "the killed plumb's control directory");
    assert!(
        !ssh_under(&base).is_empty(),
        "the master outlives a SIGKILL"
    );

    // ...which the next plumb closes and removes.
    let out = plumb_in(
        &hosts,
        runtime.path(),
        &["plan", "--host", &hosts.name(1)],
        repo.path(),
    )
    .output()
    .expect("plumb runs");
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!pid_dir.exists(), "stale socket directory kept");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !ssh_under(&base).is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert_eq!(
        ssh_under(&base),
        Vec::<String>::new(),
        "the stale master was not closed"
    );
}

/// The configuration language on real hosts (issue 12): webapp loops over its admins
/// (`base/admins[<name>]`, more of them on the db host through group variables), runs two
/// instances of the reusable `vhost` unit on each web host, and leaves out `base/log-cleanup`
/// where its `when` is false. It converges, and a second plan is empty.
#[test]
fn loops_conditions_and_instances_converge() {
    let _g = lock();
    let Some(hosts) = fresh_hosts("loops_conditions_and_instances_converge") else {
        return;
    };
    let repo = webapp_repo(&hosts);
    // The db host keeps its logs: its cleanup job's `when` is false.
    let inventory = repo.path().join("environments/production/hosts.yaml");
    let text = std::fs::read_to_string(&inventory).expect("read inventory");
    let text = text.replace(
        "{hello_version: \"1.0\"}",
        "{hello_version: \"1.0\", log_retention_days: 0}",
    );
    std::fs::write(&inventory, text).expect("write inventory");

    let (code, report, err) = plumb(&hosts, &["apply"], repo.path());
    assert_eq!(code, 0, "apply did not converge:\n{report:#}\n{err}");

    for k in [1, 2] {
        assert_eq!(
            exec(&hosts, k, "getent passwd alice bob carol | cut -d: -f1,7"),
            "alice:/bin/bash\nbob:/bin/sh",
            "the environment's admins on web hosts"
        );
        let workers = if k == 1 { 8 } else { 4 };
        assert_eq!(
            exec(&hosts, k, "cat /etc/plumb-demo/sites/shop.conf"),
            format!(
                "# shop on {}. Managed by plumb.\nlisten = 0.0.0.0:8081\nroot = /srv/app\nworkers = {workers}",
                hosts.name(k)
            ),
            "instance `shop`: its params, the group's workers (the host's on the canary)"
        );
        assert!(exec(&hosts, k, "cat /etc/plumb-demo/sites/blog.conf")
            .contains("listen = 0.0.0.0:8082\nroot = /srv/blog\n"));
        assert_eq!(
            exec(
                &hosts,
                k,
                "test -e /etc/cron.d/app-log-cleanup && echo kept"
            ),
            "kept"
        );
    }
    assert_eq!(
        exec(&hosts, 3, "getent passwd alice bob carol | cut -d: -f1,7"),
        "alice:/bin/bash\nbob:/bin/sh\ncarol:/bin/bash",
        "the db group's admins"
    );
    assert_eq!(
        exec(
            &hosts,
            3,
            "test -e /etc/plumb-demo/sites || echo no-sites; test -e /etc/cron.d/app-log-cleanup || echo no-cleanup"
        ),
        "no-sites\nno-cleanup",
        "no site and no cleanup job on the db host"
    );

    let (code, plan, err) = plumb(&hosts, &["plan"], repo.path());
    assert_eq!(code, 0, "a second plan is empty:\n{plan:#}\n{err}");
    assert_eq!(plan["total_changes"], 0);
    assert_eq!(
        host_report(&plan, &hosts.name(3))["skipped"],
        serde_json::json!([{
            "address": "base/log-cleanup",
            "reason": "when `log_retention_days > 0` is false"
        }])
    );
}
