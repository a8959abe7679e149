//! End-to-end trust (issue 14): the daemon fetches its config repository over SSH from a test
//! host (a bare repository on host 1, served by its sshd to a `git` user that only the deploy
//! key from `repository_auth:` opens), with SSH and OpenPGP signatures made at test time:
//! an OpenPGP-signed merge commit over SSH-signed work is applied; an unsigned commit then
//! blocks, named in the run, the log and the alert, touching no host; a `Plumb-Seal:` by a
//! signer who may not seal is refused; a seal by an allowed sealer unblocks it without
//! rewriting history.

mod common;
#[path = "common/daemon.rs"]
mod daemon;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{exec, lock, sh};
use daemon::{AlertCapture, DaemonFixture};

const MARKER: &str = "/etc/plumb-trust-marker";

fn unit(version: &str) -> String {
    format!("steps:\n  - id: marker\n    file:\n      path: {MARKER}\n      content: \"{version}\\n\"\n")
}

fn check(cmd: &mut Command) -> String {
    let (code, out, err) = sh(cmd);
    assert_eq!(code, 0, "{cmd:?}: {out}{err}");
    out.trim().to_string()
}

/// Serves `/srv/config.git` from host 1 over its sshd as user `git`, whose only authorized
/// key is `deploy_pub`. The hosts have no git: the machine's (Debian's, same release) is
/// copied in, `git-upload-pack`/`git-receive-pack` being the same binary.
fn serve_repo(fx: &DaemonFixture, deploy_pub: &str) {
    let c = fx.hosts.container(1);
    check(Command::new("docker").args(["cp", "/usr/bin/git", &format!("{c}:/usr/local/bin/git")]));
    exec(
        &fx.hosts,
        1,
        &format!(
            "set -e; cd /usr/local/bin; ln -sf git git-upload-pack; ln -sf git git-receive-pack; \
             useradd --create-home --shell /bin/sh git; usermod -p '*' git; \
             printf '%s\\n' '{deploy_pub}' > /etc/ssh/authorized_keys/git; chmod 0644 /etc/ssh/authorized_keys/git; \
             install -d -o git -g git /srv/config.git; \
             runuser -u git -- git init -q --bare /srv/config.git; \
             runuser -u git -- git -C /srv/config.git symbolic-ref HEAD refs/heads/main"
        ),
    );
}

/// The test's own gpg: a home with one signing key, and a `gpg.program` for git using it.
struct Gpg {
    home: PathBuf,
    program: PathBuf,
    fingerprint: String,
}

impl Gpg {
    fn new(dir: &Path, uid: &str) -> Gpg {
        use std::os::unix::fs::PermissionsExt;
        let home = dir.join("gnupg");
        std::fs::create_dir_all(&home).expect("mkdir");
        std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o700)).expect("chmod");
        let program = dir.join("gpg-for-git");
        std::fs::write(
            &program,
            format!(
                "#!/bin/sh\nGNUPGHOME='{}' exec gpg --batch --pinentry-mode loopback --passphrase '' \"$@\"\n",
                home.display()
            ),
        )
        .expect("write");
        std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        check(Command::new(&program).args(["--quick-gen-key", uid, "ed25519", "sign", "never"]));
        let list = check(Command::new(&program).args(["--with-colons", "--list-keys", uid]));
        let fingerprint = list
            .lines()
            .find_map(|l| l.strip_prefix("fpr:"))
            .map(|l| l.trim_matches(':').to_string())
            .expect("a fingerprint");
        Gpg {
            home,
            program,
            fingerprint,
        }
    }

    /// The armored public keyring (plumb's OpenPGP trust root).
    fn export(&self, to: &Path) {
        let armored =
            check(Command::new(&self.program).args(["--export", "--armor", &self.fingerprint]));
        std::fs::write(to, armored + "\n").expect("write keyring");
    }

    /// `git` arguments that sign with this key (OpenPGP).
    fn sign_args(&self) -> Vec<String> {
        vec![
            "-c".into(),
            "gpg.format=openpgp".into(),
            "-c".into(),
            format!("gpg.program={}", self.program.display()),
            "-c".into(),
            format!("user.signingkey={}!", self.fingerprint),
        ]
    }
}

