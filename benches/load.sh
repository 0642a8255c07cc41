#!/usr/bin/env bash
# The load harness: the simulated Feishu directly, nginx in front
# of it, and feishu-gateway in front of it, under the same wrk load, in one
# run. See benches/README.md for the method and the latest figures.
#
#   bash benches/load.sh              # the comparison table (about 6 minutes)
#   bash benches/load.sh --soak       # 10 minutes of mixed load, RSS every 10 s
#   bash benches/load.sh --profile    # where the gateway's time goes
#   bash benches/load.sh --baseline-bin OTHER/target/release/feishu-gateway
#                                     # the table, plus an A/B against that build
#   bash benches/load.sh --tracing 1  # the table, plus [tracing] on / off (A/B)
#   bash benches/load.sh --tls        # the gateway's TLS upstream path: h2 and
#                                     # http/1.1 by ALPN to nginx and HAProxy
#   bash benches/load.sh --help       # every option
#
# It installs nothing: it checks for its tools and says what to install.
# Every process it starts listens on 127.0.0.1 only and is stopped at exit.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
LUA="$HERE/load/post.lua"

MODE=compare
DURATION=10
WARMUP=2
ROUNDS=3
CONCS="16 128"
THREADS=2
APPS=100
SOAK_MINUTES=10
PROFILE_SECONDS=30
PROFILE_TOOL=auto
BUILD=1
KEEP=0
GATEWAY_ENV=() # extra VAR=VALUE for the gateway processes (experiments)
GATEWAY_SET=() # extra top-level config lines for the gateways (experiments)
OPEN_RATE=0    # --open-loop: fixed request rate for the open-loop latency table (0 = off)
OPEN_CONNS=64  # connections oha may use at that rate
BASE_BIN=""    # --baseline-bin: another gateway build, a fifth target (A/B)
TRACING=""     # --tracing RATIO: the gateway with [tracing] on, its baseline off

usage() {
    cat <<EOF
usage: bash benches/load.sh [--tls | --soak [MINUTES] | --profile [perf|callgrind]] [options]

Modes:
  (default)          table: direct fake, nginx, gateway, gateway rejection path
                     (and gateway (baseline) with --baseline-bin)
  --tls              the gateway's upstream over TLS: gateways whose upstream is
                     nginx or HAProxy terminating TLS in front of the same fake,
                     one offering h2 and http/1.1 by ALPN, one http/1.1 only
                     (and one gateway straight to the fake, plain HTTP, for
                     reference); gateway CPU per request for each (with
                     --baseline-bin, the baseline build beside each)
  --soak [MINUTES]   mixed load on the gateway for MINUTES (default $SOAK_MINUTES),
                     RSS and metric series sampled every 10 s
  --profile [TOOL]   profile the gateway under load: perf (cpu-clock samples)
                     and/or callgrind (instruction counts); default: both
                     where available

Options:
  --duration S       seconds measured per cell (default $DURATION)
  --warmup S         seconds of warm-up before each cell (default $WARMUP)
  --rounds N         rounds of the whole interleaved set (default $ROUNDS);
                     the table shows medians, and the spread of req/s
  --conc "A B"       wrk connections (default "$CONCS")
  --threads N        wrk threads (default $THREADS)
  --apps N           configured apps and client keys (default $APPS)
  --profile-seconds S  seconds of load under callgrind (default $PROFILE_SECONDS);
                     figures are per request
  --gateway-env V=X  extra environment for the gateway, repeatable; for
                     experiments, e.g. TOKIO_WORKER_THREADS=1 or
                     RUST_LOG=info,feishu_gateway::access=off (no access log)
  --gateway-set LINE a top-level config line for the gateways, repeatable;
                     for experiments, e.g. 'workers = 0' (shared runtime)
  --open-loop RATE   also measure latency open-loop at a fixed RATE req/s
                     (oha -q RATE --latency-correction; needs oha:
                     cargo install oha --locked) for direct, nginx and
                     gateway: a fair "added p99", unlike closed-loop wrk
  --open-conns N     connections oha may use for --open-loop (default $OPEN_CONNS)
  --baseline-bin P   A/B against another build of the gateway (e.g. the
                     target/release/feishu-gateway of an older worktree,
                     built apart): a fifth target "gateway (baseline)",
                     binary P under the same config, environment and fake
                     (this tree's sim), interleaved in every round (it and
                     the gateway swap places every other round); prints
                     new/baseline ratios of req/s, cpu per request and
                     peak RSS per connection count, and the per-round
                     ratios. Table and --tls modes only
  --tracing RATIO    the gateway (not its baseline, nor the 429 gateway) with
                     [tracing] on, sampling_ratio RATIO, exporting to the
                     fake (which takes OTLP/HTTP at /v1/traces); without
                     --baseline-bin the baseline is this same build with
                     tracing off, so the A/B ratios are tracing on / off
  --no-build         use target/release/feishu-gateway as it is
  --keep             keep the temporary directory (configs, logs, raw results)
EOF
}

while [ $# -gt 0 ]; do
    case "$1" in
    --tls) MODE=tls ;;
    --soak)
        MODE=soak
        if [ $# -gt 1 ] && [[ "$2" =~ ^[0-9]+$ ]]; then SOAK_MINUTES=$2; shift; fi ;;
    --profile)
        MODE=profile
        if [ $# -gt 1 ] && [[ "$2" =~ ^(perf|callgrind)$ ]]; then PROFILE_TOOL=$2; shift; fi ;;
    --duration) DURATION=$2; shift ;;
    --warmup) WARMUP=$2; shift ;;
    --rounds) ROUNDS=$2; shift ;;
    --conc) CONCS=$2; shift ;;
    --threads) THREADS=$2; shift ;;
    --apps) APPS=$2; shift ;;
    --profile-seconds) PROFILE_SECONDS=$2; shift ;;
    --gateway-env) GATEWAY_ENV+=("$2"); shift ;;
    --gateway-set) GATEWAY_SET+=("$2"); shift ;;
    --open-loop) OPEN_RATE=$2; shift ;;
    --open-conns) OPEN_CONNS=$2; shift ;;
    --baseline-bin) BASE_BIN=$2; shift ;;
    --tracing) TRACING=$2; shift ;;
    --no-build) BUILD=0 ;;
    --keep) KEEP=1 ;;
    -h | --help) usage; exit 0 ;;
    *) echo "load.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
    esac
    shift
done

die() { echo "load.sh: $*" >&2; exit 1; }
say() { echo "== $*" >&2; }

# ----- tools ----------------------------------------------------------------

