#!/usr/bin/env bash
# Starts a complete local peg: emulated bitcoind and stacks-node, the relay,
# five signers and the coordinator; plays a scenario (peg-ins, peg-outs, one
# user off the allowlist) and checks the outcome. Extra arguments go to
# `coordinator-cli devnet` (for example --serve to keep it running).
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=scripts/prereqs.sh
source scripts/prereqs.sh
ensure_build_prereqs

exec cargo run --quiet -p coordinator-cli -- devnet "$@"