impl Drop for Gpg {
    fn drop(&mut self) {
        let _ = Command::new("gpgconf")
            .env("GNUPGHOME", &self.home)
            .args(["--kill", "gpg-agent"])
            .output();
    }
}

/// Pushes the clone's `main` to the repository on host 1 with the deploy key (no force).
fn push(fx: &DaemonFixture, url: &str) {
    let ssh = format!(
        "ssh -i {} -o IdentitiesOnly=yes -o BatchMode=yes -o StrictHostKeyChecking=yes -o UserKnownHostsFile={}",
        fx.path("deploy_key").display(),
        fx.hosts.dir.join("known_hosts").display()
    );
    check(
        Command::new("git")
            .arg("-C")
            .arg(fx.clone_dir())
            .args(["push", "-q", url, "main"])
            .env("GIT_SSH_COMMAND", ssh)
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_CONFIG_NOSYSTEM", "1"),
    );
}

fn write_config(fx: &DaemonFixture, url: &str, alerts: u16) {
    let w = fx.work.path();
    let config = format!(
        "repository: {url}\nbranch: main\n\
         allowed_signers: {signers}\nopenpgp_keyring: {ring}\nseal_signers: {sealers}\n\
         repository_auth:\n  ssh_key_file: {key}\n  known_hosts_file: {kh}\n\
         poll_interval: 1s\nenvironments: [production]\nstate_dir: {state}\n\
         listen: 127.0.0.1:{port}\ndrift_interval: 1h\n\
         ssh:\n  identity_file: {id}\n  known_hosts_file: {kh}\n  connect_timeout: 5s\n\
         alerts:\n  - kind: webhook\n    url: http://127.0.0.1:{alerts}/alerts\n",
        signers = w.join("signing/allowed_signers").display(),
        ring = w.join("keyring.asc").display(),
        sealers = w.join("sealers").display(),
        key = w.join("deploy_key").display(),
        kh = fx.hosts.dir.join("known_hosts").display(),
        state = fx.state_dir().display(),
        port = fx.port,
        id = fx.hosts.dir.join("id_ed25519").display(),
    );
    std::fs::write(w.join("daemon.yaml"), config).expect("write config");
}

/// Waits for the refused run of `commit` and checks it names `bad` with `reason`, in the run,
/// the daemon log and an alert; the host keeps `kept`.
fn assert_refused(
    fx: &DaemonFixture,
    alerts: &AlertCapture,
    commit: &str,
    bad: &str,
    reason: &str,
    kept: &str,
) {
    fx.wait(
        &format!("commit {commit} refused"),
        Duration::from_secs(90),
        || fx.run_of("refused", commit).is_some(),
    );
    let run = fx.run_of("refused", commit).expect("refused run");
    assert_eq!(run["result"], "refused", "{run:#}");
    let detail = run.to_string();
    assert!(detail.contains(reason), "{detail}");
    assert!(
        detail.contains(bad),
        "the offending commit {bad} is named: {detail}"
    );
    let short = &bad[..7];
    fx.wait("the refusal in the log", Duration::from_secs(10), || {
        fx.log()
            .lines()
            .any(|l| l.contains(short) && l.contains(reason))
    });
    fx.wait("the refusal alerted", Duration::from_secs(30), || {
        alerts
            .events()
            .iter()
            .any(|a| a.to_string().contains(short) && a.to_string().contains(reason))
    });
    assert_eq!(
        exec(&fx.hosts, 1, &format!("cat {MARKER}")),
        kept,
        "no host touched"
    );
}

