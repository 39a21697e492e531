#!/usr/bin/env bash
# The main job end to end on the local stack: servers up, a legacy dataset
# generated, then the migration phases that exist run against it.
#   scripts/demo.sh [MESSAGES]        (default 200000)
set -euo pipefail
cd "$(dirname "$0")/.."
messages="${1:-200000}"

bash scripts/stack.sh up
# shellcheck source=scripts/stack/env.sh
source scripts/stack/env.sh
cargo build --release --quiet --bins

state="${FALCON_STATE_DIR:-out/demo-state}"
rm -rf "$state"
echo "== generating $messages legacy messages (with legacy dirt)"
target/release/falcon-fixtures generate --messages "$messages" --seed 1 --dirty

echo "== checking connections"
target/release/falcon-migrate check -c fixtures/chat/falcon.toml

echo "== base copy into Kafka and HBase"
set +e
run="demo-$(date +%s)"
target/release/falcon-migrate base -c fixtures/chat/falcon.toml --state-dir "$state" --run-id "$run"
rc=$?
set -e
# 3 = finished, some rows dead-lettered (the --dirty dataset has them on purpose).
if [ "$rc" -ne 0 ] && [ "$rc" -ne 3 ]; then
  echo "base failed with exit status $rc" >&2
  exit "$rc"
fi
echo "== live changes on the source, then diff catches up from base's start position"
target/release/falcon-fixtures churn --rate 200 --duration 5s --seed 2
set +e
target/release/falcon-migrate diff -c fixtures/chat/falcon.toml --state-dir "$state" \
  --run-id "$run-diff" --base-run-id "$run" --until-now
rc=$?
set -e
if [ "$rc" -ne 0 ] && [ "$rc" -ne 3 ]; then
  echo "diff failed with exit status $rc" >&2
  exit "$rc"
fi

echo "== verify: source against HBase and Kafka, down to the row"
target/release/falcon-migrate verify -c fixtures/chat/falcon.toml --state-dir "$state" \
  --target all --report "$state/verify-report.csv"

echo "== dead-letter file (first lines)"
head -c 2000 "$state/base/$run/shard-0-of-1.dead.jsonl" | cut -c1-300 || true
echo
echo "== a room's newest messages, straight from HBase"
printf "scan 'chat_message', {LIMIT => 3}\n" | bash scripts/stack.sh hbase-shell 2>/dev/null | head -20 || true
