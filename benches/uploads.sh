#!/usr/bin/env bash
# Uploads through the gateway (release build), against the simulated Feishu
# in its own process:
#   1. the time of one upload of SIZE_MB MiB sent directly to the fake and
#      through the gateway, interleaved, ROUNDS times each (medians);
#   2. CONC such uploads at once through the gateway, and the gateway's peak
#      RSS (VmHWM of /proc/<pid>/status) before and after them.
#
#   bash benches/uploads.sh                       # 30 MiB, 5 rounds, 16 at once
#   bash benches/uploads.sh --no-build --size-mb 30 --rounds 5 --conc 16
#
# Needs curl and python3 (free ports). Every process it starts listens on
# 127.0.0.1 only and is stopped at exit. See benches/README.md for figures.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
BIN="$ROOT/target/release/feishu-gateway"
SIZE_MB=30
ROUNDS=5
CONC=16
BUILD=1

while [ $# -gt 0 ]; do
    case "$1" in
    --no-build) BUILD=0 ;;
    --size-mb) SIZE_MB=$2; shift ;;
    --rounds) ROUNDS=$2; shift ;;
    --conc) CONC=$2; shift ;;
    -h | --help) sed -n '2,14p' "$0"; exit 0 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
    esac
    shift
done

for tool in curl python3; do
    command -v "$tool" >/dev/null || { echo "needs $tool (apt-get install -y $tool)" >&2; exit 2; }
done
if [ "$BUILD" = 1 ]; then
    (cd "$ROOT" && cargo build --release --locked)
fi

TMP=$(mktemp -d)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$TMP"
}
trap cleanup EXIT

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
SIM_PORT=$(free_port)
GW_PORT=$(free_port)
ADMIN_PORT=$(free_port)
SIM="http://127.0.0.1:$SIM_PORT"
GW="http://127.0.0.1:$GW_PORT"

echo "uptime before: $(uptime)"

"$BIN" sim --listen "127.0.0.1:$SIM_PORT" --apps 1 --fast >"$TMP/sim.log" 2>&1 &
PIDS+=($!)

cat >"$TMP/gateway.toml" <<EOF
listen = "127.0.0.1:$GW_PORT"
admin_listen = "127.0.0.1:$ADMIN_PORT"
upstream = "$SIM"

[log]
level = "warn"

[[apps]]
name = "bench"
app_id = "cli_bench0000000000"
app_secret_env = "BENCH_APP_SECRET"

[[clients]]
name = "bench"
key_env = "BENCH_CLIENT_KEY"
app = "bench"
EOF
KEY=bench-client-key-0123456789abcdef
BENCH_APP_SECRET=bench-secret-0000000000 BENCH_CLIENT_KEY=$KEY \
    "$BIN" serve --config "$TMP/gateway.toml" >"$TMP/gateway.log" 2>&1 &
GW_PID=$!
PIDS+=($GW_PID)

for _ in $(seq 100); do
    if curl -fs "http://127.0.0.1:$ADMIN_PORT/readyz" >/dev/null 2>&1; then break; fi
    sleep 0.1
done
curl -fs "http://127.0.0.1:$ADMIN_PORT/readyz" >/dev/null || { cat "$TMP/gateway.log"; exit 1; }

# The fake's own token, for the direct uploads.
TOKEN=$(curl -fs -X POST "$SIM/open-apis/auth/v3/tenant_access_token/internal" \
    -H 'content-type: application/json' \
    -d '{"app_id":"cli_bench0000000000","app_secret":"bench-secret-0000000000"}' |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["tenant_access_token"])')

