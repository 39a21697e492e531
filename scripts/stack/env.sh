# shellcheck shell=bash
# Client defaults for the local stack started by scripts/stack.sh.
# Usage: source scripts/stack/env.sh   (values already set in the environment win)
#
# HBase Thrift2 gateway: plain (unframed) socket transport + TBinaryProtocol.
export FALCON_MYSQL_URL="${FALCON_MYSQL_URL:-mysql://falcon:falcon@127.0.0.1:3306/legacy_chat}"
export FALCON_MYSQL_PASSWORD="${FALCON_MYSQL_PASSWORD:-falcon}"
export FALCON_MYSQL_ADMIN_URL="${FALCON_MYSQL_ADMIN_URL:-mysql://falcon_admin:falcon_admin@127.0.0.1:3306/legacy_chat}"
export FALCON_KAFKA_BROKERS="${FALCON_KAFKA_BROKERS:-127.0.0.1:9092}"
export FALCON_HBASE_THRIFT="${FALCON_HBASE_THRIFT:-127.0.0.1:9090}"
export FALCON_HBASE_REST="${FALCON_HBASE_REST:-http://127.0.0.1:8080}"

# Secure endpoints (scripts/stack.sh): CA of the throwaway certificates, the Kafka
# SASL_SSL listener and its local user, the HTTPS Thrift gateway (secure mode).
_falcon_stack_dir="${FALCON_STACK_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)/.stack}"
export FALCON_TLS_CA="${FALCON_TLS_CA:-$_falcon_stack_dir/tls/ca.pem}"
export FALCON_KAFKA_SECURE_BROKERS="${FALCON_KAFKA_SECURE_BROKERS:-127.0.0.1:9094}"
export FALCON_KAFKA_SASL_USER="${FALCON_KAFKA_SASL_USER:-falcon}"
export FALCON_KAFKA_SASL_PASSWORD="${FALCON_KAFKA_SASL_PASSWORD:-falcon-kafka}"
export FALCON_HBASE_THRIFT_TLS="${FALCON_HBASE_THRIFT_TLS:-127.0.0.1:9095}"
unset _falcon_stack_dir
