#!/usr/bin/env bash
# The one test command: local server stack up, then format check, lints and every
# test (unit + integration against the real MariaDB / Kafka / HBase), release profile.
#
# Usage: scripts/test.sh [extra `cargo test` args, e.g. a test name filter]
#
# Works on a fresh Debian 12 with Rust, a JDK, Maven, gcc and cmake: missing build
# tools (make, g++ for librdkafka), Chromium (headless, for the report test) and
# rustfmt/clippy are installed on demand; the
# servers' packages and jars are scripts/stack.sh's business.
#
# Environment:
#   FALCON_TEST_SKIP_STACK=1   do not run `scripts/stack.sh up` (stack already up)
#   FALCON_TEST_STACK_DOWN=1   stop the stack when done (default: leave it running)
set -euo pipefail

REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_DIR"

T0=$(date +%s)
log() { printf '\n==> %s\n' "$*" >&2; }
die() { printf 'test.sh: %s\n' "$*" >&2; exit 1; }
since() { echo "$(($(date +%s) - $1))s"; }

as_root() {
  if [[ $EUID -eq 0 ]]; then "$@"
  elif command -v sudo >/dev/null 2>&1; then sudo -n "$@"
  else die "need root (or sudo) to run: $*"
  fi
}

# ---------------------------------------------------------------- build tools
# rdkafka-sys builds librdkafka from source (./configure && make libs: C and C++);
# libz-sys falls back to its bundled zlib when the system has none. TLS is the
# system's OpenSSL (librdkafka's TLS and SCRAM, native-tls for sqlx and mysql_async,
# the openssl crate for the Thrift gateway): its headers and pkg-config.
ensure_build_tools() {
  local missing=()
  command -v cc >/dev/null 2>&1 || missing+=(gcc)
  command -v c++ >/dev/null 2>&1 || missing+=(g++)
  command -v make >/dev/null 2>&1 || missing+=(make)
  command -v perl >/dev/null 2>&1 || missing+=(perl)
  command -v pkg-config >/dev/null 2>&1 || missing+=(pkg-config)
  [[ -f /usr/include/openssl/ssl.h ]] || missing+=(libssl-dev)
  # tests/observe.rs renders the run reports in headless Chromium.
  command -v chromium >/dev/null 2>&1 || missing+=(chromium)
  ((${#missing[@]})) || return 0
  log "apt-get install ${missing[*]}"
  local try
  for try in 1 2 3; do
    if as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
      -o DPkg::Lock::Timeout=300 "${missing[@]}" </dev/null; then
      return 0
    fi
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q </dev/null || true
    sleep $((try * 5))
  done
  die "could not install ${missing[*]}"
}

ensure_rust_components() {
  local c
  for c in rustfmt clippy; do
    local probe=(cargo fmt --version)
    [[ $c == clippy ]] && probe=(cargo clippy --version)
    if ! "${probe[@]}" >/dev/null 2>&1; then
      command -v rustup >/dev/null 2>&1 || die "cargo $c is missing and there is no rustup to add it"
      log "rustup component add $c"
      rustup component add "$c"
    fi
  done
}

ensure_build_tools
ensure_rust_components

# ---------------------------------------------------------------- stack
if [[ "${FALCON_TEST_SKIP_STACK:-0}" != 1 ]]; then
  # Secure mode: also the HTTPS Thrift gateway that tests/secure.rs uses.
  log "scripts/stack.sh up --secure"
  t=$(date +%s)
  bash scripts/stack.sh up --secure </dev/null
  log "stack up ($(since "$t"))"
fi
# shellcheck disable=SC1091  # the stack's client defaults
source scripts/stack/env.sh

if [[ "${FALCON_TEST_STACK_DOWN:-0}" == 1 ]]; then
  trap 'bash scripts/stack.sh down </dev/null || true' EXIT
fi

# ---------------------------------------------------------------- checks
# Every step runs even when an earlier one failed, so one run shows all problems;
# the exit status is non-zero when any failed.
FAILED=()
step() { # step NAME CMD...
  local name="$1" t rc=0
  shift
  log "$name"
  t=$(date +%s)
  "$@" </dev/null || rc=$?
  if ((rc == 0)); then
    log "$name: ok ($(since "$t"))"
  else
    log "$name: FAILED (exit $rc, $(since "$t"))"
    FAILED+=("$name")
  fi
}

step "scripts/thrift-gen.sh --check" bash scripts/thrift-gen.sh --check
step "cargo fmt --check" cargo fmt --all -- --check
step "cargo clippy --release --all-targets --features failpoints -- -D warnings" \
  cargo clippy --release --all-targets --features failpoints -- -D warnings
# One test at a time: the servers share two cores with the tests, and a
# parallel pair of heavy tests can starve HBase into timeouts.
step "cargo test --release --features failpoints" cargo test --release --features failpoints --no-fail-fast "$@" -- --test-threads=1

if ((${#FAILED[@]})); then
  log "FAILED after $(since "$T0"): ${FAILED[*]}"
  exit 1
fi
log "all checks passed in $(since "$T0")"