check_tools() {
    local missing=() pkgs=() t
    need() { command -v "$1" >/dev/null 2>&1 || { missing+=("$1"); pkgs+=("$2"); }; }
    need wrk wrk
    need curl curl
    need awk mawk
    [ "$MODE" = compare ] && need nginx nginx-light
    if [ "$MODE" = tls ]; then
        need nginx nginx-light
        need haproxy haproxy
        need openssl openssl
    fi
    if [ "$MODE" = profile ]; then
        case "$PROFILE_TOOL" in
        perf) need perf linux-perf ;;
        callgrind) need valgrind valgrind; need callgrind_annotate valgrind ;;
        auto)
            command -v perf >/dev/null 2>&1 || command -v valgrind >/dev/null 2>&1 ||
                { missing+=("perf or valgrind"); pkgs+=("linux-perf valgrind"); } ;;
        esac
    fi
    if [ "$BUILD" = 1 ]; then need cargo "rustup (https://rustup.rs)"; fi
    if [ "$OPEN_RATE" != 0 ]; then
        need python3 python3
        command -v oha >/dev/null 2>&1 ||
            { echo "load.sh: --open-loop needs oha (not packaged in Debian 12): cargo install oha --locked" >&2; exit 2; }
    fi
    if [ ${#missing[@]} -gt 0 ]; then
        echo "load.sh: missing tools: ${missing[*]}" >&2
        echo "On Debian/Ubuntu install them with:" >&2
        t=$(printf '%s\n' "${pkgs[@]}" | grep -v rustup | sort -u | tr '\n' ' ')
        [ -n "$t" ] && echo "    sudo apt-get install -y $t" >&2
        printf '%s\n' "${pkgs[@]}" | grep -q rustup && echo "    and Rust from https://rustup.rs" >&2
        exit 2
    fi
}
check_tools

BIN="$ROOT/target/release/feishu-gateway"
if [ "$BUILD" = 1 ]; then
    say "building the release binary"
    (cd "$ROOT" && cargo build --release --locked --bin feishu-gateway) >&2
fi
[ -x "$BIN" ] || die "$BIN not found (run without --no-build)"
if [ -n "$BASE_BIN" ]; then
    [ "$MODE" = compare ] || [ "$MODE" = tls ] || die "--baseline-bin applies to the table and --tls only (not to --$MODE)"
    [ -x "$BASE_BIN" ] && [ -f "$BASE_BIN" ] || die "--baseline-bin $BASE_BIN: not an executable file"
    BASE_BIN=$(cd "$(dirname "$BASE_BIN")" && pwd)/$(basename "$BASE_BIN")
fi
if [ -n "$TRACING" ]; then
    [ "$MODE" = compare ] || die "--tracing applies to the table only (not to --$MODE)"
    # Tracing on against the same build with it off, unless another baseline is given.
    [ -n "$BASE_BIN" ] || BASE_BIN=$BIN
fi

CORES=$(nproc)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/feishu-load.XXXXXX")
STARTED=() # pids this script started, stopped at exit

cleanup() {
    local pid
    for pid in "${STARTED[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${STARTED[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    if [ "$KEEP" = 1 ]; then echo "load.sh: kept $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ----- ports and processes ---------------------------------------------------

TAKEN=" "
port_in_use() {
    local hex
    hex=$(printf ':%04X' "$1")
    awk -v p="$hex" 'FNR > 1 && substr($2, length($2) - 4) == p { f = 1 } END { exit !f }' \
        /proc/net/tcp /proc/net/tcp6 2>/dev/null
}
free_port() {
    local p i
    for i in $(seq 100); do
        p=$((20000 + RANDOM % 40000))
        if [[ "$TAKEN" != *" $p "* ]] && ! port_in_use "$p"; then
            TAKEN+="$p "
            echo "$p"
            return
        fi
    done
    die "no free port found"
}

# wait_http URL SECONDS PID: until URL answers 200, or fail if PID died.
wait_http() {
    local url=$1 secs=$2 pid=$3 i
    for i in $(seq $((secs * 10))); do
        curl -fs -o /dev/null "$url" && return 0
        kill -0 "$pid" 2>/dev/null || return 1
        sleep 0.1
    done
    return 1
}

# All pids of a process tree's top and its direct children (nginx workers).
tree_pids() {
    local top=$1 d
    echo "$top"
    for d in /proc/[0-9]*; do
        [ -r "$d/stat" ] || continue
        awk -v top="$top" -v pid="${d#/proc/}" \
            '{ sub(/^.*\) /, ""); if ($2 == top) print pid }' "$d/stat" 2>/dev/null || true
    done
}

# Sums of utime and stime (clock ticks) of the given pids: "USER SYS".
cpu_ticks() {
    local p u=0 s=0 t
    for p in "$@"; do
        t=($(awk '{ sub(/^.*\) /, ""); print $12, $13 }' "/proc/$p/stat" 2>/dev/null || echo 0 0))
        u=$((u + t[0]))
        s=$((s + t[1]))
    done
    echo "$u $s"
}

# Sum of a /proc/PID/status field (kB) over the given pids.
status_kb() {
    local field=$1 p s=0 v
    shift
    for p in "$@"; do
        v=$(awk -v f="$field:" '$1 == f { print $2 }' "/proc/$p/status" 2>/dev/null || echo 0)
        s=$((s + ${v:-0}))
    done
    echo "$s"
}

# Reset the peak RSS (VmHWM) of the given pids, so each cell has its own peak.
HWM_RESET=1
reset_hwm() {
    local p
    for p in "$@"; do
        echo 5 >"/proc/$p/clear_refs" 2>/dev/null || HWM_RESET=0
    done
}

start_sim() {
    local mode_flag=$1
    "$BIN" sim --apps "$APPS" $mode_flag >"$WORK/sim.out" 2>"$WORK/sim.err" &
    SIM_PID=$!
    STARTED+=("$SIM_PID")
    local i
    for i in $(seq 50); do
        SIM_URL=$(sed -n 's/^sim listening on //p' "$WORK/sim.out")
        [ -n "$SIM_URL" ] && break
        sleep 0.1
    done
    [ -n "$SIM_URL" ] || die "the simulated Feishu did not start: $(cat "$WORK/sim.err")"
    say "simulated Feishu ($mode_flag, $APPS apps) at $SIM_URL, pid $SIM_PID"
}

# Credentials: client keys for the gateway, tenant tokens for the fake and
# nginx (the fake's same-token rule hands the gateway the same tokens).
make_credentials() {
    local i
    : >"$WORK/keys.txt"
    : >"$WORK/tokens.txt"
    GW_ENV=()
    for i in $(seq 0 $((APPS - 1))); do
        local n key secret id tok
        n=$(printf '%03d' "$i")
        id=$(printf 'cli_bench%010d' "$i")
        secret=$(printf 'bench-secret-%010d' "$i")
        key=$(printf 'bench-client-key-%010d' "$i")
        echo "$key" >>"$WORK/keys.txt"
        GW_ENV+=("BENCH_APP_SECRET_$n=$secret" "BENCH_CLIENT_KEY_$n=$key")
        if [ "$MODE" != soak ]; then
            tok=$(curl -fs -X POST "$SIM_URL/open-apis/auth/v3/tenant_access_token/internal" \
                -H 'Content-Type: application/json' \
                -d "{\"app_id\":\"$id\",\"app_secret\":\"$secret\"}" |
                sed -n 's/.*"tenant_access_token":"\([^"]*\)".*/\1/p')
            [ -n "$tok" ] || die "no tenant token from the fake for $id"
            echo "$tok" >>"$WORK/tokens.txt"
        fi
    done
    head -n 1 "$WORK/keys.txt" >"$WORK/key1.txt"
}

# gateway_config FILE PORT ADMIN_PORT lifted|seed [traced]
gateway_config() {
    local file=$1 port=$2 admin=$3 limits=$4 traced=${5:-} i n
    {
        echo "listen = \"127.0.0.1:$port\""
        echo "admin_listen = \"127.0.0.1:$admin\""
        # GW_UPSTREAM and GW_CA: another upstream (a TLS front) and its CA.
        echo "upstream = \"${GW_UPSTREAM:-$SIM_URL}\""
        [ -n "${GW_CA:-}" ] && echo "upstream_ca_file = \"$GW_CA\""
        local line
        for line in ${GATEWAY_SET[@]+"${GATEWAY_SET[@]}"}; do echo "$line"; done
        echo
        echo "[log]"
        echo 'level = "info"'
        if [ -n "$traced" ]; then
            # Spans to the fake, which takes OTLP/HTTP exports and drops them.
            echo
            echo "[tracing]"
            echo "enabled = true"
            echo "endpoint = \"$SIM_URL\""
            echo "sampling_ratio = $TRACING"
        fi
        if [ "$limits" = lifted ]; then
            # The gateway's own quota must not bind: this measures its cost.
            echo
            echo "[[routes]]"
            echo 'method = "POST"'
            echo 'path = "/open-apis/im/v1/chats/:chat_id/top_notice/put_top_notice"'
            echo 'limits = ["1000000/1s"]'
        fi
        for i in $(seq 0 $((APPS - 1))); do
            n=$(printf '%03d' "$i")
            echo
            echo "[[apps]]"
            echo "name = \"app-$n\""
            printf 'app_id = "cli_bench%010d"\n' "$i"
            echo "app_secret_env = \"BENCH_APP_SECRET_$n\""
            echo
            echo "[[clients]]"
            echo "name = \"client-$n\""
            echo "key_env = \"BENCH_CLIENT_KEY_$n\""
            echo "app = \"app-$n\""
        done
    } >"$file"
}

# start_gateway NAME lifted|seed [WRAPPER...]: sets GW_PID, GW_URL, GW_ADMIN.
# The binary is $BIN, or $GW_BIN where set (GW_BIN=... start_gateway ...).
start_gateway() {
    local name=$1 limits=$2 bin=${GW_BIN:-$BIN}
    shift 2
    local port admin
    port=$(free_port)
    admin=$(free_port)
    local traced=""
    [ -n "$TRACING" ] && [ "$name" = gateway ] && traced=1
    gateway_config "$WORK/$name.toml" "$port" "$admin" "$limits" "$traced"
    # Access log lines go to /dev/null (as nginx's do): formatted and
    # written, not stored.
    env "${GW_ENV[@]}" "${GATEWAY_ENV[@]}" "$@" "$bin" serve --config "$WORK/$name.toml" \
        >/dev/null 2>"$WORK/$name.err" &
    GW_PID=$!
    STARTED+=("$GW_PID")
    GW_URL="http://127.0.0.1:$port"
    GW_ADMIN="http://127.0.0.1:$admin"
    # Ready = every app holds a tenant token.
    if ! wait_http "$GW_ADMIN/readyz" 120 "$GW_PID"; then
        env "${GW_ENV[@]}" "$bin" check-config --config "$WORK/$name.toml" >&2 || true
        die "gateway $name did not become ready: $(tail -5 "$WORK/$name.err")"
    fi
    say "gateway $name ($limits limits, $APPS apps, $bin) at $GW_URL, pid $GW_PID"
}

start_nginx() {
    local port dir="$WORK/nginx" user=""
    port=$(free_port)
    mkdir -p "$dir"
    # As root, nginx would switch its workers to "nobody"; keep the caller.
    [ "$(id -u)" = 0 ] && user="user $(id -un) $(id -gn);"
    cat >"$dir/nginx.conf" <<EOF
# Written by benches/load.sh: a plain reverse proxy with upstream keep-alive.
$user
worker_processes $CORES;
daemon off;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 4096; }
http {
    access_log /dev/null;
    client_body_temp_path $dir/body;
    proxy_temp_path $dir/proxy;
    fastcgi_temp_path $dir/fastcgi;
    uwsgi_temp_path $dir/uwsgi;
    scgi_temp_path $dir/scgi;
    upstream feishu {
        server ${SIM_URL#http://};
        keepalive 256;
    }
    server {
        listen 127.0.0.1:$port;
        location / {
            proxy_pass http://feishu;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
EOF
    nginx -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log" >"$dir/stdout" 2>&1 &
    NGINX_PID=$!
    STARTED+=("$NGINX_PID")
    NGINX_URL="http://127.0.0.1:$port"
    local i
    for i in $(seq 50); do
        port_in_use "$port" && break
        kill -0 "$NGINX_PID" 2>/dev/null || die "nginx did not start: $(cat "$dir/error.log" "$dir/stdout")"
        sleep 0.1
    done
    sleep 0.2
    say "nginx ($CORES workers) at $NGINX_URL, pid $NGINX_PID"
}

# Sum of feishu_gateway_requests_total.
requests_total() {
    curl -fs "$1/metrics" | awk '/^feishu_gateway_requests_total\{/ { n += $NF } END { printf "%d\n", n }'
}

# Sum of feishu_gateway_requests_total with this status.
answered_with() {
    curl -fs "$1/metrics" | awk -v s="status=\"$2\"" \
        '/^feishu_gateway_requests_total\{/ && index($0, s) { n += $NF } END { printf "%d\n", n }'
}

# ----- one measured cell -----------------------------------------------------

RESULTS="$WORK/results.tsv"

# cell ROUND TARGET CONC URL AUTH_FILE ADMIN_URL|- PID...
cell() {
    local round=$1 target=$2 conc=$3 url=$4 auth=$5 admin=$6
    shift 6
    local pids=("$@") line u0 s0 u1 s1 r0=0 r1=0
    wrk -t"$THREADS" -c"$conc" -d"${WARMUP}s" -s "$LUA" "$url" -- "$auth" >/dev/null
    reset_hwm "${pids[@]}"
    read -r u0 s0 < <(cpu_ticks "${pids[@]}")
    [ "$admin" != - ] && r0=$(answered_with "$admin" 429)
    line=$(wrk -t"$THREADS" -c"$conc" -d"${DURATION}s" --latency -s "$LUA" "$url" -- "$auth" |
        grep '^RESULT') || die "wrk failed against $target"
    read -r u1 s1 < <(cpu_ticks "${pids[@]}")
    [ "$admin" != - ] && r1=$(answered_with "$admin" 429)
    local hwm
    hwm=$(status_kb VmHWM "${pids[@]}")
    echo "$round $target $conc $line usr_ticks=$((u1 - u0)) sys_ticks=$((s1 - s0)) hwm_kb=$hwm r429=$((r1 - r0))" |
        awk -v tck="$(getconf CLK_TCK)" '{
            for (i = 4; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
            n = v["requests"] > 0 ? v["requests"] : 1
            usr_us = v["usr_ticks"] * 1e6 / tck / n; sys_us = v["sys_ticks"] * 1e6 / tck / n
            printf "%s\t%s\t%s\t%.1f\t%d\t%d\t%d\t%d\t%d\t%.1f\t%d\t%.1f\t%.1f\t%.1f\n", $1, $2, $3, v["rps"],
                v["p50_us"], v["p99_us"], v["p999_us"], v["non2xx"], v["errors"], usr_us + sys_us,
                v["hwm_kb"], v["r429"] / v["duration_s"], usr_us, sys_us
        }' >>"$RESULTS"
    tail -n 1 "$RESULTS" | awk -F'\t' '{ printf "   round %s %-15s c=%-4s %9.0f req/s  p99 %6.2f ms  cpu %5.1f us/req%s\n",
        $1, $2, $3, $4, $6 / 1000, $10, ($12 > 0 ? sprintf("  429/s %.0f", $12) : "") }' >&2
}

# ----- open loop: a fixed rate, the same for every target -----------------------

OPEN_RESULTS="$WORK/open.tsv"
OPEN_PATH=/open-apis/im/v1/chats/oc_5ad11d72b830411d72b836c2000000/top_notice/put_top_notice
OPEN_BODY='{"chat_top_notice":[{"action_type":"1","message_id":"om_dc13264520392913993dd051dba21dcf"}]}'

# open_cell ROUND TARGET URL CREDENTIAL: oha at OPEN_RATE for DURATION s,
# latencies corrected for coordinated omission (measured from when each
# request was due, not when it was sent).
open_cell() {
    local round=$1 target=$2 url=$3 cred=$4
    oha --no-tui --output-format json -z "${WARMUP}s" -q "$OPEN_RATE" -c "$OPEN_CONNS" \
        -m POST -H "Authorization: Bearer $cred" -H "Content-Type: application/json; charset=utf-8" \
        -d "$OPEN_BODY" "$url$OPEN_PATH" >/dev/null
    oha --no-tui --output-format json -z "${DURATION}s" -q "$OPEN_RATE" -c "$OPEN_CONNS" --latency-correction \
        -m POST -H "Authorization: Bearer $cred" -H "Content-Type: application/json; charset=utf-8" \
        -d "$OPEN_BODY" "$url$OPEN_PATH" |
        python3 -c '
import json, sys
d = json.load(sys.stdin)
p = d["latencyPercentiles"]
codes = d.get("statusCodeDistribution", {})
ok = sum(n for c, n in codes.items() if c.startswith("2"))
# Requests cut off by the end of the run are not failures.
errors = sum(n for e, n in d.get("errorDistribution", {}).items() if "deadline" not in e)
bad = sum(codes.values()) - ok + errors
print("%s\t%s\t%.1f\t%.3f\t%.3f\t%.3f\t%d" % (sys.argv[1], sys.argv[2], d["summary"]["requestsPerSec"],
      p["p50"] * 1e3, p["p99"] * 1e3, p["p99.9"] * 1e3, bad))' "$round" "$target" >>"$OPEN_RESULTS" ||
        die "oha failed against $target"
    tail -n 1 "$OPEN_RESULTS" | awk -F'\t' '{ printf "   round %s %-15s open loop %6.0f req/s  p50 %6.3f ms  p99 %6.3f ms  failed %d\n", $1, $2, $3, $4, $5, $7 }' >&2
}

open_loop() {
    [ "$OPEN_RATE" != 0 ] || return 0
    say "open loop: $OPEN_RATE req/s for ${DURATION}s per target (after ${WARMUP}s), up to $OPEN_CONNS connections, $ROUNDS round(s)"
    : >"$OPEN_RESULTS"
    local round k targets=(direct nginx gateway) tok key
    tok=$(head -n 1 "$WORK/tokens.txt")
    key=$(head -n 1 "$WORK/keys.txt")
    for round in $(seq 1 "$ROUNDS"); do
        for k in 0 1 2; do
            case ${targets[$(((k + round - 1) % 3))]} in
            direct) open_cell "$round" direct "$SIM_URL" "$tok" ;;
            nginx) open_cell "$round" nginx "$NGINX_URL" "$tok" ;;
            gateway) open_cell "$round" gateway "$GW1_URL" "$key" ;;
            esac
        done
    done
}

open_report() {
    [ "$OPEN_RATE" != 0 ] && [ -s "$OPEN_RESULTS" ] || return 0
    echo
    echo "Open loop at $OPEN_RATE req/s (oha, latency corrected for coordinated omission; medians over $ROUNDS round(s)):"
    awk -F'\t' -v rate="$OPEN_RATE" '
        function median(list,    n, a, i, j, t) {
            n = split(list, a, " ")
            for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t }
            return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
        }
        { rps[$2] = rps[$2] " " $3; p50[$2] = p50[$2] " " $4; p99[$2] = p99[$2] " " $5; p999[$2] = p999[$2] " " $6; bad[$2] += $7 }
        END {
            printf "| %-15s | %9s | %8s | %8s | %8s | %6s |\n", "target", "req/s", "p50 ms", "p99 ms", "p99.9 ms", "failed"
            printf "|-----------------|----------:|---------:|---------:|---------:|-------:|\n"
            split("direct nginx gateway", order, " ")
            for (k = 1; k <= 3; k++) {
                t = order[k]; if (!(t in rps)) continue
                m99[t] = median(p99[t])
                printf "| %-15s | %9.0f | %8.3f | %8.3f | %8.3f | %6d |\n", t, median(rps[t]), median(p50[t]), m99[t], median(p999[t]), bad[t]
            }
            gw = m99["gateway"] - m99["direct"]; ng = m99["nginx"] - m99["direct"]
            printf "\n  open loop  added p99 gateway %.3f ms, nginx %.3f ms (target: gateway <= nginx)   %s\n", gw, ng, (gw <= ng ? "met" : "MISSED")
        }' "$OPEN_RESULTS"
}

