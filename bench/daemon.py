#!/usr/bin/env python3
"""The daemon over time: commit-to-applied latency, then its resident memory while idle.

    bench/daemon.py [OUT]      (default OUT: bench/out/daemon-<UTC timestamp>)

A script, never a test. Needs `target/release/plumb` (cargo build --release), docker and the
test host image (integration/testhosts image). On hosts of their own cluster
(PLUMB_TEST_CLUSTER=daemonbench, removed on exit) it:

1. writes a repo for HOSTS hosts with one unit of 10 steps (directories and files, one of them
   templated with a `rev` variable), signs and pushes the first commit to a local bare repo,
   and starts `plumb daemon` on it (drift checks every DRIFT, mode report);
2. LATENCY samples: changes `rev`, commits (signed), pushes, and takes the time from just
   before the push to the `finished_at` of the run that applied it on every host (the daemon
   watches the bare repo: a push is seen at once);
3. samples the daemon's VmRSS (with its anonymous, file-backed and shared parts, and
   VmHWM) every minute for IDLE_SECONDS of drift checks.

Prints one JSON object (also written to OUT/daemon.json). Knobs (environment): HOSTS=10,
LATENCY=20, IDLE_SECONDS=3600, DRIFT=30s; PLUMB_BIN (default target/release/plumb),
PLUMB_TEST_CLUSTER (default daemonbench: two runs at once need two names).
"""
import datetime
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PLUMB = Path(os.environ.get("PLUMB_BIN", ROOT / "target/release/plumb"))
TESTHOSTS = ROOT / "integration/testhosts"
HOSTS = int(os.environ.get("HOSTS", "10"))
LATENCY = int(os.environ.get("LATENCY", "20"))
IDLE = int(os.environ.get("IDLE_SECONDS", "3600"))
DRIFT = os.environ.get("DRIFT", "30s")
ENV = dict(os.environ, PLUMB_TEST_CLUSTER=os.environ.get("PLUMB_TEST_CLUSTER", "daemonbench"))


def log(*a):
    print("bench/daemon:", *a, file=sys.stderr, flush=True)


def run(argv, **kw):
    return subprocess.run(argv, check=True, text=True, capture_output=True, **kw).stdout


def git(repo, *args):
    return run(
        ["git", "-C", str(repo), "-c", "user.name=Bench", "-c", "user.email=bench@plumb",
         "-c", "gpg.format=ssh", "-c", f"user.signingkey={repo.parent / 'signing/id_ed25519'}",
         *args],
        env=dict(os.environ, GIT_CONFIG_GLOBAL="/dev/null", GIT_CONFIG_NOSYSTEM="1"),
    ).strip()


UNIT = """description: the daemon benchmark's unit
vars:
  rev: {rev}
steps:
  - id: dir
    directory: {{path: /srv/bench, mode: "0755"}}
{files}"""


def write_repo(clone, hosts_dir, rev):
    (clone / "environments/prod").mkdir(parents=True, exist_ok=True)
    (clone / "units").mkdir(exist_ok=True)
    (clone / "plumb.yaml").write_text(
        "name: daemonbench\nenvironments: [prod]\ndefaults: {user: deploy, become: true}\n")
    (clone / "environments/prod/env.yaml").write_text(
        f"drift: {{mode: report, interval: {DRIFT}}}\n")
    (clone / "environments/prod/hosts.yaml").write_text((hosts_dir / "hosts.yaml").read_text())
    files = "".join(
        f"  - id: f{i}\n    file: {{path: /srv/bench/f{i}.conf, mode: \"0644\", "
        f"content: \"{'rev {{ rev }}' if i == 0 else f'static {i}'}\\n\"}}\n    after: [dir]\n"
        for i in range(9))
    (clone / "units/app.yaml").write_text(UNIT.format(rev=rev, files=files))


def history(state):
    """The newest runs; none while the daemon has not created its state yet."""
    try:
        out = run([str(PLUMB), "history", "--limit", "50", "--output", "json", "--state",
                   str(state)])
    except subprocess.CalledProcessError:
        return []
    return json.loads(out)["runs"]


def wait_applied(state, commit, timeout=300):
    start = time.time()
    while time.time() - start < timeout:
        for r in history(state):
            if r["kind"] == "apply" and r["commit"] == commit and r.get("finished_at"):
                if r["result"] != "converged":
                    raise SystemExit(f"run of {commit} ended {r['result']}")
                return r
        time.sleep(0.1)
    raise SystemExit(f"{commit} not applied within {timeout}s")


def rfc3339(text):
    """Seconds since the epoch of `plumb history`'s RFC 3339 timestamps."""
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def rss(pid):
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        k, _, v = line.partition(":")
        if k in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem"):
            fields[k] = int(v.split()[0]) / 1024  # MiB
    return fields


