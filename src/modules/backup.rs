//! `backup`: a restic backup of some paths, on a systemd timer, proven by a restore test on
//! its own timer. The module writes, on the host:
//!
//! - `/etc/plumb/backup/<name>/password` (0600): the repository password (give it from a
//!   secret, `"{{ secrets.<name> }}"`); restic reads it through `RESTIC_PASSWORD_FILE`, so it
//!   never appears in a process list;
//! - `/usr/local/lib/plumb/backup/<name>/backup` and `.../restore-test` (0700): the scripts;
//! - `plumb-backup-<name>.service|.timer` and `plumb-restore-test-<name>.service|.timer` in
//!   `/etc/systemd/system` (`OnCalendar`, `RandomizedDelaySec`, `Persistent=true`);
//!
//! and initialises the repository when it is absent (then starts a first backup).
//!
//! The restore test restores the latest snapshot (or a random sample of its files) into a
//! scratch directory, compares the sha256 of every restored file with the live file when
//! the live file is unchanged since the snapshot (same modification time), runs
//! `restic check --read-data-subset`, then the optional `verify` command in the restored
//! tree, measures how long the restore took and deletes the scratch directory. It writes its
//! result to `/var/lib/plumb/backup/<name>.status` (`key=value` lines, [`STATUS_KEYS`]).
//!
//! Probe output: `restic=yes|no`; `file=<role> <sha256>|absent|other` for every managed file
//! (the password file as `set`/`absent`/`other`, never a hash); `timer=<unit> <enabled>
//! <active>`; `repo=ok|absent|error|unknown` with `snapshots_b64=` (restic's JSON of the
//! latest snapshot); `now=` (the host's clock); and the status file's lines prefixed `test_`.
//!
//! The files, the timers and the repository are the desired state (a change); the age of the
//! latest snapshot and the restore test's result are observations, carried typed in
//! [`Facts::backup`](super::Facts) as a [`BackupObserved`]: the daemon turns them into
//! metrics, `/api/status` and alerts ([`BackupObserved::problems`]).
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::sh::{self, quote, Observed};
use super::systemd_unit::UNIT_DIR;
use super::{
    step, BuildError, Change, ChangeKind, Example, Facts, Field, FromParams, ModuleDef, ProbeError,
    ProbeResult, Resource, Runs,
};
use crate::model::HumanDuration;

/// How many snapshots of each kind `restic forget` keeps (unset: not a rule).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Retention {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_last: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_hourly: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_daily: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_weekly: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_monthly: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_yearly: Option<u32>,
}

impl Retention {
    fn flags(&self) -> Vec<(&'static str, u32)> {
        [
            ("--keep-last", self.keep_last),
            ("--keep-hourly", self.keep_hourly),
            ("--keep-daily", self.keep_daily),
            ("--keep-weekly", self.keep_weekly),
            ("--keep-monthly", self.keep_monthly),
            ("--keep-yearly", self.keep_yearly),
        ]
        .into_iter()
        .filter_map(|(f, v)| v.map(|v| (f, v)))
        .collect()
    }
}

/// The restore test: what it restores and checks, and when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RestoreTest {
    /// systemd `OnCalendar` of the restore test.
    #[serde(default = "weekly")]
    pub schedule: String,
    /// How often it runs, for alerts (older than twice this: stale). Unset: derived from a
    /// `schedule` of `hourly`, `daily`, `weekly` or `monthly`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<HumanDuration>,
    /// Restore this many files picked at random instead of the whole snapshot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100000))]
    pub sample: Option<u32>,
    /// `restic check --read-data-subset`: a percentage (`5%`) or `n/t`.
    #[serde(default = "subset")]
    #[schemars(regex(pattern = r"^([0-9]{1,3}(\.[0-9]+)?%|[0-9]+/[0-9]+)$"))]
    pub read_data_subset: String,
    /// A shell command run in the restored tree (its path also in `$PLUMB_RESTORE_DIR`);
    /// failing fails the test. E.g. load a dump into a scratch database and query it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify: Option<String>,
}

impl Default for RestoreTest {
    fn default() -> RestoreTest {
        RestoreTest {
            schedule: weekly(),
            interval: None,
            sample: None,
            read_data_subset: subset(),
            verify: None,
        }
    }
}

fn daily() -> String {
    "daily".into()
}
fn weekly() -> String {
    "weekly".into()
}
fn subset() -> String {
    "5%".into()
}

/// A restic backup with its schedule, retention and restore test.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// The backup's name: unit names, paths and the snapshots' tag `plumb-<name>`.
    #[schemars(regex(pattern = r"^[A-Za-z0-9_-]{1,64}$"))]
    pub name: String,
    /// The restic repository: a local path, `sftp:user@host:/path` or `rest:https://...`.
    pub repository: String,
    /// The repository password: give it from a secret (`"{{ secrets.restic }}"`).
    pub password: String,
    /// Absolute paths to back up.
    #[schemars(length(min = 1))]
    pub paths: Vec<String>,
    /// restic `--exclude` patterns.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude: Vec<String>,
    /// A shell command run before each backup (e.g. a database dump into a backed-up
    /// directory); failing fails the backup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<String>,
    /// `restic forget --prune` rules after each backup; none: every snapshot is kept.
    #[serde(default)]
    pub retention: Retention,
    /// systemd `OnCalendar` of the backup.
    #[serde(default = "daily")]
    pub schedule: String,
    /// How often the backup runs, for alerts (older than twice this: stale). Unset: derived
    /// from a `schedule` of `hourly`, `daily`, `weekly` or `monthly`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<HumanDuration>,
    /// systemd `RandomizedDelaySec` of both timers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub randomized_delay: Option<HumanDuration>,
    #[serde(default)]
    pub restore_test: RestoreTest,
}

/// The resource this module builds; behaviour lives in the `Resource` impl.
#[derive(Debug, Clone)]
pub struct Backup {
    pub params: Params,
    interval: Duration,
    restore_interval: Duration,
    files: Vec<ManagedFile>,
}

