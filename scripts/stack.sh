#!/usr/bin/env bash
# Local test stack for falcon-migrate, without Docker:
#   MariaDB 10.11 (Debian package)  127.0.0.1:3306  binlog ROW/FULL, GTID strict
#   Kafka 4.x, KRaft, one node      127.0.0.1:9092  (controller 127.0.0.1:9093)
#                                   127.0.0.1:9094  SASL_SSL (SCRAM-SHA-512 and PLAIN, user falcon)
#   HBase 2.6 standalone            HMaster+RS+ZooKeeper in one JVM (ZK 127.0.0.1:2181)
#     Thrift2 gateway               127.0.0.1:9090
#     REST gateway                  127.0.0.1:8080
#     Thrift2 gateway over HTTPS    127.0.0.1:9095  (`up --secure` or FALCON_STACK_SECURE=1)
#   HDFS (Hadoop 2.10, HBase's jars) NameNode 127.0.0.1:9820 (web 9870) + one DataNode
#                                   (data 9866, web 9864, ipc 9867); only by `hdfs-up`
#
# TLS: a throwaway CA and certificates (CN=localhost, IP 127.0.0.1) are made once with
# openssl under $FALCON_STACK_DIR/tls/. MariaDB always has them (a plain client is still
# served; `SET GLOBAL require_secure_transport=ON` refuses it), Kafka's SASL_SSL listener
# always runs beside the plain one, and the HTTPS Thrift gateway (a JVM of its own) only in
# secure mode. scripts/stack/env.sh exports the paths and the local SASL credentials.
#
# Thrift2 transport: the gateway runs with HBase's DEFAULT settings: thread-pool server,
# plain (NOT framed) TSocket transport, TBinaryProtocol (NOT compact). A client must use a
# buffered (non-framed) transport and the binary protocol. The `up` readiness check speaks
# exactly that (a raw THBaseService.listNamespaces() call), so it proves it every time.
#
# Usage: scripts/stack.sh up | down | reset | status | logs [SERVER] | hbase-shell | kafka-class CLASS ARGS | hbase-class CLASS|FILE.java ARGS
#        scripts/stack.sh up --secure   (also the HTTPS Thrift gateway)
#        scripts/stack.sh hdfs-up | hdfs-down | hdfs-dfs ARGS   (`hdfs dfs ARGS`: Hadoop's FsShell)
#        scripts/stack.sh stop SERVER | start SERVER | kill SERVER | restart SERVER
#   SERVER = mariadb | kafka | hbase | thrift | rest | thrift-tls
#
# One server at a time (fault tests): `stop` stops it cleanly (SIGTERM, then SIGKILL after
# a grace period; hbase: a clean cluster shutdown), `kill` sends SIGKILL at once (a crash),
# `start` starts it and waits until it answers, as `up` does, `restart` is stop + start.
# The other servers are left as they are. The HBase gateways need HBase: `start thrift`
# or `start rest` waits for HBase too, but does not start it.
#
# HDFS (the production bulk-load path, tests/hdfs.rs) is not part of `up`: `hdfs-up` starts a
# NameNode and a DataNode (256 MiB heap each) from the HBase jars already fetched
# (hadoop-hdfs holds the servers), formats the NameNode once, and returns when a file can be
# written through the DataNode; `hdfs-down` stops them, and so does `down`.
#
# Everything lives under $FALCON_STACK_DIR (default: <repo>/.stack): jars (lib/), data,
# logs (logs/), pid files (run/). `reset` wipes the data but keeps the cached jars.
# Jars come from Maven Central through `mvn dependency:copy-dependencies` (aggregator
# scripts/stack/pom.xml with modules scripts/stack/{kafka,hbase}/pom.xml); Debian packages
# are installed with apt-get when missing (mariadb-server, mariadb-client, kcat, curl,
# unzip; openjdk-17-jdk-headless and maven too). The HBase shell needs no extra install.
#
# Environment overrides:
#   FALCON_STACK_DIR      state directory (default <repo>/.stack)
#   FALCON_KAFKA_VERSION  org.apache.kafka:kafka_2.13 version (default: from the pom)
#   FALCON_HBASE_VERSION  org.apache.hbase:* version (default: from the pom)
#   FALCON_STACK_TIMEOUT  seconds to wait for each server (default 240)
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(cd "$SCRIPT_DIR/.." && pwd)"
TPL_DIR="$SCRIPT_DIR/stack"
STACK_DIR="${FALCON_STACK_DIR:-$REPO_DIR/.stack}"
mkdir -p "$STACK_DIR"
STACK_DIR="$(cd "$STACK_DIR" && pwd)"
LIB_DIR="$STACK_DIR/lib"
RUN_DIR="$STACK_DIR/run"
LOG_DIR="$STACK_DIR/logs"
CONF_DIR="$STACK_DIR/conf"
TLS_DIR="$STACK_DIR/tls"
TIMEOUT="${FALCON_STACK_TIMEOUT:-240}"

MARIADB_PORT=3306
KAFKA_PORT=9092
KAFKA_CONTROLLER_PORT=9093
HBASE_ZK_PORT=2181
KAFKA_SECURE_PORT=9094
THRIFT_PORT=9090
THRIFT_TLS_PORT=9095
# Local, throwaway credentials of the secure endpoints (also in scripts/stack/env.sh).
KAFKA_SASL_USER=falcon
KAFKA_SASL_PASSWORD=falcon-kafka
THRIFT_KEYSTORE_PASSWORD=falcon-stack
SECURE="${FALCON_STACK_SECURE:-0}"
REST_PORT=8080
HDFS_NAMENODE_PORT=9820
HDFS_NAMENODE_HTTP_PORT=9870
HDFS_DATANODE_PORT=9866
HDFS_DATANODE_HTTP_PORT=9864
HDFS_DATANODE_IPC_PORT=9867

# JDK 11+ flags that HBase's bin/hbase adds.
HBASE_JDK_OPTS=(
  -Dorg.apache.hbase.thirdparty.io.netty.tryReflectionSetAccessible=true
  --add-modules jdk.unsupported
  --add-opens java.base/java.io=ALL-UNNAMED
  --add-opens java.base/java.nio=ALL-UNNAMED
  --add-opens java.base/sun.nio.ch=ALL-UNNAMED
  --add-opens java.base/java.lang=ALL-UNNAMED
  --add-opens java.base/jdk.internal.ref=ALL-UNNAMED
  --add-opens java.base/java.lang.reflect=ALL-UNNAMED
  --add-opens java.base/java.util=ALL-UNNAMED
  --add-opens java.base/java.util.concurrent=ALL-UNNAMED
  --add-exports java.base/jdk.internal.misc=ALL-UNNAMED
  --add-exports java.security.jgss/sun.security.krb5=ALL-UNNAMED
  --add-exports java.base/sun.net.dns=ALL-UNNAMED
  --add-exports java.base/sun.net.util=ALL-UNNAMED
)

