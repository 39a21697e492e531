#!/usr/bin/env bash
# The night's runbook (docs/runbook.md), run against a stack:
#   plan → base (N shards in parallel) → diff --follow until the lag is below
#   a threshold → stop the writers → diff --until-now → verify (sample, then
#   full) → GO or NO-GO, with the evidence and each step's time beside the plan's.
#
#   scripts/cutover.sh -c CONFIG --stop-writers CMD [options]
#   scripts/cutover.sh --rehearse [options]      # scratch dataset + live churn on the local stack
#
# Options:
#   -c, --config FILE        the job's config (not with --rehearse)
#   --state-dir DIR          state dir of every phase (default: OUT/state)
#   --out DIR                where logs, summaries, the report and verdict.json go (default: out/cutover-<time>)
#   --shards N               base shards run in parallel (default 2)
#   --workers N              workers per shard and for verify (default 4)
#   --lag S                  diff --follow counts as caught up below this lag, seconds (default 5)
#   --catch-up-timeout S     NO-GO if diff --follow is not caught up by then (default 1800)
#   --stop-writers CMD       stops the application's writers (required without --rehearse)
#   --before-verify CMD      runs right before verify (a rehearsal hook, e.g. tampering a row)
#   --sample PCT             the first, quick verify's sample (default 5)
#   --calibrate ROWS         let plan measure base with a calibration copy first
#   --window DURATION        the maintenance window given to plan (default 7h)
#   --messages N             --rehearse: messages generated (default 20000)
#   --churn-rate R           --rehearse: changes/s written while the night runs (default 50)
#   --keep                   --rehearse: keep the scratch database
# Env: FALCON_BIN (folder of falcon-migrate and falcon-fixtures; default target/release).
#      The MySQL password comes from the environment named in the config, as for every phase.
#
# Exit status: 0 GO, 1 NO-GO (the verdict says which criterion failed), 2 usage error.
set -uo pipefail
cd "$(dirname "$0")/.."

usage() { sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2; }
die() { echo "cutover: $*" >&2; exit 2; }

config="" state="" out="" shards=2 workers=4 lag=5 catch_timeout=1800 stop_cmd="" before_verify=""
sample=5 calibrate="" window=7h rehearse=0 messages=20000 churn_rate=50 keep=0
while (($#)); do
  case "$1" in
    -c|--config) config="${2:?}"; shift ;;
    --state-dir) state="${2:?}"; shift ;;
    --out) out="${2:?}"; shift ;;
    --shards) shards="${2:?}"; shift ;;
    --workers) workers="${2:?}"; shift ;;
    --lag) lag="${2:?}"; shift ;;
    --catch-up-timeout) catch_timeout="${2:?}"; shift ;;
    --stop-writers) stop_cmd="${2:?}"; shift ;;
    --before-verify) before_verify="${2:?}"; shift ;;
    --sample) sample="${2:?}"; shift ;;
    --calibrate) calibrate="${2:?}"; shift ;;
    --window) window="${2:?}"; shift ;;
    --rehearse) rehearse=1 ;;
    --messages) messages="${2:?}"; shift ;;
    --churn-rate) churn_rate="${2:?}"; shift ;;
    --keep) keep=1 ;;
    -h|--help) usage ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
  shift
done
is_int() { [[ "$1" =~ ^[0-9]+$ ]] && (($1 >= ${2:-1})); }
is_int "$shards" || die "--shards must be a whole number >= 1, got $shards"
is_int "$workers" || die "--workers must be a whole number >= 1, got $workers"
is_int "$messages" || die "--messages must be a whole number >= 1, got $messages"
is_int "$catch_timeout" || die "--catch-up-timeout must be whole seconds >= 1, got $catch_timeout"
[[ "$lag" =~ ^[0-9]+([.][0-9]+)?$ ]] || die "--lag must be seconds, got $lag"
[[ "$sample" =~ ^[0-9]+([.][0-9]+)?$ ]] || die "--sample must be a percentage, got $sample"
[[ -z "$calibrate" ]] || is_int "$calibrate" 1000 || die "--calibrate must be at least 1000 rows"
if ((rehearse)); then
  [[ -z "$config" ]] || die "--rehearse makes its own config: drop -c"
else
  [[ -n "$config" && -f "$config" ]] || die "-c CONFIG is required (an existing file), or --rehearse"
  [[ -n "$stop_cmd" ]] || die "--stop-writers CMD is required: the night stops the writers before the last diff"
fi

