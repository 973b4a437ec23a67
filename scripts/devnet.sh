#!/usr/bin/env bash
# Starts a complete local peg. Until the embedded devnet (node emulators,
# relay, signers) lands, this runs the coordinator's loop on simulated
# components and checks the outcome.
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=scripts/prereqs.sh
source scripts/prereqs.sh
ensure_build_prereqs

exec cargo run --quiet -p coordinator --features testing --example loop_demo -- "$@"