def main():
    out = Path(sys.argv[1] if len(sys.argv) > 1 else
               ROOT / "bench/out" / time.strftime("daemon-%Y%m%dT%H%M%SZ", time.gmtime()))
    out.mkdir(parents=True, exist_ok=True)
    hosts_dir, work = out / "hosts", out / "work"
    work.mkdir(exist_ok=True)
    log(f"{HOSTS} hosts")
    subprocess.run([str(TESTHOSTS), "up", str(HOSTS), "--dir", str(hosts_dir)], check=True,
                   env=ENV, stdout=subprocess.DEVNULL)
    daemon = None
    try:
        (work / "signing").mkdir(exist_ok=True)
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "bench@plumb", "-f",
             str(work / "signing/id_ed25519")])
        key = " ".join((work / "signing/id_ed25519.pub").read_text().split()[:2])
        (work / "signing/allowed_signers").write_text(f'bench@plumb namespaces="git" {key}\n')
        clone, bare = work / "clone", work / "repo.git"
        run(["git", "init", "-q", "--bare", "-b", "main", str(bare)])
        run(["git", "init", "-q", "-b", "main", str(clone)])
        state = work / "state"
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        (work / "daemon.yaml").write_text(
            f"repository: {bare}\nbranch: main\nallowed_signers: {work}/signing/allowed_signers\n"
            f"environments: [prod]\nstate_dir: {state}\nlisten: 127.0.0.1:{port}\n"
            f"ssh: {{identity_file: {hosts_dir}/id_ed25519, known_hosts_file: {hosts_dir}/known_hosts}}\n")

        def commit(rev):
            write_repo(clone, hosts_dir, rev)
            git(clone, "add", "-A")
            git(clone, "commit", "-q", "-S", "-m", f"rev {rev}")
            t = time.time()
            git(clone, "push", "-q", str(bare), "main")
            return git(clone, "rev-parse", "HEAD"), t

        first, _ = commit(0)
        logf = open(work / "daemon.log", "w")
        daemon = subprocess.Popen([str(PLUMB), "daemon", "--config", str(work / "daemon.yaml")],
                                  stdout=subprocess.DEVNULL, stderr=logf)
        wait_applied(state, first, timeout=600)
        log("first commit applied; latency samples")
        lat = []
        for rev in range(1, LATENCY + 1):
            c, pushed = commit(rev)
            r = wait_applied(state, c)
            lat.append(rfc3339(r["finished_at"]) - pushed)
        lat.sort()
        log(f"idle for {IDLE}s (drift every {DRIFT})")
        samples = []
        start = time.time()
        while True:
            m = rss(daemon.pid)
            samples.append({"t_s": round(time.time() - start), "rss_mib": round(m["VmRSS"], 1),
                            "anon_mib": round(m["RssAnon"], 2), "file_mib": round(m["RssFile"], 2),
                            "shmem_mib": round(m["RssShmem"], 2), "hwm_mib": round(m["VmHWM"], 1)})
            log(f"rss sample: {samples[-1]}")
            if time.time() - start >= IDLE:
                break
            time.sleep(min(60, max(1, IDLE - (time.time() - start))))
            if daemon.poll() is not None:
                raise SystemExit("the daemon exited")
        checks = sum(1 for r in history(state) if r["kind"] == "drift_check")
        result = {
            "hosts": HOSTS,
            "drift_interval": DRIFT,
            "latency_s": {
                "samples": len(lat),
                "min": round(lat[0], 3),
                "median": round(statistics.median(lat), 3),
                "p95": round(lat[min(len(lat) - 1, int(0.95 * len(lat)))], 3),
                "max": round(lat[-1], 3),
            },
            "idle_s": IDLE,
            "drift_checks_in_last_50_runs": checks,
            "rss_mib_start": samples[0]["rss_mib"],
            "rss_mib_end": samples[-1]["rss_mib"],
            "rss_mib_max": max(s["rss_mib"] for s in samples),
            "anon_mib_start": samples[0]["anon_mib"],
            "anon_mib_end": samples[-1]["anon_mib"],
            "file_mib_start": samples[0]["file_mib"],
            "file_mib_end": samples[-1]["file_mib"],
            "hwm_mib": samples[-1]["hwm_mib"],
            "load_average": os.getloadavg(),
            "rss_samples": samples,
        }
        (out / "daemon.json").write_text(json.dumps(result, indent=2))
        print(json.dumps({k: v for k, v in result.items() if k != "rss_samples"}, indent=2))
    finally:
        if daemon is not None:
            daemon.terminate()
            daemon.wait(timeout=30)
        subprocess.run([str(TESTHOSTS), "down", "--dir", str(hosts_dir)], env=ENV,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


if __name__ == "__main__":
    main()
