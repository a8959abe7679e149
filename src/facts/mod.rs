//! Host facts: what a host is (OS, architecture, CPUs, memory, names, init system, package
//! manager, address, virtualization), available to templates as `facts`.
//!
//! Like a module, this is pure: [`SCRIPT`] is a POSIX sh fragment that prints what it finds
//! as `key=value` lines (then `/etc/os-release` after an `@os-release` line), and [`parse`]
//! turns that output into typed [`Facts`]. The engine owns the I/O: the fragment rides along
//! with every probe script (see `engine`), so facts cost no extra round trip in steady
//! state. A host's output is hostile: every value is bounded in length, printable ASCII
//! only, and typed (a number is a number, an enum one of its values) before it reaches a
//! template.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub mod cache;

/// Longest value a fact keeps (bytes); longer values are cut.
pub const MAX_FACT_LEN: usize = 255;

/// What a host is. `facts.<field>` in templates, parameters and conditions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Facts {
    pub os: OsFacts,
    /// `uname -m`: `x86_64`, `aarch64`, ...
    pub arch: String,
    /// `uname -r`.
    pub kernel: String,
    /// Online CPUs (`nproc`).
    pub cpus: u32,
    /// Total memory (`MemTotal` of /proc/meminfo), in MiB.
    pub memory_mb: u64,
    /// `uname -n`.
    pub hostname: String,
    /// `hostname -f`; the hostname when that finds nothing.
    pub fqdn: String,
    pub init: Init,
    pub pkg_manager: PkgManager,
    /// The source address of the default route, else the first global IPv4 address.
    /// Unset when the host has none (a template that uses it then fails, naming it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv4: Option<Ipv4Addr>,
    pub virtualization: Virtualization,
    /// The time zone (`Europe/Berlin`, `Etc/UTC`): the zoneinfo name `/etc/localtime` links
    /// to, else the first line of `/etc/timezone`. Unset when neither names a zone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
}

