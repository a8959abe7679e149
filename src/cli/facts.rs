//! `plumb facts`, and the facts side of every command that renders: where facts come from
//! (`--facts FILE`, else the cache), gathering them for hosts that have none (one round trip,
//! reported), and rendering a host again when its facts changed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use anyhow::Context as _;

use crate::engine::{HostError, HostPlan, HostRun, RoundTrips};
use crate::facts::cache::FactsCache;
use crate::facts::{Facts, FactsBook, FactsReport, HostFactsReport};
use crate::model::{Host, Repo};
use crate::render::DesiredHost;

use super::args::{runtime, ConnArgs, FactsArgs, HostArgs, OutputFormat, Target};
use super::diagnostic::fail_with;
use super::term::{escape, print_json, print_text, Term};

/// Largest `--facts FILE` read (bytes).
const MAX_FACTS_FILE: u64 = 8 * 1024 * 1024;

/// `--facts FILE`: a map of host name to facts, or `plumb facts --output json`.
fn read_facts_file(path: &Path) -> anyhow::Result<BTreeMap<String, Facts>> {
    use std::io::Read as _;
    let mut text = String::new();
    std::fs::File::open(path)
        .with_context(|| format!("reading --facts {}", path.display()))?
        .take(MAX_FACTS_FILE + 1)
        .read_to_string(&mut text)
        .with_context(|| format!("reading --facts {}", path.display()))?;
    if text.len() as u64 > MAX_FACTS_FILE {
        anyhow::bail!("--facts {}: larger than 8 MiB", path.display());
    }
    let node = crate::yaml::Node::parse(&text).map_err(|e| {
        anyhow::anyhow!(
            "{}:{}:{}: {}",
            path.display(),
            e.pos.line,
            e.pos.col,
            e.message
        )
    })?;
    let json = node.to_json();
    let map = match json.get("hosts").and_then(|h| h.as_array()) {
        // The output of `plumb facts --output json`.
        Some(hosts) => hosts
            .iter()
            .filter(|h| h.get("facts").is_some())
            .map(|h| {
                let name = h.get("name").and_then(|n| n.as_str()).unwrap_or_default();
                let facts: Facts = serde_json::from_value(h["facts"].clone())
                    .with_context(|| format!("--facts {}: host `{name}`", path.display()))?;
                Ok((name.to_string(), facts))
            })
            .collect::<anyhow::Result<BTreeMap<_, _>>>()?,
        None => serde_json::from_value(json).with_context(|| {
            format!(
                "--facts {}: expected a map of host name to facts (os, arch, kernel, cpus, \
                 memory_mb, hostname, fqdn, init, pkg_manager, virtualization)",
                path.display()
            )
        })?,
    };
    Ok(map)
}

impl FactsArgs {
    /// The cache to read and write; `None` with `--facts FILE` (the file is the truth) or
    /// when no cache directory can be found.
    pub fn cache(&self) -> Option<FactsCache> {
        if self.facts_file.is_some() {
            return None;
        }
        self.facts_cache
            .clone()
            .or_else(FactsCache::default_dir)
            .map(FactsCache::new)
    }

    /// Puts the facts known without contacting a host into `repo`: `--facts FILE`, else
    /// the cache's facts of every host of every environment.
    pub fn attach(&self, repo: &mut Repo) -> anyhow::Result<()> {
        let mut book = FactsBook::default();
        if let Some(path) = &self.facts_file {
            for (host, facts) in read_facts_file(path)? {
                book.insert_any(&host, facts);
            }
        } else if let Some(cache) = self.cache() {
            let hosts = repo
                .environments
                .values()
                .flat_map(|e| e.hosts.iter().map(|h| (e.name.as_str(), h.name.as_str())));
            cache.load_into(hosts, &mut book);
        }
        repo.facts = book;
        Ok(())
    }
}

/// A host whose facts could not be gathered: it is reported, never rendered.
pub struct Ungathered {
    pub host: Host,
    pub error: HostError,
    pub round_trips: u32,
}

impl Ungathered {
    pub fn plan(&self) -> HostPlan {
        HostPlan {
            host: self.host.clone(),
            facts: None,
            steps: Vec::new(),
            error: Some(self.error.clone()),
            round_trips: RoundTrips {
                facts: self.round_trips,
                ..RoundTrips::default()
            },
            duration: std::time::Duration::ZERO,
        }
    }

    pub fn run(&self) -> HostRun {
        HostRun {
            host: self.host.clone(),
            facts: None,
            status: self.error.status(),
            error: Some(format!("gathering facts: {}", self.error)),
            steps: Vec::new(),
            handlers: Vec::new(),
            round_trips: RoundTrips {
                facts: self.round_trips,
                ..RoundTrips::default()
            },
            duration: std::time::Duration::ZERO,
        }
    }
}