# ----------------------------------------------------------------------------- helpers

log() { printf '%s\n' "$*" >&2; }
die() { printf 'stack.sh: %s\n' "$*" >&2; exit 1; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

# Run as root, or through sudo when available.
as_root() {
  if [[ $EUID -eq 0 ]]; then "$@"
  elif command -v sudo >/dev/null 2>&1; then sudo "$@"
  else die "need root (or sudo) to run: $*"
  fi
}

# True when something accepts TCP connections on 127.0.0.1:$1.
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

pid_file() { printf '%s/%s.pid' "$RUN_DIR" "$1"; }

# Pid of our server $1 if it is running (pid file + live process that belongs to this
# stack dir, so a recycled pid is not mistaken for ours); empty otherwise.
running_pid() {
  local f pid
  f="$(pid_file "$1")"
  [[ -s "$f" ]] || return 0
  pid="$(<"$f")"
  [[ "$pid" =~ ^[0-9]+$ ]] || return 0
  if kill -0 "$pid" 2>/dev/null && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$STACK_DIR"; then
    printf '%s' "$pid"
  fi
}

# spawn NAME LOGFILE CMD...: start CMD detached (own session), stdin from /dev/null,
# stdout+stderr to LOGFILE; the process itself writes its pid file.
spawn() {
  local name="$1" out="$2"
  shift 2
  local pf
  pf="$(pid_file "$name")"
  rm -f "$pf"
  # shellcheck disable=SC2016  # $$ must expand in the child shell
  # fds 3-9 closed: a server must not inherit a caller's lock (flock) or pipe.
  setsid bash -c 'echo $$ >"$0"; exec "$@"' "$pf" "$@" </dev/null >>"$out" 2>&1 3>&- 4>&- 5>&- 6>&- 7>&- 8>&- 9>&- &
  local i
  for i in $(seq 50); do [[ -s "$pf" ]] && return 0; sleep 0.1; done
  die "$name: did not start (no pid file)"
}

# stop_server NAME [GRACE_SECONDS]: SIGTERM, wait, then SIGKILL.
stop_server() {
  local name="$1" grace="${2:-60}" pid i
  pid="$(running_pid "$name")"
  if [[ -z "$pid" ]]; then rm -f "$(pid_file "$name")"; return 0; fi
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < grace * 10; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    log "$name: still running after ${grace}s, sending SIGKILL to $pid"
    kill -KILL "$pid" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  fi
  rm -f "$(pid_file "$name")"
  log "$name: stopped (pid $pid)"
}

log_file() {
  case "$1" in
    mariadb) echo "$LOG_DIR/mariadb.log" ;;
    kafka) echo "$LOG_DIR/kafka.log" ;;
    hbase) echo "$LOG_DIR/hbase-master.log" ;;
    thrift) echo "$LOG_DIR/hbase-thrift.log" ;;
    rest) echo "$LOG_DIR/hbase-rest.log" ;;
    namenode | datanode) echo "$LOG_DIR/hdfs-$1.log" ;;
    *) die "unknown server '$1' (mariadb|kafka|hbase|thrift|rest|namenode|datanode)" ;;
  esac
}

show_log() {
  local f
  for f in "$(log_file "$1")" "$LOG_DIR/$1.out"; do
    if [[ -s "$f" ]]; then
      log "---- last 40 lines of $f ----"
      tail -n 40 "$f" >&2
    fi
  done
}

# Report a server that did not come up, with the tail of its logs, and fail.
fail_server() {
  log ""
  log "stack.sh: $1 did NOT come up: $2"
  show_log "$1"
  exit 1
}