/// One file the module writes.
#[derive(Debug, Clone)]
struct ManagedFile {
    role: Role,
    path: String,
    mode: &'static str,
    content: Vec<u8>,
}

/// What a managed file is, as the probe names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Password,
    BackupScript,
    RestoreScript,
    BackupService,
    BackupTimer,
    RestoreService,
    RestoreTimer,
}

impl Role {
    const fn as_str(self) -> &'static str {
        match self {
            Role::Password => "password",
            Role::BackupScript => "backup-script",
            Role::RestoreScript => "restore-test-script",
            Role::BackupService => "backup-service",
            Role::BackupTimer => "backup-timer",
            Role::RestoreService => "restore-test-service",
            Role::RestoreTimer => "restore-test-timer",
        }
    }
    const fn is_unit(self) -> bool {
        matches!(
            self,
            Role::BackupService | Role::BackupTimer | Role::RestoreService | Role::RestoreTimer
        )
    }
}

/// Where the configuration (the password file) lives.
pub const CONF_DIR: &str = "/etc/plumb/backup";
/// Where the scripts live.
pub const LIB_DIR: &str = "/usr/local/lib/plumb/backup";
/// Where the restore test writes `<name>.status`.
pub const STATUS_DIR: &str = "/var/lib/plumb/backup";
/// Longest a probe waits for the repository (seconds).
const PROBE_TIMEOUT: u32 = 60;

/// The keys of the status file, as the restore test writes them.
pub const STATUS_KEYS: &[&str] = &[
    "result",
    "failure",
    "finished",
    "last_success",
    "restore_ms",
    "compared",
    "mismatched",
];

fn sha(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

/// The interval a calendar shorthand means.
fn interval_of(schedule: &str) -> Option<Duration> {
    let secs = match schedule.trim() {
        "minutely" => 60,
        "hourly" => 3_600,
        "daily" => 86_400,
        "weekly" => 7 * 86_400,
        "monthly" => 31 * 86_400,
        _ => return None,
    };
    Some(Duration::from_secs(secs))
}

fn check_line(pointer: &str, value: &str, what: &str) -> Result<(), BuildError> {
    if value.contains(['\n', '\r']) || value.trim().is_empty() {
        return Err(BuildError::at(
            pointer,
            format!("{what} must be one non-empty line"),
        ));
    }
    Ok(())
}

fn check_calendar(pointer: &str, value: &str) -> Result<(), BuildError> {
    let ok = !value.trim().is_empty()
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b" *:,./~-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(BuildError::at(
            pointer,
            "a systemd calendar expression (`daily`, `Mon *-*-* 03:00`): letters, digits and ` *:,./~-`",
        ))
    }
}

fn resolve_interval(
    pointer: &str,
    given: Option<HumanDuration>,
    schedule: &str,
) -> Result<Duration, BuildError> {
    match given.map(HumanDuration::get).or_else(|| interval_of(schedule)) {
        Some(d) if !d.is_zero() => Ok(d),
        Some(_) => Err(BuildError::at(pointer, "the interval must not be zero")),
        None => Err(BuildError::at(
            pointer,
            format!("schedule `{schedule}` is not hourly/daily/weekly/monthly: give its `interval` (e.g. `24h`) so plumb knows when a backup is late"),
        )),
    }
}

impl FromParams for Backup {
    type Params = Params;
    fn from_params(p: Params) -> Result<Backup, BuildError> {
        check_line("/repository", &p.repository, "the repository")?;
        if p.password.is_empty() {
            return Err(BuildError::at("/password", "the password is empty"));
        }
        for (i, path) in p.paths.iter().enumerate() {
            if !path.starts_with('/') || path.contains(['\n', '\r']) {
                return Err(BuildError::at(
                    format!("/paths/{i}"),
                    "a path to back up is absolute and one line",
                ));
            }
        }
        for (i, e) in p.exclude.iter().enumerate() {
            check_line(&format!("/exclude/{i}"), e, "an exclude pattern")?;
        }
        check_calendar("/schedule", &p.schedule)?;
        check_calendar("/restore_test/schedule", &p.restore_test.schedule)?;
        let interval = resolve_interval("/interval", p.interval, &p.schedule)?;
        let restore_interval = resolve_interval(
            "/restore_test/interval",
            p.restore_test.interval,
            &p.restore_test.schedule,
        )?;
        let mut b = Backup {
            params: p,
            interval,
            restore_interval,
            files: Vec::new(),
        };
        b.files = b.managed_files();
        Ok(b)
    }
}