# ----- the comparison ----------------------------------------------------------

compare() {
    start_sim --fast
    make_credentials
    start_nginx
    start_gateway gateway lifted
    local GW1_PID=$GW_PID GW1_URL=$GW_URL GW1_ADMIN=$GW_ADMIN
    start_gateway gateway-seed seed
    local GW2_PID=$GW_PID GW2_URL=$GW_URL GW2_ADMIN=$GW_ADMIN
    local GW3_PID="" GW3_URL="" GW3_ADMIN=""
    if [ -n "$BASE_BIN" ]; then
        # The same config (lifted limits), environment and fake; only the binary differs.
        GW_BIN=$BASE_BIN start_gateway gateway-baseline lifted
        GW3_PID=$GW_PID GW3_URL=$GW_URL GW3_ADMIN=$GW_ADMIN
    fi
    local NGINX_PIDS
    mapfile -t NGINX_PIDS < <(tree_pids "$NGINX_PID")

    local round conc k targets=(direct nginx gateway reject) order
    [ -n "$BASE_BIN" ] && targets=(direct nginx gateway baseline reject)
    local nt=${#targets[@]}
    say "$ROUNDS round(s) x {$CONCS} connections x $nt targets, ${WARMUP}s warm-up + ${DURATION}s each"
    : >"$RESULTS"
    for round in $(seq 1 "$ROUNDS"); do
        order=("${targets[@]}")
        # The gateway and its baseline swap places every other round, so
        # neither always runs right after the other.
        [ -n "$BASE_BIN" ] && [ $((round % 2)) = 0 ] && order=(direct nginx baseline gateway reject)
        for conc in $CONCS; do
            # Each round starts with another target, so none always goes first.
            for k in $(seq 0 $((nt - 1))); do
                case ${order[$(((k + round - 1) % nt))]} in
                direct) cell "$round" direct "$conc" "$SIM_URL" "$WORK/tokens.txt" - "$SIM_PID" ;;
                nginx) cell "$round" nginx "$conc" "$NGINX_URL" "$WORK/tokens.txt" - "${NGINX_PIDS[@]}" ;;
                gateway) cell "$round" gateway "$conc" "$GW1_URL" "$WORK/keys.txt" "$GW1_ADMIN" "$GW1_PID" ;;
                baseline) cell "$round" baseline "$conc" "$GW3_URL" "$WORK/keys.txt" "$GW3_ADMIN" "$GW3_PID" ;;
                reject) cell "$round" reject "$conc" "$GW2_URL" "$WORK/key1.txt" "$GW2_ADMIN" "$GW2_PID" ;;
                esac
            done
        done
    done
    open_loop
    report
    open_report
}