# wait_for "NAME..." CHECK_FUNCTION: poll until the check passes; fail when one of the
# named processes dies, or on timeout (naming the first server, with all their logs).
wait_for() {
  local names="$1" check="$2" deadline n
  deadline=$(($(date +%s) + TIMEOUT))
  while :; do
    if "$check" 2>/dev/null; then return 0; fi
    for n in $names; do
      [[ -n "$(running_pid "$n")" ]] || fail_server "$n" "process exited"
    done
    if (($(date +%s) >= deadline)); then
      for n in ${names#* }; do [[ "$n" == "${names%% *}" ]] || show_log "$n"; done
      fail_server "${names%% *}" "no answer within ${TIMEOUT}s"
    fi
    sleep 1
  done
}

render() { # render TEMPLATE DEST
  sed -e "s|@STACK_DIR@|$STACK_DIR|g" -e "s|@USER@|$(id -un)|g" "$1" >"$2.tmp"
  mv "$2.tmp" "$2"
}

raise_nofile() {
  local hard
  hard="$(ulimit -Hn)"
  if [[ "$hard" == unlimited ]] || ((hard >= 65536)); then
    ulimit -n 65536 2>/dev/null || true
  else
    ulimit -n "$hard" 2>/dev/null || true
  fi
}

# ----------------------------------------------------------------------------- install

ensure_packages() {
  local missing=()
  command -v mariadbd >/dev/null 2>&1 || [[ -x /usr/sbin/mariadbd ]] || missing+=(mariadb-server)
  command -v mariadb >/dev/null 2>&1 || missing+=(mariadb-client)
  command -v kcat >/dev/null 2>&1 || missing+=(kcat)
  command -v curl >/dev/null 2>&1 || missing+=(curl)
  command -v unzip >/dev/null 2>&1 || missing+=(unzip)
  command -v openssl >/dev/null 2>&1 || missing+=(openssl)
  command -v java >/dev/null 2>&1 || missing+=(openjdk-17-jdk-headless)
  command -v mvn >/dev/null 2>&1 || missing+=(maven)
  ((${#missing[@]})) || return 0
  log "apt-get install ${missing[*]}"
  local t0
  t0="$(now)"
  # Keep the package's init script from starting a system MariaDB on port 3306:
  # we run our own mariadbd. policy-rc.d is only added if none exists, then removed.
  local policy=/usr/sbin/policy-rc.d
  if [[ ! -e $policy ]]; then
    as_root sh -c "printf '#!/bin/sh\nexit 101\n' > $policy && chmod 755 $policy"
    # shellcheck disable=SC2064  # expand now
    trap "as_root rm -f $policy" EXIT
  fi
  : >"$LOG_DIR/apt.log"
  # A fresh machine may have no package lists yet.
  if ! compgen -G '/var/lib/apt/lists/*_Packages*' >/dev/null; then
    as_root apt-get update -q >"$LOG_DIR/apt.log" 2>&1 || true
  fi
  local rc=0 try
  for try in 1 2 3; do
    rc=0
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
      -o DPkg::Lock::Timeout=300 "${missing[@]}" >>"$LOG_DIR/apt.log" 2>&1 || rc=$?
    ((rc == 0)) && break
    log "apt-get install failed (rc=$rc, try $try/3): apt-get update, then retry"
    as_root apt-get update -q >>"$LOG_DIR/apt.log" 2>&1 || true
    sleep 5
  done
  if [[ "$(trap -p EXIT)" == *policy-rc.d* ]]; then
    as_root rm -f "$policy"
    trap - EXIT
  fi
  if ((rc != 0)); then tail -n 30 "$LOG_DIR/apt.log" >&2; die "apt-get install failed"; fi
  log "apt-get: done in $(elapsed "$t0")s"
}

# ensure_libs: the Kafka jars into $LIB_DIR/kafka and the HBase jars into $LIB_DIR/hbase,
# cached there (and in ~/.m2). One Maven run over the aggregator scripts/stack/pom.xml
# resolves both sets in parallel (-T 2). The cache key is the poms' hash plus the version
# overrides; a changed pom or override re-resolves.
ensure_libs() {
  local key args=() name
  key="$(cat "$TPL_DIR/pom.xml" "$TPL_DIR/kafka/pom.xml" "$TPL_DIR/hbase/pom.xml" | sha256sum | cut -d' ' -f1)"
  key+=" kafka=${FALCON_KAFKA_VERSION:-} hbase=${FALCON_HBASE_VERSION:-}"
  if [[ -f "$LIB_DIR/kafka/.stack-key" && "$(<"$LIB_DIR/kafka/.stack-key")" == "$key" &&
    -f "$LIB_DIR/hbase/.stack-key" && "$(<"$LIB_DIR/hbase/.stack-key")" == "$key" ]]; then
    return 0
  fi
  local t0
  t0="$(now)"
  log "jars: resolving Kafka and HBase with maven (cached afterwards)"
  [[ -n "${FALCON_KAFKA_VERSION:-}" ]] && args+=("-Dkafka.version=$FALCON_KAFKA_VERSION")
  [[ -n "${FALCON_HBASE_VERSION:-}" ]] && args+=("-Dhbase.version=$FALCON_HBASE_VERSION")
  rm -rf "$LIB_DIR/kafka.tmp" "$LIB_DIR/hbase.tmp"
  if ! mvn -B -q -T 2 -Dmaven.artifact.threads=8 -f "$TPL_DIR/pom.xml" "${args[@]}" \
    dependency:copy-dependencies -Dstack.lib.dir="$LIB_DIR" >"$LOG_DIR/mvn.log" 2>&1; then
    tail -n 40 "$LOG_DIR/mvn.log" >&2
    die "jars: maven could not resolve them (log: $LOG_DIR/mvn.log)"
  fi
  for name in kafka hbase; do
    printf '%s' "$key" >"$LIB_DIR/$name.tmp/.stack-key"
    rm -rf "${LIB_DIR:?}/$name"
    mv "$LIB_DIR/$name.tmp" "$LIB_DIR/$name"
  done
  log "jars: $(find "$LIB_DIR/kafka" -name '*.jar' | wc -l) Kafka + $(find "$LIB_DIR/hbase" -name '*.jar' | wc -l) HBase jars in $(elapsed "$t0")s"
}

# ----------------------------------------------------------------------------- MariaDB

# ----------------------------------------------------------------------------- TLS

# ensure_tls: a throwaway CA, a server certificate for 127.0.0.1/localhost signed by it
# (PEM for MariaDB, a PEM keystore for Kafka, a PKCS#12 keystore for the Thrift gateway's
# Jetty), a client certificate (CN=falcon) and a second CA that signed nothing (tests of a
# wrong CA). Made once; `reset` keeps them.
ensure_tls() {
  [[ -s "$TLS_DIR/thrift.p12" ]] && return 0
  local d="$TLS_DIR.tmp" t0
  t0="$(now)"
  rm -rf "$d"
  mkdir -p "$d"
  chmod 700 "$d"
  (
    cd "$d"
    ossl() { openssl "$@" 2>>openssl.log; }
    ossl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/O=falcon-stack/CN=falcon-stack test CA" \
      -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign \
      -keyout ca-key.pem -out ca.pem
    ossl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/O=elsewhere/CN=another CA" \
      -addext basicConstraints=critical,CA:TRUE -keyout other-ca-key.pem -out other-ca.pem
    ossl req -newkey rsa:2048 -nodes -subj "/O=falcon-stack/CN=localhost" -keyout server-key.pem -out server.csr
    printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n' >server.ext
    ossl x509 -req -in server.csr -CA ca.pem -CAkey ca-key.pem -CAcreateserial -days 825 \
      -extfile server.ext -out server.pem
    ossl req -newkey rsa:2048 -nodes -subj "/O=falcon-stack/CN=falcon" -keyout client-key.pem -out client.csr
    printf 'extendedKeyUsage=clientAuth\n' >client.ext
    ossl x509 -req -in client.csr -CA ca.pem -CAkey ca-key.pem -CAcreateserial -days 825 \
      -extfile client.ext -out client.pem
    cat server-key.pem server.pem >kafka-keystore.pem
    ossl pkcs12 -export -in server.pem -inkey server-key.pem -certfile ca.pem -name thrift \
      -passout "pass:$THRIFT_KEYSTORE_PASSWORD" -out thrift.p12
    rm -f ./*.csr ./*.ext ./*.srl
    chmod 600 ./*
  ) || { cat "$d/openssl.log" >&2; die "tls: openssl failed"; }
  rm -rf "$TLS_DIR"
  mv "$d" "$TLS_DIR"
  log "tls: CA and certificates made in $TLS_DIR in $(elapsed "$t0")s"
}

MYSQL_CNF() { echo "$CONF_DIR/my.cnf"; }

mariadb_root() { # client over our socket as the installing OS user (unix_socket auth)
  mariadb --defaults-file="$(MYSQL_CNF)" --socket="$RUN_DIR/mariadb.sock" -u "$(id -un)" "$@"
}

check_mariadb() {
  [[ "$(mariadb --no-defaults --protocol=TCP -h 127.0.0.1 -P "$MARIADB_PORT" -u falcon -pfalcon \
    --connect-timeout=2 -N -B -e 'SELECT 1' legacy_chat 2>/dev/null)" == 1 ]]
}

check_mariadb_socket() { mariadb_root --connect-timeout=2 -N -B -e 'SELECT 1' >/dev/null 2>&1; }

# start_mariadb: init the datadir if needed and spawn mariadbd (returns at once).
start_mariadb() {
  MARIADB_T0="$(now)"
  MARIADB_STARTED=0
  [[ -z "$(running_pid mariadb)" ]] || return 0
  port_open "$MARIADB_PORT" && die "mariadb: port $MARIADB_PORT is taken by a process this script did not start"
  mkdir -p "$STACK_DIR/mariadb/tmp"
  ensure_tls
  render "$TPL_DIR/mariadb/my.cnf" "$(MYSQL_CNF)"
  if [[ ! -d "$STACK_DIR/mariadb/data/mysql" ]]; then
    rm -rf "$STACK_DIR/mariadb/data"
    mkdir -p "$STACK_DIR/mariadb/data"
    if ! mariadb-install-db --defaults-file="$(MYSQL_CNF)" --user="$(id -un)" \
      --datadir="$STACK_DIR/mariadb/data" --auth-root-authentication-method=socket \
      --skip-test-db >"$LOG_DIR/mariadb-install-db.log" 2>&1; then
      tail -n 30 "$LOG_DIR/mariadb-install-db.log" >&2
      die "mariadb: mariadb-install-db failed"
    fi
  fi
  local mariadbd=mariadbd
  command -v mariadbd >/dev/null 2>&1 || mariadbd=/usr/sbin/mariadbd
  spawn mariadb "$LOG_DIR/mariadb.out" "$mariadbd" --defaults-file="$(MYSQL_CNF)"
  MARIADB_STARTED=1
}

# ready_mariadb: wait for the server, create the database and users (idempotent, only
# when the tool user cannot log in yet), and check a TCP login of the tool user.
ready_mariadb() {
  if ((MARIADB_STARTED == 0)); then
    check_mariadb || wait_for mariadb check_mariadb
    log "mariadb: already up (pid $(running_pid mariadb), 127.0.0.1:$MARIADB_PORT)"
    return 0
  fi
  wait_for mariadb check_mariadb_socket
  if ! check_mariadb; then
    mariadb_root <"$TPL_DIR/mariadb/init.sql" || fail_server mariadb "init.sql failed"
  fi
  wait_for mariadb check_mariadb
  log "mariadb: up (pid $(running_pid mariadb), 127.0.0.1:$MARIADB_PORT, $(mariadbd_version)) in $(elapsed "$MARIADB_T0")s"
}

mariadbd_version() {
  mariadb --no-defaults --protocol=TCP -h 127.0.0.1 -P "$MARIADB_PORT" -u falcon -pfalcon -N -B \
    -e 'SELECT VERSION()' 2>/dev/null || echo '?'
}

# ----------------------------------------------------------------------------- Kafka

kafka_java() { # kafka_java [JVM OPTS...] MAINCLASS ARGS...
  java -cp "$LIB_DIR/kafka/*" -Dfalcon.stack="$STACK_DIR" "$@"
}

check_kafka() {
  kcat -b "127.0.0.1:$KAFKA_PORT" -L -m 3 2>/dev/null | grep -q '1 brokers:'
}

# The SASL_SSL listener, logged in with PLAIN (kcat reads the password from a file).
# Debian 12's kcat (librdkafka 2.0) fails SCRAM logins that Kafka's Java client and the
# tool's librdkafka 2.12 pass (tests/secure.rs), so the readiness check uses PLAIN.
check_kafka_secure() {
  kcat -F "$TLS_DIR/kcat-sasl.conf" -b "127.0.0.1:$KAFKA_SECURE_PORT" -L -m 5 2>/dev/null |
    grep -q '1 brokers:'
}

# ensure_scram_user: the SCRAM-SHA-512 credentials of the SASL user, stored in the
# cluster's metadata (once: the marker file notes it). Through the plain listener.
ensure_scram_user() {
  local marker="$STACK_DIR/kafka/scram-$KAFKA_SASL_USER.done"
  [[ -f "$marker" ]] && return 0
  kafka_java -Dlog4j2.configurationFile="$CONF_DIR/kafka/tools-log4j2.properties" \
    kafka.admin.ConfigCommand --bootstrap-server "127.0.0.1:$KAFKA_PORT" --alter \
    --add-config "SCRAM-SHA-512=[iterations=4096,password=$KAFKA_SASL_PASSWORD]" \
    --entity-type users --entity-name "$KAFKA_SASL_USER" >>"$LOG_DIR/kafka-scram.log" 2>&1 ||
    { cat "$LOG_DIR/kafka-scram.log" >&2; die "kafka: adding the SCRAM user failed"; }
  touch "$marker"
}

# start_kafka: format the storage once, spawn the broker (returns at once).
start_kafka() {
  KAFKA_T0="$(now)"
  KAFKA_STARTED=0
  [[ -z "$(running_pid kafka)" ]] || return 0
  local p
  for p in "$KAFKA_PORT" "$KAFKA_CONTROLLER_PORT" "$KAFKA_SECURE_PORT"; do
    port_open "$p" && die "kafka: port $p is taken by a process this script did not start"
  done
  mkdir -p "$STACK_DIR/kafka/data" "$CONF_DIR/kafka"
  ensure_tls
  printf 'security.protocol=SASL_SSL\nsasl.mechanisms=PLAIN\nsasl.username=%s\nsasl.password=%s\nssl.ca.location=%s\n' \
    "$KAFKA_SASL_USER" "$KAFKA_SASL_PASSWORD" "$TLS_DIR/ca.pem" >"$TLS_DIR/kcat-sasl.conf"
  render "$TPL_DIR/kafka/server.properties" "$CONF_DIR/kafka/server.properties"
  cp "$TPL_DIR/kafka/log4j2.properties" "$CONF_DIR/kafka/log4j2.properties"
  cp "$TPL_DIR/kafka/tools-log4j2.properties" "$CONF_DIR/kafka/tools-log4j2.properties"
  if [[ ! -f "$STACK_DIR/kafka/data/meta.properties" ]]; then
    # One JVM: kafka.tools.StorageTool format with a fresh cluster id (what `random-uuid`
    # prints: a Uuid in base64url), -g = ignore an already formatted directory.
    local cluster_id=-
    while [[ "$cluster_id" == -* ]]; do # like Uuid.randomUuid(): never starts with '-'
      cluster_id="$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')"
    done
    kafka_java -Dlog4j2.configurationFile="$CONF_DIR/kafka/tools-log4j2.properties" \
      kafka.tools.StorageTool format --standalone -t "$cluster_id" \
      -c "$CONF_DIR/kafka/server.properties" -g >"$LOG_DIR/kafka-format.log" 2>&1 ||
      { cat "$LOG_DIR/kafka-format.log" >&2; die "kafka: storage format failed"; }
  fi
  spawn kafka "$LOG_DIR/kafka.out" java -Xms1g -Xmx1g -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
    -Djava.awt.headless=true -Dfalcon.stack="$STACK_DIR" \
    -Dkafka.logs.dir="$LOG_DIR" -Dlog4j2.configurationFile="$CONF_DIR/kafka/log4j2.properties" \
    -cp "$LIB_DIR/kafka/*" kafka.Kafka "$CONF_DIR/kafka/server.properties"
  KAFKA_STARTED=1
}

ready_kafka() {
  if ((KAFKA_STARTED == 0)); then
    check_kafka || wait_for kafka check_kafka
    ensure_scram_user
    log "kafka: already up (pid $(running_pid kafka), 127.0.0.1:$KAFKA_PORT)"
    return 0
  fi
  wait_for kafka check_kafka
  ensure_scram_user
  wait_for kafka check_kafka_secure
  log "kafka: up (pid $(running_pid kafka), 127.0.0.1:$KAFKA_PORT, SASL_SSL 127.0.0.1:$KAFKA_SECURE_PORT, $(jar_version kafka kafka_2.13-)) in $(elapsed "$KAFKA_T0")s"
}

jar_version() { # jar_version LIBNAME PREFIX -> version from the jar file name
  local j
  j="$(find "$LIB_DIR/$1" -maxdepth 1 -name "$2*.jar" ! -name '*-tests.jar' | head -n1)"
  j="${j##*/}"
  j="${j#"$2"}"
  printf '%s' "${j%.jar}"
}

# ----------------------------------------------------------------------------- HBase

# hbase_cmd NAME HEAP [JVM OPTS...] MAINCLASS ARGS...: sets HBASE_CMD to the java command.
# HBASE_CONF (default $CONF_DIR/hbase) is the config folder put first on the classpath.
hbase_cmd() {
  local name="$1" heap="$2" conf="${HBASE_CONF:-$CONF_DIR/hbase}"
  shift 2
  HBASE_CMD=(java -Xms"$heap" -Xmx"$heap" -XX:+UseG1GC "${HBASE_JDK_OPTS[@]}"
    -Djava.net.preferIPv4Stack=true -Djava.awt.headless=true -Dfalcon.stack="$STACK_DIR"
    -Dhbase.log.dir="$LOG_DIR" -Dhbase.log.file="hbase-$name.log"
    -Dlog4j2.configurationFile="$CONF_DIR/hbase/log4j2.properties"
    -cp "${HBASE_CP_EXTRA:+$HBASE_CP_EXTRA:}$conf:$LIB_DIR/hbase/*" "$@")
}

# compile_java FILE.java: the folder holding FILE's compiled class, compiled on first use
# and kept by content under $STACK_DIR/classes (Java's source launcher would compile the
# file at every start: about 2 s of each bulk load here). Two callers racing both compile;
# the first folder renamed in is kept.
compile_java() {
  local src="$1" sum dir tmp
  sum="$(sha256sum "$src" | cut -c1-16)"
  dir="$STACK_DIR/classes/$sum"
  if [[ ! -d "$dir" ]]; then
    mkdir -p "$STACK_DIR/classes"
    tmp="$(mktemp -d "$STACK_DIR/classes/.tmp.XXXXXX")"
    javac -nowarn -cp "$CONF_DIR/hbase:$LIB_DIR/hbase/*" -d "$tmp" "$src" >&2
    mv -T "$tmp" "$dir" 2>/dev/null || rm -rf "$tmp"
  fi
  printf '%s\n' "$dir"
}

# A real Thrift2 call, raw bytes: THBaseService.listNamespaces() over a plain (unframed)
# socket with TBinaryProtocol (strict header 0x80010001, name, seqid 1, empty args struct).
# The reply carries the namespace names ("default", "hbase").
check_thrift() {
  # shellcheck disable=SC2016  # expanded by the inner bash
  timeout 5 bash -c '
    exec 3<>"/dev/tcp/127.0.0.1/$1"
    printf "\x80\x01\x00\x01\x00\x00\x00\x0elistNamespaces\x00\x00\x00\x01\x00" >&3
    dd bs=65536 count=1 <&3 2>/dev/null' _ "$THRIFT_PORT" | grep -aq default
}

# The same call POSTed to the HTTPS gateway, its certificate checked against the CA.
check_thrift_tls() {
  printf '\x80\x01\x00\x01\x00\x00\x00\x0elistNamespaces\x00\x00\x00\x01\x00' |
    curl -fsS -m 5 --cacert "$TLS_DIR/ca.pem" -H 'Content-Type: application/x-thrift' \
      --data-binary @- "https://127.0.0.1:$THRIFT_TLS_PORT/" 2>/dev/null | grep -aq default
}

check_rest() {
  curl -fsS -m 5 "http://127.0.0.1:$REST_PORT/version/cluster" >/dev/null &&
    curl -fsS -m 5 -H 'Accept: application/json' "http://127.0.0.1:$REST_PORT/status/cluster" |
    grep -q '"LiveNodes":\[{'
}

# hbase_prepare: the HBase JVMs' config files; resets the started flags.
hbase_prepare() {
  HBASE_T0="$(now)"
  HBASE_STARTED=0 THRIFT_STARTED=0 REST_STARTED=0 THRIFT_TLS_STARTED=0
  mkdir -p "$STACK_DIR/hbase/root" "$STACK_DIR/hbase/tmp" "$STACK_DIR/hbase/zk" "$CONF_DIR/hbase"
  render "$TPL_DIR/hbase/hbase-site.xml" "$CONF_DIR/hbase/hbase-site.xml"
  cp "$TPL_DIR/hbase/log4j2.properties" "$CONF_DIR/hbase/log4j2.properties"
}

# The HTTPS gateway's config folder: the stack's hbase-site.xml plus Thrift over HTTP
# with TLS (HBase serves TLS on its Thrift gateway in HTTP mode only) on its own port.
hbase_prepare_tls() {
  ensure_tls
  mkdir -p "$CONF_DIR/hbase-tls"
  cp "$CONF_DIR/hbase/log4j2.properties" "$CONF_DIR/hbase-tls/log4j2.properties"
  local p props=""
  for p in "hbase.regionserver.thrift.port=$THRIFT_TLS_PORT" hbase.regionserver.thrift.http=true \
    hbase.thrift.ssl.enabled=true "hbase.thrift.ssl.keystore.store=$TLS_DIR/thrift.p12" \
    hbase.thrift.ssl.keystore.type=PKCS12 "hbase.thrift.ssl.keystore.password=$THRIFT_KEYSTORE_PASSWORD" \
    "hbase.thrift.ssl.keystore.keypassword=$THRIFT_KEYSTORE_PASSWORD"; do
    props+="  <property><name>${p%%=*}</name><value>${p#*=}</value></property>\n"
  done
  # The later definition of a property wins: the port above replaces the plain one.
  sed "s|</configuration>|$props</configuration>|" "$CONF_DIR/hbase/hbase-site.xml" \
    >"$CONF_DIR/hbase-tls/hbase-site.xml"
  chmod 600 "$CONF_DIR/hbase-tls/hbase-site.xml"
}

# spawn_hbase_server NAME: spawn one of hbase (HMaster with embedded ZooKeeper
# and a region server) | thrift | rest unless it is running (returns at once).
spawn_hbase_server() {
  [[ -z "$(running_pid "$1")" ]] || return 0
  case "$1" in
    hbase)
      local p
      for p in "$HBASE_ZK_PORT" 16000; do
        port_open "$p" && die "hbase: port $p is taken by a process this script did not start"
      done
      hbase_cmd master 4g -XX:MaxDirectMemorySize=1g org.apache.hadoop.hbase.master.HMaster start
      spawn hbase "$LOG_DIR/hbase.out" "${HBASE_CMD[@]}"
      HBASE_STARTED=1
      ;;
    thrift)
      port_open "$THRIFT_PORT" && die "thrift: port $THRIFT_PORT is taken by a process this script did not start"
      # Default Thrift2 server: thread pool, plain TSocket (unframed), TBinaryProtocol.
      hbase_cmd thrift 1g org.apache.hadoop.hbase.thrift2.ThriftServer -b 127.0.0.1 -p "$THRIFT_PORT" start
      spawn thrift "$LOG_DIR/thrift.out" "${HBASE_CMD[@]}"
      THRIFT_STARTED=1
      ;;
    thrift-tls)
      port_open "$THRIFT_TLS_PORT" && die "thrift-tls: port $THRIFT_TLS_PORT is taken by a process this script did not start"
      hbase_prepare_tls
      HBASE_CONF="$CONF_DIR/hbase-tls" hbase_cmd thrift-tls 512m \
        org.apache.hadoop.hbase.thrift2.ThriftServer -b 127.0.0.1 -p "$THRIFT_TLS_PORT" start
      spawn thrift-tls "$LOG_DIR/thrift-tls.out" "${HBASE_CMD[@]}"
      THRIFT_TLS_STARTED=1
      ;;
    rest)
      port_open "$REST_PORT" && die "rest: port $REST_PORT is taken by a process this script did not start"
      hbase_cmd rest 256m org.apache.hadoop.hbase.rest.RESTServer -p "$REST_PORT" start
      spawn rest "$LOG_DIR/rest.out" "${HBASE_CMD[@]}"
      REST_STARTED=1
      ;;
  esac
}

