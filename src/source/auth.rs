//! Credentials for fetching the config repository (`repository_auth:` in the daemon config).
//!
//! Nothing secret is ever put in an argument vector or a log line:
//! - SSH: `GIT_SSH_COMMAND` (an environment variable of the `git` process) runs `ssh` with the
//!   deploy key (`-i`), `IdentitiesOnly`, the given `known_hosts` file and strict host key
//!   checking. Only file paths appear in `ssh`'s arguments; the key stays in its file.
//! - HTTPS: a credential helper, configured through `GIT_CONFIG_COUNT`/`GIT_CONFIG_KEY_n`
//!   environment variables, reads the token file when git asks (`get`) and prints it on its
//!   stdout to git. The token is never in a URL, an argument or the environment.
//!
//! Key and token files must not be readable by group or others (checked before each fetch).

use std::path::{Path, PathBuf};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::SourceError;

/// `repository_auth:` in the daemon config.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RepositoryAuth {
    /// SSH deploy key (private key file, mode 0600 or stricter) for `ssh://` and
    /// `user@host:path` repositories.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_key_file: Option<PathBuf>,
    /// known_hosts for the repository's server; host keys are checked strictly (required
    /// with `ssh_key_file`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub known_hosts_file: Option<PathBuf>,
    /// File holding an HTTPS access token (mode 0600 or stricter), for `https://` URLs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// The user name sent with the token (`x-access-token` works for GitHub, `oauth2` for
    /// GitLab).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
}

/// Single-quotes `s` for a POSIX shell.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// Refuses a secret file others may read (or that is missing).
pub fn check_private(what: &str, path: &Path) -> Result<(), SourceError> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).map_err(|source| SourceError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(SourceError::Auth(format!(
            "{}: the {what} is readable by group or others (mode {mode:03o}); run `chmod 600 {}`",
            path.display(),
            path.display()
        )));
    }
    Ok(())
}

impl RepositoryAuth {
    /// Checks the combination and the files' modes.
    pub fn check(&self) -> Result<(), SourceError> {
        if let Some(key) = &self.ssh_key_file {
            check_private("SSH deploy key", key)?;
            match &self.known_hosts_file {
                Some(kh) if kh.is_file() => {}
                Some(kh) => {
                    return Err(SourceError::Auth(format!(
                        "{}: known_hosts file does not exist (write the server's host key there, e.g. with ssh-keyscan, and check it)",
                        kh.display()
                    )))
                }
                None => {
                    return Err(SourceError::Auth(
                        "repository_auth: ssh_key_file needs known_hosts_file (host keys are checked strictly)".into(),
                    ))
                }
            }
        }
        if let Some(token) = &self.token_file {
            check_private("token file", token)?;
        }
        Ok(())
    }

    /// The environment variables for one `git` process (no secret among them).
    pub fn env(&self) -> Vec<(String, String)> {
        let mut env = Vec::new();
        if let Some(key) = &self.ssh_key_file {
            let mut cmd = format!(
                "ssh -i {} -o IdentitiesOnly=yes -o BatchMode=yes -o StrictHostKeyChecking=yes",
                sh_quote(&key.to_string_lossy())
            );
            if let Some(kh) = &self.known_hosts_file {
                cmd.push_str(&format!(
                    " -o UserKnownHostsFile={} -o GlobalKnownHostsFile=/dev/null",
                    sh_quote(&kh.to_string_lossy())
                ));
            }
            env.push(("GIT_SSH_COMMAND".into(), cmd));
        }
        if let Some(token) = &self.token_file {
            let user = self.username.as_deref().unwrap_or("x-access-token");
            // git runs `!...` helpers with sh; `printf` is a builtin (no process, no argv).
            let helper = format!(
                "!f() {{ test \"$1\" = get || exit 0; t=$(cat {}) || exit 1; printf 'username=%s\\npassword=%s\\n' {} \"$t\"; }}; f",
                sh_quote(&token.to_string_lossy()),
                sh_quote(user)
            );
            for (k, v) in [
                ("GIT_CONFIG_COUNT", "2".to_string()),
                ("GIT_CONFIG_KEY_0", "credential.helper".into()),
                ("GIT_CONFIG_VALUE_0", String::new()),
                ("GIT_CONFIG_KEY_1", "credential.helper".into()),
                ("GIT_CONFIG_VALUE_1", helper),
            ] {
                env.push((k.to_string(), v));
            }
        }
        env
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn key_mode_is_checked_and_nothing_secret_is_in_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("deploy key");
        let token = dir.path().join("token");
        let kh = dir.path().join("known_hosts");
        std::fs::write(&key, "PRIVATE KEY MATERIAL").unwrap();
        std::fs::write(&token, "s3cr3t-t0ken\n").unwrap();
        std::fs::write(&kh, "").unwrap();
        for f in [&key, &token] {
            std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
        let auth = RepositoryAuth {
            ssh_key_file: Some(key.clone()),
            known_hosts_file: Some(kh.clone()),
            token_file: Some(token.clone()),
            username: None,
        };
        let e = auth.check().unwrap_err();
        assert_eq!(e.code(), "repository-auth");
        assert!(e.to_string().contains("chmod 600"), "{e}");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(auth.check().unwrap_err().to_string().contains("token file"));
        std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o400)).unwrap();
        auth.check().unwrap();
        let env = auth.env();
        let all: String = env.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
        assert!(!all.contains("s3cr3t") && !all.contains("PRIVATE"), "{all}");
        assert!(all.contains("StrictHostKeyChecking=yes"), "{all}");
        assert!(all.contains(&format!("-i '{}'", key.display())), "{all}");
        let no_kh = RepositoryAuth {
            known_hosts_file: None,
            token_file: None,
            ..auth
        };
        assert!(no_kh
            .check()
            .unwrap_err()
            .to_string()
            .contains("known_hosts_file"));
    }

    #[test]
    fn the_credential_helper_prints_the_token_to_git_only() {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("it's a token");
        std::fs::write(&token, "tok-123\n").unwrap();
        let auth = RepositoryAuth {
            token_file: Some(token),
            username: Some("oauth2".into()),
            ..RepositoryAuth::default()
        };
        let env = auth.env();
        let helper = &env
            .iter()
            .find(|(k, _)| k == "GIT_CONFIG_VALUE_1")
            .unwrap()
            .1;
        let script = helper.strip_prefix('!').unwrap();
        let out = std::process::Command::new("sh")
            .args(["-c", &format!("{script} \"$@\""), "helper", "get"])
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "username=oauth2\npassword=tok-123\n"
        );
        let store = std::process::Command::new("sh")
            .args(["-c", &format!("{script} \"$@\""), "helper", "store"])
            .output()
            .unwrap();
        assert!(store.status.success() && store.stdout.is_empty());
    }
}
