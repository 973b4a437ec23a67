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

echo "==> cargo build (the binaries the end-to-end tests start, and the examples)"
cargo build --workspace --all-features --bins --examples

echo "==> cargo test"
cargo test --workspace --all-features

echo "==> contract tests on the Clarity VM (clarinet simnet), and the devnet's model against it"
# The model side runs the example built above (cargo run would rebuild it
# with other features).
replay="$(cd "${CARGO_TARGET_DIR:-target}" && pwd)/debug/examples/model_replay"
(cd tests/js && MODEL_REPLAY="$replay" node --test contract.test.mjs model-crosscheck.test.mjs redteam-batches.test.mjs)
