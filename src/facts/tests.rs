use super::*;

fn recorded(name: &str) -> Facts {
    let path = format!(
        "{}/src/facts/recorded/{name}.txt",
        env!("CARGO_MANIFEST_DIR")
    );
    parse(&std::fs::read(path).expect("recorded output")).expect("parses")
}

/// Facts for tests elsewhere.
pub(crate) fn sample() -> Facts {
    parse(include_bytes!("recorded/rocky-vm.txt")).expect("parses")
}

#[test]
fn debian_container() {
    insta::assert_yaml_snapshot!(recorded("debian-container"));
}

#[test]
fn rocky_vm() {
    insta::assert_yaml_snapshot!(recorded("rocky-vm"));
}

#[test]
fn alpine_container_without_ip_or_fqdn() {
    insta::assert_yaml_snapshot!(recorded("alpine-container"));
}

#[test]
fn arch_on_bare_metal_has_no_version_id() {
    insta::assert_yaml_snapshot!(recorded("arch-metal"));
}

/// Host output is hostile: values stay data, printable and bounded; the first value of a
/// key counts; a bad address is no address; an unknown package manager is `other`.
#[test]
fn hostile_output_stays_data() {
    let f = recorded("hostile");
    assert_eq!(f.hostname, "evil{{ 7*7 }}");
    assert_eq!(f.fqdn, f.hostname, "an fqdn with a space is not one");
    assert_eq!(f.pkg_manager, PkgManager::Other);
    assert_eq!(f.ipv4, Some("10.9.8.7".parse().unwrap()));
    assert_eq!(f.os.id, "ubuntu$(reboot)");
    assert_eq!(f.os.family, OsFamily::Debian, "from ID_LIKE");
    assert_eq!(f.virtualization, Virtualization::Unknown);
    let long = format!(
        "hostname={}\nkernel=k\narch=a\ncpus=1\nmem_kb=1\n",
        "x".repeat(10_000)
    );
    assert_eq!(parse(long.as_bytes()).unwrap().hostname.len(), MAX_FACT_LEN);
}

#[test]
fn missing_or_malformed_facts_are_errors_naming_the_fact() {
    assert_eq!(parse(b""), Err(FactsError::Missing("hostname")));
    assert_eq!(
        parse(b"hostname=h\nkernel=k\narch=a\ncpus=many\nmem_kb=1\n"),
        Err(FactsError::NotANumber {
            key: "cpus",
            value: "many".into()
        })
    );
}

#[test]
fn families() {
    assert_eq!(os_family("ubuntu", ""), OsFamily::Debian);
    assert_eq!(os_family("almalinux", "rhel centos fedora"), OsFamily::Rhel);
    assert_eq!(os_family("opensuse-leap", "suse opensuse"), OsFamily::Suse);
    assert_eq!(os_family("gentoo", ""), OsFamily::Other);
    assert_eq!(os_family("pop", "ubuntu debian"), OsFamily::Debian);
}

/// The script runs under a plain POSIX sh here and its output parses.
#[test]
fn the_script_runs_here() {
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(SCRIPT)
        .output()
        .expect("sh runs");
    let f = parse(&out.stdout).expect("facts of this machine");
    assert!(f.cpus >= 1);
    assert!(f.memory_mb > 0);
    assert!(!f.hostname.is_empty());
}

#[test]
fn the_book_prefers_the_environment() {
    let mut book = FactsBook::default();
    let mut other = sample();
    other.cpus = 99;
    book.insert_any("web-1", other.clone());
    book.insert("prod", "web-1", sample());
    assert_eq!(book.get("prod", "web-1").map(|f| f.cpus), Some(8));
    assert_eq!(book.get("staging", "web-1").map(|f| f.cpus), Some(99));
    assert_eq!(book.get("prod", "web-2"), None);
}

#[test]
fn virtualization_from_systemd_detect_virt() {
    let with = |extra: &str| {
        let out = format!("hostname=h\nkernel=k\narch=a\ncpus=1\nmem_kb=1\n{extra}");
        parse(out.as_bytes()).expect("parses").virtualization
    };
    assert_eq!(with("virt=lxc\n"), Virtualization::Container);
    assert_eq!(with("virt=kvm\n"), Virtualization::Vm);
    assert_eq!(with("virt=none\n"), Virtualization::None);
    assert_eq!(with("virt_cpu=hypervisor\n"), Virtualization::Vm);
    assert_eq!(with(""), Virtualization::Unknown);
}

/// `facts.timezone`: the zone /etc/localtime links to, else /etc/timezone's; anything that
/// is not a zone name is no time zone.
#[test]
fn timezone_from_the_localtime_link_or_etc_timezone() {
    let base = "hostname=h\nkernel=k\narch=a\ncpus=1\nmem_kb=1\n";
    let tz = |extra: &str| parse(format!("{base}{extra}").as_bytes()).unwrap().timezone;
    assert_eq!(tz(""), None);
    assert_eq!(
        tz("tz_link=/usr/share/zoneinfo/Europe/Berlin\ntz_file=Etc/UTC\n").as_deref(),
        Some("Europe/Berlin")
    );
    assert_eq!(
        tz("tz_link=../usr/share/zoneinfo/America/Argentina/Buenos_Aires\n").as_deref(),
        Some("America/Argentina/Buenos_Aires")
    );
    assert_eq!(
        tz("tz_link=/etc/other\ntz_file=Etc/UTC\n").as_deref(),
        Some("Etc/UTC")
    );
    assert_eq!(tz("tz_file=$(reboot)\n"), None);
    assert_eq!(tz("tz_link=/usr/share/zoneinfo/../../etc/shadow\n"), None);
    assert_eq!(
        recorded("debian-container").timezone.as_deref(),
        Some("Etc/UTC")
    );
}