# start_hbase: spawn HMaster, the Thrift2 gateway and the REST gateway, each
# unless already running (returns at once).
start_hbase() {
  hbase_prepare
  spawn_hbase_server hbase
  spawn_hbase_server thrift
  spawn_hbase_server rest
  ((SECURE == 0)) || spawn_hbase_server thrift-tls
}

ready_hbase() {
  wait_for "hbase rest" check_rest
  if ((HBASE_STARTED == 0)); then
    log "hbase: already up (pid $(running_pid hbase), zk 127.0.0.1:$HBASE_ZK_PORT)"
  else
    log "hbase: up (pid $(running_pid hbase), zk 127.0.0.1:$HBASE_ZK_PORT, $(jar_version hbase hbase-server-)) in $(elapsed "$HBASE_T0")s"
  fi
  local how=up
  ((REST_STARTED)) || how="already up"
  log "rest: $how (pid $(running_pid rest), http://127.0.0.1:$REST_PORT) in $(elapsed "$HBASE_T0")s"
  wait_for "thrift hbase" check_thrift
  how=up
  ((THRIFT_STARTED)) || how="already up"
  log "thrift: $how (pid $(running_pid thrift), 127.0.0.1:$THRIFT_PORT, thrift2 unframed binary) in $(elapsed "$HBASE_T0")s"
  ((SECURE == 0)) && return 0
  wait_for "thrift-tls hbase" check_thrift_tls
  how=up
  ((THRIFT_TLS_STARTED)) || how="already up"
  log "thrift-tls: $how (pid $(running_pid thrift-tls), https://127.0.0.1:$THRIFT_TLS_PORT, thrift2 over HTTPS) in $(elapsed "$HBASE_T0")s"
}

