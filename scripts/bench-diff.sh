#!/usr/bin/env bash
# Benchmark of `falcon-migrate diff` on the local stack. Prints numbers; asserts nothing.
#   scripts/bench-diff.sh [RATE] [SECONDS]     (default 2000 changes/s for 30 s)
# 1. steady state: `diff --follow` runs while `falcon-fixtures churn` writes at
#    RATE; prints the changes/s applied and the lag (p50/p99) at that rate;
# 2. catch-up: churn at RATE with no diff running, then `diff --until-now`
#    over that backlog; prints the changes/s applied.
# Env: BENCH_MESSAGES (default 100000), BENCH_SKIP_GENERATE=1 to reuse the dataset.
set -euo pipefail
cd "$(dirname "$0")/.."
rate="${1:-2000}"
secs="${2:-30}"
messages="${BENCH_MESSAGES:-100000}"
db=legacy_chat_bench_diff
tag="d$(date +%s)"
out="out/bench-diff-$tag"
mkdir -p "$out"

bash scripts/stack.sh up >/dev/null
# shellcheck source=scripts/stack/env.sh
source scripts/stack/env.sh
unset FALCON_MYSQL_URL FALCON_KAFKA_BROKERS FALCON_HBASE_THRIFT
export FALCON_MYSQL_ADMIN_URL="mysql://falcon_admin@127.0.0.1:3306/$db"
cargo build --release --quiet --bins
# Passwords travel in the environment only (never in a process's arguments).
export FALCON_MYSQL_ADMIN_PASSWORD="${FALCON_MYSQL_ADMIN_PASSWORD:-falcon_admin}"
admin() { MYSQL_PWD="$FALCON_MYSQL_ADMIN_PASSWORD" mariadb --no-defaults --protocol=TCP -h 127.0.0.1 -P 3306 -u falcon_admin "$@"; }

if [[ "${BENCH_SKIP_GENERATE:-}" != 1 ]]; then
  admin -e "DROP DATABASE IF EXISTS $db; CREATE DATABASE $db CHARACTER SET utf8mb4"
  target/release/falcon-fixtures generate --messages "$messages" --seed 42 >"$out/generate.json"
fi

cfg="$out/falcon.toml"
{
  printf '[source]\nurl = "mysql://falcon@127.0.0.1:3306/%s"\npassword_env = "FALCON_MYSQL_PASSWORD"\n' "$db"
  printf '[kafka]\nbrokers = "127.0.0.1:9092"\npartitions = 8\nprogress_topic = "bench.%s.progress"\n' "$tag"
  printf '[hbase]\nthrift = "127.0.0.1:9090"\nsalt_buckets = 16\nid_map_table = "bench_%s_id_map"\n' "$tag"
  for t in account room room_member message; do
    printf '[[table]]\nsource = "%s"\nkind = "%s"\ntopic = "bench.%s.%s"\nhbase_table = "bench_%s_%s"\n' "$t" "$t" "$tag" "$t" "$tag" "$t"
  done
} >"$cfg"
state="$out/state"
mig=(target/release/falcon-migrate)
field() { python3 -c "import json,sys; v=json.load(open('$1'))
for k in '$2'.split('.'): v=v[k]
print(round(v, 3) if isinstance(v, float) else v)"; }

echo "== base of $messages messages"
"${mig[@]}" base -c "$cfg" --state-dir "$state" --workers 2 --json >"$out/base.json" 2>"$out/base.log"

echo "== steady state: diff --follow while churn writes $rate changes/s for ${secs}s"
"${mig[@]}" diff -c "$cfg" --state-dir "$state" --follow --json --progress-interval 5 \
  >"$out/follow.json" 2>"$out/follow.log" &
diff_pid=$!
sleep 2
target/release/falcon-fixtures churn --rate "$rate" --duration "${secs}s" --seed 1 >"$out/churn-steady.json"
sleep 3
kill -INT "$diff_pid"
wait "$diff_pid" || true

echo "== catch-up: churn $rate changes/s for ${secs}s with no diff, then diff --until-now"
target/release/falcon-fixtures churn --rate "$rate" --duration "${secs}s" --seed 2 >"$out/churn-backlog.json"
"${mig[@]}" diff -c "$cfg" --state-dir "$state" --until-now --json >"$out/catchup.json" 2>"$out/catchup.log"

f="$out/follow.json"
c="$out/catchup.json"
steady_changes=$(field "$f" applied_total)
steady_rate=$(python3 -c "print(round($steady_changes / $(field "$out/churn-steady.json" elapsed_s)))")
cat <<REPORT

diff benchmark ($out)
  churn (steady)      $(field "$out/churn-steady.json" changes_per_s) message changes/s asked $rate ($(field "$out/churn-steady.json" changes) changes; each insert also updates its room)
  steady state        $steady_changes row changes applied, ~$steady_rate row changes/s over the churn
  lag at that rate    p50 $(field "$f" lag_p50_s) s, p99 $(field "$f" lag_p99_s) s  (source commit -> both targets; binlog time has 1 s resolution)
  apply latency       p50 $(field "$f" apply_latency_p50_ms) ms, p99 $(field "$f" apply_latency_p99_ms) ms  (read from the binlog -> both targets acknowledged)
  kafka transactions  $(field "$f" kafka_transactions) for $(field "$f" transactions) source transactions
  catch-up            $(field "$c" applied_total) row changes in $(field "$c" elapsed_s) s = $(field "$c" changes_per_s) row changes/s (backlog written at $(field "$out/churn-backlog.json" changes_per_s) message changes/s)
REPORT