/// Everything a command that reaches hosts needs before its first probe.
pub struct Prepared {
    pub repo: Repo,
    pub hosts: Vec<DesiredHost>,
    pub ungathered: Vec<Ungathered>,
    /// Facts round trips spent per host (hosts that had no facts).
    pub gathered: BTreeMap<String, u32>,
    pub cache: Option<FactsCache>,
    /// What a state directory says plumb manages on each host (`--state`), by host: rendered
    /// hosts get the removals and orphans it calls for ([`Prepared::prune_from`]). Without a
    /// state nothing is known to be managed, so nothing is pruned.
    pub managed: BTreeMap<String, Vec<crate::prune::Managed>>,
}

impl Prepared {
    /// The facts round trips spent on `host` before rendering.
    pub fn facts_trips(&self, host: &str) -> u32 {
        self.gathered.get(host).copied().unwrap_or(0)
    }

    /// Caches facts just observed.
    fn remember(&self, env: &str, host: &str, facts: &Facts) {
        if let Some(cache) = &self.cache {
            if let Err(e) = cache.store(env, host, facts) {
                tracing::warn!(host = %host, error = %e, dir = %cache.dir().display(), "could not cache facts");
            }
        }
    }

    /// Adds to each rendered host the removals and orphans of what `db` (`--state`) says plumb
    /// manages there: what the repo no longer declares is removed (prune on) or reported
    /// orphaned (see [`crate::prune`]); kept when a host is rendered again.
    pub fn prune_from(&mut self, db: &crate::state::StateDb, env: &str) -> anyhow::Result<()> {
        for h in &mut self.hosts {
            let managed = db.managed(env, &h.host.name)?;
            crate::prune::add_removals(&self.repo, env, h, &managed);
            self.managed.insert(h.host.name.clone(), managed);
        }
        Ok(())
    }

    /// Renders `host` again with the facts it was just seen with. `Err`: why it cannot be.
    pub fn rerender(&mut self, env: &str, i: usize, facts: &Facts) -> Result<(), String> {
        let host = self.hosts[i].host.clone();
        tracing::info!(host = %host.name, "facts changed since they were cached: rendering again");
        self.remember(env, &host.name, facts);
        self.repo.facts.insert(env, &host.name, facts.clone());
        match crate::render::render_host(&self.repo, env, &host) {
            Ok(mut d) => {
                if let Some(m) = self.managed.get(&host.name) {
                    crate::prune::add_removals(&self.repo, env, &mut d, m);
                }
                self.hosts[i] = d;
                Ok(())
            }
            Err(d) => Err(d
                .into_sorted()
                .into_iter()
                .map(|d| format!("{}:{}:{}: {}", d.path, d.line, d.col, d.message))
                .collect::<Vec<_>>()
                .join("; ")),
        }
    }
}

/// Loads, selects the hosts (`--limit`), gathers the facts of selected hosts that have
/// none (one round trip each, reported), validates and renders. Prints the diagnostics and
/// returns `None` when the repo is invalid or a limit selects nothing: nothing reaches a
/// host then.
pub fn prepare(
    target: &Target,
    conn: &ConnArgs,
    output: OutputFormat,
    term: Term,
    rt: &tokio::runtime::Runtime,
) -> anyhow::Result<Option<Prepared>> {
    let (mut repo, mut diags) = crate::model::load::load(&target.repo);
    if diags.has_errors() {
        fail_with(diags, &repo.sources, output, term.err);
        return Ok(None);
    }
    target.facts.attach(&mut repo)?;
    let env = &target.env;
    // Secrets `env` reads are decrypted with the identity (structural checks without one).
    repo.secrets = crate::secrets::Keyring::for_env(env, target.identity()?);
    let selected: Vec<Host> = match repo.environments.get(env) {
        Some(e) => target
            .limits()
            .select(env, &e.hosts)?
            .into_iter()
            .cloned()
            .collect(),
        None => Vec::new(),
    };
    // Only hosts whose templates need facts and that have none cost a round trip first.
    let missing: Vec<Host> = selected
        .iter()
        .filter(|h| crate::render::needs_facts(&repo, env, h))
        .cloned()
        .collect();
    let cache = target.facts.cache();
    let mut gathered = BTreeMap::new();
    let mut ungathered = Vec::new();
    if !missing.is_empty() {
        let connector = conn.connector();
        let results = rt.block_on(crate::engine::until_signal(crate::engine::gather_all(
            &missing,
            connector.as_ref(),
            conn.parallel,
        )))?;
        for (host, (result, trips)) in missing.into_iter().zip(results) {
            tracing::info!(host = %host.name, round_trips = trips, "no cached facts: gathered them first");
            match result {
                Ok(facts) => {
                    if let Some(c) = &cache {
                        if let Err(e) = c.store(env, &host.name, &facts) {
                            tracing::warn!(host = %host.name, error = %e, "could not cache facts");
                        }
                    }
                    repo.facts.insert(env, &host.name, facts);
                    gathered.insert(host.name.clone(), trips);
                }
                Err(error) => ungathered.push(Ungathered {
                    host,
                    error,
                    round_trips: trips,
                }),
            }
        }
    }
    let keep: BTreeSet<&str> = selected
        .iter()
        .map(|h| h.name.as_str())
        .filter(|n| !ungathered.iter().any(|u| u.host.name == *n))
        .collect();
    let hosts = crate::validate::check_and_render(&repo, &mut diags, env, &|h| {
        keep.contains(h.name.as_str())
    });
    match hosts {
        Some(hosts) if !diags.has_errors() => Ok(Some(Prepared {
            repo,
            hosts,
            ungathered,
            gathered,
            cache,
            managed: BTreeMap::new(),
        })),
        _ => {
            fail_with(diags, &repo.sources, output, term.err);
            Ok(None)
        }
    }
}