# stop_hbase_master: a clean cluster shutdown through `HMaster stop` (what stop-hbase.sh
# does). A plain SIGTERM makes the standalone JVM stop its embedded ZooKeeper before the
# region server, which then retries ZooKeeper for ~20 s. Falls back to SIGTERM/SIGKILL.
stop_hbase_master() {
  local pid i
  pid="$(running_pid hbase)"
  [[ -n "$pid" ]] || { rm -f "$(pid_file hbase)"; return 0; }
  hbase_cmd stop 256m org.apache.hadoop.hbase.master.HMaster stop --shutDownCluster
  timeout 60 "${HBASE_CMD[@]}" >>"$LOG_DIR/hbase.out" 2>&1 || true
  for ((i = 0; i < 300; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$pid" 2>/dev/null; then
    stop_server hbase 60
  else
    rm -f "$(pid_file hbase)"
    log "hbase: stopped (pid $pid)"
  fi
}

# ----------------------------------------------------------------------------- HDFS

# hdfs_cmd NAME [ARGS...]: sets HDFS_CMD to the java command of one HDFS process on the
# HBase jars (hadoop-hdfs holds the NameNode and DataNode) with the HDFS config folder first.
hdfs_cmd() {
  local name="$1"
  shift
  HDFS_CMD=(java -Xms256m -Xmx256m -XX:+UseSerialGC -Djava.net.preferIPv4Stack=true
    -Djava.awt.headless=true -Dfalcon.stack="$STACK_DIR"
    -Dhadoop.log.dir="$LOG_DIR" -Dhdfs.log.dir="$LOG_DIR" -Dhdfs.log.file="hdfs-$name.log"
    -Dlog4j2.configurationFile="$CONF_DIR/hdfs/log4j2.properties"
    -cp "$CONF_DIR/hdfs:$LIB_DIR/hbase/*" "$@")
}

# hdfs_prepare: the config folder. The jars carry no web pages, and the servers' web
# servers (which the DataNode and WebHDFS need) refuse to start without their folder on
# the classpath: empty ones are enough.
hdfs_prepare() {
  mkdir -p "$STACK_DIR/hdfs/name" "$STACK_DIR/hdfs/data" "$STACK_DIR/hdfs/tmp" \
    "$CONF_DIR/hdfs/webapps/hdfs" "$CONF_DIR/hdfs/webapps/datanode" "$CONF_DIR/hdfs/webapps/static"
  render "$TPL_DIR/hdfs/core-site.xml" "$CONF_DIR/hdfs/core-site.xml"
  render "$TPL_DIR/hdfs/hdfs-site.xml" "$CONF_DIR/hdfs/hdfs-site.xml"
  cp "$TPL_DIR/hdfs/log4j2.properties" "$CONF_DIR/hdfs/log4j2.properties"
}

# The NameNode out of safe mode with a live DataNode (its JMX servlet; WebHDFS is no use
# here: its Jersey 1.9 cannot scan classes on Java 17 and answers 500).
check_hdfs_live() {
  local state
  state="$(curl -fsS -m 5 "http://127.0.0.1:$HDFS_NAMENODE_HTTP_PORT/jmx?qry=Hadoop:service=NameNode,name=FSNamesystemState")" &&
    grep -q '"FSState" : "Operational"' <<<"$state" &&
    grep -Eq '"NumLiveDataNodes" : [1-9]' <<<"$state"
}

# A write through the DataNode: a small file put with Hadoop's own shell (one JVM).
check_hdfs_write() {
  hdfs_cmd shell org.apache.hadoop.fs.FsShell -put -f - "hdfs://127.0.0.1:$HDFS_NAMENODE_PORT/tmp/stack-ready"
  echo ready | "${HDFS_CMD[@]}" >>"$LOG_DIR/hdfs-shell.out" 2>&1
}

check_namenode() { port_open "$HDFS_NAMENODE_PORT" && port_open "$HDFS_NAMENODE_HTTP_PORT"; }

cmd_hdfs_up() {
  local t0 p started=0
  t0="$(now)"
  mkdir -p "$RUN_DIR" "$LOG_DIR" "$CONF_DIR"
  [[ -f "$LIB_DIR/hbase/.stack-key" ]] || die "no HBase jars yet: run 'scripts/stack.sh up' first"
  hdfs_prepare
  if [[ -z "$(running_pid namenode)" ]]; then
    for p in "$HDFS_NAMENODE_PORT" "$HDFS_NAMENODE_HTTP_PORT"; do
      port_open "$p" && die "namenode: port $p is taken by a process this script did not start"
    done
    if [[ ! -f "$STACK_DIR/hdfs/name/current/VERSION" ]]; then
      hdfs_cmd format org.apache.hadoop.hdfs.server.namenode.NameNode -format -nonInteractive
      "${HDFS_CMD[@]}" >"$LOG_DIR/hdfs-format.out" 2>&1 ||
        { tail -n 30 "$LOG_DIR/hdfs-format.out" "$LOG_DIR/hdfs-format.log" >&2; die "namenode: format failed"; }
    fi
    hdfs_cmd namenode org.apache.hadoop.hdfs.server.namenode.NameNode
    spawn namenode "$LOG_DIR/namenode.out" "${HDFS_CMD[@]}"
    started=1
  fi
  if [[ -z "$(running_pid datanode)" ]]; then
    for p in "$HDFS_DATANODE_PORT" "$HDFS_DATANODE_HTTP_PORT" "$HDFS_DATANODE_IPC_PORT"; do
      port_open "$p" && die "datanode: port $p is taken by a process this script did not start"
    done
    # It retries the NameNode until it answers: both start side by side.
    hdfs_cmd datanode org.apache.hadoop.hdfs.server.datanode.DataNode
    spawn datanode "$LOG_DIR/datanode.out" "${HDFS_CMD[@]}"
    started=1
  fi
  wait_for "namenode" check_namenode
  wait_for "datanode namenode" check_hdfs_live
  wait_for "datanode namenode" check_hdfs_write
  local how=up
  ((started)) || how="already up"
  log "hdfs: $how (namenode pid $(running_pid namenode), hdfs://127.0.0.1:$HDFS_NAMENODE_PORT, datanode pid $(running_pid datanode)) in $(elapsed "$t0")s"
}

cmd_hdfs_down() {
  mkdir -p "$RUN_DIR"
  stop_server datanode 30
  stop_server namenode 30
}

# ----------------------------------------------------------------------------- commands

# One server, for fault tests: NAME must be one of the stack's servers.
check_name() {
  case "${1:-}" in
    mariadb | kafka | hbase | thrift | rest | thrift-tls) ;;
    *) die "usage: stack.sh stop|start|kill|restart mariadb|kafka|hbase|thrift|rest|thrift-tls" ;;
  esac
}

