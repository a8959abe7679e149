#!/bin/sh
# Build the offline apt repository of the plumb test hosts into OUTDIR:
#   plumb-hello 1.0 and 1.1  /usr/bin/plumb-hello prints "plumb-hello <version>"
#   plumb-demo 1.0           /usr/bin/plumb-demo (a long-lived sh loop), the systemd unit
#                            plumb-demo.service and /etc/init.d/plumb-demo; not started
#                            nor enabled on install
#   plumb-extra 1.0          /usr/bin/plumb-extra
#   restic, sqlite3          the real Debian packages (and the dependencies a minimal host
#                            lacks), fetched with `apt-get download` from this machine's own
#                            apt sources: the backup tests install them with a `package` step
# plus Packages and Packages.gz (flat repository: `deb [trusted=yes] file:OUTDIR ./`).
# Needs dpkg-deb and dpkg-scanpackages (dpkg-dev).
set -eu
out=${1:?usage: build-apt-repo.sh OUTDIR}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$out"
# Reproducible timestamps inside the .deb files.
SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-1700000000}
export SOURCE_DATE_EPOCH

# control NAME VERSION DESCRIPTION -> writes $root/DEBIAN/control
control() {
    mkdir -p "$root/DEBIAN"
    cat > "$root/DEBIAN/control" <<CTL
Package: $1
Version: $2
Architecture: all
Maintainer: plumb test suite <plumb@localhost>
Section: misc
Priority: optional
Description: $3
 Tiny package for plumb's integration tests.
CTL
}

build() {
    find "$root" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
    dpkg-deb --root-owner-group -Zgzip --build "$root" "$out/$1" >/dev/null
}

# plumb-hello, two versions
for v in 1.0 1.1; do
    root=$work/plumb-hello-$v
    control plumb-hello "$v" "prints its own version"
    mkdir -p "$root/usr/bin"
    printf '#!/bin/sh\necho "plumb-hello %s"\n' "$v" > "$root/usr/bin/plumb-hello"
    chmod 0755 "$root/usr/bin/plumb-hello"
    build "plumb-hello_${v}_all.deb"
done

# plumb-demo: a service, shipped but neither enabled nor started
root=$work/plumb-demo
control plumb-demo 1.0 "long-running demo service (systemd unit and sysv script)"
mkdir -p "$root/usr/bin" "$root/lib/systemd/system" "$root/etc/init.d"
cat > "$root/usr/bin/plumb-demo" <<'SH'
#!/bin/sh
# plumb-demo: does nothing, for a long time.
echo "plumb-demo started (pid $$)"
trap 'echo "plumb-demo stopping"; exit 0' TERM INT
while :; do sleep 3600 & wait $!; done
SH
chmod 0755 "$root/usr/bin/plumb-demo"
cat > "$root/lib/systemd/system/plumb-demo.service" <<'UNIT'
[Unit]
Description=plumb demo service (integration tests)

[Service]
ExecStart=/usr/bin/plumb-demo
Restart=on-failure

[Install]
WantedBy=multi-user.target
UNIT
cat > "$root/etc/init.d/plumb-demo" <<'SYSV'
#!/bin/sh
### BEGIN INIT INFO
# Provides:          plumb-demo
# Required-Start:    $remote_fs
# Required-Stop:     $remote_fs
# Default-Start:     2 3 4 5
# Default-Stop:      0 1 6
# Short-Description: plumb demo service (integration tests)
### END INIT INFO
PIDFILE=/run/plumb-demo.pid
running() { [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; }
case "$1" in
start)
    running && exit 0
    /usr/bin/plumb-demo >/dev/null 2>&1 &
    echo $! > "$PIDFILE"
    ;;
stop)
    running && kill "$(cat "$PIDFILE")"
    rm -f "$PIDFILE"
    ;;
restart|force-reload)
    "$0" stop; "$0" start
    ;;
status)
    if running; then echo "plumb-demo is running"; exit 0; fi
    echo "plumb-demo is not running"; exit 3
    ;;
*)
    echo "usage: $0 {start|stop|restart|status}" >&2; exit 2
    ;;
esac
SYSV
chmod 0755 "$root/etc/init.d/plumb-demo"
echo /etc/init.d/plumb-demo > "$root/DEBIAN/conffiles"
build plumb-demo_1.0_all.deb

# plumb-extra
root=$work/plumb-extra
control plumb-extra 1.0 "an extra package"
mkdir -p "$root/usr/bin"
printf '#!/bin/sh\necho "plumb-extra 1.0"\n' > "$root/usr/bin/plumb-extra"
chmod 0755 "$root/usr/bin/plumb-extra"
build plumb-extra_1.0_all.deb

# Real Debian packages, same suite as the hosts (the host image is built from this machine's).
REAL_DEBS="restic sqlite3 libsqlite3-0 libreadline8 readline-common"
fetch_real() { (cd "$out" && apt-get download $REAL_DEBS >/dev/null 2>&1); }
if ! fetch_real; then
    if [ "$(id -u)" -eq 0 ]; then apt-get update -qq >/dev/null 2>&1 || true; fi
    fetch_real || { echo "build-apt-repo: apt-get download $REAL_DEBS failed" >&2; exit 1; }
fi

cd "$out"
dpkg-scanpackages --multiversion . /dev/null > Packages 2>/dev/null
gzip -9nc Packages > Packages.gz
ls -1 "$out"
