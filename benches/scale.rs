//! Scale without SSH: validate + render + plan for many hosts, against synthetic probe output.
//! A benchmark binary (`harness = false`), never part of `cargo test`:
//!
//! ```sh
//! cargo bench --bench scale -- --hosts 1000 --steps 50
//! /usr/bin/time -v target/release/deps/scale-<hash> --hosts 1000 --steps 50   # peak RSS
//! ```
//!
//! It writes a repo with N hosts and S declared steps per host: one unit of S - 4 steps
//! (directories, files with inline templated content, files from a `template:`, lines; one in
//! five a `loop:` of two items, one in ten with a true `when:`, one in ten with a false one)
//! and two instances (`shop`, `blog`, from env.yaml) of a reusable unit with `params` and two
//! steps, one of them behind a `when:` on a parameter; their targets live in a temp root,
//! applies the steps of host 1 to that root for real (`LocalTransport`), records the probe
//! script's output there (every step in sync), and then runs what `plumb plan` runs —
//! `validate_and_render` (load, schemas, semantic checks, one render of every host) and
//! `plan_all` — with every host's transport answering with that recorded output. Every step
//! of every host renders to the same targets and content, so the recorded output is the real
//! in-sync answer for all of them. Prints one JSON object with the phase times.
//!
//! `--policies` adds what the guardrails add to `plan`/`apply`/the daemon: the starter pack
//! (`examples/policies`) evaluated on every host's observed plan (`policy_ms`).
//!
//! Besides the wall time of each phase it prints the CPU time each used (`cpu_ms`, user +
//! system of every thread: on a shared machine the wall time includes waiting for a core)
//! and the peak resident set after each (`peak_mb`). With `--heap`, a counting allocator
//! also gives the live heap after each (`live_mb`: what is allocated and not freed, without
//! the allocator's overhead and fragmentation that the resident set includes).

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use plumb::engine::{self, Connector};
use plumb::model::Host;
use plumb::transport::{LocalTransport, Output, RunFuture, Transport};

/// With `--heap`: the bytes allocated and not yet freed (the live heap, apart from the
/// allocator's own overhead and fragmentation, which `peak_mb` includes). Off by default: a
/// relaxed load per allocation.
struct Counting;

static COUNTING: AtomicBool = AtomicBool::new(false);
static LIVE: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded to `System` unchanged; only a counter is updated beside it.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        }
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if COUNTING.load(Ordering::Relaxed) {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        }
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            LIVE.fetch_add(new_size, Ordering::Relaxed);
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        }
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// The live heap in MB (counted from the start of `main` with `--heap`; `null` without).
fn live_mb() -> String {
    if COUNTING.load(Ordering::Relaxed) {
        format!("{:.0}", LIVE.load(Ordering::Relaxed) as f64 / 1_048_576.0)
    } else {
        "null".into()
    }
}

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(|v| v.parse().expect("a number"))
        .unwrap_or(default)
}

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().expect("a parent")).expect("mkdir");
    std::fs::write(path, text).expect("write");
}

