"""The benchmark driver (run by bench/run, which builds plumb, the image and the venv).

For each workload, run r and tool t (tools interleaved within a run, so slow drift of the
machine hits every tool alike): fresh hosts (`testhosts up`), then
  first   apply on the fresh hosts,
  noop    a second real run that changes nothing (plumb: apply, plan and drift),
  changed a run where exactly one file's content differs (alternating variants).
Every sample is one line of results.jsonl: {workload, tool, phase, cmd, run, secs, rc, ...}.
"""

import json
import os
import re
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "bench")
PLUMB = os.path.join(ROOT, "target", "release", "plumb")
VENV_BIN = os.path.join(BENCH, ".venv", "bin")
TESTHOSTS = os.path.join(ROOT, "integration", "testhosts")

ENV = dict(os.environ, PLUMB_TEST_CLUSTER="bench",
           PLUMB_TEST_RUN_IMAGE="plumb-testhost-bench:latest",
           PATH=VENV_BIN + os.pathsep + os.environ["PATH"],
           ANSIBLE_NOCOLOR="1", PYTHONUNBUFFERED="1", NO_COLOR="1")


def log(*a):
    print("bench:", *a, file=sys.stderr, flush=True)


class Bench:
    def __init__(self, out, hosts_dir):
        self.out = out
        self.dir = hosts_dir
        self.results = open(os.path.join(out, "results.jsonl"), "a")
        self.logs = os.path.join(out, "logs")
        os.makedirs(self.logs, exist_ok=True)
        self.seq = 0

    def up(self, n):
        t = time.monotonic()
        subprocess.run([TESTHOSTS, "up", str(n), "--dir", self.dir], env=ENV, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        log(f"up {n}: {time.monotonic() - t:.1f}s")

    def hosts(self):
        return re.findall(r"- name: (\S+)", open(os.path.join(self.dir, "hosts.yaml")).read())

    def timed(self, argv, cwd=None, stdin=None, env=None):
        """Runs argv, returns (secs, rc, stdout); stdout+stderr also go to a log file."""
        self.seq += 1
        path = os.path.join(self.logs, f"{self.seq:04d}.log")
        with open(path, "w") as lf:
            lf.write("$ " + " ".join(argv) + "\n")
            lf.flush()
            inp = open(stdin) if stdin else subprocess.DEVNULL
            t = time.monotonic()
            p = subprocess.run(argv, cwd=cwd, stdin=inp, stdout=subprocess.PIPE,
                               stderr=lf, env=env or ENV)
            secs = time.monotonic() - t
            lf.write(p.stdout.decode(errors="replace"))
        return secs, p.returncode, p.stdout.decode(errors="replace"), path

    def ssh_all(self, script):
        """The floor: SCRIPT through `sudo -n sh -s` on every host at once, one ssh each."""
        self.seq += 1
        t = time.monotonic()
        procs = []
        for h in self.hosts():
            procs.append(subprocess.Popen(
                ["ssh", "-F", os.path.join(self.dir, "ssh_config"), h, "sudo -n sh -s"],
                stdin=open(script), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=ENV))
        outs = [p.communicate()[0] for p in procs]
        secs = time.monotonic() - t
        rc = max(p.returncode for p in procs)
        path = os.path.join(self.logs, f"{self.seq:04d}.log")
        with open(path, "wb") as f:
            f.write(b"$ ssh HOST sudo -n sh -s < " + script.encode() + b"\n" + b"".join(outs))
        return secs, rc, outs[0].decode(errors="replace"), path

    def record(self, **kw):
        self.results.write(json.dumps(kw) + "\n")
        self.results.flush()
        flag = "" if kw["rc"] in kw.get("ok", (0,)) else f"  FAILED rc={kw['rc']} see {kw['log']}"
        log(f"{kw['workload']:>7} {kw['tool']:>7} {kw['phase']:>7} {kw['cmd']:<14} "
            f"run {kw['run']}: {kw['secs']:7.2f}s{flag}")

    # --- tools ---------------------------------------------------------------------------

    def plumb(self, wl, phase, run, repo, cmd="apply", extra=(), ok=(0,)):
        argv = [PLUMB, cmd, repo, "--env", "bench", "--identity",
                os.path.join(self.dir, "id_ed25519"), "--known-hosts",
                os.path.join(self.dir, "known_hosts"), "--output", "json", *extra]
        secs, rc, out, path = self.timed(argv)
        rt, changes = None, None
        try:
            rep = json.loads(out)
            rt = [h.get("round_trips") for h in rep.get("hosts", [])]
            changes = rep.get("total_changed", rep.get("total_changes"))
        except (ValueError, AttributeError):
            pass
        name = cmd + (" --host" if "--host" in extra else "")
        self.record(workload=wl, tool="plumb", phase=phase, cmd=name, run=run, secs=secs, rc=rc,
                    ok=ok, round_trips=rt, changes=changes, log=path)

    def ansible(self, wl, phase, run, d, cpdir):
        env = dict(ENV, ANSIBLE_CONFIG=os.path.join(d, "ansible.cfg"),
                   ANSIBLE_SSH_CONTROL_PATH_DIR=cpdir)
        secs, rc, out, path = self.timed(["ansible-playbook", "playbook.yml"], cwd=d, env=env)
        changed = [int(x) for x in re.findall(r"changed=(\d+)", out)]
        self.record(workload=wl, tool="ansible", phase=phase, cmd="playbook", run=run,
                    secs=secs, rc=rc, changes=sum(changed), log=path)

    def pyinfra(self, wl, phase, run, d):
        secs, rc, out, path = self.timed(["pyinfra", "-y", "inventory.py", "deploy.py"], cwd=d)
        self.record(workload=wl, tool="pyinfra", phase=phase, cmd="deploy", run=run, secs=secs,
                    rc=rc, log=path)

    def floor(self, wl, phase, run, d, what):
        secs, rc, out, path = self.ssh_all(os.path.join(d, what))
        self.record(workload=wl, tool="floor", phase=phase, cmd=what, run=run, secs=secs, rc=rc,
                    log=path)

    def state_digest(self, wl, tool, d):
        """What the floor probe sees after TOOL's first apply (same on every tool = same work)."""
        _, _, out, _ = self.ssh_all(os.path.join(d, "probe.sh"))
        with open(os.path.join(self.out, f"state-{wl}-{tool}.txt"), "w") as f:
            f.write(out)

    # --- one workload ----------------------------------------------------------------------

    def workload(self, wl, n_hosts, steps, runs, noops, changes, tools):
        self.up(n_hosts)  # addresses are stable per host number: generate once
        w = os.path.join(self.out, "work", wl)
        for variant in ("base", "changed"):
            subprocess.run([sys.executable, os.path.join(BENCH, "gen.py"),
                            os.path.join(w, variant), str(steps), self.dir, variant],
                           check=True, env=ENV)
        base, chg = os.path.join(w, "base"), os.path.join(w, "changed")
        subprocess.run([PLUMB, "validate", os.path.join(base, "plumb")], check=True,
                       stdout=subprocess.DEVNULL)
        first_host = self.hosts()[0]
        for run in range(max(runs.values())):
            for tool in tools:
                if run >= runs[tool]:
                    continue
                self.up(n_hosts)
                cp = os.path.join(self.out, "cp", f"{wl}-{run}")
                os.makedirs(cp, exist_ok=True)
                variants = [chg if i % 2 == 0 else base for i in range(changes[tool])]
                if tool == "plumb":
                    self.plumb(wl, "first", run, os.path.join(base, "plumb"))
                    for i in range(noops[tool]):
                        self.plumb(wl, "noop", run, os.path.join(base, "plumb"))
                        self.plumb(wl, "noop", run, os.path.join(base, "plumb"), "plan")
                        self.plumb(wl, "noop", run, os.path.join(base, "plumb"), "drift")
                        if n_hosts > 1:
                            self.plumb(wl, "noop", run, os.path.join(base, "plumb"), "plan",
                                       extra=("--host", first_host))
                    for v in variants:
                        self.plumb(wl, "changed", run, os.path.join(v, "plumb"))
                elif tool == "ansible":
                    self.ansible(wl, "first", run, os.path.join(base, "ansible"), cp)
                    for i in range(noops[tool]):
                        self.ansible(wl, "noop", run, os.path.join(base, "ansible"), cp)
                    for v in variants:
                        self.ansible(wl, "changed", run, os.path.join(v, "ansible"), cp)
                elif tool == "pyinfra":
                    self.pyinfra(wl, "first", run, os.path.join(base, "pyinfra"))
                    for i in range(noops[tool]):
                        self.pyinfra(wl, "noop", run, os.path.join(base, "pyinfra"))
                    for v in variants:
                        self.pyinfra(wl, "changed", run, os.path.join(v, "pyinfra"))
                elif tool == "floor":
                    self.floor(wl, "first", run, os.path.join(base, "floor"), "apply.sh")
                    for i in range(noops[tool]):
                        self.floor(wl, "noop", run, os.path.join(base, "floor"), "probe.sh")
                        self.floor(wl, "noop", run, os.path.join(base, "floor"), "apply.sh")
                    for v in variants:
                        self.floor(wl, "changed", run, os.path.join(v, "floor"), "apply.sh")
                if run == 0:
                    last = variants[-1] if variants else base
                    if last != base:  # leave every host on the base variant for the digest
                        {"plumb": lambda: self.plumb(wl, "changed", run,
                                                     os.path.join(base, "plumb")),
                         "ansible": lambda: self.ansible(wl, "changed", run,
                                                         os.path.join(base, "ansible"), cp),
                         "pyinfra": lambda: self.pyinfra(wl, "changed", run,
                                                         os.path.join(base, "pyinfra")),
                         "floor": lambda: self.floor(wl, "changed", run,
                                                     os.path.join(base, "floor"), "apply.sh"),
                         }[tool]()
                    self.state_digest(wl, tool, os.path.join(base, "floor"))


def counts(spec, tools):
    """'plumb=5,ansible=2' (or one number for all) -> {tool: n}."""
    if "=" not in spec:
        return {t: int(spec) for t in tools}
    d = dict(kv.split("=") for kv in spec.split(","))
    return {t: int(d.get(t, d.get("*", 1))) for t in tools}


def main():
    out, hosts_dir = sys.argv[1], sys.argv[2]
    tools = os.environ.get("BENCH_TOOLS", "floor,plumb,pyinfra,ansible").split(",")
    b = Bench(out, hosts_dir)
    for wl in os.environ.get("BENCH_WORKLOADS", "1x100,10x20").split(","):
        h, s = (int(x) for x in wl.split("x"))
        key = wl.replace("x", "X")
        runs = counts(os.environ.get(f"BENCH_RUNS_{key}", "3"), tools)
        noops = counts(os.environ.get(f"BENCH_NOOPS_{key}", "2"), tools)
        changes = counts(os.environ.get(f"BENCH_CHANGES_{key}", "2"), tools)
        b.workload(wl, h, s, runs, noops, changes, tools)


if __name__ == "__main__":
    main()
