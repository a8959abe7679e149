"""Turns OUT/results.jsonl (and OUT/scale-*.json) into markdown tables on stdout."""

import glob
import json
import os
import statistics
import sys


def fmt(xs):
    if not xs:
        return "–"
    med = statistics.median(xs)
    if len(xs) == 1:
        return f"{med:.2f}"
    return f"{med:.2f} ({min(xs):.2f}–{max(xs):.2f})"


def main():
    out = sys.argv[1]
    rows = [json.loads(x) for x in open(os.path.join(out, "results.jsonl"))]
    print("# bench/run report\n")
    print("```\n" + open(os.path.join(out, "machine.txt")).read() + "```\n")
    failed = [r for r in rows if r["rc"] not in r.get("ok", [0])]
    if failed:
        print(f"**{len(failed)} failed samples** (excluded): " +
              ", ".join(f"{r['workload']}/{r['tool']}/{r['phase']}/{r['cmd']} ({r['log']})"
                        for r in failed) + "\n")
    rows = [r for r in rows if r not in failed]

    def secs(wl, tool, phase, cmd=None):
        return [r["secs"] for r in rows if r["workload"] == wl and r["tool"] == tool and
                r["phase"] == phase and (cmd is None or r["cmd"] == cmd)]

    def med(wl, tool, phase, cmd=None):
        xs = secs(wl, tool, phase, cmd)
        return statistics.median(xs) if xs else None

    def ratio(a, b):
        return f"{a / b:.2f}" if a and b else "–"

    for wl in sorted({r["workload"] for r in rows}, key=lambda w: int(w.split("x")[0])):
        print(f"## {wl} (hosts × steps)\n")
        print("Wall seconds, median (min–max); n = samples.\n")
        print("| tool | command | first apply | no-op run | one changed file |")
        print("| --- | --- | --- | --- | --- |")
        cmds = [("floor", "apply.sh"), ("floor", "probe.sh"), ("plumb", "apply"),
                ("plumb", "plan"), ("plumb", "drift"), ("plumb", "plan --host"),
                ("pyinfra", "deploy"), ("ansible", "playbook")]
        for tool, cmd in cmds:
            cells = []
            for phase in ("first", "noop", "changed"):
                xs = secs(wl, tool, phase, cmd)
                cells.append(f"{fmt(xs)} n={len(xs)}" if xs else "–")
            if any(c != "–" for c in cells):
                label = {"plan --host": "plan --host (1 of the hosts)"}.get(cmd, cmd)
                print(f"| {tool} | {label} | " + " | ".join(cells) + " |")
        print()
        print("Ratios of medians (plumb apply ÷ other):\n")
        print("| phase | ÷ Ansible | ÷ pyinfra | ÷ floor apply.sh |")
        print("| --- | --- | --- | --- |")
        for phase in ("first", "noop", "changed"):
            p = med(wl, "plumb", phase, "apply")
            print(f"| {phase} | {ratio(p, med(wl, 'ansible', phase))} | "
                  f"{ratio(p, med(wl, 'pyinfra', phase))} | "
                  f"{ratio(p, med(wl, 'floor', phase, 'apply.sh'))} |")
        pp = med(wl, "plumb", "noop", "plan")
        print(f"| noop, plumb plan ÷ floor probe.sh | | | "
              f"{ratio(pp, med(wl, 'floor', 'noop', 'probe.sh'))} |")
        print()
        print("plumb SSH round trips per host (probe/apply, the apply ending with its verify; "
              "total), as reported in `--output json`:\n")
        print("| phase | command | round trips per host (distinct values over all hosts and runs) |")
        print("| --- | --- | --- |")
        for phase in ("first", "noop", "changed"):
            for cmd in ("apply", "plan", "drift"):
                rts = {json.dumps(rt, sort_keys=True)
                       for r in rows if r["workload"] == wl and r["tool"] == "plumb"
                       and r["phase"] == phase and r["cmd"] == cmd
                       for rt in (r.get("round_trips") or [])}
                if rts:
                    shown = ", ".join(
                        "{p}/{a} ({t})".format(p=d["probe"], a=d["apply"],
                                               t=sum(d.get(k, 0) for k in
                                                     ("probe", "apply", "verify", "facts")))
                        for d in map(json.loads, sorted(rts)))
                    print(f"| {phase} | {cmd} | {shown} |")
        print()
        ch = {(r["tool"], r["phase"]): r.get("changes") for r in rows
              if r["workload"] == wl and r.get("changes") is not None and r["run"] == 0}
        if ch:
            print("Changes reported in run 0 (last sample of each phase): " + ", ".join(
                f"{t} {p}={c}" for (t, p), c in sorted(ch.items())) + "\n")
        states = {}
        for f in glob.glob(os.path.join(out, f"state-{wl}-*.txt")):
            states[f.rsplit("-", 1)[1][:-4]] = open(f).read()
        if states:
            same = len(set(states.values())) == 1
            print("Host state after each tool's first apply, as seen by the floor probe: " +
                  ("identical for " + ", ".join(sorted(states)) if same else
                   "DIFFERS between tools: " + ", ".join(sorted(states)) +
                   f" (see {out}/state-{wl}-*.txt)") + "\n")

    scale = sorted((json.load(open(f)) for f in glob.glob(os.path.join(out, "scale-*.json"))),
                   key=lambda d: d["hosts"])
    if scale:
        print("## Scale without SSH (validate + render + plan, synthetic in-sync probe output)\n")
        print("| hosts × steps | validate (incl. a full render) ms | render ms | plan ms | "
              "total ms | ms per host | max RSS MB |")
        print("| --- | --- | --- | --- | --- | --- | --- |")
        for d in scale:
            print(f"| {d['hosts']} × {d['steps']} | {d['validate_ms']:.0f} | {d['render_ms']:.0f} | "
                  f"{d['plan_ms']:.0f} | {d['total_ms']:.0f} | {d['total_ms'] / d['hosts']:.2f} | "
                  f"{d.get('max_rss_kb', 0) / 1024:.0f} |")
        print()


if __name__ == "__main__":
    main()
