"""Writes one benchmark workload four ways: a plumb repo, an Ansible playbook, a pyinfra
deploy, and hand-written POSIX sh (probe.sh: the floor of observing; apply.sh: the floor of
applying). Every variant manages the same resources on every host.

    python3 gen.py OUT STEPS HOSTS_DIR VARIANT     (VARIANT: base | changed)

`changed` differs from `base` in the content of exactly one file (file 0).
"""

import json
import os
import re
import shlex
import sys

PACKAGES = ["plumb-hello", "plumb-extra", "plumb-demo"]


def mix(steps):
    """How many resources of each kind a workload of STEPS steps has."""
    if steps == 100:
        return dict(groups=3, users=3, packages=3, dirs=20, files=50, lines=21)
    if steps == 20:
        return dict(groups=1, users=1, packages=1, dirs=5, files=9, lines=3)
    raise SystemExit(f"gen.py: no mix for {steps} steps")


def resources(steps, variant):
    m = mix(steps)
    res = []
    for i in range(m["groups"]):
        res.append(dict(kind="group", id=f"group-{i}", name=f"benchgrp{i}"))
    for i in range(m["users"]):
        res.append(dict(kind="user", id=f"user-{i}", name=f"benchusr{i}",
                        group=f"benchgrp{i % m['groups']}", shell="/bin/sh",
                        home=f"/home/benchusr{i}"))
    for i in range(m["packages"]):
        res.append(dict(kind="package", id=f"pkg-{i}", name=PACKAGES[i]))
    dirs = ["/srv/bench"] + [f"/srv/bench/d{i:02d}" for i in range(1, m["dirs"])]
    for i, d in enumerate(dirs):
        res.append(dict(kind="dir", id=f"dir-{i}", path=d))
    for i in range(m["files"]):
        d = dirs[1 + i % (len(dirs) - 1)] if len(dirs) > 1 else dirs[0]
        body = f"# bench file {i}\n" + "".join(
            f"key_{i}_{j} = value number {j} of file {i}\n" for j in range(10))
        if variant == "changed" and i == 0:
            body += "changed = yes\n"
        res.append(dict(kind="file", id=f"file-{i}", path=f"{d}/f{i:03d}.conf", content=body))
    for i in range(m["lines"]):
        res.append(dict(kind="line", id=f"line-{i}", path="/srv/bench/lines.conf",
                        line=f"setting_{i:02d} = {i}"))
    assert len(res) == steps, (len(res), steps)
    return res


def read_inventory(hosts_dir):
    """(name, address) of each host, from the testhosts hosts.yaml (a fixed, simple shape)."""
    hosts, cur = [], None
    for line in open(os.path.join(hosts_dir, "hosts.yaml")):
        m = re.match(r"\s*- name: (\S+)", line)
        if m:
            cur = {"name": m.group(1)}
            hosts.append(cur)
        m = re.match(r"\s*address: (\S+)", line)
        if m and cur is not None:
            cur["address"] = m.group(1)
    return hosts


def write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


def q(s):
    return json.dumps(s)  # a JSON string is a valid YAML double-quoted scalar


def plumb_repo(out, res, hosts):
    write(f"{out}/plumb.yaml", "name: bench\nenvironments: [bench]\n"
          "defaults:\n  user: deploy\n  port: 22\n  become: true\n")
    write(f"{out}/environments/bench/env.yaml", "drift:\n  mode: report\n  interval: 5m\n")
    inv = "hosts:\n" + "".join(
        f"  - name: {h['name']}\n    address: {h['address']}\n    labels: {{role: bench}}\n"
        for h in hosts)
    write(f"{out}/environments/bench/hosts.yaml", inv)
    y = ["description: \"benchmark workload\"", "applies_to:", "  role: bench", "steps:"]
    for r in res:
        y.append(f"  - id: {r['id']}")
        k = r["kind"]
        if k == "group":
            y += ["    group:", f"      name: {r['name']}"]
        elif k == "user":
            y += ["    user:", f"      name: {r['name']}", f"      group: {r['group']}",
                  f"      shell: {r['shell']}", f"      home: {r['home']}",
                  "      create_home: false"]
        elif k == "package":
            y += ["    package:", f"      name: {r['name']}"]
        elif k == "dir":
            y += ["    directory:", f"      path: {r['path']}", "      owner: root",
                  "      group: root", "      mode: \"0755\""]
        elif k == "file":
            y += ["    file:", f"      path: {r['path']}", f"      content: {q(r['content'])}",
                  "      owner: root", "      group: root", "      mode: \"0644\""]
        elif k == "line":
            y += ["    line:", f"      path: {r['path']}", f"      line: {q(r['line'])}",
                  "      create: true"]
    write(f"{out}/units/bench.yaml", "\n".join(y) + "\n")


