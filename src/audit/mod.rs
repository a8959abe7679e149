//! The audit trail: every finished run record is signed by the daemon's own Ed25519 key and
//! chained to the record before it.
//!
//! - `record` = the run as canonical JSON (object keys sorted, no whitespace): the run's
//!   columns, every host and step result, the chain position `seq`, the `prev_hash` of the
//!   record before it (64 zeros for the first) and the fingerprint of the signing key.
//! - `hash` = hex(sha256(record)); `signature` = hex(ed25519(the 32 raw bytes of the hash)).
//!
//! The runs table stores `record` exactly as hashed, so verification hashes stored bytes and
//! never depends on re-serialising Rust structs. [`verify_chain`] additionally rebuilds each
//! record from the relational rows and compares, so editing a `runs`, `host_results` or
//! `step_results` row after signing is caught too.
//!
//! What the chain cannot show on its own: removal of the newest records (the tail). Anchor
//! the head (`SEQ:HASH`) that `plumb audit verify` prints somewhere else (a ticket, a log
//! shipper) and pass it back as an [`Anchor`] (`--expect-head SEQ:HASH`, `--min-seq N`):
//! a chain that ends below it fails with [`AuditError::Truncated`].
//!
//! Layering: `audit` is the lower layer and knows nothing of storage. It owns the key, the
//! record format, hashing, signing and the chain rules ([`ChainVerifier`]); the state module
//! stores records, reads them back and feeds them to it. The dependency runs state → audit
//! only, because signing is a pure function of a record while storing needs the database:
//! the reverse would make the crypto depend on SQL.
//!
//! The key lives at `<state_dir>/daemon-ed25519.key` in the OpenSSH private key format
//! (unencrypted, mode 0600, comment `plumb-daemon`), so `ssh-keygen -y -f` prints its public
//! half. It is created on first use.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use schemars::JsonSchema;
use serde::Serialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

pub mod chain;
pub mod export;

pub use chain::{build_record, ChainEntry, ChainVerifier, VerifiedChain};

/// The file name of the daemon key under the state directory.
pub const KEY_FILE: &str = "daemon-ed25519.key";
/// The comment of the daemon's public key.
pub const KEY_COMMENT: &str = "plumb-daemon";
/// `prev_hash` of the first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";
/// Version of the record layout (inside the signed JSON). v2 adds the `drift` part: the drift
/// findings the run opened and resolved (records of v1 have none, and are checked without it).
pub const RECORD_VERSION: u64 = 2;

/// Errors of the audit trail. Each has a stable [`code`](AuditError::code).
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("daemon key {path}: {detail}")]
    Key { path: PathBuf, detail: String },
    #[error(
        "daemon key {path} is readable by other users (mode {mode:o}); run `chmod 600 {path}`"
    )]
    KeyPermissions { path: PathBuf, mode: u32 },
    #[error("public key {path}: {detail}; expected one line `ssh-ed25519 AAAA... comment`")]
    PublicKey { path: PathBuf, detail: String },
    #[error("audit export line {line}: {detail}")]
    Export { line: usize, detail: String },
    #[error("audit chain broken at run {run_id} (record #{seq}): {reason}")]
    Broken {
        run_id: String,
        seq: i64,
        reason: String,
    },
    #[error("audit chain truncated: the anchor expects record #{expected}, but the chain {}: records #{}..#{expected} were removed; restore the database from a backup and find out who deleted them", found.as_ref().map_or_else(|| "is empty".to_string(), |h| format!("ends at #{}", h.seq)), found.as_ref().map_or(1, |h| h.seq + 1))]
    Truncated {
        expected: u64,
        found: Option<AuditHead>,
    },
    #[error("audit chain rewritten: record #{seq} has hash {found}, the anchor says {anchored}; the records from #{seq} on were replaced (re-signed with this key), restore the database from a backup")]
    AnchorMismatch {
        seq: u64,
        anchored: String,
        found: String,
    },
}