pub static DEF: ModuleDef = ModuleDef::of::<Backup>(
    "backup",
    "A restic backup on a systemd timer, proven by scheduled restore tests that plumb observes.",
    Runs::Host,
    &[
        "restic",
        "file",
        "timer",
        "repo",
        "snapshots_b64",
        "now",
        "test_result",
        "test_failure",
        "test_finished",
        "test_last_success",
        "test_restore_ms",
        "test_compared",
        "test_mismatched",
    ],
    &[Example {
        name: "a local repository: initialised, timers enabled, then a new schedule",
        setup: &[("package", r#"{"name": "restic"}"#)],
        steps: &[
            step(
                r#"{"name": "plumb-ex", "repository": "/var/backups/plumb-ex", "password": "it's $(secret)", "paths": ["/etc/hostname"], "retention": {"keep_daily": 7}}"#,
                ChangeKind::Create,
            ),
            step(
                r#"{"name": "plumb-ex", "repository": "/var/backups/plumb-ex", "password": "it's $(secret)", "paths": ["/etc/hostname"], "retention": {"keep_daily": 7}, "schedule": "hourly", "randomized_delay": "5m", "restore_test": {"schedule": "daily", "sample": 5, "verify": "test -s etc/hostname"}}"#,
                ChangeKind::Modify,
            ),
        ],
    }],
)
// Files and timers come back with an older state; a repository once initialised (and the
// snapshots in it) is not removed by one.
.reversibility(super::Reversibility::Some(irreversible))
// Pruning a backup would stop protecting the data without anyone deciding it.
.prune(super::Prune::Never(
    "removing a backup stops backups and restore tests: remove it on purpose",
));

fn irreversible(c: &Change) -> Option<&'static str> {
    c.changes_field(Field::State)
        .then_some("it initialises a backup repository, which an older state does not remove")
}

impl Backup {
    fn n(&self) -> &str {
        &self.params.name
    }
    fn password_path(&self) -> String {
        format!("{CONF_DIR}/{}/password", self.n())
    }
    fn script_path(&self, which: &str) -> String {
        format!("{LIB_DIR}/{}/{which}", self.n())
    }
    /// The status file the restore test writes.
    pub fn status_path(&self) -> String {
        format!("{STATUS_DIR}/{}.status", self.n())
    }
    fn cache_dir(&self) -> String {
        format!("/var/cache/plumb/backup/{}", self.n())
    }
    fn unit(&self, restore: bool, ext: &str) -> String {
        let kind = if restore { "restore-test" } else { "backup" };
        format!("plumb-{kind}-{}.{ext}", self.n())
    }
    fn tag(&self) -> String {
        format!("plumb-{}", self.n())
    }

    /// The environment every script and the probe set for restic.
    fn restic_env(&self, cache: bool) -> String {
        let mut s = format!(
            "export RESTIC_REPOSITORY={}\nexport RESTIC_PASSWORD_FILE={}\n",
            quote(&self.params.repository),
            quote(&self.password_path()),
        );
        if cache {
            s += &format!("export RESTIC_CACHE_DIR={}\n", quote(&self.cache_dir()));
        }
        s
    }

    fn managed_files(&self) -> Vec<ManagedFile> {
        let f = |role, path: String, mode, content: String| ManagedFile {
            role,
            path,
            mode,
            content: content.into_bytes(),
        };
        let unit = |restore, ext| format!("{UNIT_DIR}/{}", self.unit(restore, ext));
        vec![
            ManagedFile {
                role: Role::Password,
                path: self.password_path(),
                mode: "0600",
                content: self.params.password.clone().into_bytes(),
            },
            f(
                Role::BackupScript,
                self.script_path("backup"),
                "0700",
                self.backup_script(),
            ),
            f(
                Role::RestoreScript,
                self.script_path("restore-test"),
                "0700",
                self.restore_script(),
            ),
            f(
                Role::BackupService,
                unit(false, "service"),
                "0644",
                self.service_unit(false),
            ),
            f(
                Role::BackupTimer,
                unit(false, "timer"),
                "0644",
                self.timer_unit(false),
            ),
            f(
                Role::RestoreService,
                unit(true, "service"),
                "0644",
                self.service_unit(true),
            ),
            f(
                Role::RestoreTimer,
                unit(true, "timer"),
                "0644",
                self.timer_unit(true),
            ),
        ]
    }

    fn service_unit(&self, restore: bool) -> String {
        let (what, script) = if restore {
            ("restore test", self.script_path("restore-test"))
        } else {
            ("backup", self.script_path("backup"))
        };
        format!(
            "# Managed by plumb (backup {n}): changes are overwritten.\n[Unit]\nDescription=plumb {what} {n}\nWants=network-online.target\nAfter=network-online.target\n\n[Service]\nType=oneshot\nExecStart={script}\nNice=10\nIOSchedulingClass=idle\n",
            n = self.n(),
        )
    }

    fn timer_unit(&self, restore: bool) -> String {
        let (what, schedule) = if restore {
            ("restore test", &self.params.restore_test.schedule)
        } else {
            ("backup", &self.params.schedule)
        };
        let delay = self
            .params
            .randomized_delay
            .map(|d| format!("RandomizedDelaySec={}\n", d.get().as_secs()))
            .unwrap_or_default();
        format!(
            "# Managed by plumb (backup {n}): changes are overwritten.\n[Unit]\nDescription=plumb {what} {n} (schedule)\n\n[Timer]\nOnCalendar={schedule}\n{delay}Persistent=true\n\n[Install]\nWantedBy=timers.target\n",
            n = self.n(),
        )
    }

    /// The backup script: the `before` command, `restic backup`, then `restic forget`.
    fn backup_script(&self) -> String {
        let p = &self.params;
        let mut s = format!(
            "#!/bin/sh\n# Managed by plumb (backup {n}): changes are overwritten.\nset -u\numask 077\n{env}",
            n = self.n(),
            env = self.restic_env(true),
        );
        if let Some(before) = &p.before {
            // The command is data in a variable: it never shows in a process list.
            s += &format!(
                "plumb_before={}\n( eval \"$plumb_before\" ) || {{ echo 'backup: the before command failed' >&2; exit 1; }}\n",
                quote(before)
            );
        }
        s += &format!("restic backup --tag {}", quote(&self.tag()));
        for e in &p.exclude {
            s += &format!(" --exclude {}", quote(e));
        }
        s += " --";
        for path in &p.paths {
            s += &format!(" {}", quote(path));
        }
        // 3: some files could not be read; the snapshot was still made.
        s += "\nrc=$?\n[ \"$rc\" -eq 0 ] || [ \"$rc\" -eq 3 ] || exit \"$rc\"\n";
        let keep = p.retention.flags();
        if !keep.is_empty() {
            s += &format!("restic forget --prune --tag {}", quote(&self.tag()));
            for (flag, v) in keep {
                s += &format!(" {flag} {v}");
            }
            s += " || exit 1\n";
        }
        s
    }

    /// The restore-test script ([`RESTORE_TEST`] with this backup's values).
    fn restore_script(&self) -> String {
        let t = &self.params.restore_test;
        format!(
            "#!/bin/sh\n# Managed by plumb (backup {n}): changes are overwritten.\nset -u\numask 077\n{env}tag={tag}\nstatus={status}\nsample={sample}\nsubset={subset}\nplumb_verify={verify}\n{RESTORE_TEST}",
            n = self.n(),
            env = self.restic_env(true),
            tag = quote(&self.tag()),
            status = quote(&self.status_path()),
            sample = t.sample.unwrap_or(0),
            subset = quote(&t.read_data_subset),
            verify = quote(t.verify.as_deref().unwrap_or("")),
        )
    }
}

/// The body of the restore test. Inputs: `$tag`, `$status`, `$sample` (0: everything),
/// `$subset`, `$plumb_verify` (empty: none). Writes the status file (renamed into place).
const RESTORE_TEST: &str = r#"mkdir -p -- "${status%/*}" || exit 1
last_success=$(sed -n 's/^last_success=//p' "$status" 2>/dev/null | head -n 1)
compared=0; mismatched=0; restore_ms=0
work=$(mktemp -d /var/tmp/plumb-restore-test.XXXXXX) || exit 1
trap 'rm -rf -- "$work"' EXIT
scratch=$work/restore
finish() {
  now=$(date +%s)
  [ "$1" = ok ] && last_success=$now
  printf 'result=%s\nfailure=%s\nfinished=%s\nlast_success=%s\nrestore_ms=%s\ncompared=%s\nmismatched=%s\n' \
    "$1" "$2" "$now" "$last_success" "$restore_ms" "$compared" "$mismatched" > "$status.tmp" &&
    mv -f -- "$status.tmp" "$status"
  rm -rf -- "$work"
  [ "$1" = ok ] || { printf 'restore test failed: %s\n' "$2" >&2; exit 1; }
  exit 0
}
restic snapshots --json --latest 1 --tag "$tag" > "$work/snapshots" || finish failed repository
grep -q '"id"' "$work/snapshots" || finish failed no_snapshot
set --
if [ "$sample" -gt 0 ]; then
  restic ls --json --tag "$tag" latest > "$work/ls" || finish failed repository
  # Files only (a directory would bring everything under it).
  grep '"type":"file"' "$work/ls" | sed -n 's/.*"path":"\([^"]*\)".*/\1/p' |
    shuf -n "$sample" > "$work/picked" || finish failed restore
  while IFS= read -r f; do set -- "$@" --include "$f"; done < "$work/picked"
fi
start=$(date +%s%N)
restic restore latest --tag "$tag" --target "$scratch" "$@" > /dev/null || finish failed restore
restore_ms=$(( ($(date +%s%N) - start) / 1000000 ))
[ -d "$scratch" ] || mkdir -p -- "$scratch"
find "$scratch" -type f > "$work/list"
while IFS= read -r f; do
  live=${f#"$scratch"}
  [ -f "$live" ] && [ ! -L "$live" ] || continue
  [ "$(stat -c %Y -- "$f")" = "$(stat -c %Y -- "$live")" ] || continue
  compared=$((compared + 1))
  a=$(sha256sum < "$f"); b=$(sha256sum < "$live")
  [ "$a" = "$b" ] || mismatched=$((mismatched + 1))
done < "$work/list"
[ "$mismatched" -eq 0 ] || finish failed mismatch
restic check --read-data-subset "$subset" > /dev/null || finish failed check
if [ -n "$plumb_verify" ]; then
  ( cd -- "$scratch" && PLUMB_RESTORE_DIR=$scratch && export PLUMB_RESTORE_DIR && eval "$plumb_verify" ) || finish failed verify
fi
finish ok ''
"#;

/// Prints `repo=` and, when the repository answers, `snapshots_b64=`. Inputs: `$pw` (the
/// password file), `$tag`; restic's environment exported.
const PROBE_REPO: &str = r#"if ! command -v restic >/dev/null 2>&1 || [ ! -f "$pw" ]; then
  echo repo=unknown
else
  plumb_o=$(timeout "$plumb_t" restic snapshots --no-cache --no-lock --json --latest 1 --tag "$tag" 2>&1)
  plumb_rc=$?
  if [ "$plumb_rc" -eq 0 ]; then
    echo repo=ok
    printf 'snapshots_b64='; printf '%s' "$plumb_o" | base64 | tr -d '\n'; echo
  elif printf '%s' "$plumb_o" | grep -q -i -e 'Is there a repository at the following location' -e 'config: no such file' -e 'config: file does not exist'; then
    echo repo=absent
  else
    echo repo=error
  fi
fi
"#;

/// What the probe saw of the repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RepoState {
    /// It answered with the password plumb wrote.
    Ok,
    /// There is no repository at the location.
    Absent,
    /// It did not answer (unreachable, wrong password, locked...).
    Error,
    /// Not asked: restic or the password file is not there yet.
    Unknown,
}

/// How the last restore test ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum TestResult {
    Ok,
    Failed,
}