report() {
    local cpu
    cpu=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
    echo
    echo "feishu-gateway load harness — $(date -u '+%Y-%m-%d %H:%M UTC'), commit $(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo '?')"
    echo "machine: $CORES cores ($cpu), $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo), load average before: $LOAD_BEFORE"
    echo "load: wrk -t$THREADS, ${DURATION}s per cell after ${WARMUP}s warm-up, $ROUNDS rounds interleaved; medians (req/s spread = (max-min)/median)"
    echo "work: POST put_top_notice, realistic JSON body; gateway over $APPS apps / $APPS client keys; fake in fast mode (own process)"
    [ ${#GATEWAY_ENV[@]} -gt 0 ] && echo "gateway environment: ${GATEWAY_ENV[*]}"
    [ ${#GATEWAY_SET[@]} -gt 0 ] && echo "gateway config lines: ${GATEWAY_SET[*]}"
    [ -n "$BASE_BIN" ] && echo "baseline: $BASE_BIN (its tree at commit $(git -C "$(dirname "$BASE_BIN")" rev-parse --short HEAD 2>/dev/null || echo '?')), same config; gateway: $BIN"
    [ -n "$TRACING" ] && echo "tracing: the gateway with [tracing] on (sampling_ratio $TRACING, no traceparent sent: the ratio alone decides), the baseline and the 429 gateway off; exported to the fake: $(curl -fs "$SIM_URL/v1/traces" || echo '?')"
    [ "$HWM_RESET" = 1 ] || echo "note: VmHWM could not be reset; peak RSS is over the whole run"
    echo
    awk -F'\t' '
        function median(list,    n, a, i, j, t) {
            n = split(list, a, " ")
            for (i = 2; i <= n; i++) { t = a[i]; for (j = i - 1; j >= 1 && a[j] > t; j--) a[j + 1] = a[j]; a[j + 1] = t }
            return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
        }
        {
            k = $2 SUBSEP $3
            if (!(k in seen)) { seen[k] = 1; order[++nk] = k }
            rps[k] = rps[k] " " $4; p50[k] = p50[k] " " $5; p99[k] = p99[k] " " $6
            p999[k] = p999[k] " " $7; non2xx[k] += $8; err[k] += $9; cpu[k] = cpu[k] " " $10
            if ($11 > hwm[k]) hwm[k] = $11
            r429[k] = r429[k] " " $12; usr[k] = usr[k] " " $13; sys[k] = sys[k] " " $14
            if (!(k in mn) || $4 < mn[k]) mn[k] = $4
            if ($4 > mx[k]) mx[k] = $4
            # Per round, for the A/B ratios round by round.
            RR[k, $1] = $4; CR[k, $1] = $10; if ($1 > nr) nr = $1
        }
        END {
            name["direct"] = "direct (fake)"; name["nginx"] = "nginx"; name["gateway"] = "feishu-gateway"
            name["baseline"] = "gateway (baseline)"; name["reject"] = "gateway 429 path"
            printf "| %-18s | %5s | %9s | %6s | %8s | %8s | %8s | %12s | %18s | %9s |\n", "target", "conns", "req/s", "spread", "p50 ms", "p99 ms", "p99.9 ms", "non-2xx", "cpu us/req usr+sys", "peak RSS"
            printf "|%s|%s|%s|%s|%s|%s|%s|%s|%s|%s|\n", "--------------------", "------:", "----------:", "-------:", "---------:", "---------:", "---------:", "-------------:", "-------------------:", "----------:"
            for (i = 1; i <= nk; i++) {
                k = order[i]; split(k, tc, SUBSEP); t = tc[1]; c = tc[2]
                R[t, c] = median(rps[k]); P99[t, c] = median(p99[k]); Q[t, c] = median(r429[k]); CPU[t, c] = median(cpu[k])
                RSS[t] = (hwm[k] > RSS[t] ? hwm[k] : RSS[t])
            }
            # Rows: by connections, then target.
            nt = split("direct nginx gateway baseline reject", tl, " ")
            nc = 0
            for (i = 1; i <= nk; i++) { split(order[i], tc, SUBSEP); if (!(tc[2] in cs)) { cs[tc[2]] = 1; cl[++nc] = tc[2] } }
            for (ci = 1; ci <= nc; ci++) for (ti = 1; ti <= nt; ti++) {
                k = tl[ti] SUBSEP cl[ci]; if (!(k in seen)) continue
                r = median(rps[k]); spread = r > 0 ? 100 * (mx[k] - mn[k]) / r : 0
                nn = tl[ti] == "reject" ? sprintf("%d 429", non2xx[k]) : non2xx[k] + err[k]
                printf "| %-18s | %5s | %9.0f | %5.0f%% | %8.2f | %8.2f | %8.2f | %12s | %18s | %6.1f MB |\n", name[tl[ti]], cl[ci], r, spread,
                    median(p50[k]) / 1000, median(p99[k]) / 1000, median(p999[k]) / 1000, nn,
                    sprintf("%.1f = %.1f + %.1f", median(cpu[k]), median(usr[k]), median(sys[k])), hwm[k] / 1024
            }
            print ""
            print "peak RSS: the process (nginx: master + workers, summed); cpu us/req: CPU time of that process / requests, user + kernel (the fake for direct)"
            print ""
            print "Ratios (performance targets):"
            for (ci = 1; ci <= nc; ci++) {
                c = cl[ci]
                if (R["nginx", c] > 0 && R["gateway", c] > 0) {
                    tr = R["gateway", c] / R["nginx", c]
                    printf "  c=%-4s throughput gateway/nginx      = %5.2f  (target >= 1)   %s\n", c, tr, (tr >= 1 ? "met" : "MISSED")
                    printf "  c=%-4s cpu per request gateway/nginx = %5.2f  (%.1f vs %.1f us; not a target: the least noisy cost figure)\n", c, CPU["gateway", c] / CPU["nginx", c], CPU["gateway", c], CPU["nginx", c]
                    ag = (P99["gateway", c] - P99["direct", c]) / 1000; an = (P99["nginx", c] - P99["direct", c]) / 1000
                    if (an > 0) {
                        printf "  c=%-4s added p99 gateway/nginx       = %5.2f  (%.2f ms vs %.2f ms; target <= 1)   %s\n", c, ag / an, ag, an, (ag <= an ? "met" : "MISSED")
                    } else {
                        printf "  c=%-4s added p99 gateway %.2f ms, nginx %.2f ms (target: gateway <= nginx)   %s\n", c, ag, an, (ag <= an ? "met" : "MISSED")
                    }
                }
                if (R["gateway", c] > 0 && Q["reject", c] > 0) {
                    rr = Q["reject", c] / R["gateway", c]
                    printf "  c=%-4s 429 answers/s / proxied req/s = %5.2f  (%.0f 429/s; target >= 2)   %s\n", c, rr, Q["reject", c], (rr >= 2 ? "met" : "MISSED")
                }
            }
            g = (RSS["gateway"] > RSS["reject"] ? RSS["gateway"] : RSS["reject"]) / 1024
            printf "  gateway peak RSS with %s apps     = %.1f MB  (target <= 40 MB)   %s\n", apps, g, (g <= 40 ? "met" : "MISSED")
            ab = 0
            for (ci = 1; ci <= nc; ci++) {
                c = cl[ci]; kg = "gateway" SUBSEP c; kb = "baseline" SUBSEP c
                if (!(kg in seen) || !(kb in seen) || R["baseline", c] <= 0 || CPU["baseline", c] <= 0 || hwm[kb] <= 0) continue
                if (!ab++) { print ""; print "A/B, this build (gateway) / the baseline build, medians over the rounds (peak RSS: highest cell):" }
                printf "  c=%-4s throughput      new/baseline = %6.3f  (%.0f vs %.0f req/s)\n", c, R["gateway", c] / R["baseline", c], R["gateway", c], R["baseline", c]
                printf "  c=%-4s cpu per request new/baseline = %6.3f  (%.1f vs %.1f us usr+sys)\n", c, CPU["gateway", c] / CPU["baseline", c], CPU["gateway", c], CPU["baseline", c]
                printf "  c=%-4s peak RSS        new/baseline = %6.3f  (%.1f vs %.1f MB)\n", c, hwm[kg] / hwm[kb], hwm[kg] / 1024, hwm[kb] / 1024
                tr = ""; cr = ""
                for (r = 1; r <= nr; r++) {
                    if (!((kg, r) in RR) || !((kb, r) in RR) || RR[kb, r] <= 0 || CR[kb, r] <= 0) continue
                    tr = tr sprintf(" %.3f", RR[kg, r] / RR[kb, r]); cr = cr sprintf(" %.3f", CR[kg, r] / CR[kb, r])
                }
                printf "  c=%-4s round by round: throughput%s; cpu per request%s\n", c, tr, cr
            }
        }' apps="$APPS" "$RESULTS"
}

# ----- the TLS path: nginx and HAProxy terminating TLS in front of the fake ------

# A test CA and a certificate for localhost, made with openssl: $WORK/tls.
make_tls_cert() {
    local d="$WORK/tls"
    mkdir -p "$d"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
        -keyout "$d/ca.key" -out "$d/ca.pem" -subj "/CN=load.sh test CA" \
        -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
        >/dev/null 2>&1 || die "openssl could not make the test CA"
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
        -keyout "$d/key.pem" -out "$d/req.csr" -subj "/CN=localhost" >/dev/null 2>&1 ||
        die "openssl could not make the certificate request"
    printf 'subjectAltName=DNS:localhost\nbasicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n' >"$d/ext.cnf"
    openssl x509 -req -in "$d/req.csr" -CA "$d/ca.pem" -CAkey "$d/ca.key" -CAcreateserial -days 2 \
        -extfile "$d/ext.cnf" -out "$d/cert.pem" >/dev/null 2>&1 || die "openssl could not sign the certificate"
    cat "$d/cert.pem" "$d/key.pem" >"$d/bundle.pem"
    TLS_CA="$d/ca.pem"
}

# nginx terminating TLS: one port offering h2 and http/1.1 by ALPN, one
# http/1.1 only; both proxy to the fake over HTTP/1.1 with keep-alive.
# Sets NGINX_TLS_PID, NGINX_H2_PORT, NGINX_H1_PORT.
start_nginx_tls() {
    local dir="$WORK/nginx-tls" user=""
    NGINX_H2_PORT=$(free_port)
    NGINX_H1_PORT=$(free_port)
    mkdir -p "$dir"
    [ "$(id -u)" = 0 ] && user="user $(id -un) $(id -gn);"
    cat >"$dir/nginx.conf" <<NGINX
# Written by benches/load.sh --tls: TLS in front of the fake, upstream keep-alive.
$user
worker_processes $CORES;
daemon off;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 4096; }
http {
    access_log /dev/null;
    client_body_temp_path $dir/body;
    proxy_temp_path $dir/proxy;
    fastcgi_temp_path $dir/fastcgi;
    uwsgi_temp_path $dir/uwsgi;
    scgi_temp_path $dir/scgi;
    ssl_certificate $WORK/tls/cert.pem;
    ssl_certificate_key $WORK/tls/key.pem;
    keepalive_requests 1000000;
    http2_max_requests 1000000;
    upstream feishu {
        server ${SIM_URL#http://};
        keepalive 256;
    }
    server {
        listen 127.0.0.1:$NGINX_H2_PORT ssl http2;
        location / {
            proxy_pass http://feishu;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
    server {
        listen 127.0.0.1:$NGINX_H1_PORT ssl;
        location / {
            proxy_pass http://feishu;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
NGINX
    nginx -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log" >"$dir/stdout" 2>&1 &
    NGINX_TLS_PID=$!
    STARTED+=("$NGINX_TLS_PID")
    local i
    for i in $(seq 50); do
        port_in_use "$NGINX_H1_PORT" && port_in_use "$NGINX_H2_PORT" && break
        kill -0 "$NGINX_TLS_PID" 2>/dev/null || die "nginx did not start: $(cat "$dir/error.log" "$dir/stdout")"
        sleep 0.1
    done
    sleep 0.2
    say "nginx TLS ($CORES workers) at :$NGINX_H2_PORT (h2, http/1.1) and :$NGINX_H1_PORT (http/1.1), pid $NGINX_TLS_PID"
}

# HAProxy terminating TLS, the same two ports' worth. Sets HAPROXY_PID,
# HAPROXY_H2_PORT, HAPROXY_H1_PORT.
start_haproxy_tls() {
    local dir="$WORK/haproxy"
    HAPROXY_H2_PORT=$(free_port)
    HAPROXY_H1_PORT=$(free_port)
    mkdir -p "$dir"
    cat >"$dir/haproxy.cfg" <<HAPROXY
# Written by benches/load.sh --tls: TLS in front of the fake, connections to it reused.
global
    nbthread $CORES
    maxconn 8192
defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout http-keep-alive 60s
    http-reuse always
frontend tls_h2
    bind 127.0.0.1:$HAPROXY_H2_PORT ssl crt $WORK/tls/bundle.pem alpn h2,http/1.1
    default_backend feishu
frontend tls_h1
    bind 127.0.0.1:$HAPROXY_H1_PORT ssl crt $WORK/tls/bundle.pem alpn http/1.1
    default_backend feishu
backend feishu
    server sim ${SIM_URL#http://}
HAPROXY
    haproxy -db -f "$dir/haproxy.cfg" >"$dir/stdout" 2>&1 &
    HAPROXY_PID=$!
    STARTED+=("$HAPROXY_PID")
    local i
    for i in $(seq 50); do
        port_in_use "$HAPROXY_H1_PORT" && port_in_use "$HAPROXY_H2_PORT" && break
        kill -0 "$HAPROXY_PID" 2>/dev/null || die "haproxy did not start: $(cat "$dir/stdout")"
        sleep 0.1
    done
    sleep 0.2
    say "HAProxy TLS ($CORES threads) at :$HAPROXY_H2_PORT (h2, http/1.1) and :$HAPROXY_H1_PORT (http/1.1), pid $HAPROXY_PID"
}

# The gateway's CPU per request on each upstream path: plain HTTP/1.1 to
# the fake, and TLS to nginx or HAProxy with h2 or http/1.1 by ALPN (each
# with --baseline-bin's build beside it). Only the gateway process is
# measured; the fronts and the fake run on the same cores.
tls_compare() {
    start_sim --fast
    make_credentials
    make_tls_cert
    start_nginx_tls
    start_haproxy_tls
    local fronts=(plain nginx-h2 nginx-h1 haproxy-h2 haproxy-h1) f up ca
    declare -A TURL TPID
    for f in "${fronts[@]}"; do
        up="" ca=""
        case $f in
        nginx-h2) up="https://localhost:$NGINX_H2_PORT" ca=$TLS_CA ;;
        nginx-h1) up="https://localhost:$NGINX_H1_PORT" ca=$TLS_CA ;;
        haproxy-h2) up="https://localhost:$HAPROXY_H2_PORT" ca=$TLS_CA ;;
        haproxy-h1) up="https://localhost:$HAPROXY_H1_PORT" ca=$TLS_CA ;;
        esac
        GW_UPSTREAM=$up GW_CA=$ca start_gateway "gw-$f" lifted
        TURL[$f]=$GW_URL
        TPID[$f]=$GW_PID
        if [ -n "$BASE_BIN" ]; then
            GW_UPSTREAM=$up GW_CA=$ca GW_BIN=$BASE_BIN start_gateway "base-$f" lifted
            TURL[base-$f]=$GW_URL
            TPID[base-$f]=$GW_PID
        fi
    done
    local targets=() t
    for f in "${fronts[@]}"; do
        targets+=("$f")
        [ -n "$BASE_BIN" ] && targets+=("base-$f")
    done
    local nt=${#targets[@]} round conc k order
    say "TLS path: $ROUNDS round(s) x {$CONCS} connections x $nt gateways, ${WARMUP}s warm-up + ${DURATION}s each"
    : >"$RESULTS"
    for round in $(seq 1 "$ROUNDS"); do
        order=("${targets[@]}")
        if [ -n "$BASE_BIN" ] && [ $((round % 2)) = 0 ]; then
            # Each gateway and its baseline swap places every other round.
            order=()
            for f in "${fronts[@]}"; do order+=("base-$f" "$f"); done
        fi
        for conc in $CONCS; do
            # Each round starts with another target, so none always goes first.
            for k in $(seq 0 $((nt - 1))); do
                t=${order[$(((k + round - 1) % nt))]}
                cell "$round" "$t" "$conc" "${TURL[$t]}" "$WORK/keys.txt" - "${TPID[$t]}"
            done
        done
    done
    tls_report
}

tls_report() {
    local cpu
    cpu=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
    echo
    echo "feishu-gateway TLS upstream path — $(date -u '+%Y-%m-%d %H:%M UTC'), commit $(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo '?')"
    echo "machine: $CORES cores ($cpu), $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo), load average before: $LOAD_BEFORE, after: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "load: wrk -t$THREADS (plain HTTP/1.1 to the gateway), ${DURATION}s per cell after ${WARMUP}s warm-up, $ROUNDS rounds interleaved; medians"
    echo "path: wrk -> gateway -> TLS (ALPN h2 or http/1.1) -> $(nginx -v 2>&1 | sed 's|.*: ||') or HAProxy $(haproxy -v 2>&1 | awk 'NR == 1 { print $3 }') -> fake (HTTP/1.1); plain: gateway -> fake"
    [ -n "$BASE_BIN" ] && echo "baseline: $BASE_BIN (its tree at commit $(git -C "$(dirname "$BASE_BIN")" rev-parse --short HEAD 2>/dev/null || echo '?')), same config; gateway: $BIN"
    echo
    awk -F'\t' '
        function median(list,    n, a, i, j, t) {
            n = split(list, a, " ")
            for (i = 2; i <= n; i++) { t = a[i]; for (j = i - 1; j >= 1 && a[j] > t; j--) a[j + 1] = a[j]; a[j + 1] = t }
            return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
        }
        {
            k = $2 SUBSEP $3
            seen[k] = 1
            if (!($3 in cs)) { cs[$3] = 1; cl[++nc] = $3 }
            rps[k] = rps[k] " " $4; p99[k] = p99[k] " " $6; cpu[k] = cpu[k] " " $10
            usr[k] = usr[k] " " $13; sys[k] = sys[k] " " $14; non[k] += $8 + $9
            if ($11 > hwm[k]) hwm[k] = $11
            if (!(k in mn) || $4 < mn[k]) mn[k] = $4
            if ($4 > mx[k]) mx[k] = $4
            RR[k, $1] = $4; CR[k, $1] = $10; if ($1 > nr) nr = $1
        }
        END {
            nt = split("plain base-plain nginx-h2 base-nginx-h2 nginx-h1 base-nginx-h1 haproxy-h2 base-haproxy-h2 haproxy-h1 base-haproxy-h1", tl, " ")
            printf "| %-22s | %5s | %9s | %6s | %8s | %7s | %21s | %9s |\n", "gateway upstream", "conns", "req/s", "spread", "p99 ms", "non-2xx", "gw cpu us/req usr+sys", "peak RSS"
            printf "|%s|%s|%s|%s|%s|%s|%s|%s|\n", "------------------------", "------:", "----------:", "-------:", "---------:", "--------:", "----------------------:", "----------:"
            for (ci = 1; ci <= nc; ci++) for (ti = 1; ti <= nt; ti++) {
                t = tl[ti]; c = cl[ci]; k = t SUBSEP c; if (!(k in seen)) continue
                r = median(rps[k]); C[t, c] = median(cpu[k]); R[t, c] = r
                label = t; if (sub(/^base-/, "", label)) label = label " (baseline)"
                printf "| %-22s | %5s | %9.0f | %5.0f%% | %8.2f | %7d | %21s | %6.1f MB |\n", label, c, r, (r > 0 ? 100 * (mx[k] - mn[k]) / r : 0),
                    median(p99[k]) / 1000, non[k], sprintf("%.1f = %.1f + %.1f", C[t, c], median(usr[k]), median(sys[k])), hwm[k] / 1024
            }
            print ""
            print "gw cpu us/req: CPU time of the gateway process / requests, user + kernel (its TLS client side included; the fronts and the fake not)"
            print ""
            print "Ratios of the gateway CPU per request (medians over the rounds):"
            for (ci = 1; ci <= nc; ci++) {
                c = cl[ci]
                split("nginx haproxy", fr, " ")
                for (i = 1; i <= 2; i++) {
                    f = fr[i]
                    if (C[f "-h2", c] > 0 && C[f "-h1", c] > 0)
                        printf "  c=%-4s %-7s h2 / http1.1         = %5.2f  (%.1f vs %.1f us)\n", c, f, C[f "-h2", c] / C[f "-h1", c], C[f "-h2", c], C[f "-h1", c]
                }
                split("h2 h1", pr, " ")
                for (i = 1; i <= 2; i++) {
                    p = pr[i]
                    if (C["nginx-" p, c] > 0 && C["haproxy-" p, c] > 0)
                        printf "  c=%-4s %-7s nginx / HAProxy      = %5.2f  (%.1f vs %.1f us)\n", c, p, C["nginx-" p, c] / C["haproxy-" p, c], C["nginx-" p, c], C["haproxy-" p, c]
                    if (C["nginx-" p, c] > 0 && C["plain", c] > 0)
                        printf "  c=%-4s %-7s TLS (nginx) / plain  = %5.2f  (%.1f vs %.1f us)\n", c, p, C["nginx-" p, c] / C["plain", c], C["nginx-" p, c], C["plain", c]
                }
            }
            ab = 0
            for (ci = 1; ci <= nc; ci++) for (ti = 1; ti <= nt; ti += 2) {
                c = cl[ci]; t = tl[ti]; b = tl[ti + 1]; kg = t SUBSEP c; kb = b SUBSEP c
                if (!(kg in seen) || !(kb in seen) || C[b, c] <= 0 || R[b, c] <= 0) continue
                if (!ab++) { print ""; print "A/B, this build / the baseline build, per upstream path (medians over the rounds; then round by round):" }
                tr = ""; cr = ""
                for (r = 1; r <= nr; r++) {
                    if (!((kg, r) in RR) || !((kb, r) in RR) || RR[kb, r] <= 0 || CR[kb, r] <= 0) continue
                    tr = tr sprintf(" %.3f", RR[kg, r] / RR[kb, r]); cr = cr sprintf(" %.3f", CR[kg, r] / CR[kb, r])
                }
                printf "  c=%-4s %-10s cpu/req new/baseline = %6.3f  (%.1f vs %.1f us), req/s %6.3f;  by round: cpu%s, req/s%s\n", c, t,
                    C[t, c] / C[b, c], C[t, c], C[b, c], R[t, c] / R[b, c], cr, tr
            }
        }' "$RESULTS"
}

# ----- soak ------------------------------------------------------------------

soak() {
    start_sim --fast
    make_credentials
    # Seed limits: the mix both passes (proxied) and overflows (429s).
    start_gateway gateway-seed seed
    local secs=$((SOAK_MINUTES * 60)) t=0 rss series req0 req1 q0 q1 log="$WORK/soak.tsv"
    say "soak: ${SOAK_MINUTES} min of mixed load (put over $APPS apps, delete, get chat, waiting puts, bad keys, 404s), wrk -t$THREADS -c16"
    wrk -t"$THREADS" -c16 -d"${secs}s" --latency -s "$LUA" "$GW_URL" -- "$WORK/keys.txt" mix \
        >"$WORK/soak-wrk.out" &
    local WRK_PID=$!
    STARTED+=("$WRK_PID")
    req0=$(answered_with "$GW_ADMIN" 200)
    q0=$(answered_with "$GW_ADMIN" 429)
    printf "%6s %9s %9s %8s %8s %8s\n" "t (s)" "RSS (MB)" "peak (MB)" "series" "200/s" "429/s"
    while kill -0 "$WRK_PID" 2>/dev/null && [ "$t" -lt "$secs" ]; do
        sleep 10
        t=$((t + 10))
        rss=$(status_kb VmRSS "$GW_PID")
        series=$(curl -fs "$GW_ADMIN/metrics" | grep -c '^feishu' || true)
        req1=$(answered_with "$GW_ADMIN" 200)
        q1=$(answered_with "$GW_ADMIN" 429)
        awk -v t="$t" -v rss="$rss" -v hwm="$(status_kb VmHWM "$GW_PID")" -v s="$series" \
            -v ok=$(((req1 - req0) / 10)) -v q=$(((q1 - q0) / 10)) \
            'BEGIN { printf "%6d %9.1f %9.1f %8d %8d %8d\n", t, rss / 1024, hwm / 1024, s, ok, q }' | tee -a "$log"
        req0=$req1
        q0=$q1
    done
    wait "$WRK_PID" || true
    grep '^RESULT' "$WORK/soak-wrk.out" || true
    awk '{ n++; if (n == 1) { first = $2 }; if (n == 6) base = $2; last = $2; s = $4;
           if (n == 1) s0 = $4; if ($2 > mx) mx = $2 }
         END { if (!base) base = first
               printf "soak: RSS after 1 min %.1f MB, max %.1f MB, at the end %.1f MB (%+.1f MB); metric series %d -> %d\n",
                   base, mx, last, last - base, s0, s }' "$log"
}

# ----- profile -----------------------------------------------------------------

profile() {
    start_sim --fast
    make_credentials
    local tools=()
    case "$PROFILE_TOOL" in
    auto)
        command -v perf >/dev/null 2>&1 && tools+=(perf)
        command -v valgrind >/dev/null 2>&1 && tools+=(callgrind) ;;
    *) tools=("$PROFILE_TOOL") ;;
    esac
    local tool
    for tool in "${tools[@]}"; do
        "profile_$tool"
    done
}

# Where a request's cost goes: "label;perf pattern;callgrind pattern", each
# pattern a regular expression over symbol names; "-" = not shown for that
# tool; a leading "+" sums every matching symbol instead of taking the
# largest (perf: of self time). Costs are otherwise inclusive (a function
# and all it calls). perf sees
# inlined frames; callgrind does not (an inlined function's cost is its
# caller's), hence some different stand-ins. Pool::send_h1 and hyper's
# client Connection::poll have no symbol of their own under callgrind: the
# exchange stands in as the largest Timeout::poll, the one around
# Gateway::send's attempt (so it also counts the answer's inspection, body
# and code), and the connection task as the task that Pool::connect spawns
# around the Connection (the HTTP/2 one has the same name, but the fake
# speaks HTTP/1.1; the largest is taken).
PHASES=(
    "server: parse request head (hyper);Server as hyper::proto::h1::Http1Transaction>::parse$;Server as hyper::proto::h1::Http1Transaction>::parse$"
    "request id (src/server/request_id.rs);RequestIdService<S> as tower_service::Service;RequestIdService<S> as tower_service::Service"
    "all phases (Gateway::handle);proxy::Gateway::handle::\{\{closure\}\}$;tower_http::catch_panic::ResponseFuture<F,T> as core::future::future::Future>::poll$"
    "  route (dot segments, catalog);Gateway>?::route$;Gateway>?::route$"
    "  authenticate (SHA-256, map);Gateway>?::authenticate$;Gateway>?::authenticate$"
    "  read_body;Gateway>?::read_body::\{\{closure\}\}$;-"
    "  validate (body and path contract);Gateway>?::validate$;Gateway>?::validate$"
    "  admit (quota);Gateway>?::admit::\{\{closure\}\}$;quota::local::LocalQuota<C>::check$"
    "  forward (token, upstream, inspect);Gateway>?::forward::\{\{closure\}\}$;Gateway>?::forward::\{\{closure\}\}$"
    "    upstream_headers (clone, strip);proxy::headers::upstream_headers$;proxy::headers::upstream_headers$"
    "    upstream exchange (pool, hyper http1 client);Pool::send_h1::\{\{closure\}\}$;tokio::time::timeout::Timeout<T> as core::future::future::Future>::poll$"
    "    upstream connection task (hyper);hyper::client::conn::http1::Connection<T,B> as core::future::future::Future>::poll$;upstream::pool::Pool::connect::\{\{closure\}\}::\{\{closure\}\}$"
    "      parse answer head (hyper);Client as hyper::proto::h1::Http1Transaction>::parse$;Client as hyper::proto::h1::Http1Transaction>::parse$"
    "    answer body (hyper Incoming);hyper::body::incoming::Incoming as http_body::Body>::poll_frame$;hyper::body::incoming::Incoming as http_body::Body>::poll_frame$"
    "    read code from the JSON answer;feishu::answer::read_code$;feishu::answer::read_code$"
    "  response_filter (strip);Gateway>?::response_filter$;Gateway>?::response_filter$"
    "  logging: access log line;observe::logging::access::write_access$;observe::logging::access::write_access$"
    "  logging: metrics;metrics::Metrics::request_done$;metrics::Metrics::request_done$"
    "log writer thread (src/observe/logging/sink.rs);observe::logging::sink::write_loop;observe::logging::sink::write_loop"
    "server: encode answer head (hyper);Server as hyper::proto::h1::Http1Transaction>::encode$;Server as hyper::proto::h1::Http1Transaction>::encode$"
    "kernel: socket writes (writev);^__GI___writev$;-"
    "kernel: socket reads (recvfrom);^__x64_sys_recvfrom$;-"
    "kernel: scheduler (wakeups, switches);+^(finish_task_switch.*|_raw_spin_unlock_irqrestore|__schedule)$;-"
    "allocator (malloc, free, realloc);+^(malloc|_int_malloc|free|cfree.*|_int_free|realloc|_int_realloc|malloc_consolidate|unlink_chunk.*)$;+^(malloc|free|realloc)$"
    "memcpy / memmove;+^__mem(cpy|move)_.*;+^__mem(cpy|move)_.*"
)

profile_perf() {
    # Syscall tracepoints (perf stat) need tracefs; skip that part without it.
    SYSCALLS=0
    perf stat -e raw_syscalls:sys_enter -- true >/dev/null 2>&1 && SYSCALLS=1
    say "perf: gateway under wrk -c16 for ${DURATION}s, cpu-clock samples with DWARF call graphs"
    start_gateway gateway lifted
    local data="$WORK/perf.data"
    wrk -t"$THREADS" -c16 -d"${WARMUP}s" -s "$LUA" "$GW_URL" -- "$WORK/keys.txt" >/dev/null
    wrk -t"$THREADS" -c16 -d"$((DURATION + 2))s" -s "$LUA" "$GW_URL" -- "$WORK/keys.txt" >"$WORK/perf-wrk.out" &
    local WRK_PID=$!
    STARTED+=("$WRK_PID")
    sleep 1
    perf record -q -e cpu-clock -F 499 --call-graph dwarf,16384 -p "$GW_PID" -o "$data" -- sleep "$DURATION" \
        >/dev/null 2>"$WORK/perf-record.err" || die "perf record failed: $(cat "$WORK/perf-record.err")"
    wait "$WRK_PID" || true
    # Reports go to files first: a pipe into head would fail under pipefail.
    perf report -i "$data" --no-children --sort dso --stdio -g none >"$WORK/perf-dso.txt" 2>/dev/null
    perf report -i "$data" --no-children --sort symbol --stdio -g none >"$WORK/perf-self.txt" 2>/dev/null
    perf report -i "$data" --children --sort symbol --stdio -g none >"$WORK/perf-children.txt" 2>/dev/null
    echo
    echo "perf (cpu-clock, gateway process, user + kernel): share of samples by object"
    perf_lines "$WORK/perf-dso.txt" 6
    echo
    echo "perf: top functions by self time ([k] kernel, [.] user)"
    perf_lines "$WORK/perf-self.txt" 25
    echo
    echo "perf: phases, inclusive share of the gateway's samples"
    phase_table perf "$WORK/perf-children.txt"
    if [ "$SYSCALLS" = 1 ]; then
        echo
        echo "perf stat: syscalls and context switches per request at -c16 (gateway vs nginx)"
        syscalls_per_request gateway "$GW_URL" "$WORK/keys.txt" "$GW_PID"
        if command -v nginx >/dev/null 2>&1; then
            start_nginx
            local NGINX_PIDS
            mapfile -t NGINX_PIDS < <(tree_pids "$NGINX_PID")
            syscalls_per_request nginx "$NGINX_URL" "$WORK/tokens.txt" "${NGINX_PIDS[@]}"
        fi
        syscalls_per_request fake "$SIM_URL" "$WORK/tokens.txt" "$SIM_PID"
    fi
}

# perf_lines FILE N: the first N entries of a perf --stdio report, trimmed.
perf_lines() {
    awk -v n="$2" '/^#/ || NF == 0 { next } c < n { sub(/ +- +- *$/, ""); sub(/ +$/, ""); print "  " substr($0, 1, 140); c++ }' "$1"
}

# syscalls_per_request NAME ADMIN|- URL AUTH PID...: syscalls and context
# switches per request of a process (tree) under wrk -c16, by perf stat.
syscalls_per_request() {
    local name=$1 url=$2 auth=$3
    shift 3
    local pids
    pids=$(IFS=,; echo "$*")
    wrk -t"$THREADS" -c16 -d"$((DURATION + 2))s" -s "$LUA" "$url" -- "$auth" >"$WORK/sys-$name.wrk" &
    local WRK_PID=$!
    STARTED+=("$WRK_PID")
    sleep 1
    perf stat -x, -e raw_syscalls:sys_enter,syscalls:sys_enter_writev,syscalls:sys_enter_write,syscalls:sys_enter_sendto,syscalls:sys_enter_recvfrom,syscalls:sys_enter_read,syscalls:sys_enter_readv,syscalls:sys_enter_epoll_wait,syscalls:sys_enter_futex,context-switches \
        -p "$pids" -o "$WORK/sys-$name.csv" -- sleep "$DURATION" >/dev/null 2>&1 || true
    wait "$WRK_PID" || true
    local rps
    rps=$(sed -n 's/.* rps=\([0-9.]*\).*/\1/p' "$WORK/sys-$name.wrk")
    awk -F, -v name="$name" -v n="$(awk -v r="$rps" -v d="$DURATION" 'BEGIN { print r * d }')" '
        $3 ~ /raw_syscalls|syscalls:|context-switches/ {
            ev = $3; sub(/.*sys_enter_?/, "", ev); if (ev == "") ev = "all syscalls"
            if ($3 ~ /context-switches/) ev = "ctx switches"
            out = out sprintf(" %s %.2f,", ev, $1 / n) }
        END { sub(/,$/, "", out); printf "  %-8s per request:%s\n", name, out }' "$WORK/sys-$name.csv"
}

# phase_table perf|callgrind FILE: one line per phase (see PHASES).
phase_table() {
    local kind=$1 file=$2 entry label rest pattern
    for entry in "${PHASES[@]}"; do
        label=${entry%%;*}
        rest=${entry#*;}
        if [ "$kind" = perf ]; then pattern=${rest%%;*}; else pattern=${rest#*;}; fi
        [ "$pattern" = - ] && continue
        awk -v pat="$pattern" -v label="$label" -v kind="$kind" -v reqs="${PROFILED:-1}" '
            BEGIN { sum = sub(/^\+/, "", pat) }
            kind == "perf" {
                # "  children%  self%  [.] symbol  (inlined)"
                if ($0 !~ /%/) next
                sym = $0; sub(/^[^\]]*\] /, "", sym); sub(/ +- +- *$/, "", sym); sub(/ \(inlined\)$/, "", sym)
                # Sums add self time (nested symbols would count twice).
                v = sum ? $2 : $1; sub(/%/, "", v)
            }
            kind == "callgrind" {
                # "Ir (pct)  file:symbol [object]"
                if ($0 !~ /^ *[0-9,]+ \(/) next
                v = $1; gsub(/,/, "", v)
                sym = $0; sub(/^[^)]*\) +/, "", sym); sub(/^[^:]*:/, "", sym); sub(/ \[.*$/, "", sym)
            }
            sym ~ pat && !(sym in seen) {
                seen[sym] = 1
                if (sum) best += v; else if (v + 0 > best) best = v + 0
            }
            END {
                if (kind == "perf") printf "  %-40s %6.1f %%\n", label, best
                else if (best == 0) printf "  %-40s %8s (inlined into its caller)\n", label, "-"
                else printf "  %-40s %8.0f instr/req\n", label, best / reqs
            }' "$file"
    done
}

# Allocation calls per request and the functions that make them, from a
# callgrind output file (call counts are exact).
alloc_table() {
    awk -v n="$PROFILED" '
        function nm(s,    id, rest) {
            if (match(s, /^\([0-9]+\)/)) {
                id = substr(s, RSTART, RLENGTH); rest = substr(s, RLENGTH + 2)
                if (rest != "") name[id] = rest
                return name[id]
            }
            return s
        }
        /^fn=/ { s = $0; sub(/^fn=/, "", s); caller = nm(s); next }
        /^cfn=/ { s = $0; sub(/^cfn=/, "", s); callee = nm(s); next }
        /^calls=/ && callee ~ /^__rustc::__rust_(alloc|realloc|alloc_zeroed)$/ {
            split(substr($0, 7), a, " "); by[caller] += a[1]; total += a[1]
        }
        END {
            printf "  %.1f allocations (incl. reallocs) per request; by caller:\n", total / n
            for (k in by) if (by[k] / n >= 0.9) printf "    %4.1f  %s\n", by[k] / n, substr(k, 1, 120)
        }' "$1" | { IFS= read -r head; echo "$head"; sort -rn; }
}

profile_callgrind() {
    say "callgrind: the gateway under wrk -c16 for ${PROFILE_SECONDS}s of instrumented load (valgrind runs it ~50x slower)"
    start_gateway gateway-cg lifted valgrind --tool=callgrind --instr-atstart=no \
        --callgrind-out-file="$WORK/callgrind.out"
    local before after
    # A few requests first (pool, tokens, lazy statics), not counted.
    wrk -t1 -c4 -d2s -s "$LUA" "$GW_URL" -- "$WORK/keys.txt" >/dev/null
    # /metrics is read only while instrumentation is off: its encoding would
    # otherwise be counted with the requests.
    before=$(requests_total "$GW_ADMIN")
    callgrind_control -i on "$GW_PID" >/dev/null
    wrk -t"$THREADS" -c16 -d"${PROFILE_SECONDS}s" -s "$LUA" "$GW_URL" -- "$WORK/keys.txt" >/dev/null
    callgrind_control -i off "$GW_PID" >/dev/null
    after=$(requests_total "$GW_ADMIN")
    PROFILED=$((after - before))
    [ "$PROFILED" -gt 0 ] || die "no request went through the gateway under callgrind"
    kill -TERM "$GW_PID"
    wait "$GW_PID" 2>/dev/null || true
    local out
    out=$(ls "$WORK"/callgrind.out* | head -n 1)
    callgrind_annotate --inclusive=yes --threshold=100 "$out" 2>/dev/null >"$WORK/cg-inclusive.txt"
    callgrind_annotate --inclusive=no --threshold=100 "$out" 2>/dev/null >"$WORK/cg-self.txt"
    local total
    total=$(awk '/PROGRAM TOTALS/ { gsub(/,/, "", $1); print $1; exit }' "$WORK/cg-self.txt")
    echo
    echo "callgrind: $PROFILED requests, $(awk -v t="$total" -v n="$PROFILED" 'BEGIN { printf "%.0f", t / n }') instructions per request (all threads, user space)"
    echo
    echo "callgrind: top functions by self instructions (per request)"
    awk -v n="$PROFILED" '/^ *[0-9,]+ \(/ && !/PROGRAM TOTALS/ && c < 25 {
        ir = $1; gsub(/,/, "", ir); sym = $0; sub(/^[^)]*\) +/, "", sym); sub(/^[^:]*:/, "", sym); sub(/ \[.*$/, "", sym)
        printf "  %7.0f  %s\n", ir / n, substr(sym, 1, 130); c++ }' "$WORK/cg-self.txt"
    echo
    echo "callgrind: phases, inclusive instructions per request"
    phase_table callgrind "$WORK/cg-inclusive.txt"
    echo
    echo "callgrind: heap allocations"
    alloc_table "$out"
}

LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
case "$MODE" in
compare) compare ;;
tls) tls_compare ;;
soak) soak ;;
profile) profile ;;
esac