fn write_repo(repo: &Path, target: &Path, hosts: usize, steps: usize) {
    write(
        &repo.join("plumb.yaml"),
        "name: scale\nenvironments: [prod]\ndefaults:\n  user: deploy\n  become: false\n",
    );
    write(
        &repo.join("environments/prod/env.yaml"),
        "vars:\n  region: eu-west\n  base_port: 8000\ndrift:\n  mode: report\n  interval: 5m\n\
         instances:\n  - name: shop\n    unit: site\n    applies_to: {role: app}\n    params: {port: 8081, tls: true}\n\
         \x20 - name: blog\n    unit: site\n    applies_to: {role: app}\n    params: {port: 8082}\n",
    );
    let mut inv = String::from("hosts:\n");
    for h in 0..hosts {
        inv.push_str(&format!(
            "  - name: host-{h:05}\n    address: 10.{}.{}.{}\n    labels: {{role: app, rack: \"r{}\"}}\n    vars:\n      rack: \"r{}\"\n",
            (h >> 16) & 255,
            (h >> 8) & 255,
            h & 255,
            h % 20,
            h % 20
        ));
    }
    write(&repo.join("environments/prod/hosts.yaml"), &inv);
    write(
        &repo.join("templates/app.conf.j2"),
        "# {{ env }} / {{ region }}\n{% for w in workers %}worker {{ loop.index }} = {{ w }}:{{ base_port + loop.index }}\n{% endfor %}\n",
    );
    let t = target.display();
    // A reusable unit, instantiated twice on every host (`shop/conf`, `shop/tls`, `blog/conf`;
    // `blog/tls` is left out by its `when:`): its steps count in `steps`.
    write(
        &repo.join("units/site.yaml"),
        &format!(
            "description: a site\nparams:\n  port: {{type: integer}}\n  tls: {{type: boolean, default: false}}\n\
             steps:\n  - id: conf\n    file:\n      path: \"{t}/d00/site-{{{{ instance.name }}}}.conf\"\n\
             \x20     content: \"listen {{{{ port }}}} in {{{{ region }}}} for {{{{ instance.name }}}}\\n\"\n      mode: \"0644\"\n    after: [app/s000]\n\
             \x20 - id: tls\n    when: tls\n    file:\n      path: \"{t}/d00/site-{{{{ instance.name }}}}.tls\"\n\
             \x20     content: \"tls on {{{{ port }}}}\\n\"\n      mode: \"0600\"\n    after: [app/s000]\n"
        ),
    );
    let steps = steps.saturating_sub(SITE_STEPS).max(1);
    let mut y = String::from(
        "description: scale\napplies_to:\n  role: app\nvars:\n  workers: [alpha, beta, gamma, delta]\n  log_level: info\nsteps:\n",
    );
    let dirs = (steps / 5).max(1);
    for i in 0..steps {
        y.push_str(&format!("  - id: s{i:03}\n"));
        if i < dirs {
            y.push_str(&format!(
                "    directory:\n      path: {t}/d{i:02}\n      mode: \"0755\"\n"
            ));
        } else if i % 5 == 0 {
            y.push_str(&format!(
                "    file:\n      path: {t}/d{:02}/t{i:03}.conf\n      template: app.conf.j2\n      mode: \"0644\"\n    after: [s{:03}]\n",
                i % dirs,
                i % dirs
            ));
        } else if i % 5 == 1 {
            y.push_str(&format!(
                "    line:\n      path: {t}/lines.conf\n      line: \"setting_{i} = {{{{ base_port + {i} }}}}\"\n      create: true\n"
            ));
        } else if i % 5 == 3 {
            // A loop: one step per item, addressed s{i}[alpha], s{i}[beta].
            y.push_str(&format!(
                "    loop: \"{{{{ workers[:2] }}}}\"\n    file:\n      path: {t}/d{:02}/l{i:03}-{{{{ item }}}}.conf\n      content: \"{{{{ item }}}} {{{{ loop.index }}}} {{{{ region }}}}\\n\"\n      mode: \"0644\"\n",
                i % dirs
            ));
        } else {
            // Conditions: true on every host, or (every other one) false on every host.
            if i % 5 == 4 {
                let cond = if i % 10 == 4 {
                    "region == \"eu-west\""
                } else {
                    "rack == \"nowhere\""
                };
                y.push_str(&format!("    when: '{cond}'\n"));
            }
            y.push_str(&format!(
                "    file:\n      path: {t}/d{:02}/f{i:03}.conf\n      content: \"# {{{{ env }}}} {{{{ region }}}}\\nlevel = {{{{ log_level }}}}\\nport = {{{{ base_port + {i} }}}}\\n\"\n      mode: \"0644\"\n",
                i % dirs
            ));
        }
    }
    write(&repo.join("units/app.yaml"), &y);
}

/// Declared steps per host that come from the two instances of `units/site.yaml`.
const SITE_STEPS: usize = 4;

/// Answers every script with the recorded output of host 1's probe (all in sync).
#[derive(Debug)]
struct Canned(Arc<Vec<u8>>);

impl Transport for Canned {
    fn run_within<'a>(&'a self, _script: &'a [u8], _timeout: std::time::Duration) -> RunFuture<'a> {
        let stdout = self.0.as_ref().clone();
        Box::pin(async move {
            Ok(Output {
                stdout,
                stderr: Vec::new(),
                status: Some(0),
            })
        })
    }
}

struct CannedConnector(Arc<Vec<u8>>);

impl Connector for CannedConnector {
    fn connect(&self, _host: &Host) -> Arc<dyn Transport> {
        Arc::new(Canned(self.0.clone()))
    }
}

/// Runs the real probe of one host locally and keeps what it printed.
#[derive(Debug)]
struct Recorder(LocalTransport, std::sync::Mutex<Vec<u8>>);

impl Transport for Recorder {
    fn run_within<'a>(&'a self, script: &'a [u8], timeout: std::time::Duration) -> RunFuture<'a> {
        Box::pin(async move {
            let out = self.0.run_within(script, timeout).await?;
            *self.1.lock().expect("lock") = out.stdout.clone();
            Ok(out)
        })
    }
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
}

/// CPU time (user + system, every thread) this process has used, in ms: on a shared
/// machine, what a phase cost apart from waiting for a core.
fn cpu_ms() -> f64 {
    let mut u = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes the struct it is given; RUSAGE_SELF is always valid.
    let u = unsafe {
        libc::getrusage(libc::RUSAGE_SELF, u.as_mut_ptr());
        u.assume_init()
    };
    let t = |v: libc::timeval| v.tv_sec as f64 * 1000.0 + v.tv_usec as f64 / 1000.0;
    t(u.ru_utime) + t(u.ru_stime)
}