def ansible(out, res, hosts, hosts_dir, strategy):
    write(f"{out}/ansible.cfg", f"""[defaults]
inventory = inventory.ini
forks = {max(10, len(hosts))}
strategy = {strategy}
host_key_checking = True
interpreter_python = /usr/bin/python3
gathering = explicit
retry_files_enabled = False
stdout_callback = default
deprecation_warnings = False
# quiet: no per-task timing noise
[ssh_connection]
pipelining = True
ssh_args = -o ControlMaster=auto -o ControlPersist=120s -o UserKnownHostsFile={hosts_dir}/known_hosts -o StrictHostKeyChecking=yes -o IdentitiesOnly=yes
control_path_dir = {out}/.cp
""")
    write(f"{out}/inventory.ini", "[bench]\n" + "".join(
        f"{h['name']} ansible_host={h['address']}\n" for h in hosts) +
        f"\n[bench:vars]\nansible_user=deploy\nansible_ssh_private_key_file={hosts_dir}/id_ed25519\n"
        "ansible_become=true\n")
    t = []
    for r in res:
        k = r["kind"]
        if k == "group":
            t.append({"name": r["id"], "ansible.builtin.group": {"name": r["name"]}})
        elif k == "user":
            t.append({"name": r["id"], "ansible.builtin.user": {
                "name": r["name"], "group": r["group"], "shell": r["shell"],
                "home": r["home"], "create_home": False}})
        elif k == "package":
            t.append({"name": r["id"], "ansible.builtin.apt": {"name": r["name"],
                                                                "state": "present"}})
        elif k == "dir":
            t.append({"name": r["id"], "ansible.builtin.file": {
                "path": r["path"], "state": "directory", "owner": "root", "group": "root",
                "mode": "0755"}})
        elif k == "file":
            t.append({"name": r["id"], "ansible.builtin.copy": {
                "dest": r["path"], "content": r["content"], "owner": "root",
                "group": "root", "mode": "0644"}})
        elif k == "line":
            t.append({"name": r["id"], "ansible.builtin.lineinfile": {
                "path": r["path"], "line": r["line"], "create": True}})
    play = [{"hosts": "bench", "gather_facts": False, "become": True, "tasks": t}]
    write(f"{out}/playbook.yml", json.dumps(play, indent=1) + "\n")  # JSON is YAML


def pyinfra(out, res, hosts, hosts_dir):
    write(f"{out}/inventory.py", "bench = (%r, %r)\n" % (
        [(h["address"], {"name": h["name"]}) for h in hosts],
        {"ssh_user": "deploy", "ssh_key": f"{hosts_dir}/id_ed25519",
         "ssh_known_hosts_file": f"{hosts_dir}/known_hosts",
         "ssh_strict_host_key_checking": "yes", "_sudo": True}))
    p = ["import io", "from pyinfra.operations import apt, files, server", ""]
    for r in res:
        k = r["kind"]
        if k == "group":
            p.append(f"server.group(name={r['id']!r}, group={r['name']!r})")
        elif k == "user":
            p.append(f"server.user(name={r['id']!r}, user={r['name']!r}, group={r['group']!r}, "
                     f"shell={r['shell']!r}, home={r['home']!r}, create_home=False, "
                     "ensure_home=False)")
        elif k == "package":
            p.append(f"apt.packages(name={r['id']!r}, packages=[{r['name']!r}])")
        elif k == "dir":
            p.append(f"files.directory(name={r['id']!r}, path={r['path']!r}, user='root', "
                     "group='root', mode='755')")
        elif k == "file":
            p.append(f"files.put(name={r['id']!r}, src=io.StringIO({r['content']!r}), "
                     f"dest={r['path']!r}, user='root', group='root', mode='644')")
        elif k == "line":
            p.append(f"files.line(name={r['id']!r}, path={r['path']!r}, line={r['line']!r})")
    write(f"{out}/deploy.py", "\n".join(p) + "\n")