bin="${FALCON_BIN:-target/release}"
[[ -x "$bin/falcon-migrate" ]] || die "$bin/falcon-migrate not found (cargo build --release, or set FALCON_BIN)"
out="${out:-out/cutover-$(date -u +%Y%m%dT%H%M%SZ)}"
mkdir -p "$out" || die "cannot create $out"
out=$(cd "$out" && pwd)
state="${state:-$out/state}"
mkdir -p "$state/summaries"
steps="$out/steps.tsv"
: >"$steps"
now() { date +%s.%N; }
secs() { python3 -c "print(round($2 - $1, 1))"; }
log() { echo "[$(date -u +%H:%M:%S)] $*" >&2; }
# step NAME PLANNED_S ACTUAL_S RESULT EVIDENCE
step() { printf '%s\t%s\t%s\t%s\t%s\n' "$@" >>"$steps"; log "$1: $4 ($3 s) $5"; }
# Background runs call the binary itself (not a function: $! would be a
# subshell, and a signal to it would not reach the process).
mig="$bin/falcon-migrate"
fm() { "$mig" "$@"; }
jget() { python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print($2)" "$1" 2>/dev/null; }

churn_pid=""
cleanup() {
  [[ -n "$churn_pid" ]] && kill "$churn_pid" 2>/dev/null
  [[ -n "${diff_pid:-}" ]] && kill "$diff_pid" 2>/dev/null
  if ((rehearse && !keep)) && [[ -n "${db:-}" ]]; then
    "${admin[@]}" -e "DROP DATABASE IF EXISTS \`$db\`" 2>/dev/null
  fi
}
trap cleanup EXIT

# ---- rehearsal: a scratch dataset, its own topics and tables, live churn ----
if ((rehearse)); then
  # shellcheck source=scripts/stack/env.sh
  source scripts/stack/env.sh
  unset FALCON_MYSQL_URL FALCON_KAFKA_BROKERS FALCON_HBASE_THRIFT
  tag="r$(date +%s)$$"
  db="legacy_chat_rehearse_$tag"
  admin=(mariadb --no-defaults --protocol=TCP -h 127.0.0.1 -P 3306 -u falcon_admin -pfalcon_admin)
  "${admin[@]}" -e "CREATE DATABASE \`$db\` CHARACTER SET utf8mb4" || die "cannot create $db (is the stack up?)"
  FALCON_MYSQL_ADMIN_URL="mysql://falcon_admin:falcon_admin@127.0.0.1:3306/$db" \
    "$bin/falcon-fixtures" generate --messages "$messages" --seed 11 >"$out/generate.json" 2>"$out/generate.log" ||
    die "generate failed: $out/generate.log"
  config="$out/falcon.toml"
  {
    printf '[source]\nurl = "mysql://falcon@127.0.0.1:3306/%s"\npassword_env = "FALCON_MYSQL_PASSWORD"\n' "$db"
    printf '[kafka]\nbrokers = "127.0.0.1:9092"\npartitions = 3\nprogress_topic = "rehearse.%s.progress"\n' "$tag"
    printf '[hbase]\nthrift = "127.0.0.1:9090"\nsalt_buckets = 4\nid_map_table = "rehearse_%s_id_map"\n' "$tag"
    for t in account room room_member message; do
      printf '[[table]]\nsource = "%s"\nkind = "%s"\ntopic = "rehearse.%s.%s"\nhbase_table = "rehearse_%s_%s"\n' "$t" "$t" "$tag" "$t" "$tag" "$t"
    done
  } >"$config"
  FALCON_MYSQL_ADMIN_URL="mysql://falcon_admin:falcon_admin@127.0.0.1:3306/$db" \
    "$bin/falcon-fixtures" churn --rate "$churn_rate" --duration 2h --seed 5 >"$out/churn.json" 2>"$out/churn.log" &
  churn_pid=$!
  stop_cmd="kill $churn_pid"
  calibrate="${calibrate:-2000}"
  log "rehearsal: database $db ($messages messages), churn at $churn_rate changes/s (pid $churn_pid), out $out"
fi
common=(-c "$config" --state-dir "$state" --json)

# ---- 0. plan ----
t0=$(now)
plan_args=(--window "$window" --workers "$workers" --max-shards "$shards")
[[ -n "$calibrate" ]] && plan_args+=(--calibrate "$calibrate")
if fm plan "${common[@]}" "${plan_args[@]}" >"$out/plan.json" 2>"$out/plan.log"; then
  step plan - "$(secs "$t0" "$(now)")" ok "$out/plan.json"
else
  step plan - "$(secs "$t0" "$(now)")" failed "see $out/plan.log (the night goes on without expected times)"
  echo '{}' >"$out/plan.json"
fi
plan_base=$(jget "$out/plan.json" "round([b['seconds'] for b in d['base'] if b['shards']==$shards][0], 1)" || echo -)
plan_verify=$(jget "$out/plan.json" "round(d['verify_s'], 1)" || echo -)
# Catch-up of the changes written while base runs: backlog / (apply − incoming).
plan_catch_up() { # plan_catch_up BASE_SECONDS
  jget "$out/plan.json" "(lambda inc, app: round(inc * $1 / (app - inc), 1) if app > inc else 'never')(d['writes']['changes_per_h'] / 3600, d['diff_rate']['per_s'])" || echo -
}
verdict=GO
reasons=()
nogo() { verdict=NO-GO; reasons+=("$1"); }

# ---- 1. base, N shards in parallel ----
t0=$(now)
pids=()
for ((i = 0; i < shards; i++)); do
  "$mig" base "${common[@]}" --shard "$i/$shards" --workers "$workers" \
    >"$state/summaries/base-$i-of-$shards.json" 2>"$out/base-$i.log" &
  pids+=($!)
done
base_ok=1 dead=0
for ((i = 0; i < shards; i++)); do
  wait "${pids[$i]}"
  rc=$?
  case $rc in
    0) ;;
    3) dead=$((dead + $(jget "$state/summaries/base-$i-of-$shards.json" "d['dead_lettered']" || echo 0))) ;;
    *) base_ok=0; nogo "base shard $i/$shards exited $rc (log: $out/base-$i.log; rerun it with --resume)" ;;
  esac