/// The peak resident set so far (`VmHWM`), in MB.
fn peak_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

fn main() {
    COUNTING.store(std::env::args().any(|a| a == "--heap"), Ordering::Relaxed);
    let hosts = arg("--hosts", 1000);
    let steps = arg("--steps", 50);
    let tmp = tempfile::tempdir().expect("tempdir");
    let repo = tmp.path().join("repo");
    let target = tmp.path().join("root");
    write_repo(&repo, &target, hosts, steps);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");

    // The recorded in-sync probe output (not timed).
    let (small, diags) = plumb::validate::validate(&repo);
    assert!(!diags.has_errors(), "{diags:?}");
    let one = plumb::render::render_env(&small, "prod", Some("host-00000")).expect("render");
    let run = rt.block_on(engine::apply_host(&one[0], &LocalTransport::new()));
    assert!(run.error.is_none(), "local apply: {:?}", run.error);
    let rec = Recorder(LocalTransport::new(), std::sync::Mutex::new(Vec::new()));
    let plan = rt.block_on(engine::plan_host(&one[0], &rec));
    assert_eq!(plan.changes(), 0, "host 1 is not in sync after apply");
    let canned = Arc::new(rec.1.into_inner().expect("lock"));
    drop((small, one));

    // What `plumb plan` does, timed by phase.
    let c0 = cpu_ms();
    let t0 = Instant::now();
    // Validation renders every host; plan reuses that render (render_ms is what is left).
    let (_loaded, diags, rendered) = plumb::validate::validate_and_render(&repo, "prod", None);
    assert!(!diags.has_errors(), "{diags:?}");
    let validate_ms = ms(t0);
    let (validate_cpu, validate_mb, validate_live) = (cpu_ms() - c0, peak_mb(), live_mb());
    let t1 = Instant::now();
    let desired = rendered.expect("rendered");
    let render_ms = ms(t1);
    let t2 = Instant::now();
    let plans = rt.block_on(engine::plan_all(
        &desired,
        &CannedConnector(canned.clone()),
        10,
    ));
    let plan_ms = ms(t2);
    let c2 = cpu_ms();
    let (plan_cpu, plan_mb, plan_live) = (c2 - c0 - validate_cpu, peak_mb(), live_mb());
    let t3 = Instant::now();
    let policy_ms = if std::env::args().any(|a| a == "--policies") {
        let mut set = plumb::policy::PolicySet::default();
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/policies");
        set.add_dirs(plumb::policy::Origin::Operator, &[dir], false)
            .expect("the starter pack compiles");
        let ctx = plumb::policy::Context {
            environment: "prod".into(),
            commit: None,
            now: plumb::policy::NowInput::at(time::OffsetDateTime::now_utc()),
        };
        let refs: Vec<&engine::HostPlan> = plans.iter().collect();
        let findings = plumb::policy::judge_plans(&set, &ctx, &desired, &refs).expect("evaluates");
        assert!(findings.is_empty(), "{findings:?}");
        Some(ms(t3))
    } else {
        None
    };
    let policy_ms = policy_ms.map_or_else(|| "null".to_string(), |m| format!("{m:.1}"));
    let total_ms = ms(t0);
    let (policy_cpu, total_cpu) = (cpu_ms() - c2, cpu_ms() - c0);
    let changes: usize = plans.iter().map(|p| p.changes()).sum();
    let errors: usize = plans
        .iter()
        .map(|p| p.step_errors() + usize::from(p.error.is_some()))
        .sum();
    assert_eq!(plans.len(), hosts);
    assert_eq!(
        changes + errors,
        0,
        "every synthetic host should be in sync"
    );
    println!(
        "{{\"hosts\": {hosts}, \"steps\": {steps}, \"validate_ms\": {validate_ms:.1}, \"render_ms\": {render_ms:.1}, \"plan_ms\": {plan_ms:.1}, \"policy_ms\": {policy_ms}, \"total_ms\": {total_ms:.1}, \"cpu_ms\": {{\"validate\": {validate_cpu:.0}, \"plan\": {plan_cpu:.0}, \"policy\": {policy_cpu:.0}, \"total\": {total_cpu:.0}}}, \"peak_mb\": {{\"validate\": {validate_mb:.0}, \"plan\": {plan_mb:.0}, \"end\": {:.0}}}, \"live_mb\": {{\"validate\": {validate_live}, \"plan\": {plan_live}, \"end\": {}}}, \"probe_output_bytes\": {}, \"changes\": {changes}}}",
        peak_mb(),
        live_mb(),
        canned.len()
    );
}
