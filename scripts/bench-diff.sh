#!/usr/bin/env bash
# Benchmark of `falcon-migrate diff` on the local stack. Prints numbers; asserts nothing.
#   scripts/bench-diff.sh [RATE] [SECONDS]     (default 2000 changes/s for 30 s)
# 1. steady state: `diff --follow` runs while `falcon-fixtures churn` writes at
#    RATE; prints the changes/s applied and the lag (p50/p99) at that rate,
#    measured as a consumer sees it: from the churn's commit (its log, in ms)
#    to the change's event being readable by a read_committed consumer (kcat,
#    timestamped on arrival), one event per message change; next to it the
#    lag diff reports itself (binlog time: 1 s resolution);
# 2. catch-up: churn at RATE with no diff running, then `diff --until-now`
#    over that backlog; prints the changes/s applied.
# Env: BENCH_MESSAGES (default 100000), BENCH_SKIP_GENERATE=1 to reuse the dataset,
#      BENCH_BASELINE=/path/to/falcon-migrate: step 1 runs first with that build
#      (e.g. one of an earlier commit), then with this one: before vs after.
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

# Events of the message topic as a read_committed consumer receives them:
# "arrival_ms key" per line, until killed.
consume() {
  python3 -u - "$1" "$2" <<'PY' &
import json, signal, subprocess, sys, time
topic, out = sys.argv[1], sys.argv[2]
k = subprocess.Popen(["kcat", "-C", "-q", "-u", "-b", "127.0.0.1:9092", "-t", topic, "-o", "end",
                      "-X", "isolation.level=read_committed", "-X", "fetch.wait.max.ms=10",
                      "-f", "%s\\n"], stdout=subprocess.PIPE)
signal.signal(signal.SIGTERM, lambda *_: (k.terminate(), sys.exit(0)))
with open(out, "w", buffering=1) as f:
    for line in k.stdout:
        t = time.time_ns() // 1_000_000
        try:
            f.write(f"{t} {json.loads(line)['key']}\n")
        except (ValueError, KeyError):
            pass
PY
  consumer_pid=$!
}

# lag CHURN_LOG CONSUMED: "p50 p99 matched unmatched" in ms, each churn change
# paired with the next event of its message.
lag() {
  python3 - "$1" "$2" <<'PY'
import collections, sys
import json
want = collections.defaultdict(collections.deque)
n = 0
for l in open(sys.argv[1]):
    c = json.loads(l)
    want[str(c["message_id"])].append(c["committed_ms"])
    n += 1
lags = []
for l in open(sys.argv[2]):
    t, key = l.split()
    if want[key]:
        lags.append(int(t) - want[key].popleft())
lags.sort()
q = lambda p: lags[min(len(lags) - 1, int(len(lags) * p))] if lags else 0
print(q(0.5), q(0.99), len(lags), n - len(lags))
PY
}

# steady NAME BINARY SEED: diff --follow by BINARY while churn writes RATE changes/s.
steady() {
  local name=$1 bin=$2 seed=$3
  echo "== steady state ($name): diff --follow while churn writes $rate changes/s for ${secs}s"
  "$bin" diff -c "$cfg" --state-dir "$state" --follow --json --progress-interval 5 \
    >"$out/follow-$name.json" 2>"$out/follow-$name.log" &
  local diff_pid=$!
  consume "bench.$tag.message" "$out/consumed-$name.txt"
  sleep 3
  target/release/falcon-fixtures churn --rate "$rate" --duration "${secs}s" --seed "$seed" \
    --log "$out/churn-$name.jsonl" >"$out/churn-$name.json"
  sleep 3
  kill -INT "$diff_pid"
  wait "$diff_pid" || true
  kill "$consumer_pid"
  wait "$consumer_pid" || true
  lag "$out/churn-$name.jsonl" "$out/consumed-$name.txt" >"$out/lag-$name.txt"
}

runs=()
if [[ -n "${BENCH_BASELINE:-}" ]]; then
  steady before "$BENCH_BASELINE" 1
  runs+=(before)
fi
steady after "${mig[@]}" 3
runs+=(after)

echo "== catch-up: churn $rate changes/s for ${secs}s with no diff, then diff --until-now"
target/release/falcon-fixtures churn --rate "$rate" --duration "${secs}s" --seed 2 >"$out/churn-backlog.json"
"${mig[@]}" diff -c "$cfg" --state-dir "$state" --until-now --json >"$out/catchup.json" 2>"$out/catchup.log"

c="$out/catchup.json"
{
  echo
  echo "diff benchmark ($out)"
  for r in "${runs[@]}"; do
    f="$out/follow-$r.json"
    read -r p50 p99 matched unmatched <"$out/lag-$r.txt"
    echo "  [$r] $([[ $r == before ]] && echo "$BENCH_BASELINE" || echo "${mig[0]}")"
    echo "    churn               $(field "$out/churn-$r.json" changes_per_s) message changes/s asked $rate ($(field "$out/churn-$r.json" changes) changes; each insert also updates its room)"
    echo "    lag (consumer)      p50 $p50 ms, p99 $p99 ms  (churn commit -> event readable by a read_committed consumer; $matched changes matched, $unmatched not seen)"
    echo "    lag (diff's own)    p50 $(field "$f" lag_p50_s) s, p99 $(field "$f" lag_p99_s) s  (binlog commit second -> both targets; 1 s resolution)"
    echo "    apply latency       p50 $(field "$f" apply_latency_p50_ms) ms, p99 $(field "$f" apply_latency_p99_ms) ms  (read from the binlog -> both targets acknowledged)"
    echo "    kafka transactions  $(field "$f" kafka_transactions) for $(field "$f" transactions) source transactions ($(field "$f" applied_total) row changes)"
  done
  echo "  catch-up              $(field "$c" applied_total) row changes in $(field "$c" elapsed_s) s = $(field "$c" changes_per_s) row changes/s (backlog written at $(field "$out/churn-backlog.json" changes_per_s) message changes/s)"
} | tee "$out/report.txt"