done
base_s=$(secs "$t0" "$(now)")
rows=$(python3 -c "import json,glob; print(sum(json.load(open(f)).get('rows_read',0) for f in glob.glob('$state/summaries/base-*-of-$shards.json')))" 2>/dev/null || echo 0)
if ((base_ok)); then
  step base "$plan_base" "$base_s" ok "$shards shard(s), $rows rows read, $dead dead-lettered (listed in the state dir's dead.jsonl files)"
else
  step base "$plan_base" "$base_s" failed "${reasons[-1]}"
fi

# ---- 2. diff --follow until the lag is below the threshold ----
if [[ $verdict == GO ]]; then
  t0=$(now)
  "$mig" diff "${common[@]}" --follow --progress-interval 1 >"$state/summaries/diff-follow.json" 2>"$out/diff-follow.log" &
  diff_pid=$!
  caught=0
  while :; do
    sleep 1
    if ! kill -0 "$diff_pid" 2>/dev/null; then
      wait "$diff_pid"
      nogo "diff --follow exited $? before catching up (log: $out/diff-follow.log)"
      diff_pid=""
      break
    fi
    # Each progress line carries the lag of the last batch (source commit → both targets).
    cur=$(grep -o 'lag_s=[0-9.]*' "$out/diff-follow.log" | tail -1 | cut -d= -f2)
    if [[ -n "$cur" ]] && python3 -c "import sys; sys.exit(0 if $cur < $lag else 1)"; then
      caught=1
      break
    fi
    if python3 -c "import sys; sys.exit(0 if $(now) - $t0 > $catch_timeout else 1)"; then
      nogo "diff --follow not below ${lag}s of lag after ${catch_timeout}s (last lag ${cur:-unknown}s)"
      break
    fi
  done
  follow_s=$(secs "$t0" "$(now)")
  if ((caught)); then
    step diff-follow "$(plan_catch_up "$base_s")" "$follow_s" ok "lag ${cur}s < ${lag}s"
  else
    step diff-follow "$(plan_catch_up "$base_s")" "$follow_s" failed "${reasons[-1]}"
  fi
fi

# ---- 3. stop the writers ----
if [[ $verdict == GO ]]; then
  t0=$(now)
  if bash -c "$stop_cmd" >"$out/stop-writers.log" 2>&1; then
    step stop-writers - "$(secs "$t0" "$(now)")" ok "$stop_cmd"
  else
    nogo "the stop-writers command failed: $stop_cmd (log: $out/stop-writers.log)"
    step stop-writers - "$(secs "$t0" "$(now)")" failed "${reasons[-1]}"
  fi
  [[ "$stop_cmd" == "kill $churn_pid" ]] && { wait "$churn_pid" 2>/dev/null; churn_pid=""; }
fi

# ---- 4. diff --until-now (after --follow stopped: one diff run at a time) ----
if [[ -n "${diff_pid:-}" ]]; then
  kill -TERM "$diff_pid"
  wait "$diff_pid"
  rc=$?
  diff_pid=""
  ((rc == 0 || rc == 3)) || nogo "diff --follow exited $rc when stopped (log: $out/diff-follow.log)"