def floor(out, res):
    s = shlex.quote
    probe = ["# the floor: observe every resource in one sh script, one round trip"]
    apply = ["# the floor: a hand-written, idempotent apply of every resource, one round trip",
             "set -e", "export DEBIAN_FRONTEND=noninteractive"]
    pkgs = [r["name"] for r in res if r["kind"] == "package"]
    for r in res:
        k = r["kind"]
        if k == "group":
            probe.append(f"getent group {s(r['name'])} || echo absent")
            apply.append(f"getent group {s(r['name'])} >/dev/null || groupadd {s(r['name'])}")
        elif k == "user":
            probe.append(f"getent passwd {s(r['name'])} || echo absent")
            apply.append(f"getent passwd {s(r['name'])} >/dev/null || useradd -M -g {s(r['group'])}"
                         f" -s {s(r['shell'])} -d {s(r['home'])} {s(r['name'])}")
        elif k == "package":
            probe.append(f"dpkg-query -W -f '${{db:Status-Abbrev}} ${{Version}}\\n' "
                         f"{s(r['name'])} 2>&1")
        elif k == "dir":
            probe.append(f"stat -c '%F %a %U %G' {s(r['path'])} 2>&1")
            apply.append(f"mkdir -p {s(r['path'])}; chmod 0755 {s(r['path'])}; "
                         f"chown root:root {s(r['path'])}")
        elif k == "file":
            probe.append(f"stat -c '%F %a %U %G' {s(r['path'])} 2>&1 && "
                         f"sha256sum {s(r['path'])}")
            apply.append(f"cat > {s(r['path'] + '.tmp')} <<'PLUMB_BENCH_EOF'\n"
                         f"{r['content']}PLUMB_BENCH_EOF\n"
                         f"chmod 0644 {s(r['path'] + '.tmp')}; "
                         f"chown root:root {s(r['path'] + '.tmp')}; "
                         f"mv -f {s(r['path'] + '.tmp')} {s(r['path'])}")
        elif k == "line":
            probe.append(f"grep -qxF {s(r['line'])} {s(r['path'])} 2>/dev/null "
                         "&& echo present || echo absent")
            apply.append(f"grep -qxF {s(r['line'])} {s(r['path'])} 2>/dev/null || "
                         f"echo {s(r['line'])} >> {s(r['path'])}")
    # one apt-get for all missing packages, first (as a person would write it)
    if pkgs:
        i = apply.index("export DEBIAN_FRONTEND=noninteractive") + 1
        apply[i:i] = [
            "missing=",
            f"for p in {' '.join(pkgs)}; do",
            "    dpkg-query -W -f '${db:Status-Abbrev}' \"$p\" 2>/dev/null | grep -q '^ii'"
            " || missing=\"$missing $p\"",
            "done",
            "[ -z \"$missing\" ] || apt-get install -y -q --no-install-recommends $missing"
            " >/dev/null",
        ]
    write(f"{out}/probe.sh", "\n".join(probe) + "\n")
    write(f"{out}/apply.sh", "\n".join(apply) + "\n")


def main():
    out, steps, hosts_dir, variant = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    strategy = os.environ.get("BENCH_ANSIBLE_STRATEGY", "linear")
    res = resources(steps, variant)
    hosts = read_inventory(hosts_dir)
    plumb_repo(f"{out}/plumb", res, hosts)
    ansible(f"{out}/ansible", res, hosts, hosts_dir, strategy)
    pyinfra(f"{out}/pyinfra", res, hosts, hosts_dir)
    floor(f"{out}/floor", res)


if __name__ == "__main__":
    main()