impl AuditError {
    pub fn code(&self) -> &'static str {
        match self {
            AuditError::Key { .. } => "audit.key",
            AuditError::KeyPermissions { .. } => "audit.key_permissions",
            AuditError::PublicKey { .. } => "audit.public_key",
            AuditError::Export { .. } => "audit.export",
            AuditError::Broken { .. } => "audit.broken",
            AuditError::Truncated { .. } => "audit.truncated",
            AuditError::AnchorMismatch { .. } => "audit.anchor_mismatch",
        }
    }
}

/// The daemon's signing key.
pub struct DaemonKey {
    signing: SigningKey,
    path: PathBuf,
}

impl std::fmt::Debug for DaemonKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DaemonKey")
            .field("path", &self.path)
            .field("fingerprint", &self.fingerprint())
            .finish()
    }
}

fn key_err(path: &Path, detail: impl std::fmt::Display) -> AuditError {
    AuditError::Key {
        path: path.to_path_buf(),
        detail: detail.to_string(),
    }
}

impl DaemonKey {
    /// Loads `<state_dir>/daemon-ed25519.key`, creating it (mode 0600) when absent.
    pub fn load_or_create(state_dir: &Path) -> Result<DaemonKey, AuditError> {
        let path = state_dir.join(KEY_FILE);
        if path.exists() {
            return DaemonKey::load(&path);
        }
        create_private_dir(state_dir).map_err(|e| key_err(state_dir, e))?;
        let signing = SigningKey::generate(&mut rand::rngs::OsRng);
        let text = openssh_private(&signing).map_err(|e| key_err(&path, e))?;
        // create_new: two daemons racing to create the key never overwrite each other.
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path);
        match file {
            Ok(mut f) => {
                // Explicitly, not through the umask.
                f.set_permissions(std::fs::Permissions::from_mode(0o600))
                    .and_then(|()| f.write_all(text.as_bytes()))
                    .and_then(|()| f.sync_all())
                    .map_err(|e| key_err(&path, e))?;
                Ok(DaemonKey { signing, path })
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => DaemonKey::load(&path),
            Err(e) => Err(key_err(&path, e)),
        }
    }

    /// Loads an existing key file (OpenSSH format, unencrypted, Ed25519).
    pub fn load(path: &Path) -> Result<DaemonKey, AuditError> {
        let meta = std::fs::metadata(path).map_err(|e| key_err(path, e))?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(AuditError::KeyPermissions {
                path: path.to_path_buf(),
                mode,
            });
        }
        let text = std::fs::read_to_string(path).map_err(|e| key_err(path, e))?;
        let key = ssh_key::PrivateKey::from_openssh(text.trim()).map_err(|e| {
            key_err(
                path,
                format!("not an OpenSSH private key ({e}); move it away to have a new one created"),
            )
        })?;
        if key.is_encrypted() {
            return Err(key_err(
                path,
                "the key is encrypted; the daemon needs an unencrypted key (ssh-keygen -p -N '')",
            ));
        }
        let Some(kp) = key.key_data().ed25519() else {
            return Err(key_err(
                path,
                format!("expected an ssh-ed25519 key, found {}", key.algorithm()),
            ));
        };
        Ok(DaemonKey {
            signing: SigningKey::from_bytes(&kp.private.to_bytes()),
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn verifying_key(&self) -> VerifyingKey {
        self.signing.verifying_key()
    }

    /// `ssh-ed25519 AAAA... plumb-daemon`
    pub fn public_key_openssh(&self) -> String {
        public_key_openssh(&self.verifying_key())
    }

    /// `SHA256:...`, as `ssh-keygen -l` shows it.
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.verifying_key())
    }

    /// Signs a record hash (the 32 raw bytes); returns the signature as hex.
    pub fn sign_hash(&self, hash_hex: &str) -> String {
        let bytes = hex::decode(hash_hex).unwrap_or_default();
        hex::encode(self.signing.sign(&bytes).to_bytes())
    }
}

/// Creates `dir` (and missing parents) when absent; a directory this creates is mode 0700,
/// set explicitly whatever the umask. An existing directory is left as it is (the state
/// database refuses to open in one that others may read).
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && dir.is_dir() => Ok(()),
        Err(e) => Err(e),
    }
}

