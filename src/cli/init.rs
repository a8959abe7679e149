//! `plumb init [DIR]`: a working starting repo, valid as written (a test runs `plumb init`
//! then `plumb validate` on it).

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;

use super::term::{escape, Term};

#[derive(Debug, clap::Args)]
pub struct InitArgs {
    /// Where to write the repo (created if missing). Existing files are never overwritten.
    #[arg(default_value = ".")]
    pub dir: PathBuf,
}

const PLUMB_YAML: &str = r#"# yaml-language-server: $schema=schemas/repo.schema.json
# Repo settings: the environments plumb manages and connection defaults for every host.
# Editors that speak the yaml-language-server modeline complete and check every key.
name: my-infra
environments: [production]
defaults:
  user: deploy # the SSH user; `become: true` runs steps through `sudo -n`
  become: true
"#;

const HOSTS_YAML: &str = r#"# yaml-language-server: $schema=../../schemas/hosts.schema.json
# The inventory. Units select hosts by labels; host vars win over env.yaml's vars, which
# win over unit defaults. Select hosts on the command line with
# `--limit web-1`, `--limit 'web-*'` or `--limit role=web`.
hosts:
  - name: web-1
    address: 192.0.2.10 # replace with your host's name or address
    labels:
      role: web
"#;

const ENV_YAML: &str = r#"# yaml-language-server: $schema=../../schemas/env.schema.json
# How production is reconciled.
vars:
  owner: ops@example.com
drift:
  mode: report # `correct` re-applies the commit when a host drifts
  interval: 10m
"#;

const UNIT_YAML: &str = r#"# yaml-language-server: $schema=../schemas/unit.schema.json
description: "What every web host gets."
applies_to:
  role: web

vars: # unit defaults: the lowest precedence
  motd_title: Managed by plumb

steps:
  - id: motd
    file:
      path: /etc/motd
      template: motd.j2 # templates/motd.j2, rendered per host
      mode: "0644"
"#;

const MOTD_J2: &str = r#"{{ motd_title }}: {{ host.name }} ({{ env.name }})
Questions: {{ owner }}
{#- Host facts are there too once plumb has seen the host (`plumb facts --env production`),
    e.g. {{ facts.os.id }} or {{ facts.cpus }}; see the README's "Facts" section. #}
"#;

const ALLOWED_SIGNERS: &str = r#"# An example of plumb's trust root: git's allowed-signers format (ssh-keygen(1),
# ALLOWED SIGNERS). Keep the real file OUTSIDE this repo (e.g. /etc/plumb/allowed_signers):
# a file inside it could be changed by the very commits it should judge.
#
#   plumb verify . --allowed-signers /etc/plumb/allowed_signers
#
# One line per key allowed to sign commits (namespace `git`), for example:
# alice@example.com namespaces="git" ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI...replace-me
"#;

const GITIGNORE: &str = "# plumb keeps nothing in the repo; nothing to ignore yet.\n";

/// The files of a new repo, relative to its directory, with the schemas editors use.
fn files() -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = [
        ("plumb.yaml", PLUMB_YAML),
        ("environments/production/hosts.yaml", HOSTS_YAML),
        ("environments/production/env.yaml", ENV_YAML),
        ("units/web.yaml", UNIT_YAML),
        ("templates/motd.j2", MOTD_J2),
        ("allowed_signers.example", ALLOWED_SIGNERS),
        (".gitignore", GITIGNORE),
    ]
    .into_iter()
    .map(|(p, t)| (p.to_string(), t.to_string()))
    .collect();
    // The config schemas (the report schemas are for tools, not for this repo's files).
    for (file, schema) in crate::schemagen::generate() {
        if !file.contains('/') {
            let text = serde_json::to_string_pretty(&schema).unwrap_or_default() + "\n";
            out.push((format!("schemas/{file}"), text));
        }
    }
    out
}

/// Writes the repo; refuses before writing anything when one of its files exists.
pub fn write_repo(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let files = files();
    let existing: Vec<String> = files
        .iter()
        .map(|(rel, _)| dir.join(rel))
        .filter(|p| p.symlink_metadata().is_ok())
        .map(|p| p.display().to_string())
        .collect();
    if !existing.is_empty() {
        anyhow::bail!(
            "refusing to overwrite {}; run `plumb init` in an empty directory",
            existing.join(", ")
        );
    }
    let mut written = Vec::new();
    for (rel, text) in files {
        let path = dir.join(&rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        // `create_new`: a file that appeared meanwhile is still never overwritten.
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .with_context(|| format!("creating {}", path.display()))?;
        f.write_all(text.as_bytes())
            .with_context(|| format!("writing {}", path.display()))?;
        written.push(path);
    }
    Ok(written)
}

pub fn run(args: InitArgs, term: Term) -> anyhow::Result<u8> {
    let written = write_repo(&args.dir)?;
    for p in &written {
        println!(
            "{} {}",
            term.out.green("created"),
            escape(&p.display().to_string())
        );
    }
    let dir = escape(&args.dir.display().to_string()).into_owned();
    println!(
        "\nnext: edit environments/production/hosts.yaml, then\n  plumb validate {dir}\n  plumb facts {dir} --env production\n  plumb plan {dir} --env production"
    );
    Ok(0)
}