cmd_stop_one() {
  check_name "${1:-}"
  mkdir -p "$RUN_DIR"
  case "$1" in
    mariadb) stop_server mariadb 60 ;;
    kafka) stop_server kafka 60 ;;
    hbase) stop_hbase_master ;;
    thrift | rest | thrift-tls) stop_server "$1" 30 ;;
  esac
}

cmd_kill_one() {
  check_name "${1:-}"
  local pid i
  pid="$(running_pid "$1")"
  if [[ -z "$pid" ]]; then
    log "$1: not running"
    rm -f "$(pid_file "$1")"
    return 0
  fi
  kill -KILL "$pid" 2>/dev/null || true
  for ((i = 0; i < 100; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  rm -f "$(pid_file "$1")"
  log "$1: killed (SIGKILL, pid $pid)"
}

# start SERVER: starts only that server (unless it runs already) and waits until it
# answers. The start_* functions of `up` are reused; for HBase and its gateways they
# start whichever of the three is not running, so the others' pids are marked running
# and their ports checked by start_hbase only when they are down.
cmd_start_one() {
  check_name "${1:-}"
  local t0
  t0="$(now)"
  mkdir -p "$LIB_DIR" "$RUN_DIR" "$LOG_DIR" "$CONF_DIR"
  raise_nofile
  [[ -f "$LIB_DIR/kafka/.stack-key" && -f "$LIB_DIR/hbase/.stack-key" ]] ||
    die "no jars yet: run 'scripts/stack.sh up' first"
  case "$1" in
    mariadb) start_mariadb; ready_mariadb ;;
    kafka) start_kafka; ready_kafka ;;
    hbase | thrift | rest | thrift-tls)
      [[ "$1" == hbase || -n "$(running_pid hbase)" ]] ||
        die "$1: HBase is not running (scripts/stack.sh start hbase first)"
      start_hbase_only "$1"
      ready_hbase_only "$1"
      ;;
  esac
  log "$1: started in $(elapsed "$t0")s"
}