/// Which stage of a restore test failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum TestFailure {
    /// The repository did not answer.
    Repository,
    /// There is no snapshot to restore.
    NoSnapshot,
    /// `restic restore` failed.
    Restore,
    /// A restored file differs from its unchanged live file.
    Mismatch,
    /// `restic check --read-data-subset` found damage.
    Check,
    /// The `verify` command failed.
    Verify,
    /// A failure this version of plumb does not know.
    Other,
}

/// The last restore test, as its status file says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema)]
pub struct RestoreTestObserved {
    pub result: TestResult,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure: Option<TestFailure>,
    /// Unix time it finished (host clock).
    pub finished: i64,
    /// Unix time of the last test that succeeded (host clock).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_success: Option<i64>,
    /// How long the restore took (milliseconds): the measured time to recover.
    pub restore_ms: u64,
    /// Restored files compared with their unchanged live files.
    pub files_compared: u64,
    /// Of those, the ones whose sha256 differed.
    pub files_mismatched: u64,
}

/// What the probe of a backup step observed: typed facts for the daemon (metrics, status,
/// alerts) and the policy layer, never parsed from message text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema)]
pub struct BackupObserved {
    /// The host's clock when probed (Unix seconds): ages are measured against it.
    pub now: i64,
    pub repository: RepoState,
    /// Unix time of the latest snapshot of this backup, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latest_snapshot: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub restore_test: Option<RestoreTestObserved>,
    /// How often a backup runs (seconds).
    pub interval_seconds: u64,
    /// How often a restore test runs (seconds).
    pub restore_test_interval_seconds: u64,
}