#[test]
fn the_daemon_fetches_over_ssh_accepts_openpgp_merges_and_recovers_with_a_seal() {
    let _guard = lock();
    let Some(mut fx) = DaemonFixture::with_hosts("e2e_trust", 1, "trust", &unit("one")) else {
        return;
    };
    let w = fx.work.path().to_path_buf();
    check(
        Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", "deploy-key", "-f"])
            .arg(w.join("deploy_key")),
    );
    let deploy_pub = std::fs::read_to_string(w.join("deploy_key.pub")).expect("pub");
    serve_repo(&fx, deploy_pub.trim());
    let url = format!("ssh://git@{}/srv/config.git", fx.hosts.addresses[0]);
    let gpg = Gpg::new(&w, "Merge Bot <merge-bot@example.com>");
    gpg.export(&w.join("keyring.asc"));
    std::fs::write(
        w.join("sealers"),
        format!("# may seal\n{}\n", gpg.fingerprint),
    )
    .expect("write");
    let alerts = AlertCapture::start();
    write_config(&fx, &url, alerts.port);

    // The first (SSH-signed) commit, fetched over SSH with the deploy key.
    let first = fx.git(&["rev-parse", "HEAD"]);
    push(&fx, &url);
    fx.start_daemon();
    fx.wait("the first commit applied", Duration::from_secs(120), || {
        fx.applied(&first)
    });
    assert_eq!(exec(&fx.hosts, 1, &format!("cat {MARKER}")), "one");

    // SSH-signed work on a branch, merged with an OpenPGP-signed merge commit (the hosted
    // merge button's shape): applied, the signer named.
    fx.git(&["checkout", "-q", "-b", "feature"]);
    fx.write("units/trust.yaml", &unit("two"));
    fx.git(&["add", "-A"]);
    fx.git(&["commit", "-q", "-S", "-m", "feature: two"]);
    fx.git(&["checkout", "-q", "main"]);
    let mut merge: Vec<String> = gpg.sign_args();
    merge.extend(
        [
            "merge",
            "-q",
            "--no-ff",
            "-S",
            "-m",
            "Merge branch feature",
            "feature",
        ]
        .map(String::from),
    );
    fx.git(&merge.iter().map(String::as_str).collect::<Vec<_>>());
    let merged = fx.git(&["rev-parse", "HEAD"]);
    push(&fx, &url);
    fx.wait("the merge applied", Duration::from_secs(90), || {
        fx.applied(&merged)
    });
    assert_eq!(exec(&fx.hosts, 1, &format!("cat {MARKER}")), "two");
    let run = fx.run_of("apply", &merged).expect("run");
    assert!(
        run.to_string().contains("Merge Bot"),
        "the OpenPGP signer is recorded: {run:#}"
    );

    // An unsigned commit blocks, named, touching no host.
    fx.write("units/trust.yaml", &unit("three"));
    fx.git(&["add", "-A"]);
    fx.git(&["commit", "-q", "--no-gpg-sign", "-m", "unsigned: three"]);
    let unsigned = fx.git(&["rev-parse", "HEAD"]);
    push(&fx, &url);
    assert_refused(&fx, &alerts, &unsigned, &unsigned, "unsigned", "two");

    // A seal by a signer who may not seal (the SSH key signs commits, it is not a sealer).
    fx.git(&[
        "commit",
        "-q",
        "--allow-empty",
        "-S",
        "-m",
        "seal by the wrong key\n\nPlumb-Seal: reviewed the unsigned commit",
    ]);
    let bad_seal = fx.git(&["rev-parse", "HEAD"]);
    push(&fx, &url);
    assert_refused(
        &fx,
        &alerts,
        &bad_seal,
        &bad_seal,
        "seal-not-allowed",
        "two",
    );

    // A seal by an allowed sealer: applied, without rewriting history (plain pushes only).
    let mut seal: Vec<String> = gpg.sign_args();
    seal.extend(
        [
            "commit",
            "-q",
            "--allow-empty",
            "-S",
            "-m",
            "seal\n\nPlumb-Seal: reviewed the unsigned commit",
        ]
        .map(String::from),
    );
    fx.git(&seal.iter().map(String::as_str).collect::<Vec<_>>());
    let sealed = fx.git(&["rev-parse", "HEAD"]);
    push(&fx, &url);
    fx.wait("the seal applied", Duration::from_secs(90), || {
        fx.applied(&sealed)
    });
    assert_eq!(exec(&fx.hosts, 1, &format!("cat {MARKER}")), "three");
    let history = exec(
        &fx.hosts,
        1,
        "runuser -u git -- git -C /srv/config.git rev-list main",
    );
    for c in [&first, &merged, &unsigned, &bad_seal, &sealed] {
        assert!(
            history.contains(c.as_str()),
            "{c} is still in the served history"
        );
    }
    fx.stop_daemon();
}
