#!/usr/bin/env bash
# Production packaging checks: the systemd unit (systemd-analyze verify and security score), the
# polkit rule, the packaged configurations, the Debian package (cargo deb, contents, maintainer
# scripts, lintian), the Prometheus rules (promtool check + unit tests), the Grafana dashboard,
# the Kubernetes example and the Dockerfile.
#
# Needs (Debian): systemd procps prometheus lintian python3-yaml dpkg-dev; nodejs (optional: the
# polkit rule's test); cargo-deb (`cargo install cargo-deb --locked`).
#
# Environment:
#   SHIP_BIN=PATH          use this ccm-agent binary for the unit and config checks (default:
#                          `cargo build --bin ccm-agent`, the debug build the tests use)
#   SHIP_DEB_NO_BUILD=1    package an existing $CARGO_TARGET_DIR/release/ccm-agent (no rebuild)
#   SHIP_SKIP_DEB=1        skip the package (no release build)
#   SHIP_INSTALL_TEST=1    also install the package with dpkg, check the user, modes and
#                          owners, reinstall, purge (root only; changes this machine: CI only)
set -euo pipefail
cd "$(dirname "$0")/.."

TARGET="${CARGO_TARGET_DIR:-target}"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
MAX_EXPOSURE="2.0"

step() { printf '\n==> %s\n' "$*"; }
have() { command -v "$1" >/dev/null 2>&1; }
die() { echo "error: $*" >&2; exit 1; }
for tool in systemd-analyze promtool python3 dpkg-deb cargo; do
    have "$tool" || die "$tool is required (Debian: systemd prometheus python3 dpkg; see the header)"
done
python3 -c 'import yaml, tomllib' 2>/dev/null || die "python3 >= 3.11 with PyYAML is required (python3-yaml)"
CHECK="python3 packaging/ci/check_packaging.py"

step "ccm-agent binary"
if [ -n "${SHIP_BIN:-}" ]; then
    BIN="$(realpath "$SHIP_BIN")"
else
    cargo build --locked --bin ccm-agent
    BIN="$(realpath "$TARGET/debug/ccm-agent")"
fi
"$BIN" --version

# --- systemd -----------------------------------------------------------------------------------
step "systemd-analyze verify systemd/ccm-agent.service"
# verify needs ExecStart's binary to exist: check a copy that points at the built binary (CI does
# not install anything to /usr/bin). Any message (unknown key, bad value) fails the check.
mkdir -p "$WORK/unit"
sed "s#/usr/bin/ccm-agent#$BIN#g" systemd/ccm-agent.service >"$WORK/unit/ccm-agent.service"
if ! out="$(systemd-analyze verify "$WORK/unit/ccm-agent.service" 2>&1)" || [ -n "$out" ]; then
    echo "$out"
    die "systemd-analyze verify reported problems"
fi
echo "ok: no problems"

step "systemd-analyze security --offline=true systemd/ccm-agent.service"
sec="$(cd systemd && systemd-analyze security --offline=true --no-pager ccm-agent.service 2>&1)" || true
echo "$sec" | grep -E '^(✗|  NAME)' || true
score_line="$(echo "$sec" | grep 'Overall exposure level' || true)"
[ -n "$score_line" ] || { echo "$sec"; die "no exposure level in systemd-analyze security output"; }
echo "$score_line"
SCORE="$(echo "$score_line" | sed -E 's/.*: ([0-9]+\.[0-9]+) .*/\1/')"
awk -v s="$SCORE" -v m="$MAX_EXPOSURE" 'BEGIN { exit !(s < m) }' ||
    die "exposure level $SCORE is not below $MAX_EXPOSURE"
echo "ccm-agent.service exposure level: $SCORE (must stay below $MAX_EXPOSURE)"
$CHECK readme "$SCORE"

step "unit, packaged configuration and deb assets agree"
$CHECK unit

step "polkit rule (packaging/polkit/50-ccm-agent.rules)"
if have node; then
    node packaging/polkit/test-rules.js
else
    echo "skipped: node is not installed (Debian: nodejs)"
fi

step "packaged configurations validate (ccm-agent check)"
for cfg in packaging/debian/ccm-agent.toml packaging/kubernetes/ccm-agent.toml; do
    echo "-- $cfg"
    "$BIN" check --config "$cfg"
done