/// Something wrong with a backup that an alert names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum BackupProblem {
    /// The repository is not there.
    RepositoryAbsent,
    /// The repository did not answer.
    RepositoryUnreachable,
    /// No snapshot, or the latest is older than twice the interval.
    SnapshotStale,
    /// The last restore test failed.
    RestoreTestFailed,
    /// No successful restore test within twice its interval.
    RestoreTestStale,
}

impl BackupProblem {
    pub const fn as_str(self) -> &'static str {
        match self {
            BackupProblem::RepositoryAbsent => "repository_absent",
            BackupProblem::RepositoryUnreachable => "repository_unreachable",
            BackupProblem::SnapshotStale => "snapshot_stale",
            BackupProblem::RestoreTestFailed => "restore_test_failed",
            BackupProblem::RestoreTestStale => "restore_test_stale",
        }
    }
}

impl BackupObserved {
    /// Seconds since the latest snapshot; `None` when there is none.
    pub fn snapshot_age(&self) -> Option<u64> {
        self.latest_snapshot
            .map(|t| u64::try_from(self.now.saturating_sub(t)).unwrap_or(0))
    }

    /// Seconds since the last successful restore test; `None` when there was none.
    pub fn restore_success_age(&self) -> Option<u64> {
        self.restore_test
            .and_then(|t| t.last_success)
            .map(|t| u64::try_from(self.now.saturating_sub(t)).unwrap_or(0))
    }

    /// What an alert must say about this backup (empty: healthy). Late means older than
    /// twice the interval; a missing snapshot or restore test is late too.
    pub fn problems(&self) -> Vec<BackupProblem> {
        let mut out = Vec::new();
        match self.repository {
            RepoState::Absent => out.push(BackupProblem::RepositoryAbsent),
            RepoState::Error => out.push(BackupProblem::RepositoryUnreachable),
            RepoState::Ok | RepoState::Unknown => {}
        }
        let late = |age: Option<u64>, interval: u64| age.is_none_or(|a| a > interval * 2);
        if self.repository != RepoState::Unknown && late(self.snapshot_age(), self.interval_seconds)
        {
            out.push(BackupProblem::SnapshotStale);
        }
        if self
            .restore_test
            .is_some_and(|t| t.result == TestResult::Failed)
        {
            out.push(BackupProblem::RestoreTestFailed);
        }
        if late(
            self.restore_success_age(),
            self.restore_test_interval_seconds,
        ) {
            out.push(BackupProblem::RestoreTestStale);
        }
        out
    }
}

/// The latest snapshot time in restic's `snapshots --json` output.
fn latest_snapshot(json: &[u8]) -> Result<Option<i64>, ProbeError> {
    #[derive(Deserialize)]
    struct Snap {
        time: String,
    }
    // restic may print a line before the JSON (e.g. a cache notice): start at the array.
    let start = json.iter().position(|b| *b == b'[').unwrap_or(0);
    let snaps: Vec<Snap> = serde_json::from_slice(&json[start..])
        .map_err(|e| ProbeError::new(format!("restic's snapshot list is not JSON: {e}")))?;
    let mut latest = None;
    for s in snaps {
        let t =
            time::OffsetDateTime::parse(&s.time, &time::format_description::well_known::Rfc3339)
                .map_err(|e| ProbeError::new(format!("restic snapshot time `{}`: {e}", s.time)))?;
        latest = latest.max(Some(t.unix_timestamp()));
    }
    Ok(latest)
}

fn num<T: std::str::FromStr>(o: &Observed, key: &str) -> Result<Option<T>, ProbeError> {
    match o.get(key) {
        None | Some("") => Ok(None),
        Some(v) => v
            .parse()
            .map(Some)
            .map_err(|_| ProbeError::new(format!("`{key}` is not a number: {v:?}"))),
    }
}

/// The restore test's status file, from the probe's `test_*` lines; `None` before the first.
fn restore_test(o: &Observed) -> Result<Option<RestoreTestObserved>, ProbeError> {
    let result = match o.get("test_result") {
        None | Some("") => return Ok(None),
        Some("ok") => TestResult::Ok,
        Some("failed") => TestResult::Failed,
        Some(r) => {
            return Err(ProbeError::new(format!(
                "unknown restore test result {r:?}"
            )))
        }
    };
    let failure = match o.get("test_failure").unwrap_or_default() {
        "" => None,
        "repository" => Some(TestFailure::Repository),
        "no_snapshot" => Some(TestFailure::NoSnapshot),
        "restore" => Some(TestFailure::Restore),
        "mismatch" => Some(TestFailure::Mismatch),
        "check" => Some(TestFailure::Check),
        "verify" => Some(TestFailure::Verify),
        _ => Some(TestFailure::Other),
    };
    Ok(Some(RestoreTestObserved {
        result,
        failure,
        finished: num(o, "test_finished")?.unwrap_or(0),
        last_success: num(o, "test_last_success")?,
        restore_ms: num(o, "test_restore_ms")?.unwrap_or(0),
        files_compared: num(o, "test_compared")?.unwrap_or(0),
        files_mismatched: num(o, "test_mismatched")?.unwrap_or(0),
    }))
}

