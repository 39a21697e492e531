#!/usr/bin/env bash
# How good is `falcon-migrate plan`? Predicts base with a short calibration
# copy, then runs the real base (1 shard, then 2 shards side by side) on the
# local stack and prints predicted vs actual and their ratio (aim: 0.75-1.25).
#   scripts/bench-plan.sh [MESSAGES]     (default 300000)
# Env: BENCH_WORKERS (default 4), BENCH_CALIBRATE rows (default: a fifth of
# the rows), BENCH_SKIP_GENERATE=1 to reuse the dataset. Measure on a dataset
# that is not being written: a calibration right after the generator loaded it
# measured the server's background work too (one such run predicted 1.64x).
set -euo pipefail
cd "$(dirname "$0")/.."
messages="${1:-300000}"
workers="${BENCH_WORKERS:-4}"
db=legacy_chat_benchplan
tag="p$(date +%s)"
out="out/bench-plan-$tag"
mkdir -p "$out"

bash scripts/stack.sh up >/dev/null
# shellcheck source=scripts/stack/env.sh
source scripts/stack/env.sh
unset FALCON_MYSQL_URL FALCON_KAFKA_BROKERS FALCON_HBASE_THRIFT
cargo build --release --quiet --bins
admin=(mariadb --no-defaults --protocol=TCP -h 127.0.0.1 -P 3306 -u falcon_admin -pfalcon_admin)

if [[ "${BENCH_SKIP_GENERATE:-}" != 1 ]]; then
  "${admin[@]}" -e "CREATE DATABASE IF NOT EXISTS $db CHARACTER SET utf8mb4"
  FALCON_MYSQL_ADMIN_URL="mysql://falcon_admin:falcon_admin@127.0.0.1:3306/$db" \
    target/release/falcon-fixtures generate --messages "$messages" --seed 42 >"$out/generate.json"
fi
rows=$("${admin[@]}" -N -B "$db" -e "SELECT (SELECT COUNT(*) FROM message)+(SELECT COUNT(*) FROM room)+(SELECT COUNT(*) FROM account)+(SELECT COUNT(*) FROM room_member)")
calibrate="${BENCH_CALIBRATE:-$((rows / 5))}"

config() { # config NAME -> path of a config with its own topics and tables
  local f="$out/$1.toml"
  {
    printf '[source]\nurl = "mysql://falcon@127.0.0.1:3306/%s"\npassword_env = "FALCON_MYSQL_PASSWORD"\n' "$db"
    printf '[kafka]\nbrokers = "127.0.0.1:9092"\npartitions = 8\nprogress_topic = "benchplan.%s.progress"\n' "$1"
    printf '[hbase]\nthrift = "127.0.0.1:9090"\nsalt_buckets = 16\nid_map_table = "benchplan_%s_id_map"\n' "$1"
    for t in account room room_member message; do
      printf '[[table]]\nsource = "%s"\nkind = "%s"\ntopic = "benchplan.%s.%s"\nhbase_table = "benchplan_%s_%s"\n' "$t" "$t" "$1" "$t" "$1" "$t"
    done
  } >"$f"
  echo "$f"
}
json() { python3 -c "import json,sys; d=json.load(open('$1')); print($2)"; }

# The prediction: sizes counted exactly, base measured by a calibration copy
# (one shard, then two side by side for the scaling).
target/release/falcon-migrate plan -c "$(config "${tag}plan")" --state-dir "$out/state-plan" \
  --calibrate "$calibrate" --workers "$workers" --exact-counts --max-shards 2 --json \
  >"$out/plan.json" 2>"$out/plan.log"
pred1=$(json "$out/plan.json" "[b['seconds'] for b in d['base'] if b['shards']==1][0]")
pred2=$(json "$out/plan.json" "[b['seconds'] for b in d['base'] if b['shards']==2][0]")
rate=$(json "$out/plan.json" "round(d['base_rate']['per_s'])")
scaling=$(json "$out/plan.json" "d['scaling']['source'] if d.get('scaling') else 'not measured (linear assumed)'")

# The actual runs, timed from the outside (process start to exit).
run_base() { # run_base NAME SHARD -> wall seconds on stdout
  local cfg t0
  cfg=$(config "$1")
  t0=$(date +%s.%N)
  target/release/falcon-migrate base -c "$cfg" --state-dir "$out/state-$1" --workers "$workers" \
    --shard "$2" --run-id "$1" --json >"$out/$1-${2//\//of}.json" 2>"$out/$1-${2//\//of}.log"
  python3 -c "import time; print(round(time.time() - $t0, 2))"
}
act1=$(run_base "${tag}one" 0/1)
cfg2=$(config "${tag}two")
t0=$(date +%s.%N)
pids=()
for i in 0 1; do
  target/release/falcon-migrate base -c "$cfg2" --state-dir "$out/state-two-$i" --workers "$workers" \
    --shard "$i/2" --run-id "${tag}two" --json >"$out/two-$i.json" 2>"$out/two-$i.log" &
  pids+=($!)
done
for i in 0 1; do
  wait "${pids[$i]}" || { echo "bench-plan: shard $i/2 failed, see $out/two-$i.log" >&2; exit 1; }
done
act2=$(python3 -c "import time; print(round(time.time() - $t0, 2))")

ratio() { python3 -c "print(round($1 / $2, 2))"; }
cat <<TXT
== plan vs actual base, $rows rows, $workers workers per shard, $(nproc) cores (stack on the same machine)
calibration: $calibrate rows -> $rate rows/s per shard
shards   predicted s   actual s   predicted/actual
1        $(printf '%11.1f %10.1f %18s' "$pred1" "$act1" "$(ratio "$pred1" "$act1")")
2        $(printf '%11.1f %10.1f %18s' "$pred2" "$act2" "$(ratio "$pred2" "$act2")")
scaling: $scaling
details: $out
TXT
