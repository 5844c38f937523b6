#!/usr/bin/env bash
# HTTP benchmarks of locod (never part of `make test`):
#   1. requests per second on GET /healthz, 64 connections;
#   2. job-creation latency (POST /v1/jobs, p50/p99), 64 connections, while the worker runs the
#      accepted jobs (1-step 32x32 generates on the tiny fixture model) on the same CPU.
# Needs wrk (Debian: apt-get install wrk). Usage: bench/http/run.sh [seconds] (default 10).
set -euo pipefail
cd "$(dirname "$0")/../.."
BUILD=${BUILD:-build}
SECS=${1:-10}
command -v wrk >/dev/null || { echo "bench/http/run.sh: wrk is not installed (apt-get install wrk)" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'kill $pid 2>/dev/null || true; wait $pid 2>/dev/null || true; rm -rf "$tmp"' EXIT
cat > "$tmp/locod.json" <<JSON
{"listen": "127.0.0.1:0", "data_dir": "$tmp/data", "device": "cpu", "threads": 1,
 "model_roots": ["$PWD/tests/fixtures/models"], "load_at_start": ["sd1-tiny"], "port_file": "$tmp/port",
 "log_level": "warn", "queue": {"max_queued": 10000000, "max_pending_per_key": 10000000},
 "limits": {"max_connections": 512}}
JSON
"$BUILD/locod" --config "$tmp/locod.json" 2> "$tmp/locod.log" &
pid=$!
for _ in $(seq 200); do [ -s "$tmp/port" ] && break; sleep 0.05; done
port=$(cat "$tmp/port")
for _ in $(seq 200); do curl -sf "http://127.0.0.1:$port/readyz" >/dev/null && break; sleep 0.05; done
echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cores"
echo "== GET /healthz, 64 connections, 2 wrk threads, ${SECS}s"
wrk -t2 -c64 -d"${SECS}s" -s bench/http/healthz.lua "http://127.0.0.1:$port/healthz"
echo "== POST /v1/jobs, 64 connections, 2 wrk threads, ${SECS}s"
wrk -t2 -c64 -d"${SECS}s" --latency -s bench/http/create_job.lua "http://127.0.0.1:$port"
echo "== jobs in the store after the run"
curl -s "http://127.0.0.1:$port/metrics" | grep -E '^loco_jobs\{|^loco_jobs_created_total\{kind="generate"'