impl Backup {
    /// The typed observation of the probe's output.
    fn observation(&self, o: &Observed) -> Result<BackupObserved, ProbeError> {
        let repository = match o.req("repo")? {
            "ok" => RepoState::Ok,
            "absent" => RepoState::Absent,
            "error" => RepoState::Error,
            "unknown" => RepoState::Unknown,
            r => return Err(ProbeError::new(format!("unknown repository state {r:?}"))),
        };
        let latest_snapshot = match (repository, o.bytes("snapshots")?) {
            (RepoState::Ok, Some(json)) => latest_snapshot(&json)?,
            _ => None,
        };
        Ok(BackupObserved {
            now: num(o, "now")?.ok_or_else(|| ProbeError::new("probe output lacks `now`"))?,
            repository,
            latest_snapshot,
            restore_test: restore_test(o)?,
            interval_seconds: self.interval.as_secs(),
            restore_test_interval_seconds: self.restore_interval.as_secs(),
        })
    }

    fn timers(&self) -> [String; 2] {
        [self.unit(false, "timer"), self.unit(true, "timer")]
    }
}

fn shown(h: &str) -> Option<String> {
    match h {
        "absent" => None,
        "other" => Some("not a regular file".into()),
        h => Some(format!("sha256:{h}")),
    }
}

impl Resource for Backup {
    fn target(&self) -> String {
        self.params.name.clone()
    }
    /// Every file it writes, and its units as services.
    fn touches(&self) -> super::Touches {
        let mut t: Vec<super::Touch> = self
            .files
            .iter()
            .map(|f| super::Touch::path(&f.path))
            .collect();
        t.extend(
            self.files
                .iter()
                .filter(|f| f.role.is_unit())
                .filter_map(|f| {
                    let unit = f.path.rsplit('/').next()?;
                    Some(super::Touch::service(unit))
                }),
        );
        t.push(super::Touch::path(&self.status_path()));
        super::Touches::Only(t)
    }
    fn desired(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(&self.params).unwrap_or_default();
        v["password"] = "(sensitive)".into();
        v["files"] = self
            .files
            .iter()
            .filter(|f| f.role != Role::Password)
            .map(|f| serde_json::json!({"path": f.path, "sha256": sha(&f.content)}))
            .collect();
        v
    }
    fn probe(&self) -> String {
        let mut s = format!(
            "{env}pw={pw}\ntag={tag}\nplumb_t={PROBE_TIMEOUT}\n{hash}\n",
            env = self.restic_env(false),
            pw = quote(&self.password_path()),
            tag = quote(&self.tag()),
            hash = sh::HASH_FN,
        );
        s +=
            "if command -v restic >/dev/null 2>&1; then echo restic=yes; else echo restic=no; fi\n";
        s += "printf 'now=%s\\n' \"$(date +%s)\"\n";
        for f in &self.files {
            if f.role == Role::Password {
                // Compared as data, never hashed: a hash of a password is not shown anywhere.
                s += &format!(
                    "plumb_h=$(plumb_hash \"$pw\")\ncase $plumb_h in absent|other) echo \"file=password $plumb_h\" ;;\n*) if printf '%s' {} | base64 -d | cmp -s -- \"$pw\" -; then echo 'file=password set'; else echo 'file=password differs'; fi ;;\nesac\n",
                    quote(&sh::b64(&f.content))
                );
                continue;
            }
            s += &format!(
                "printf 'file=%s %s\\n' {} \"$(plumb_hash {})\"\n",
                f.role.as_str(),
                quote(&f.path)
            );
        }
        for t in self.timers() {
            s += &format!(
                "t={}; printf 'timer=%s %s %s\\n' \"$t\" \"$(systemctl is-enabled -- \"$t\" 2>/dev/null | head -n 1)\" \"$(systemctl is-active -- \"$t\" 2>/dev/null | head -n 1)\"\n",
                quote(&t)
            );
        }
        s += PROBE_REPO;
        s += &format!(
            "if [ -f {st} ]; then sed -n -e 's/^\\({keys}\\)=/test_\\1=/p' {st}; fi\n",
            st = quote(&self.status_path()),
            keys = STATUS_KEYS.join("\\|"),
        );
        s
    }
    fn diff(&self, observed: &ProbeResult) -> Result<Change, ProbeError> {
        let o = Observed::parse(observed)?;
        let seen = self.observation(&o)?;
        let mut c = Change::new(ChangeKind::Modify);
        let files = o.all("file");
        let mut absent = 0;
        for f in &self.files {
            let h = files
                .iter()
                .filter_map(|l| l.split_once(' '))
                .find(|(r, _)| *r == f.role.as_str())
                .map(|(_, h)| h)
                .ok_or_else(|| {
                    ProbeError::new(format!("probe output lacks file {}", f.role.as_str()))
                })?;
            absent += usize::from(h == "absent");
            let (from, to) = if f.role == Role::Password {
                if h == "set" {
                    continue;
                }
                (
                    (h != "absent").then(|| format!("password {h}")),
                    "password set".to_string(),
                )
            } else {
                let want = sha(&f.content);
                if h == want {
                    continue;
                }
                (
                    shown(h).map(|s| format!("{} {s}", f.role.as_str())),
                    format!("{} sha256:{want}", f.role.as_str()),
                )
            };
            c = c.field(Field::Content, from, Some(to));
        }
        if o.all("timer").len() != 2 {
            return Err(ProbeError::new("probe output lacks the timers"));
        }
        for (t, line) in self.timers().iter().zip(o.all("timer").iter()) {
            let mut parts = line.split(' ');
            let (unit, enabled, active) = (parts.next(), parts.next(), parts.next());
            if unit != Some(t.as_str()) {
                return Err(ProbeError::new(format!("probe output lacks timer {t}")));
            }
            if enabled != Some("enabled") || active != Some("active") {
                c = c.field(
                    Field::Enabled,
                    Some(format!(
                        "{t} {} {}",
                        enabled.filter(|e| !e.is_empty()).unwrap_or("unknown"),
                        active.filter(|a| !a.is_empty()).unwrap_or("unknown")
                    )),
                    Some(format!("{t} enabled active")),
                );
            }
        }
        if seen.repository == RepoState::Absent {
            c = c.field(
                Field::State,
                Some("repository absent".into()),
                Some("repository initialised".into()),
            );
        }
        let facts = Facts {
            backup: Some(Box::new(seen)),
            ..Facts::default()
        };
        if c.fields.is_empty() {
            return Ok(Change::in_sync().observed(facts));
        }
        if absent == self.files.len() {
            c.kind = ChangeKind::Create;
        }
        if o.req("restic")? != "yes" {
            c = c.note("restic is not installed yet: an earlier step must install it (`package: {name: restic}`)");
        }
        if seen.repository == RepoState::Unknown {
            c = c.note(
                "the repository is initialised after the password file is written, when absent",
            );
        }
        Ok(c.observed(facts))
    }
    fn apply(&self, change: &Change) -> String {
        if change.kind == ChangeKind::InSync {
            return ":".into();
        }
        let mut s = String::from(
            "command -v restic >/dev/null 2>&1 || { echo 'restic is not installed: install it first (package: {name: restic})' >&2; exit 1; }\n",
        );
        let changed = |f: &ManagedFile| {
            change.fields.iter().any(|c| {
                c.field == Field::Content
                    && c.to
                        .as_deref()
                        .and_then(|t| t.split_once(' '))
                        .is_some_and(|(r, _)| r == f.role.as_str())
            })
        };
        let mut units = false;
        for f in self.files.iter().filter(|f| changed(f)) {
            s += &sh::replace_file(&f.path, &f.content, f.mode);
            units |= f.role.is_unit();
        }
        if units {
            s += "systemctl daemon-reload || exit 1\n";
        }
        s += &self.restic_env(true);
        // Initialise when absent (also when the probe could not ask: the password file may
        // be new). `restic init` refuses a repository that exists, so this never overwrites.
        s += "if ! restic cat config >/dev/null 2>&1; then\n  restic init >/dev/null || exit 1\n  plumb_first=yes\nfi\n";
        for t in self.timers() {
            s += &format!(
                "systemctl enable -- {t} >/dev/null 2>&1 || exit 1\nsystemctl restart -- {t} || exit 1\n",
                t = quote(&t)
            );
        }
        s += &format!(
            "if [ \"${{plumb_first:-}}\" = yes ]; then systemctl start --no-block -- {} || exit 1; fi\n",
            quote(&self.unit(false, "service"))
        );
        s
    }
}