/// From `/etc/os-release`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OsFacts {
    /// `ID`: `debian`, `ubuntu`, `rocky`, `alpine`, ... (`unknown` without os-release).
    pub id: String,
    /// `VERSION_ID`: `12`, `22.04`, ... Unset on rolling releases.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version_id: Option<String>,
    pub family: OsFamily,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum OsFamily {
    Debian,
    Rhel,
    Alpine,
    Suse,
    Arch,
    Other,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Init {
    Systemd,
    Other,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum PkgManager {
    Apt,
    Dnf,
    Yum,
    Apk,
    Zypper,
    Pacman,
    Other,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Virtualization {
    Container,
    Vm,
    None,
    Unknown,
}

/// Why a host's facts output could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FactsError {
    #[error("the facts script printed no `{0}`; the host needs POSIX sh, uname and /proc")]
    Missing(&'static str),
    #[error("the facts script printed `{key}={value}`, which is not a number")]
    NotANumber { key: &'static str, value: String },
}

impl FactsError {
    pub fn code(&self) -> &'static str {
        match self {
            FactsError::Missing(_) => "facts_missing",
            FactsError::NotANumber { .. } => "facts_not_a_number",
        }
    }
}

/// The fact-gathering fragment: POSIX sh, coreutils, and `ip`/`systemd-detect-virt` only
/// when present. It changes nothing and prints one `key=value` per line, then the
/// os-release file after `@os-release`. `hostname -f` may ask DNS, so it is bounded by
/// `timeout` where that exists.
pub const SCRIPT: &str = r#"set -- $(uname -nrm 2>/dev/null)
echo "hostname=$1"; echo "kernel=$2"; echo "arch=$3"
echo "cpus=$(nproc 2>/dev/null || getconf _NPROCESSORS_ONLN 2>/dev/null)"
if [ -r /proc/meminfo ]; then while read -r k v _; do if [ "$k" = MemTotal: ]; then echo "mem_kb=$v"; break; fi; done </proc/meminfo; fi
if command -v timeout >/dev/null 2>&1; then echo "fqdn=$(timeout 2 hostname -f 2>/dev/null)"; else echo "fqdn=$(hostname -f 2>/dev/null)"; fi
if [ -d /run/systemd/system ]; then echo init=systemd; fi
for p in apt-get dnf yum apk zypper pacman; do if command -v "$p" >/dev/null 2>&1; then echo "pkg=$p"; break; fi; done
if command -v ip >/dev/null 2>&1; then
  echo "route=$(ip -4 -o route get 1.0.0.0 2>/dev/null)"
  echo "addr=$(ip -4 -o addr show scope global 2>/dev/null)"
fi
if [ -f /.dockerenv ] || [ -f /run/.containerenv ] || [ -s /run/systemd/container ]; then echo virt_file=container
else
  if command -v systemd-detect-virt >/dev/null 2>&1; then echo "virt=$(systemd-detect-virt 2>/dev/null)"; fi
  if grep -q '^flags.* hypervisor' /proc/cpuinfo 2>/dev/null; then echo virt_cpu=hypervisor; fi
fi
if [ -L /etc/localtime ]; then echo "tz_link=$(readlink /etc/localtime 2>/dev/null)"; fi
if [ -f /etc/timezone ]; then echo "tz_file=$(head -n 1 /etc/timezone 2>/dev/null)"; fi
echo @os-release
cat /etc/os-release 2>/dev/null || cat /usr/lib/os-release 2>/dev/null
exit 0
"#;

/// Keeps a host-supplied value printable, single-line and short.
fn clean(v: &str) -> String {
    v.chars()
        .filter(|c| c.is_ascii_graphic() || *c == ' ')
        .take(MAX_FACT_LEN)
        .collect::<String>()
        .trim()
        .to_string()
}

/// One os-release value: `KEY=value`, `KEY="value"` or `KEY='value'`.
fn os_release_value(v: &str) -> String {
    let v = v.trim();
    let unq = v
        .strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .or_else(|| v.strip_prefix('\'').and_then(|s| s.strip_suffix('\'')))
        .unwrap_or(v);
    clean(&unq.replace("\\\"", "\""))
}

/// The family of an os-release `ID` and `ID_LIKE`: the first of them that names one.
pub fn os_family(id: &str, id_like: &str) -> OsFamily {
    std::iter::once(id)
        .chain(id_like.split_whitespace())
        .find_map(|w| match w {
            "debian" | "ubuntu" | "raspbian" | "linuxmint" => Some(OsFamily::Debian),
            "rhel" | "fedora" | "centos" | "rocky" | "almalinux" | "ol" | "amzn" => {
                Some(OsFamily::Rhel)
            }
            "alpine" => Some(OsFamily::Alpine),
            "suse" | "sles" | "opensuse" => Some(OsFamily::Suse),
            w if w.starts_with("opensuse") => Some(OsFamily::Suse),
            "arch" | "manjaro" | "endeavouros" => Some(OsFamily::Arch),
            _ => None,
        })
        .unwrap_or(OsFamily::Other)
}

/// `src A.B.C.D` in `ip route get` output, else the first `inet A.B.C.D/NN` of `ip addr`.
fn ipv4(route: &str, addr: &str) -> Option<Ipv4Addr> {
    let after = |text: &str, word: &str| -> Option<Ipv4Addr> {
        let mut words = text.split_whitespace();
        while let Some(w) = words.next() {
            if w == word {
                let next = words.next()?;
                let ip = next.split('/').next()?;
                if let Ok(ip) = ip.parse() {
                    return Some(ip);
                }
            }
        }
        None
    };
    after(route, "src").or_else(|| after(addr, "inet"))
}

/// What `systemd-detect-virt` names containers (anything else it names is a VM).
const CONTAINERS: &[&str] = &[
    "docker",
    "podman",
    "lxc",
    "lxc-libvirt",
    "systemd-nspawn",
    "openvz",
    "rkt",
    "wsl",
    "proot",
    "pouch",
    "container-other",
];

fn virtualization(kv: &BTreeMap<&str, String>) -> Virtualization {
    let said = kv.get("virt").map_or("", String::as_str);
    if kv.contains_key("virt_file") || CONTAINERS.contains(&said) {
        Virtualization::Container
    } else if (!said.is_empty() && said != "none") || kv.contains_key("virt_cpu") {
        Virtualization::Vm
    } else if said == "none" {
        Virtualization::None
    } else {
        Virtualization::Unknown
    }
}

fn number<T: std::str::FromStr>(
    kv: &BTreeMap<&str, String>,
    key: &'static str,
) -> Result<T, FactsError> {
    let v = kv
        .get(key)
        .filter(|v| !v.is_empty())
        .ok_or(FactsError::Missing(key))?;
    v.parse().map_err(|_| FactsError::NotANumber {
        key,
        value: v.clone(),
    })
}

/// The zone name from the `/etc/localtime` link (`.../zoneinfo/Europe/Berlin`), else from
/// `/etc/timezone`; only a plausible zone name (letters, digits, `/_+-`, no `..`).
fn timezone(link: &str, file: &str) -> Option<String> {
    let valid = |z: &str| {
        !z.is_empty()
            && !z.starts_with('/')
            && !z.contains("..")
            && z.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"/_+-".contains(&b))
    };
    let from_link = link.rsplit_once("zoneinfo/").map(|(_, z)| z.trim());
    from_link
        .filter(|z| valid(z))
        .or(Some(file.trim()).filter(|z| valid(z)))
        .map(str::to_string)
}

/// Parses what [`SCRIPT`] printed. Unknown keys are ignored; a later repeat of a key does
/// not replace the first.
pub fn parse(stdout: &[u8]) -> Result<Facts, FactsError> {
    let text = String::from_utf8_lossy(stdout);
    let (head, os_release) = match text.split_once("\n@os-release\n") {
        Some((h, o)) => (h, o),
        None => (text.as_ref(), ""),
    };
    let mut kv: BTreeMap<&str, String> = BTreeMap::new();
    for line in head.lines() {
        if let Some((k, v)) = line.split_once('=') {
            kv.entry(k.trim()).or_insert_with(|| clean(v));
        }
    }
    let mut os: BTreeMap<&str, String> = BTreeMap::new();
    for line in os_release.lines() {
        if let Some((k, v)) = line.split_once('=') {
            os.entry(k.trim()).or_insert_with(|| os_release_value(v));
        }
    }
    let required = |key: &'static str| -> Result<String, FactsError> {
        kv.get(key)
            .filter(|v| !v.is_empty())
            .cloned()
            .ok_or(FactsError::Missing(key))
    };
    let hostname = required("hostname")?;
    let id = os
        .get("ID")
        .filter(|v| !v.is_empty())
        .cloned()
        .unwrap_or_else(|| "unknown".into());
    let family = os_family(&id, os.get("ID_LIKE").map_or("", String::as_str));
    let mem_kb: u64 = number(&kv, "mem_kb")?;
    Ok(Facts {
        os: OsFacts {
            version_id: os.get("VERSION_ID").filter(|v| !v.is_empty()).cloned(),
            id,
            family,
        },
        arch: required("arch")?,
        kernel: required("kernel")?,
        cpus: number(&kv, "cpus")?,
        memory_mb: mem_kb / 1024,
        fqdn: kv
            .get("fqdn")
            .filter(|v| !v.is_empty() && !v.contains(' '))
            .cloned()
            .unwrap_or_else(|| hostname.clone()),
        hostname,
        init: match kv.get("init").map(String::as_str) {
            Some("systemd") => Init::Systemd,
            _ => Init::Other,
        },
        pkg_manager: match kv.get("pkg").map(String::as_str) {
            Some("apt-get") => PkgManager::Apt,
            Some("dnf") => PkgManager::Dnf,
            Some("yum") => PkgManager::Yum,
            Some("apk") => PkgManager::Apk,
            Some("zypper") => PkgManager::Zypper,
            Some("pacman") => PkgManager::Pacman,
            _ => PkgManager::Other,
        },
        ipv4: ipv4(
            kv.get("route").map_or("", String::as_str),
            kv.get("addr").map_or("", String::as_str),
        ),
        virtualization: virtualization(&kv),
        timezone: timezone(
            kv.get("tz_link").map_or("", String::as_str),
            kv.get("tz_file").map_or("", String::as_str),
        ),
    })
}

/// Facts known for hosts, by environment and host name, with facts given for a host name in
/// any environment (`--facts FILE`) as the fallback.
#[derive(Debug, Clone, Default)]
pub struct FactsBook {
    per_env: BTreeMap<(String, String), Facts>,
    any_env: BTreeMap<String, Facts>,
}

impl FactsBook {
    pub fn get(&self, env: &str, host: &str) -> Option<&Facts> {
        self.per_env
            .get(&(env.to_string(), host.to_string()))
            .or_else(|| self.any_env.get(host))
    }

    /// Facts of `host` in `env` (observed or cached).
    pub fn insert(&mut self, env: &str, host: &str, facts: Facts) {
        self.per_env
            .insert((env.to_string(), host.to_string()), facts);
    }

    /// Facts of a host name in every environment (from `--facts FILE`).
    pub fn insert_any(&mut self, host: &str, facts: Facts) {
        self.any_env.insert(host.to_string(), facts);
    }

    pub fn is_empty(&self) -> bool {
        self.per_env.is_empty() && self.any_env.is_empty()
    }
}

/// `plumb facts --output json`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct FactsReport {
    pub environment: String,
    pub hosts: Vec<HostFactsReport>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct HostFactsReport {
    pub name: String,
    pub address: String,
    /// Unset when they could not be gathered (see `error`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub facts: Option<Facts>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub round_trips: u32,
}

#[cfg(test)]
pub(crate) mod tests;
