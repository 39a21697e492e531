#!/usr/bin/env bash
# Benchmark of `falcon-migrate base` on the local stack, with each link's own
# ceiling measured in the same run. Prints numbers; asserts nothing.
#   scripts/bench-base.sh [MESSAGES]     (default 1000000)
# Env: BENCH_WORKERS (default 4), BENCH_SKIP_GENERATE=1 to reuse the dataset,
#      BENCH_RUNS (default "all kafka hbase bulk": which base runs; `bulk` is both
#      targets with `--hbase-load bulk`, HFiles loaded by HBase's bulk-load tool).
set -euo pipefail
cd "$(dirname "$0")/.."
messages="${1:-1000000}"
workers="${BENCH_WORKERS:-4}"
db=legacy_chat_bench
tag="b$(date +%s)"
out="out/bench-base-$tag"
mkdir -p "$out"

bash scripts/stack.sh up >/dev/null
# shellcheck source=scripts/stack/env.sh
source scripts/stack/env.sh
# The generated configs below name their own database: no URL override.
unset FALCON_MYSQL_URL FALCON_KAFKA_BROKERS FALCON_HBASE_THRIFT
cargo build --release --quiet --bins
# Passwords travel in the environment only (never in a process's arguments).
export FALCON_MYSQL_ADMIN_PASSWORD="${FALCON_MYSQL_ADMIN_PASSWORD:-falcon_admin}"
admin() { MYSQL_PWD="$FALCON_MYSQL_ADMIN_PASSWORD" mariadb --no-defaults --protocol=TCP -h 127.0.0.1 -P 3306 -u falcon_admin "$@"; }

if [[ "${BENCH_SKIP_GENERATE:-}" != 1 ]]; then
  admin -e "CREATE DATABASE IF NOT EXISTS $db CHARACTER SET utf8mb4"
  FALCON_MYSQL_ADMIN_URL="mysql://falcon_admin@127.0.0.1:3306/$db" \
    target/release/falcon-fixtures generate --messages "$messages" --seed 42 >"$out/generate.json"
fi
rows=$(admin -N -B "$db" -e "SELECT (SELECT COUNT(*) FROM message)+(SELECT COUNT(*) FROM room)+(SELECT COUNT(*) FROM account)+(SELECT COUNT(*) FROM room_member)")
msgs=$(admin -N -B "$db" -e "SELECT COUNT(*) FROM message")

config() { # config NAME -> path of a config with its own topics and tables
  local f="$out/$1.toml"
  {
    printf '[source]\nurl = "mysql://falcon@127.0.0.1:3306/%s"\npassword_env = "FALCON_MYSQL_PASSWORD"\n' "$db"
    printf '[kafka]\nbrokers = "127.0.0.1:9092"\npartitions = 8\nprogress_topic = "bench.%s.progress"\n' "$1"
    printf '[hbase]\nthrift = "127.0.0.1:9090"\nsalt_buckets = 16\nid_map_table = "bench_%s_id_map"\n' "$1"
    for t in account room room_member message; do
      printf '[[table]]\nsource = "%s"\nkind = "%s"\ntopic = "bench.%s.%s"\nhbase_table = "bench_%s_%s"\n' "$t" "$t" "$1" "$t" "$1" "$t"
    done
  } >"$f"
  echo "$f"
}

runs="${BENCH_RUNS:-all kafka hbase bulk}"
want() { [[ " $runs " == *" $1 "* ]]; }
# Every table loaded by HBase's bulk-load tool in one JVM (scripts/hbase/BulkLoadTables.java).
export FALCON_BULK_LOAD_COMMAND="scripts/stack.sh hbase-class scripts/hbase/BulkLoadTables.java"