# The form: file_type, file_name, then SIZE_MB MiB of random bytes.
B=benchBoundary7MA4YWxkTrZu0gWq9Xk2
{
    printf -- '--%s\r\nContent-Disposition: form-data; name="file_type"\r\n\r\nstream\r\n' "$B"
    printf -- '--%s\r\nContent-Disposition: form-data; name="file_name"\r\n\r\nbench.bin\r\n' "$B"
    printf -- '--%s\r\nContent-Disposition: form-data; name="file"; filename="bench.bin"\r\n' "$B"
    printf 'Content-Type: application/octet-stream\r\n\r\n'
    head -c $((SIZE_MB << 20)) /dev/urandom
    printf -- '\r\n--%s--\r\n' "$B"
} >"$TMP/body"
BODY_BYTES=$(stat -c %s "$TMP/body")

# One upload; prints its time in seconds, fails unless Feishu's code is 0.
post() { # URL BEARER OUT
    local t
    t=$(curl -s -o "$3" -w '%{time_total}' -X POST "$1/open-apis/im/v1/files" \
        -H "authorization: Bearer $2" -H 'expect:' \
        -H "content-type: multipart/form-data; boundary=$B" \
        --data-binary @"$TMP/body")
    grep -q '"code":0' "$3" || { echo "upload failed: $(head -c 300 "$3")" >&2; return 1; }
    echo "$t"
}
hwm() { awk '/VmHWM/ {print $2}' "/proc/$GW_PID/status"; }
# The gateway's CPU time so far (user + system), in clock ticks.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$GW_PID/stat"; }
TICK=$(getconf CLK_TCK)
rss() { awk '/VmRSS/ {print $2}' "/proc/$GW_PID/status"; }
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

echo "body: $BODY_BYTES bytes ($SIZE_MB MiB file); gateway pid $GW_PID, VmHWM at start $(hwm) kB"
# Warm up both paths once (connections, token).
post "$SIM" "$TOKEN" "$TMP/out" >/dev/null
post "$GW" "$KEY" "$TMP/out" >/dev/null
: >"$TMP/direct"
: >"$TMP/gateway"
CPU0=$(cpu_ticks)
for r in $(seq "$ROUNDS"); do
    if [ $((r % 2)) = 1 ]; then
        post "$SIM" "$TOKEN" "$TMP/out" >>"$TMP/direct"
        post "$GW" "$KEY" "$TMP/out" >>"$TMP/gateway"
    else
        post "$GW" "$KEY" "$TMP/out" >>"$TMP/gateway"
        post "$SIM" "$TOKEN" "$TMP/out" >>"$TMP/direct"
    fi
done
D=$(median <"$TMP/direct")
G=$(median <"$TMP/gateway")
echo "direct to the fake: $(tr '\n' ' ' <"$TMP/direct")s -> median ${D}s"
echo "through the gateway: $(tr '\n' ' ' <"$TMP/gateway")s -> median ${G}s"
echo "ratio gateway/direct: $(python3 -c "print(round($G/$D, 2))")"
CPU1=$(cpu_ticks)
echo "gateway CPU per upload: $(python3 -c "print(round(($CPU1-$CPU0)*1000/$TICK/$ROUNDS, 1))") ms (user+sys over $ROUNDS uploads)"
echo "gateway VmHWM after $ROUNDS sequential uploads: $(hwm) kB"

START=$(date +%s.%N)
for i in $(seq "$CONC"); do
    post "$GW" "$KEY" "$TMP/out$i" >"$TMP/conc$i" &
done
FAILED=0
for job in $(jobs -p); do
    case " ${PIDS[*]} " in *" $job "*) continue ;; esac
    wait "$job" || FAILED=$((FAILED + 1))
done
END=$(date +%s.%N)
echo "$CONC concurrent uploads through the gateway: $FAILED failed, wall $(python3 -c "print(round($END-$START, 2))")s," \
    "each $(cat "$TMP"/conc* | sort -n | tr '\n' ' ')s"
echo "gateway VmHWM (peak RSS since start): $(hwm) kB; VmRSS now: $(rss) kB"
echo "uptime after: $(uptime)"
[ "$FAILED" = 0 ]