fn ssh_public(key: &VerifyingKey) -> ssh_key::PublicKey {
    ssh_key::PublicKey::new(
        ssh_key::public::KeyData::Ed25519(ssh_key::public::Ed25519PublicKey(key.to_bytes())),
        KEY_COMMENT,
    )
}

fn openssh_private(signing: &SigningKey) -> Result<String, ssh_key::Error> {
    let kp = ssh_key::private::Ed25519Keypair::from_seed(&signing.to_bytes());
    let key = ssh_key::PrivateKey::new(ssh_key::private::KeypairData::Ed25519(kp), KEY_COMMENT)?;
    Ok(key.to_openssh(ssh_key::LineEnding::LF)?.to_string())
}

/// `ssh-ed25519 AAAA... plumb-daemon`
pub fn public_key_openssh(key: &VerifyingKey) -> String {
    ssh_public(key)
        .to_openssh()
        .unwrap_or_else(|_| format!("ssh-ed25519 (unencodable) {KEY_COMMENT}"))
}

/// `SHA256:...`
pub fn fingerprint(key: &VerifyingKey) -> String {
    ssh_public(key)
        .fingerprint(ssh_key::HashAlg::Sha256)
        .to_string()
}

/// Reads a public key file: one OpenSSH line `ssh-ed25519 AAAA... comment` (an
/// allowed-signers style line with leading principals is accepted too).
pub fn read_public_key(path: &Path) -> Result<VerifyingKey, AuditError> {
    let err = |detail: String| AuditError::PublicKey {
        path: path.to_path_buf(),
        detail,
    };
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    parse_public_key(&text).map_err(err)
}

/// Parses an OpenSSH public key line.
pub fn parse_public_key(text: &str) -> Result<VerifyingKey, String> {
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .ok_or("the file is empty")?;
    let start = line.find("ssh-").ok_or("no `ssh-...` key type found")?;
    let key = ssh_key::PublicKey::from_openssh(&line[start..]).map_err(|e| e.to_string())?;
    let ed = key
        .key_data()
        .ed25519()
        .ok_or_else(|| format!("expected an ssh-ed25519 key, found {}", key.algorithm()))?;
    VerifyingKey::from_bytes(&ed.0).map_err(|e| e.to_string())
}

/// JSON with object keys sorted and no whitespace: the form that is hashed.
pub fn canonical_json(v: &Value) -> String {
    fn sort(v: &Value) -> Value {
        match v {
            Value::Object(o) => {
                let mut keys: Vec<&String> = o.keys().collect();
                keys.sort();
                let mut out = Map::new();
                for k in keys {
                    if let Some(x) = o.get(k) {
                        out.insert(k.clone(), sort(x));
                    }
                }
                Value::Object(out)
            }
            Value::Array(a) => Value::Array(a.iter().map(sort).collect()),
            other => other.clone(),
        }
    }
    sort(v).to_string()
}

/// hex(sha256(text))
pub fn record_hash(record: &str) -> String {
    hex::encode(Sha256::digest(record.as_bytes()))
}

/// Checks `signature` (hex) over the raw bytes of `hash` (hex).
pub fn check_signature(key: &VerifyingKey, hash_hex: &str, signature_hex: &str) -> bool {
    let (Ok(hash), Ok(sig)) = (hex::decode(hash_hex), hex::decode(signature_hex)) else {
        return false;
    };
    let Ok(sig) = Signature::from_slice(&sig) else {
        return false;
    };
    key.verify(&hash, &sig).is_ok()
}

/// Position and hash of a record of the chain, written `SEQ:HASH` (what `plumb audit verify`
/// prints as the head, and what `--expect-head` takes back).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize, JsonSchema)]
pub struct AuditHead {
    /// Position in the chain (1 = first record).
    pub seq: u64,
    /// hex(sha256(record)).
    pub hash: String,
}

impl std::fmt::Display for AuditHead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.seq, self.hash)
    }
}

