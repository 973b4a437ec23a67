# shellcheck shell=bash
# Installs what the build needs on a fresh Debian machine, when missing.
# Sourced by the other scripts; defines functions only.

apt_install() {
    if [ "$(id -u)" -ne 0 ]; then
        echo "error: missing system packages: $*" >&2
        echo "       install them with: sudo apt-get install -y $*" >&2
        return 1
    fi
    echo "==> installing $* (apt-get)"
    if [ -z "${SBTC_APT_UPDATED:-}" ]; then
        apt-get update -qq
        export SBTC_APT_UPDATED=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

ensure_build_prereqs() {
    if ! command -v cargo >/dev/null 2>&1; then
        echo "error: cargo is not installed; install the Rust toolchain with rustup" >&2
        return 1
    fi
    # wsts builds p256k1 with bindgen, which needs libclang (and rustfmt).
    local missing=()
    if command -v dpkg-query >/dev/null 2>&1; then
        dpkg-query -W -f='${Status}' libclang-dev 2>/dev/null | grep -q 'ok installed' \
            || missing+=(libclang-dev)
    elif ! ldconfig -p 2>/dev/null | grep -q 'libclang\(-[0-9.]*\)\?\.so'; then
        echo "warning: cannot tell whether libclang is installed; wsts needs it" >&2
    fi
    # bitcoinconsensus and rusqlite (bundled) compile C and C++.
    command -v cc >/dev/null 2>&1 || missing+=(build-essential)
    command -v c++ >/dev/null 2>&1 || missing+=(g++)
    if [ ${#missing[@]} -gt 0 ]; then
        apt_install "${missing[@]}"
    fi
    if ! rustup component list --installed 2>/dev/null | grep -q '^rustfmt'; then
        rustup component add rustfmt clippy
    fi
}

# Installs the pinned JavaScript packages of tests/js (stacks.js, clarinet
# simnet) when missing or when the lockfile changed since the last install.
ensure_js_deps() {
    if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
        apt_install nodejs npm
    fi
    local major
    major=$(node --version | sed 's/^v\([0-9]*\).*/\1/')
    if [ "$major" -lt 20 ]; then
        echo "error: node $(node --version) is too old; the JavaScript checks need Node.js 20+" >&2
        return 1
    fi
    local marker=tests/js/node_modules/.package-lock.json
    if [ ! -f "$marker" ] || [ tests/js/package-lock.json -nt "$marker" ]; then
        echo "==> npm ci (tests/js)"
        (cd tests/js && npm ci --no-audit --no-fund --loglevel=error)
    fi
}

# Installs Debian's chromium for the operator-page test (headless) when
# missing. Returns non-zero when it cannot (not root, no package): the test
# then skips and says why.
ensure_chromium() {
    if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then
        return 0
    fi
    apt_install chromium
}