# run_base NAME TARGET [ARGS...] -> "rows_per_s cpu_s peak_rss_kb"
run_base() {
  local cfg name=$1 target=$2
  shift 2
  cfg=$(config "$name")
  /usr/bin/time -f "%U %S %M" -o "$out/$name.time" \
    target/release/falcon-migrate base -c "$cfg" --state-dir "$out/state-$name" --target "$target" \
    --workers "$workers" --json "$@" >"$out/$name.json" 2>"$out/$name.log" || true
  set -- "$name"
  local rps cpu rss
  # A failed run prints 0 (its log says why) instead of ending the benchmark.
  rps=$(python3 -c "
import json
try: print(round(json.load(open('$out/$1.json'))['rows_per_s']))
except Exception: print(0)")
  read -r u s rss <"$out/$1.time"
  cpu=$(python3 -c "print(round($u + $s, 2))")
  echo "$rps $cpu $rss"
}

echo "dataset: $msgs messages, $rows rows in all (database $db)"
both_rps=0 both_cpu=0 both_rss=0 kafka_rps=0 kafka_cpu=0 kafka_rss=0 hbase_rps=0 hbase_cpu=0 hbase_rss=0
bulk_rps=0 bulk_cpu=0 bulk_rss=0
if want all; then read -r both_rps both_cpu both_rss < <(run_base "${tag}all" all); fi
if want kafka; then read -r kafka_rps kafka_cpu kafka_rss < <(run_base "${tag}kafka" kafka); fi
if want hbase; then read -r hbase_rps hbase_cpu hbase_rss < <(run_base "${tag}hbase" hbase); fi
if want bulk; then
  read -r bulk_rps bulk_cpu bulk_rss < <(run_base "${tag}bulk" all --hbase-load bulk)
  # /usr/bin/time counts the bulk-load tool (a JVM child) too: the migrator's
  # own CPU and peak RSS come from its summary.
  read -r hfiles hfile_cells hfile_mib hfile_s load_s bulk_cpu bulk_rss < <(python3 -c "
import json
try: b = json.load(open('$out/${tag}bulk.json'))['bulk']
except Exception: b = dict(hfiles=0, cells=0, hfile_bytes=0, hfile_s=0, load_s=0, process_cpu_s=0, process_peak_rss_kib=0)
print(b['hfiles'], b['cells'], round(b['hfile_bytes'] / 2**20, 1), round(b['hfile_s'], 2), round(b['load_s'], 1),
      round(b['process_cpu_s'], 2), b['process_peak_rss_kib'])")
  # The tables of the bulk run, dropped after (an idle table slows a standalone HBase).
  for t in account room room_member message id_map; do
    printf "disable 'bench_%sbulk_%s'\ndrop 'bench_%sbulk_%s'\n" "$tag" "$t" "$tag" "$t"
  done | bash scripts/stack.sh hbase-shell >/dev/null 2>&1 || true
fi

# Average event size, from the events the Kafka-only run wrote.
evsize=$( (kcat -C -b 127.0.0.1:9092 -t "bench.${tag}kafka.message" -o beginning -c 2000 -e -q -f '%S\n' 2>/dev/null || true) |
  awk '{ s += $1; n++ } END { if (n) printf "%d", s / n; else print 400 }')

# Ceilings. Source: the stock client scanning the same tables, rows discarded.
t0=$(date +%s.%N)
for t in account room room_member message; do
  admin --quick -N -B "$db" -e "SELECT * FROM $t" >/dev/null
done
src_s=$(python3 -c "import time; print(max(time.time() - $t0, 1e-3))")
src_rps=$(python3 -c "print(round($rows / $src_s))")

# Kafka: its own producer performance tool, same record count and size, same producer settings.
kafka_line=$(bash scripts/stack.sh kafka-class org.apache.kafka.tools.ProducerPerformance \
  --topic "bench.${tag}.ceiling" --num-records "$rows" --record-size "$evsize" --throughput -1 \
  --producer-props bootstrap.servers=127.0.0.1:9092 acks=all linger.ms=20 batch.size=1000000 \
  compression.type=lz4 enable.idempotence=true 2>/dev/null | grep 'records sent' | tail -1 || true)
kafka_ceiling=$(echo "$kafka_line" | sed -E 's/.* ([0-9.]+) records\/sec.*/\1/' | cut -d. -f1)

# HBase: its own load tool, one client writing rows of the same shape (8 cells of the message row's size).
cell=$(( (evsize - 250) / 8 )); ((cell > 8)) || cell=8
pe_rows=$(( rows < 500000 ? rows : 500000 ))
# PerformanceEvaluation logs through log4j into the stack's hbase-tool.log.
tool_log="${FALCON_STACK_DIR:-.stack}/logs/hbase-tool.log"
before=$( (wc -l <"$tool_log") 2>/dev/null || echo 0)
bash scripts/stack.sh hbase-class org.apache.hadoop.hbase.PerformanceEvaluation --nomapred \
  --rows="$pe_rows" --valueSize="$cell" --columns=8 --presplit=16 --autoFlush=false --table="bench_${tag}_pe" \
  sequentialWrite 1 >"$out/pe.out" 2>&1 || true
hbase_ceiling=$( (tail -n +"$((before + 1))" "$tool_log" 2>/dev/null || true) | grep 'Avg TPS/QPS' | tail -1 |
  grep -oE '[0-9]+[[:space:]]+row per second' | grep -oE '^[0-9]+' || true)
# Our HBase rows: one per source row, plus two id-map rows per message.
hbase_rows_written=$((rows + 2 * msgs))
# The slowest of the ceilings measured (a ceiling that could not be measured is left out).
slowest=$(printf '%s\n' "$src_rps" "${kafka_ceiling:-}" "${hbase_ceiling:-}" | grep -E '^[0-9]+$' | sort -n | head -1)
# ratio A B: A/B, or ? when B was not measured.
ratio() { if [[ "${2:-0}" =~ ^[0-9.]+$ && "${2:-0}" != 0 ]]; then python3 -c "print(round($1 / $2, 2))"; else echo "?"; fi; }
per_m() { python3 -c "print(round($1 / $rows * 1e6, 2))"; }
us_row() { python3 -c "print(round($1 / $rows * 1e6, 2))"; }

cat <<TXT
== falcon-migrate base, $rows rows ($msgs messages), $workers workers, $(nproc) cores
target       rows/s   cpu s   cpu s/M rows   µs/row   peak RSS MiB
$(line() { # line NAME LABEL RPS CPU RSS: a run's row, or that it was not run
  if want "$1"; then
    printf '%-10s %8s %7s %14s %8s %14s\n' "$2" "$3" "$4" "$(per_m "$4")" "$(us_row "$4")" "$(($5 / 1024))"
  else
    printf '%-10s %8s\n' "$2" "not run"
  fi
}
line all all "$both_rps" "$both_cpu" "$both_rss"
line kafka kafka "$kafka_rps" "$kafka_cpu" "$kafka_rss"
line hbase hbase "$hbase_rps" "$hbase_cpu" "$hbase_rss"
line bulk "all, bulk" "$bulk_rps" "$bulk_cpu" "$bulk_rss")
$(if want bulk; then
  echo "bulk load (both targets, end to end): $(ratio "$bulk_rps" "$kafka_rps")x of Kafka-only; HFiles: $hfiles files, $hfile_cells cells, $hfile_mib MiB written in ${hfile_s}s ($(python3 -c "print(round($hfile_cells / max($hfile_s, 1e-3)))") cells/s, $(python3 -c "print(round($hfile_mib / max($hfile_s, 1e-3), 1))") MiB/s); load step ${load_s}s (BulkLoadHFilesTool, all tables side by side in one JVM)"
fi)
== each link's own ceiling, same machine, same run
source (mariadb --quick full scan)        $src_rps rows/s
kafka  (ProducerPerformance, ${evsize} B)   ${kafka_ceiling:-?} records/s   base kafka-only: $(ratio "$kafka_rps" "${kafka_ceiling:-0}")x
hbase  (PerformanceEvaluation, $pe_rows rows of 8x${cell} B, 1 client) ${hbase_ceiling:-?} rows/s
$(if want hbase; then
  echo "       base hbase-only writes $(python3 -c "print(round($hbase_rps * $hbase_rows_written / $rows))") HBase rows/s (id map included): $(ratio "$(python3 -c "print(round($hbase_rps * $hbase_rows_written / $rows))")" "${hbase_ceiling:-0}")x"
fi)
$(need=$(python3 -c "print(round(1.6e9 / (3.5 * 3600)))")
for run in bulk all; do
  want "$run" || continue
  rps=$([[ $run == bulk ]] && echo "$bulk_rps" || echo "$both_rps")
  label=$([[ $run == bulk ]] && echo "both targets, bulk load" || echo "both targets, puts")
  echo "slowest link ceiling: ${slowest:-?} rows/s$([[ -z "${kafka_ceiling:-}" || -z "${hbase_ceiling:-}" ]] && echo " (of those measured; see $out for the tool that failed)"); base ($label): $(ratio "$rps" "${slowest:-0}")x of it"
  echo "1.6e9 messages in 3.5 h need $need rows/s: $(python3 -c "import math; print(math.ceil($need / max($rps, 1)))") machines like this one at $rps rows/s each ($label, stack included)"
done)
details: $out
TXT