# ready_hbase_only NAME: what ready_hbase checks, for one of hbase|thrift|rest: the
# gateway's own answer (which needs HBase); for HBase itself, a live region server
# through whichever gateway runs (ZooKeeper's port when neither does).
ready_hbase_only() {
  local what
  case "$1" in
    thrift) wait_for "thrift hbase" check_thrift ;;
    thrift-tls) wait_for "thrift-tls hbase" check_thrift_tls ;;
    rest) wait_for "rest hbase" check_rest ;;
    hbase)
      if [[ -n "$(running_pid rest)" ]]; then wait_for "hbase rest" check_rest; fi
      if [[ -n "$(running_pid thrift)" ]]; then wait_for "hbase thrift" check_thrift; fi
      check_zk() { port_open "$HBASE_ZK_PORT"; }
      wait_for hbase check_zk
      ;;
  esac
  what=up
  [[ "$1" == hbase && $HBASE_STARTED == 0 || "$1" == thrift && $THRIFT_STARTED == 0 ||
    "$1" == rest && $REST_STARTED == 0 || "$1" == thrift-tls && $THRIFT_TLS_STARTED == 0 ]] &&
    what="already up"
  log "$1: $what (pid $(running_pid "$1"))"
}

# start_hbase_only NAME: start_hbase for one of hbase|thrift|rest; the other two are
# left alone (down stays down).
start_hbase_only() {
  hbase_prepare
  spawn_hbase_server "$1"
}

