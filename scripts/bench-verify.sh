#!/usr/bin/env bash
# Benchmark of `falcon-migrate verify` next to `base` on the same dataset, on
# the local stack. Prints numbers; asserts nothing.
#   scripts/bench-verify.sh [MESSAGES]     (default 200000)
# Env: BENCH_WORKERS (default 4), BENCH_SKIP_GENERATE=1 to reuse the dataset.
set -euo pipefail
cd "$(dirname "$0")/.."
messages="${1:-200000}"
workers="${BENCH_WORKERS:-4}"
db=legacy_chat_bench_verify
tag="v$(date +%s)"
out="out/bench-verify-$tag"
mkdir -p "$out"

bash scripts/stack.sh up >/dev/null
# shellcheck source=scripts/stack/env.sh
source scripts/stack/env.sh
unset FALCON_MYSQL_URL FALCON_KAFKA_BROKERS FALCON_HBASE_THRIFT
export FALCON_MYSQL_PASSWORD="${FALCON_MYSQL_PASSWORD:-falcon}"
cargo build --release --quiet --bins
# Passwords travel in the environment only (never in a process's arguments).
export FALCON_MYSQL_ADMIN_PASSWORD="${FALCON_MYSQL_ADMIN_PASSWORD:-falcon_admin}"
admin() { MYSQL_PWD="$FALCON_MYSQL_ADMIN_PASSWORD" mariadb --no-defaults --protocol=TCP -h 127.0.0.1 -P 3306 -u falcon_admin "$@"; }

if [[ "${BENCH_SKIP_GENERATE:-}" != 1 ]]; then
  admin -e "DROP DATABASE IF EXISTS $db; CREATE DATABASE $db CHARACTER SET utf8mb4"
  FALCON_MYSQL_ADMIN_URL="mysql://falcon_admin@127.0.0.1:3306/$db" \
    target/release/falcon-fixtures generate --messages "$messages" --seed 42 >"$out/generate.json"
fi
rows=$(admin -N -B "$db" -e "SELECT (SELECT COUNT(*) FROM message)+(SELECT COUNT(*) FROM room)+(SELECT COUNT(*) FROM account)+(SELECT COUNT(*) FROM room_member)")
msgs=$(admin -N -B "$db" -e "SELECT COUNT(*) FROM message")

cfg="$out/falcon.toml"
{
  printf '[source]\nurl = "mysql://falcon@127.0.0.1:3306/%s"\npassword_env = "FALCON_MYSQL_PASSWORD"\n' "$db"
  printf '[kafka]\nbrokers = "127.0.0.1:9092"\npartitions = 8\nprogress_topic = "bench.%s.progress"\n' "$tag"
  printf '[hbase]\nthrift = "127.0.0.1:9090"\nsalt_buckets = 16\nid_map_table = "bench_%s_id_map"\n' "$tag"
  for t in account room room_member message; do
    printf '[[table]]\nsource = "%s"\nkind = "%s"\ntopic = "bench.%s.%s"\nhbase_table = "bench_%s_%s"\n' "$t" "$t" "$tag" "$t" "$tag" "$t"
  done
} >"$cfg"

run() { # run NAME ARGS... ; JSON on $out/NAME.json, "user sys rss" on $out/NAME.time
  local name=$1
  shift
  /usr/bin/time -f "%U %S %M" -o "$out/$name.time" \
    target/release/falcon-migrate "$@" -c "$cfg" --state-dir "$out/state" --workers "$workers" --json \
    >"$out/$name.json" 2>"$out/$name.log" || true
}
field() { python3 -c "import json,functools; v=functools.reduce(lambda o,k: o[k], '$2'.split('.'), json.load(open('$out/$1.json'))); print(round(v) if isinstance(v,float) else v)"; }
cpu() { read -r u s _ <"$out/$1.time"; python3 -c "print(round($u + $s, 1))"; }
rss() { read -r _ _ r <"$out/$1.time"; echo $((r / 1024)); }

run base base
run verify verify
run verify_hbase verify --target hbase
run verify_kafka verify --target kafka

# What pushing the checksum down into MariaDB would cost: one full-table
# COUNT + BIT_XOR of a per-row hash, computed by the server alone (it cannot
# apply the mapping: UTF-8 and mojibake checks, orphans, new ids, row keys).
t0=$(date +%s.%N)
admin -N -B "$db" -e "SELECT COUNT(*), BIT_XOR(CRC32(CONCAT_WS(0x1F, message_id, room_id, account_id, body, send_time, update_time, deleted))) FROM message" >/dev/null
push_s=$(python3 -c "import time; print(max(time.time() - $t0, 1e-3))")
push_rps=$(python3 -c "print(round($msgs / $push_s))")

