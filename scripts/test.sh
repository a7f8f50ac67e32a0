#!/usr/bin/env bash
# The whole test suite: formatting, lints, Rust unit and integration tests (against the
# built-in emulator, real files, real openssl), and the official Python SDKs against the
# emulator. Run `bash .ci/run` once on a fresh machine to install what this needs.
set -euo pipefail
cd "$(dirname "$0")/.."

PY="${CCM_SDK_PYTHON:-.ci/venv/bin/python}"
TARGET="${CARGO_TARGET_DIR:-target}"

echo "==> cargo fmt --check"
cargo fmt --all -- --check

echo "==> cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "==> no aws-lc-rs or OpenSSL in the dependency tree (every workspace member)"
if cargo tree --workspace --locked -e normal | grep -E "aws-lc|openssl-sys"; then
    echo "error: aws-lc-rs or openssl-sys crept into the dependency tree" >&2
    exit 1
fi

echo "==> no import cycles between top-level modules, in each crate"
if [ -f ../shared/tools/module_cycles.py ]; then
    for src in src crates/*/src; do
        out="$(python3 ../shared/tools/module_cycles.py "$src")"
        echo "    $src: ${out##*$'\n'}"
        [ "${out##*$'\n'}" = "module cycles: 0" ] || { echo "$out" >&2; exit 1; }
    done
else
    echo "    (no ../shared/tools here: skipped)"
fi

echo "==> the reference-examples fixture matches the API reference"
if [ -d ../shared/seeds ]; then
    python3 scripts/reference_examples.py --check
else
    echo "    (no ../shared/seeds here: the checked-in fixture is used as it is)"
fi

echo "==> cargo test"
cargo test --workspace --locked --all-targets
# --all-targets leaves out doctests (the crate documentation's examples).
cargo test --workspace --locked --doc

echo "==> fleet mode (the cargo feature fleet: etcd): clippy, the dependency tree, its tests"
# Lints of every target with the feature (checked, not built); then only what the feature
# changes is built and run: the library's unit tests and the fleet tests (they start private
# etcd servers, the emulator and ccm-agent processes).
cargo clippy --locked --features fleet --all-targets -- -D warnings
if cargo tree --locked -e normal --features fleet | grep -E "aws-lc|openssl-sys"; then
    echo "error: aws-lc-rs or openssl-sys crept into the dependency tree (--features fleet)" >&2
    exit 1
fi
cargo test --locked --features fleet --lib --test fleet_etcd --test fleet_rollout

echo "==> official Huawei Cloud SDKs against the emulator"
cargo build --locked --bin ccm-agent
CCM_AGENT_BIN="$TARGET/debug/ccm-agent" "$PY" -m pytest -q tests/sdk

echo "==> packaging: systemd unit, .deb, alert rules, dashboard, container, Kubernetes"
bash scripts/ship-checks.sh