#[cfg(test)]
mod tests {
    use super::super::parse;
    use super::super::testing::*;
    use super::*;

    fn params() -> serde_json::Value {
        serde_json::json!({
            "name": "db",
            "repository": "sftp:backup@host-2:/srv/restic/db",
            "password": "pa$$ 'word'",
            "paths": ["/var/lib/app", "/srv/dump dir"],
            "exclude": ["*.tmp"],
            "before": "sqlite3 /var/lib/app/app.db \".backup '/srv/dump dir/app.db'\"",
            "retention": {"keep_daily": 7, "keep_weekly": 4},
            "schedule": "*-*-* 02:00",
            "interval": "24h",
            "randomized_delay": "30m",
            "restore_test": {"schedule": "weekly", "read_data_subset": "100%", "verify": "sqlite3 'srv/dump dir/app.db' 'select count(*) from t'"},
        })
    }

    fn backup() -> Backup {
        match parse::<Backup>(params()) {
            Ok(b) => b,
            Err(e) => panic!("{e}"),
        }
    }

    const SNAPS: &str = r#"[{"time":"2026-11-30T10:00:00.123456789Z","tree":"ab","paths":["/var/lib/app"],"hostname":"host-1","tags":["plumb-db"],"id":"0123","short_id":"0123"}]"#;

    /// The probe output of a converged host (recorded shape), with `repo` and `test` lines.
    fn converged(b: &Backup, repo: &str, test: &str) -> String {
        let mut s = String::from("restic=yes\nnow=1796036400\n");
        for f in &b.files {
            if f.role == Role::Password {
                s += "file=password set\n";
            } else {
                s += &format!("file={} {}\n", f.role.as_str(), sha(&f.content));
            }
        }
        for t in b.timers() {
            s += &format!("timer={t} enabled active\n");
        }
        s += repo;
        s += test;
        s
    }

    fn ok_repo() -> String {
        format!("repo=ok\nsnapshots_b64={}\n", sh::b64(SNAPS.as_bytes()))
    }

    const TEST_OK: &str = "test_result=ok\ntest_failure=\ntest_finished=1796032800\ntest_last_success=1796032800\ntest_restore_ms=1830\ntest_compared=12\ntest_mismatched=0\n";

    #[test]
    fn scripts_and_units_are_snapshotted() {
        let b = backup();
        insta::assert_snapshot!("backup_probe", b.probe());
        insta::assert_snapshot!("backup_script", b.backup_script());
        insta::assert_snapshot!("backup_restore_test_script", b.restore_script());
        insta::assert_snapshot!("backup_timer", b.timer_unit(false));
        let absent = "restic=yes\nnow=1\nfile=password absent\nfile=backup-script absent\nfile=restore-test-script absent\nfile=backup-service absent\nfile=backup-timer absent\nfile=restore-test-service absent\nfile=restore-test-timer absent\ntimer=plumb-backup-db.timer  inactive\ntimer=plumb-restore-test-db.timer  inactive\nrepo=unknown\n";
        let c = b.diff(&out(absent)).unwrap();
        assert_eq!(c.kind, ChangeKind::Create);
        let a = b.apply(&c);
        insta::assert_snapshot!("backup_create", a);
        assert_eq!(a.matches("daemon-reload").count(), 1);
        assert!(a.find("mv -f -T").unwrap() < a.find("restic init").unwrap());
        assert!(a.find("restic init").unwrap() < a.find("systemctl enable").unwrap());
        let t = b.timer_unit(true);
        assert!(
            t.contains("OnCalendar=weekly\nRandomizedDelaySec=1800\nPersistent=true\n"),
            "{t}"
        );
    }