# --- Prometheus and Grafana ---------------------------------------------------------------------
step "promtool check rules / test rules"
promtool check rules packaging/prometheus/ccm-agent.rules.yml
(cd packaging/prometheus && promtool test rules ccm-agent.rules.test.yml)

step "Grafana dashboard (structure, PromQL syntax)"
$CHECK dashboard "$WORK/dashboard-exprs.yml"
promtool check rules "$WORK/dashboard-exprs.yml"

step "metric names used by the rules and the dashboard are exported"
$CHECK metrics

# --- Container and Kubernetes -------------------------------------------------------------------
step "Dockerfile"
$CHECK docker

step "Kubernetes example (packaging/kubernetes/ccm-agent-sidecar.yaml)"
$CHECK k8s

# --- Debian package -----------------------------------------------------------------------------
if [ -n "${SHIP_SKIP_DEB:-}" ]; then
    step "Debian package: skipped (SHIP_SKIP_DEB)"
    exit 0
fi
step "cargo deb"
cargo deb --version >/dev/null 2>&1 || die "cargo-deb is required: cargo install cargo-deb --locked"
if [ -n "${SHIP_DEB_NO_BUILD:-}" ]; then
    DEB="$(cargo deb --no-build --output "$WORK/deb/" | tail -n 1)"
else
    DEB="$(cargo deb --locked --output "$WORK/deb/" | tail -n 1)"
fi
[ -f "$DEB" ] || die "cargo deb did not produce a package"
echo "$DEB"

step "package contents (dpkg-deb --contents)"
dpkg-deb --contents "$DEB" | tee "$WORK/contents.txt"
expect_entry() { # MODE PATH
    grep -qE "^$1 (root/root|0/0) +[0-9]+ [0-9-]+ [0-9:]+ \./$2\$" "$WORK/contents.txt" ||
        die "package: expected $1 root/root ./$2"
    echo "ok: $1 /$2"
}
expect_entry '-rwxr-xr-x' 'usr/bin/ccm-agent'
expect_entry '-rw-r--r--' '(usr/)?lib/systemd/system/ccm-agent\.service'
expect_entry '-rw-r-----' 'etc/ccm-agent/ccm-agent\.toml'
expect_entry '-rw-r--r--' 'usr/share/doc/ccm-agent/copyright'
expect_entry '-rw-r--r--' 'usr/share/doc/ccm-agent/changelog\.Debian\.gz'
expect_entry '-rw-r--r--' 'usr/share/man/man1/ccm-agent\.1\.gz'
expect_entry '-rw-r--r--' 'usr/share/doc/ccm-agent/ccm-agent\.example\.toml'
expect_entry '-rw-r--r--' 'usr/share/doc/ccm-agent/examples/polkit/50-ccm-agent\.rules'

step "package metadata and maintainer scripts (dpkg-deb --info)"
dpkg-deb --info "$DEB"
mkdir -p "$WORK/control" "$WORK/root"
dpkg-deb --control "$DEB" "$WORK/control"
dpkg-deb --extract "$DEB" "$WORK/root"
c="$WORK/control"
[ "$(cat "$c/conffiles")" = "/etc/ccm-agent/ccm-agent.toml" ] ||
    die "conffiles: expected exactly /etc/ccm-agent/ccm-agent.toml, got: $(cat "$c/conffiles")"
echo "ok: conffiles = /etc/ccm-agent/ccm-agent.toml"
grep -qE '^Depends:.*\badduser\b' "$c/control" && grep -qE '^Depends:.*\bca-certificates\b' "$c/control" ||
    die "control: Depends must name adduser and ca-certificates"
echo "ok: Depends: $(sed -n 's/^Depends: //p' "$c/control")"
for s in postinst prerm postrm; do
    [ -x "$c/$s" ] || die "$s missing or not executable"
    sh -n "$c/$s" || die "$s: syntax error"
    ! grep -q '#DEBHELPER#' "$c/$s" || die "$s: #DEBHELPER# was not replaced"
    if have shellcheck; then shellcheck -s sh "$c/$s"; fi
done
grep -q 'adduser --system --group' "$c/postinst" || die "postinst does not create the system user"
grep -q 'chgrp ccm-agent' "$c/postinst" || die "postinst does not give the configuration to the ccm-agent group"
grep -q 'install -d -o ccm-agent -g ccm-agent -m 0750 /var/lib/ccm-agent' "$c/postinst" ||
    die "postinst does not create /var/lib/ccm-agent 0750"