/// `plumb facts`: gathers and prints the facts of the selected hosts (one round trip
/// each) and caches them. Exit 0, or 1 when a host's facts could not be gathered.
pub fn run(args: HostArgs, term: Term) -> anyhow::Result<u8> {
    let output = args.output.output;
    let (repo, diags) = crate::model::load::load(&args.target.repo);
    if diags.has_errors() {
        return Ok(fail_with(diags, &repo.sources, output, term.err));
    }
    let env = &args.target.env;
    let Some(environment) = repo.environments.get(env) else {
        let known: Vec<&str> = repo.environments.keys().map(String::as_str).collect();
        anyhow::bail!(
            "no environment `{env}` (known environments: {})",
            known.join(", ")
        );
    };
    let hosts: Vec<Host> = args
        .target
        .limits()
        .select(env, &environment.hosts)?
        .into_iter()
        .cloned()
        .collect();
    let connector = args.conn.connector();
    let results = runtime()?.block_on(crate::engine::until_signal(crate::engine::gather_all(
        &hosts,
        connector.as_ref(),
        args.conn.parallel,
    )))?;
    let cache = args.target.facts.cache();
    let report = FactsReport {
        environment: env.clone(),
        hosts: hosts
            .iter()
            .zip(results)
            .map(|(h, (result, round_trips))| {
                if let (Some(c), Ok(f)) = (&cache, &result) {
                    if let Err(e) = c.store(env, &h.name, f) {
                        tracing::warn!(host = %h.name, error = %e, "could not cache facts");
                    }
                }
                let (facts, error) = match result {
                    Ok(f) => (Some(f), None),
                    Err(e) => (None, Some(e.to_string())),
                };
                HostFactsReport {
                    name: h.name.clone(),
                    address: h.address.clone(),
                    facts,
                    error,
                    round_trips,
                }
            })
            .collect(),
    };
    match output {
        OutputFormat::Json => print_json(&report)?,
        OutputFormat::Text => print_text(&facts_text(&report))?,
    }
    Ok(u8::from(report.hosts.iter().any(|h| h.error.is_some())))
}

/// The text form: one block per host, one `fact: value` per line.
fn facts_text(r: &FactsReport) -> String {
    let mut out = String::new();
    for h in &r.hosts {
        out.push_str(&format!(
            "host {} ({})",
            escape(&h.name),
            escape(&h.address)
        ));
        match (&h.facts, &h.error) {
            (Some(f), _) => {
                out.push('\n');
                let json = serde_json::to_value(f).unwrap_or_default();
                for (k, v) in flatten("", &json) {
                    out.push_str(&format!("  facts.{k}: {}\n", escape(&v)));
                }
            }
            (None, e) => out.push_str(&format!(
                ": error: {}\n",
                escape(e.as_deref().unwrap_or("no facts"))
            )),
        }
    }
    out
}

fn flatten(prefix: &str, v: &serde_json::Value) -> Vec<(String, String)> {
    match v {
        serde_json::Value::Object(m) => m
            .iter()
            .flat_map(|(k, v)| {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, v)
            })
            .collect(),
        serde_json::Value::String(s) => vec![(prefix.to_string(), s.clone())],
        other => vec![(prefix.to_string(), other.to_string())],
    }
}