fi
if [[ $verdict == GO ]]; then
  t0=$(now)
  fm diff "${common[@]}" --until-now >"$state/summaries/diff-until-now.json" 2>"$out/diff-until-now.log"
  rc=$?
  until_s=$(secs "$t0" "$(now)")
  s="$state/summaries/diff-until-now.json"
  if ((rc == 0 || rc == 3)); then
    step diff-until-now - "$until_s" ok "$(jget "$s" "f\"{d['applied_total']} changes up to {d['to'].get('file')}:{d['to'].get('offset')}, lag {d['lag_s']}s\"")"
  else
    nogo "diff --until-now exited $rc (log: $out/diff-until-now.log; rerun it: it resumes)"
    step diff-until-now - "$until_s" failed "${reasons[-1]}"
  fi
fi

# ---- 5. verify: a sample first, then everything ----
if [[ $verdict == GO && -n "$before_verify" ]]; then
  bash -c "$before_verify" >"$out/before-verify.log" 2>&1 || nogo "the --before-verify command failed (log: $out/before-verify.log)"
fi
differing() { # the first lines of a verify report, as evidence
  [[ -s "$1" ]] && python3 - "$1" <<'PY'
import csv, sys
rows = list(csv.reader(open(sys.argv[1])))
head = rows[0] if rows and rows[0] and rows[0][0] == "table" else None
body = rows[1:] if head else rows
for r in body[:10]:
    print("  " + " ".join(f"{k}={v}" for k, v in zip(head or range(len(r)), r) if k in ("table", "target", "key", "kind", "columns") or head is None))
if len(body) > 10:
    print(f"  … {len(body) - 10} more in {sys.argv[1]}")
PY
}
run_verify() { # run_verify NAME PLANNED ARGS...
  local name=$1 planned=$2
  shift 2
  local t0 rc s
  t0=$(now)
  fm verify "${common[@]}" --workers "$workers" --report "$out/$name.csv" "$@" \
    >"$state/summaries/$name.json" 2>"$out/$name.log"
  rc=$?
  s="$state/summaries/$name.json"
  case $rc in
    0) step "$name" "$planned" "$(secs "$t0" "$(now)")" ok "identical: $(jget "$s" "d['compared']") rows compared" ;;
    1)
      nogo "$name found differences: $(jget "$s" "f\"{d['missing']} missing, {d['extra']} extra, {d['different']} different\"")"
      step "$name" "$planned" "$(secs "$t0" "$(now)")" differences "${reasons[-1]}"
      differing "$out/$name.csv" >>"$out/evidence.txt"
      ;;
    *)
      nogo "$name exited $rc (log: $out/$name.log)"
      step "$name" "$planned" "$(secs "$t0" "$(now)")" failed "${reasons[-1]}"
      ;;
  esac
}
: >"$out/evidence.txt"
if [[ $verdict == GO ]]; then
  plan_sample=-
  [[ $plan_verify == - ]] || plan_sample=$(python3 -c "print(round($plan_verify * $sample / 100, 1))")
  run_verify verify-sample "$plan_sample" --sample "$sample"
fi
if [[ $verdict == GO ]]; then
  run_verify verify "$plan_verify"
fi

# ---- the verdict ----
{
  echo
  echo "== cutover $( ((rehearse)) && echo "rehearsal " )verdict: $verdict"
  printf '%-16s %10s %10s  %-11s %s\n' step "plan s" "actual s" result evidence
  while IFS=$'\t' read -r name planned actual result evidence; do
    printf '%-16s %10s %10s  %-11s %s\n' "$name" "$planned" "$actual" "$result" "$evidence"
  done <"$steps"
  for r in "${reasons[@]}"; do echo "NO-GO: $r"; done
  if [[ -s "$out/evidence.txt" ]]; then
    echo "rows that differ:"
    cat "$out/evidence.txt"
  fi
  echo "details: $out"
} | tee "$out/verdict.txt"
python3 - "$steps" "$verdict" "$out/verdict.json" "${reasons[@]}" <<'PY'
import json, sys
steps, verdict, dest, reasons = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
rows = [l.rstrip("\n").split("\t") for l in open(steps) if l.strip()]
num = lambda v: float(v) if v.replace(".", "", 1).isdigit() else None
json.dump({"verdict": verdict, "reasons": reasons,
           "steps": [{"step": r[0], "planned_s": num(r[1]), "actual_s": num(r[2]), "result": r[3], "evidence": r[4]} for r in rows]},
          open(dest, "w"), indent=1)
PY
[[ $verdict == GO ]] && exit 0 || exit 1