impl FromStr for AuditHead {
    type Err = String;
    fn from_str(s: &str) -> Result<AuditHead, String> {
        let (seq, hash) = s
            .split_once(':')
            .ok_or_else(|| format!("`{s}` is not SEQ:HASH (e.g. 42:{GENESIS})"))?;
        let seq: u64 = seq
            .parse()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| format!("`{seq}` is not a record number (1 or more)"))?;
        if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!("`{hash}` is not a record hash (64 hex digits)"));
        }
        Ok(AuditHead {
            seq,
            hash: hash.to_ascii_lowercase(),
        })
    }
}

/// What an operator anchored outside the state: the chain must reach it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Anchor {
    /// This record must exist with this hash (`--expect-head`).
    pub head: Option<AuditHead>,
    /// The chain must have at least this many records (`--min-seq`).
    pub min_seq: Option<u64>,
}

/// `plumb audit verify --output json`.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct AuditVerifyReport {
    /// True when every record is intact and the chain reaches the anchor, if one was given.
    pub ok: bool,
    /// Records verified (all of them when `ok`; those before the broken one otherwise).
    pub records: usize,
    /// Hash of the newest record: anchor it elsewhere to detect removal of the newest records.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub head: Option<String>,
    /// Position of the newest record; `head_seq:head` is what `--expect-head` takes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub head_seq: Option<u64>,
    /// Fingerprint of the key the chain was verified with.
    pub key_fingerprint: String,
    /// The first broken record.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub broken: Option<BrokenRecord>,
    /// The records are intact but do not reach the anchor: what is missing or rewritten.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub anchor_error: Option<String>,
    /// Stable error code when verification could not run or failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_code: Option<String>,
}

impl AuditVerifyReport {
    /// The report of a verification: `records` is how many records verified before `result`
    /// (what the verifier saw when it stopped); for a broken record it is its position - 1.
    pub fn new(
        result: Result<VerifiedChain, AuditError>,
        records: usize,
        key_fingerprint: String,
    ) -> AuditVerifyReport {
        let mut report = AuditVerifyReport {
            ok: false,
            records,
            head: None,
            head_seq: None,
            key_fingerprint,
            broken: None,
            anchor_error: None,
            error_code: None,
        };
        let e = match result {
            Ok(v) => {
                report.ok = true;
                report.records = v.records;
                report.set_head(v.head);
                return report;
            }
            Err(e) => e,
        };
        report.error_code = Some(e.code().to_string());
        match e {
            AuditError::Broken {
                run_id,
                seq,
                reason,
            } => {
                // The records before the broken one (a gap counts as missing records, not as
                // unverified ones); a finished run outside the chain (seq 0) breaks none.
                if seq > 0 {
                    report.records = usize::try_from(seq - 1).unwrap_or(0);
                }
                report.broken = Some(BrokenRecord {
                    run_id,
                    seq,
                    reason,
                })
            }
            AuditError::Truncated { ref found, .. } => {
                report.set_head(found.clone());
                report.anchor_error = Some(e.to_string());
            }
            other => report.anchor_error = Some(other.to_string()),
        }
        report
    }

    fn set_head(&mut self, head: Option<AuditHead>) {
        self.head_seq = head.as_ref().map(|h| h.seq);
        self.head = head.map(|h| h.hash);
    }

    /// The error line for the terminal (without the `error: ` prefix), when not ok.
    pub fn error_text(&self) -> Option<String> {
        if let Some(b) = &self.broken {
            let at = if b.seq > 0 {
                format!("run {} (record #{})", b.run_id, b.seq)
            } else {
                format!("run {}", b.run_id)
            };
            return Some(format!("audit chain broken at {at}: {}", b.reason));
        }
        self.anchor_error.clone()
    }

    /// The summary line for the terminal: counts, and the head to anchor.
    pub fn summary_text(&self) -> String {
        if self.broken.is_some() {
            return format!("{} records verified before it", self.records);
        }
        let head = match (self.head_seq, &self.head) {
            (Some(seq), Some(hash)) => format!("{seq}:{hash}"),
            _ => "-".into(),
        };
        format!(
            "{} records verified; head {head} (key {})",
            self.records, self.key_fingerprint
        )
    }
}

#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct BrokenRecord {
    pub run_id: String,
    /// Position in the chain (1 = first record).
    pub seq: i64,
    pub reason: String,
}

#[cfg(test)]
mod tests;