# HBase's own scan ceiling: PerformanceEvaluation's `scan` (a Java client
# reading the region servers directly, no gateway, one scanner per client).
# It cannot scan the verified tables (its scans start at its own text row
# keys and name its own column family), so it scans a table in its format
# written just before with as many rows as verify's HBase side read (the
# tables' and the id map's rows), split like them (16 regions), with their
# mean cells per row and value bytes per cell, verify's scanner caching
# (SCAN_BATCH in src/verify/hbase.rs) and as many clients as verify has
# workers, reading whole rows as verify does (--addColumns=false: PE's
# default names each column, about 3x slower).
hrows=$(field verify_hbase targets.hbase.read_rows)
table_rows=$(field verify_hbase targets.hbase.target_rows)
idmap_rows=$(field verify_hbase id_map.target_rows)
hcells=$(field verify_hbase targets.hbase.scanned.cells)
hbytes=$(field verify_hbase targets.hbase.scanned.value_bytes)
hsecs=$(python3 -c "import json; print(round(json.load(open('$out/verify_hbase.json'))['targets']['hbase']['elapsed_s'], 2))")
columns=$(python3 -c "print(max(1, round($hcells / max($hrows, 1))))")
cell_bytes=$(python3 -c "import math; print(max(1, math.ceil($hbytes / max($hcells, 1))))")
caching=5000
pe_rows=$(((hrows + workers - 1) / workers))
pe() { # pe [OPTIONS] COMMAND: PerformanceEvaluation on the stack; its "duration" line on stdout
  local log="${FALCON_STACK_DIR:-.stack}/logs/hbase-tool.log" before
  before=$(wc -l <"$log" 2>/dev/null || echo 0)
  bash scripts/stack.sh hbase-class org.apache.hadoop.hbase.PerformanceEvaluation --nomapred \
    --table="bench_${tag}_pe" --rows="$pe_rows" --columns="$columns" --valueSize="$cell_bytes" \
    --caching="$caching" "$@" "$workers" >"$out/pe-${*: -1}.log" 2>&1 || true
  tail -n +"$((before + 1))" "$log" | grep -a "duration \]" | tail -1
}
pe --presplit=16 sequentialWrite >/dev/null
pe_ms=$(pe --addColumns=false scan | sed -n 's/.*Max: \([0-9]*\)ms.*/\1/p')
if [[ -n "$pe_ms" ]]; then
  pe_rps=$(python3 -c "print(round($pe_rows * $workers / max($pe_ms, 1) * 1000))")
  pe_cps=$(python3 -c "print(round($pe_rows * $workers * $columns / max($pe_ms, 1) * 1000))")
  ratio=$(python3 -c "print(round($(field verify_hbase targets.hbase.rows_per_s) / $pe_rps, 2))")
else
  pe_rps="n/a (see $out/pe-scan.log)"
  pe_cps=n/a
  ratio=n/a
fi
hcps=$(python3 -c "print(round($hcells / max($hsecs, 1e-3)))")

cat <<TXT
== $rows rows ($msgs messages), $workers workers, $(nproc) cores (shared machine: numbers move with its load)
run           identical  elapsed s    rows/s   cpu s  peak RSS MiB
base (dead-l.) $(printf '%4s %10s %9s %7s %13s' "$(field base dead_lettered)dl" "$(field base elapsed_s)" "$(field base rows_per_s)" "$(cpu base)" "$(rss base)")
verify all          $(printf '%4s %10s %9s %7s %13s' "$(field verify identical)" "$(field verify elapsed_s)" "$(field verify rows_per_s)" "$(cpu verify)" "$(rss verify)")
verify hbase        $(printf '%4s %10s %9s %7s %13s' "$(field verify_hbase identical)" "$(field verify_hbase elapsed_s)" "$(field verify_hbase rows_per_s)" "$(cpu verify_hbase)" "$(rss verify_hbase)")
verify kafka        $(printf '%4s %10s %9s %7s %13s' "$(field verify_kafka identical)" "$(field verify_kafka elapsed_s)" "$(field verify_kafka rows_per_s)" "$(cpu verify_kafka)" "$(rss verify_kafka)")
== sides of 'verify all' (they run at the same time, sharing the cores)
source (read + map + hash)   $(field verify source_rows_per_s) rows/s
hbase scan                   $(field verify targets.hbase.rows_per_s) rows/s
kafka fold                   $(field verify targets.kafka.rows_per_s) rows/s
== source-side checksum alone ('verify --target kafka' source pass, Kafka read beside it)
source                       $(field verify_kafka source_rows_per_s) rows/s
pushed down (MariaDB COUNT+BIT_XOR(CRC32) of message, no mapping)  $push_rps rows/s
== HBase side against HBase's own scan ceiling (same row count; 'verify --target hbase')
verify's HBase side          $(field verify_hbase targets.hbase.rows_per_s) rows/s, $hcps cells/s ($hrows rows = $table_rows of the tables + $idmap_rows of the id map, $hcells cells, in ${hsecs}s through the Thrift2 gateway, $workers workers)
PerformanceEvaluation scan   $pe_rps rows/s, $pe_cps cells/s ($workers clients x $pe_rows rows, $columns cells x $cell_bytes bytes, caching $caching, whole rows)
ratio                        ${ratio}x
verify all / base: $(python3 -c "print(round($(field verify rows_per_s) / max($(field base rows_per_s), 1), 2))")x
details: $out
TXT
