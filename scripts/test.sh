#!/usr/bin/env bash
# Runs every check and test of the workspace, as CI does.
# On a fresh Debian machine it first installs what the build needs.
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=scripts/prereqs.sh
source scripts/prereqs.sh
ensure_build_prereqs
ensure_js_deps

echo "==> cargo fmt --check"
cargo fmt --all -- --check

echo "==> cargo clippy (warnings are errors)"
cargo clippy --workspace --all-targets --all-features -- -D warnings

echo "==> cargo build (the binaries the end-to-end tests start)"
cargo build --workspace --all-features --bins

echo "==> cargo test"
cargo test --workspace --all-features

echo "==> contract tests on the Clarity VM (clarinet simnet), and the devnet's model against it"
(cd tests/js && node --test contract.test.mjs model-crosscheck.test.mjs)