    #[test]
    fn in_sync_carries_the_observation() {
        let b = backup();
        let c = b.diff(&out(&converged(&b, &ok_repo(), TEST_OK))).unwrap();
        assert_eq!(c.kind, ChangeKind::InSync, "{c:?}");
        let seen = c.observed.backup.unwrap();
        assert_eq!(seen.repository, RepoState::Ok);
        // 2026-11-30T10:00:00Z
        assert_eq!(seen.latest_snapshot, Some(1_796_032_800));
        assert_eq!(seen.snapshot_age(), Some(3_600));
        let t = seen.restore_test.unwrap();
        assert_eq!(
            (t.result, t.restore_ms, t.files_compared, t.files_mismatched),
            (TestResult::Ok, 1830, 12, 0)
        );
        assert_eq!(seen.interval_seconds, 86_400);
        assert_eq!(seen.restore_test_interval_seconds, 7 * 86_400);
        assert!(seen.problems().is_empty(), "{:?}", seen.problems());
    }

    #[test]
    fn a_failed_test_a_missing_repository_and_late_snapshots_are_problems() {
        let b = backup();
        let failed = "test_result=failed\ntest_failure=check\ntest_finished=1796036000\ntest_last_success=1796032800\ntest_restore_ms=900\ntest_compared=3\ntest_mismatched=0\n";
        let c = b.diff(&out(&converged(&b, &ok_repo(), failed))).unwrap();
        let seen = c.observed.backup.unwrap();
        assert_eq!(seen.restore_test.unwrap().failure, Some(TestFailure::Check));
        assert_eq!(seen.problems(), vec![BackupProblem::RestoreTestFailed]);
        // The repository deleted: a change (initialise it again) and two problems.
        let c = b
            .diff(&out(&converged(&b, "repo=absent\n", TEST_OK)))
            .unwrap();
        assert_eq!(c.kind, ChangeKind::Modify);
        assert!(c.changes_field(Field::State));
        assert!(irreversible(&c).is_some());
        let seen = c.observed.backup.unwrap();
        assert_eq!(seen.snapshot_age(), None);
        assert_eq!(
            seen.problems(),
            vec![
                BackupProblem::RepositoryAbsent,
                BackupProblem::SnapshotStale
            ]
        );
        // Three days later: the daily snapshot is late; the weekly test is not.
        let later = converged(&b, &ok_repo(), TEST_OK).replace("now=1796036400", "now=1796295600");
        let seen = b.diff(&out(&later)).unwrap().observed.backup.unwrap();
        assert_eq!(seen.problems(), vec![BackupProblem::SnapshotStale]);
        // No restore test ever: stale.
        let seen = b
            .diff(&out(&converged(&b, &ok_repo(), "")))
            .unwrap()
            .observed
            .backup
            .unwrap();
        assert_eq!(seen.problems(), vec![BackupProblem::RestoreTestStale]);
    }

    #[test]
    fn changed_files_and_stopped_timers_are_changes() {
        let b = backup();
        let probe = converged(&b, &ok_repo(), TEST_OK)
            .replace("file=password set", "file=password differs")
            .replace(
                "plumb-backup-db.timer enabled active",
                "plumb-backup-db.timer disabled inactive",
            );
        let c = b.diff(&out(&probe)).unwrap();
        assert_eq!(c.kind, ChangeKind::Modify);
        assert_eq!(c.fields.len(), 2, "{c:?}");
        let a = b.apply(&c);
        assert_eq!(a.matches("mv -f -T").count(), 1, "only the password file");
        assert!(!a.contains("daemon-reload"));
        assert!(a.contains("chmod -- 0600 f"));
        for bad in ["repo=maybe\n", ""] {
            let p = converged(&b, bad, "").replace("repo=ok", "");
            assert!(b.diff(&out(&p)).is_err(), "{bad:?}");
        }
        let e = diff_error(
            &b,
            &converged(&b, "repo=ok\nsnapshots_b64=bm90IGpzb24=\n", ""),
        );
        assert!(e.contains("not JSON"), "{e}");
    }

    #[test]
    fn the_password_and_commands_never_reach_argv_or_the_scripts_as_code() {
        let b = backup();
        for text in [
            b.probe(),
            b.apply(&Change::new(ChangeKind::Create).field(
                Field::Content,
                None,
                Some("password set".into()),
            )),
        ] {
            assert!(!text.contains("pa$$"), "{text}");
        }
        assert!(b.desired().to_string().contains("(sensitive)"));
        assert!(!b.desired().to_string().contains("pa$$"));
        let s = b.backup_script();
        assert!(
            s.contains("plumb_before='sqlite3") && s.contains("eval \"$plumb_before\""),
            "{s}"
        );
        assert!(s.contains("export RESTIC_PASSWORD_FILE=/etc/plumb/backup/db/password"));
        assert!(s.contains("restic forget --prune --tag plumb-db --keep-daily 7 --keep-weekly 4"));
    }

    #[test]
    fn bad_parameters_are_refused_where_they_are() {
        let cases: &[(&str, serde_json::Value, &str)] = &[
            (
                "/schedule",
                serde_json::json!("03:00\nExecStart=/bin/x"),
                "calendar",
            ),
            ("/paths", serde_json::json!(["relative"]), "absolute"),
            (
                "/repository",
                serde_json::json!("a\nb"),
                "one non-empty line",
            ),
            ("/password", serde_json::json!(""), "empty"),
        ];
        for (key, value, msg) in cases {
            let mut p = params();
            p[&key[1..]] = value.clone();
            let e = parse::<Backup>(p)
                .err()
                .unwrap_or_else(|| panic!("{key} accepted"));
            assert!(
                e.pointer.starts_with(key) && e.message.contains(msg),
                "{key}: {e:?}"
            );
        }
        let mut p = params();
        p["schedule"] = "Mon *-*-* 03:00".into();
        p.as_object_mut().unwrap().remove("interval");
        let e = parse::<Backup>(p).err().unwrap();
        assert_eq!(e.pointer, "/interval");
    }
}