cmd_up() {
  local t0
  t0="$(now)"
  mkdir -p "$LIB_DIR" "$RUN_DIR" "$LOG_DIR" "$CONF_DIR"
  raise_nofile
  ensure_packages
  ensure_libs
  # Start everything, then wait for each server in turn.
  start_mariadb
  start_kafka
  start_hbase
  ready_mariadb
  ready_kafka
  ready_hbase
  log "stack: up in $(elapsed "$t0")s (state in $STACK_DIR)"
}

cmd_down() {
  local t0
  t0="$(now)"
  mkdir -p "$RUN_DIR"
  # The gateways first, then the rest in parallel.
  stop_server rest 30 &
  stop_server thrift 30 &
  stop_server thrift-tls 30 &
  cmd_hdfs_down &
  wait
  stop_server kafka 60 &
  stop_hbase_master &
  stop_server mariadb 60 &
  wait
  log "stack: down in $(elapsed "$t0")s"
}

cmd_reset() {
  local t0
  t0="$(now)"
  cmd_down
  rm -rf "$STACK_DIR/mariadb" "$STACK_DIR/kafka" "$STACK_DIR/hbase" "$STACK_DIR/hdfs"
  log "stack: data wiped (jars kept in $LIB_DIR)"
  cmd_up
  log "stack: reset in $(elapsed "$t0")s"
}

cmd_status() {
  local name port pid state rc=0
  for name in mariadb kafka hbase thrift rest thrift-tls namenode datanode; do
    case "$name" in
      mariadb) port=$MARIADB_PORT ;; kafka) port=$KAFKA_PORT ;; hbase) port=$HBASE_ZK_PORT ;;
      thrift) port=$THRIFT_PORT ;; rest) port=$REST_PORT ;; thrift-tls) port=$THRIFT_TLS_PORT ;;
      namenode) port=$HDFS_NAMENODE_PORT ;; datanode) port=$HDFS_DATANODE_PORT ;;
    esac
    pid="$(running_pid "$name")"
    if [[ $name == thrift-tls && -z "$pid" ]] && ((SECURE == 0)); then
      printf '%-10s %-8s pid=%-8s 127.0.0.1:%s (secure mode only)\n' "$name" off - "$port"
      continue
    fi
    if [[ $name == namenode || $name == datanode ]] && [[ -z "$pid" ]]; then
      printf '%-10s %-8s pid=%-8s 127.0.0.1:%s (hdfs-up only)\n' "$name" off - "$port"
      continue
    fi
    if [[ -n "$pid" ]] && port_open "$port"; then state=up
    elif [[ -n "$pid" ]]; then state=starting; rc=1
    else state=down; rc=1; fi
    printf '%-10s %-8s pid=%-8s 127.0.0.1:%s\n' "$name" "$state" "${pid:--}" "$port"
  done
  return "$rc"
}

cmd_logs() {
  local names=("$@") files=() n
  ((${#names[@]})) || names=(mariadb kafka hbase thrift rest)
  for n in "${names[@]}"; do
    local f
    f="$(log_file "$n")"
    [[ -f "$f" ]] && files+=("$f")
    [[ -s "$LOG_DIR/$n.out" ]] && files+=("$LOG_DIR/$n.out")
  done
  ((${#files[@]})) || die "no logs yet in $LOG_DIR"
  if [[ -t 1 ]]; then tail -n 50 -F "${files[@]}"; else tail -n 50 "${files[@]}"; fi
}

# HBase shell (JRuby) reading commands from stdin, non-interactive (-n: stop at the first
# error with a non-zero exit). Usage: echo "list" | scripts/stack.sh hbase-shell
cmd_hbase_shell() {
  [[ -f "$LIB_DIR/hbase/.stack-key" ]] || die "no HBase jars yet: run 'scripts/stack.sh up' first"
  mkdir -p "$CONF_DIR/hbase"
  render "$TPL_DIR/hbase/hbase-site.xml" "$CONF_DIR/hbase/hbase-site.xml"
  cp "$TPL_DIR/hbase/log4j2.properties" "$CONF_DIR/hbase/log4j2.properties"
  local opts=(-n)
  [[ -t 0 ]] && opts=()
  hbase_cmd shell 512m -Dhbase.root.logger=ERROR,STDERR -Dhbase.log.level=ERROR -Djruby.compile.mode=OFF \
    org.jruby.JarBootstrapMain "${opts[@]}" "$@"
  # Ruby overrides for the hbase-shell 2.4.17 sources go before the jars
  # (see scripts/stack/hbase/shell-overrides/shell/commands/trace.rb).
  local i
  for i in "${!HBASE_CMD[@]}"; do
    if [[ "${HBASE_CMD[$i]}" == -cp ]]; then
      HBASE_CMD[i + 1]="$CONF_DIR/hbase:$TPL_DIR/hbase/shell-overrides:$LIB_DIR/hbase/*"
    fi
  done
  exec "${HBASE_CMD[@]}"
}

main() {
  local cmd="${1:-}"
  shift || true
  case "$cmd" in
    up)
      [[ "${1:-}" == --secure ]] && SECURE=1
      cmd_up
      ;;
    down) cmd_down ;;
    reset) cmd_reset ;;
    status) cmd_status ;;
    logs) cmd_logs "$@" ;;
    stop) cmd_stop_one "$@" ;;
    start) cmd_start_one "$@" ;;
    kill) cmd_kill_one "$@" ;;
    restart) cmd_stop_one "$@" && cmd_start_one "$@" ;;
    hbase-shell) cmd_hbase_shell "$@" ;;
    hdfs-up) cmd_hdfs_up ;;
    hdfs-down) cmd_hdfs_down ;;
    hdfs-dfs) # hdfs-dfs ARGS...: Hadoop's FsShell (`hdfs dfs`) on the stack's HDFS config
      [[ -f "$CONF_DIR/hdfs/core-site.xml" ]] || die "no HDFS config yet: run 'scripts/stack.sh hdfs-up' first"
      hdfs_cmd shell org.apache.hadoop.fs.FsShell "$@"
      exec "${HDFS_CMD[@]}" ;;
    kafka-class) # kafka-class MAINCLASS ARGS...: a Kafka tool on the stack's jars (benchmarks)
      kafka_java -Dlog4j2.configurationFile="$CONF_DIR/kafka/tools-log4j2.properties" "$@" ;;
    hbase-class) # hbase-class MAINCLASS|FILE.java ARGS...: an HBase tool on the stack's jars and config
      if [[ "${1:-}" == *.java ]]; then
        # A single-file program without a package (scripts/hbase/BulkLoadTables.java).
        HBASE_CP_EXTRA="$(compile_java "$1")"
        set -- "$(basename "$1" .java)" "${@:2}"
      fi
      # HBASE_TOOL_OPTS: JVM options for the tool, split on spaces (e.g. -Dhbase.x=y).
      # shellcheck disable=SC2086
      hbase_cmd tool 1g ${HBASE_TOOL_OPTS:-} "$@"
      exec "${HBASE_CMD[@]}" ;;
    *)
      sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//' >&2
      exit 2
      ;;
  esac
}

main "$@"