grep -q 'install -d -o root -g ccm-agent -m 0750 /etc/ccm-agent/conf.d' "$c/postinst" ||
    die "postinst does not create the drop-in directory /etc/ccm-agent/conf.d"
grep -q 'include = \["/etc/ccm-agent/conf.d/\*.toml"\]' packaging/debian/ccm-agent.toml ||
    die "the packaged configuration does not include /etc/ccm-agent/conf.d/*.toml"
grep -q 'deb-systemd-helper' "$c/postinst" || die "postinst lacks the systemd unit handling"
grep -q 'deb-systemd-helper purge' "$c/postrm" && grep -q 'rm -rf /var/lib/ccm-agent' "$c/postrm" ||
    die "postrm does not purge the unit state and /var/lib/ccm-agent"
! grep -q 'deb-systemd-invoke start' "$c/postinst" || die "postinst starts the service (it must be configured first)"
echo "ok: postinst (user, directories, config group, unit not enabled/started), prerm, postrm (purge)"
unit_in_deb=""
for u in "$WORK"/root/usr/lib/systemd/system/ccm-agent.service "$WORK"/root/lib/systemd/system/ccm-agent.service; do
    [ -f "$u" ] && unit_in_deb="$u"
done
cmp "$unit_in_deb" systemd/ccm-agent.service || die "the packaged unit differs from systemd/ccm-agent.service"
cmp "$WORK/root/etc/ccm-agent/ccm-agent.toml" packaging/debian/ccm-agent.toml ||
    die "the packaged configuration differs from packaging/debian/ccm-agent.toml"
echo "ok: packaged unit and configuration are the repository's"

step "lintian"
if have lintian; then
    # Errors fail the check; warnings and infos are reported (the package is not a Debian upload).
    rc=0
    lintian --display-info --tag-display-limit 0 --fail-on error "$DEB" >"$WORK/lintian.txt" 2>&1 || rc=$?
    grep -v 'running with root privileges' "$WORK/lintian.txt" || echo "(no tags)"
    [ "$rc" -eq 0 ] || die "lintian found errors (exit $rc)"
else
    echo "skipped: lintian is not installed"
fi

if [ -n "${SHIP_INSTALL_TEST:-}" ]; then
    step "install test (dpkg -i, reinstall, purge)"
    [ "$(id -u)" -eq 0 ] || die "SHIP_INSTALL_TEST needs root"
    ! dpkg -s ccm-agent >/dev/null 2>&1 || die "ccm-agent is already installed here; not touching it"
    had_user=""
    getent passwd ccm-agent >/dev/null && had_user=1
    dpkg -i "$DEB"
    getent passwd ccm-agent | grep -q ':/usr/sbin/nologin$' || die "no system user ccm-agent with nologin"
    modes() { stat -c '%A %U:%G %n' "$@"; }
    expect_mode() { # "MODE OWNER:GROUP" PATH
        [ "$(stat -c '%A %U:%G' "$2")" = "$1" ] || die "$2: expected $1, got $(modes "$2")"
        echo "ok: $1 $2"
    }
    expect_mode '-rw-r----- root:ccm-agent' /etc/ccm-agent/ccm-agent.toml
    expect_mode 'drwxr-x--- ccm-agent:ccm-agent' /var/lib/ccm-agent
    expect_mode 'drwxr-xr-x ccm-agent:ccm-agent' /etc/ccm-agent/live
    expect_mode 'drwx------ root:root' /etc/ccm-agent/credentials
    expect_mode 'drwxr-x--- root:ccm-agent' /etc/ccm-agent/conf.d
    /usr/bin/ccm-agent check --config /etc/ccm-agent/ccm-agent.toml
    dpkg -i "$DEB"   # upgrade path: configure again
    expect_mode '-rw-r----- root:ccm-agent' /etc/ccm-agent/ccm-agent.toml
    dpkg --purge ccm-agent
    for p in /etc/ccm-agent /var/lib/ccm-agent /usr/bin/ccm-agent; do
        [ ! -e "$p" ] || die "$p is left after purge"
    done
    echo "ok: purge removed the configuration, state and binary"
    if [ -z "$had_user" ]; then
        deluser --system --quiet ccm-agent || true
        delgroup --system --quiet --only-if-empty ccm-agent || true
    fi
fi

step "ship checks passed (exposure level $SCORE)"
