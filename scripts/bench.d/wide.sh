# shellcheck shell=bash disable=SC2154 # port, out, server_pid…: scripts/bench's, which sources this
# `scripts/bench wide CLIENTS RATE DURATION WORKERS LOADERS [--FLAG VALUE…]`, sourced by
# scripts/bench (its functions and settings are this file's): CLIENTS WebSocket clients on
# `fanout --workers WORKERS --bus redis`, held by LOADERS fanout-bench processes, because one
# process here may open only `ulimit -Hn` files (20,000 on the project's machines) — the workers
# as much as the load tool. See the header of scripts/bench for what it prints.
#
# - Limits: every process gets the hard open-files limit as its soft one; the workers get
#   `--max-connections` = the limit less $FANOUT_BENCH_FD_RESERVE (default 200), so a worker that
#   SO_REUSEPORT hands too many clients answers 503 (counted as not connected) rather than running
#   out of files. The run is refused when CLIENTS/LOADERS or CLIENTS/WORKERS (+10%: the port's
#   hash does not spread evenly) would not fit, or the source addresses' ephemeral ports could not
#   hold CLIENTS (+25%). net.core.somaxconn (the workers' backlog of 4096) and
#   net.netfilter.nf_conntrack_max (2 × CLIENTS + 10,000: Docker's conntrack sees loopback too,
#   and closed connections stay in it for a while) are raised when lower, and said so.
# - Loaders: loader I gets CLIENTS/LOADERS clients (the first CLIENTS mod LOADERS one more),
#   `--loader I/LOADERS` and one fresh --rendezvous directory; each spreads its clients
#   round-robin over every address of $FANOUT_BENCH_SOURCES (default 127.0.0.2-127.0.0.21, 20
#   addresses: 5,000 of the ~28k ports of each for 100,000 clients; the kernel keeps the loaders'
#   ports apart). Loader 1 publishes RATE msg/s for DURATION (through `POST /api/metrics` unless
#   the flags say `--publish redis`) once every loader's clients are in; the others only receive.
#   Flags after the positional arguments go to every loader as they are (per loader:
#   `--connect-rate 2000` is 2,000 connects/s for each).
# - Results: `fanout-bench --merge` of the loaders' reports (counts summed, latency histograms
#   merged, connect time from the first loader's first connect to the last loader's last), then
#   `RESULT {...}` as `run` prints it — the workers' CPU, user and system apart, per delivery, over
#   loader 1's `bench: publishing` to the last loader's `bench: drained` — and: the workers' RSS
#   before the clients, with every client connected, and drained (server_rss_kib), their bytes per
#   connection, each worker's open files and the loaders' RSS once every client is connected.

positional=()
while [[ $# -gt 0 && $1 != --* ]]; do
    positional+=("$1")
    shift
done
extra=("$@")
clients=${positional[0]:-3000} rate=${positional[1]:-1} duration=${positional[2]:-10s}
workers=${positional[3]:-3} loaders=${positional[4]:-3}
bus=redis
sources=${FANOUT_BENCH_SOURCES:-127.0.0.2-127.0.0.21}
reserve=${FANOUT_BENCH_FD_RESERVE:-200}

wide_fail() {
    echo "bench wide: $*" >&2
    exit 2
}

# Limits: the open files of one process, and what they allow.
hard=$(ulimit -Hn)
[[ $hard == unlimited ]] && hard=1048576
ulimit -n "$hard"
cap=$((hard - reserve))
per_loader=$(((clients + loaders - 1) / loaders))
per_worker=$(((clients + workers - 1) / workers))
((per_loader <= cap)) ||
    wide_fail "$per_loader clients per load process, over the open-files limit $hard less $reserve: use more LOADERS"
((per_worker + per_worker / 10 <= cap)) ||
    wide_fail "$per_worker clients per worker (+10%), over the open-files limit $hard less $reserve: use more WORKERS"
read -r port_low port_high </proc/sys/net/ipv4/ip_local_port_range
source_count=$(python3 -c '
import ipaddress, sys
count = 0
for part in sys.argv[1].split(","):
    first, _, last = part.strip().partition("-")
    count += int(ipaddress.IPv4Address(last or first)) - int(ipaddress.IPv4Address(first)) + 1
print(count)' "$sources") || wide_fail "FANOUT_BENCH_SOURCES=$sources: expected A-B or A,B,…"
ports=$(((port_high - port_low + 1) * source_count))
((ports >= clients + clients / 4)) ||
    wide_fail "$source_count source addresses give $ports ports: too few for $clients clients (+25%); widen FANOUT_BENCH_SOURCES"

# raise_sysctl KEY MIN: raises /proc/sys/KEY to MIN when lower (and says so).
raise_sysctl() {
    local file=/proc/sys/${1//.//} now
    [[ -r $file ]] || return 0
    now=$(cat "$file")
    ((now >= $2)) && return 0
    if echo "$2" >"$file" 2>/dev/null; then
        echo "bench wide: raised $1 from $now to $2" >&2
    else
        echo "bench wide: $1 is $now, under $2, and cannot be raised here" >&2
    fi
}
raise_sysctl net.core.somaxconn 4096
raise_sysctl net.netfilter.nf_conntrack_max $((2 * clients + 10000))

start_bus redis
# shellcheck disable=SC2034 # read by start_server
server_flags=(--max-connections "$cap")
start_server redis "$workers"
# Every worker listening before any client connects (else the first ones take the early clients).
for _ in $(seq 1 100); do
    [[ $(ss -Hltn "sport = :$port" | wc -l) -ge $workers ]] && break
    sleep 0.1
done
worker_pids=$(pgrep -P "$server_pid" || true)
[[ $(wc -w <<<"$worker_pids") -eq $workers ]] ||
    wide_fail "expected $workers workers, found: $worker_pids"

case " ${extra[*]} " in
*" --redis-url "*) ;;
*) extra=(--redis-url "redis://127.0.0.1:$redis_port" "${extra[@]}") ;;
esac
meet=$out/wide
rm -rf "$meet"
mkdir -p "$meet"
: >"$out/groups.txt"
poll_groups "$out/groups.txt" &
poll_pid=$!
echo "bench wide: $clients clients over $loaders loaders from $sources ($source_count addresses), $workers workers with --max-connections $cap (open files $hard)" >&2

rss_before=$(rss_kib)
whole_before=$(cpu_ticks)
redis_before=$(redis_ticks)
loader_pids=()
for ((index = 1; index <= loaders; index++)); do
    share=$((clients / loaders + (index <= clients % loaders ? 1 : 0)))
    : >"$meet/loader-$index.err"
    "$bench_bin" --url "http://127.0.0.1:$port" --clients "$share" --rate "$rate" --duration "$duration" \
        --loader "$index/$loaders" --rendezvous "$meet" --source-addresses "$sources" \
        --json "$meet/loader-$index.json" "${extra[@]}" \
        >"$meet/loader-$index.out" 2>"$meet/loader-$index.err" &
    loader_pids+=($!)
done

# all_say TEXT: every loader's stderr has a line starting with TEXT.
all_say() {
    local index
    for ((index = 1; index <= loaders; index++)); do
        grep -q "^$1" "$meet/loader-$index.err" || return 1
    done
}

# Polled every 50 ms: the connected point (every ready-*), the delivery window, loaders that end.
window_before="" window_after="" rss_connected="" running=$loaders
declare -A ended=()
while ((running > 0)); do
    if [[ -z $rss_connected ]] && all_say 'bench: .* connected in'; then
        rss_connected=$(rss_kib)
        open_files=$(for pid in $worker_pids; do find "/proc/$pid/fd" -mindepth 1 -maxdepth 1 | wc -l; done | paste -sd, -)
        # Every loader is alive here: its clients are in, and it waits for or does the publishing.
        loader_rss=$(rss_of "${loader_pids[@]}")
        grep -h '^bench: .* connected in' "$meet"/loader-*.err >&2
    fi
    if [[ -z $window_before ]] && grep -q '^bench: publishing' "$meet/loader-1.err"; then
        window_before=$(cpu_ticks) redis_window_before=$(redis_ticks)
    fi
    if [[ -z $window_after ]] && all_say 'bench: drained'; then
        window_after=$(cpu_ticks) redis_window_after=$(redis_ticks)
        rss_drained=$(rss_kib)
    fi
    for ((index = 1; index <= loaders; index++)); do
        pid=${loader_pids[index - 1]}
        [[ -n ${ended[$index]:-} ]] && continue
        kill -0 "$pid" 2>/dev/null && continue
        status=0
        wait "$pid" || status=$?
        ended[$index]=$status
        running=$((running - 1))
        if ((status != 0)); then
            echo "bench wide: loader $index failed ($status):" >&2
            tail -n 20 "$meet/loader-$index.err" >&2
            for other in "${loader_pids[@]}"; do kill "$other" 2>/dev/null || true; done
            exit 1
        fi
    done
    sleep 0.05
done
whole_after=$(cpu_ticks)
redis_after=$(redis_ticks)
kill "$poll_pid" 2>/dev/null || true
wait "$poll_pid" 2>/dev/null || true

"$bench_bin" --merge "$meet"/loader-*.json --json "$out/last.json"
connected=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["connected"])' "$out/last.json")
added=$(python3 -c '
import json, sys
before, connected, drained, clients = (int(a or 0) for a in sys.argv[1:5])
print(json.dumps(dict(
    loaders=int(sys.argv[5]), source_addresses=sys.argv[6], open_files_limit=int(sys.argv[7]),
    max_connections_per_worker=int(sys.argv[8]),
    worker_open_files=[int(n) for n in sys.argv[9].split(",") if n],
    server_rss_kib_before=before, server_rss_kib_connected=connected, server_rss_kib_drained=drained,
    # What the clients added to the workers, per client connected, all connected and not yet sent anything.
    server_bytes_per_connection=round((connected - before) * 1024 / max(clients, 1)),
    loader_rss_kib=int(sys.argv[10] or 0))))' \
    "$rss_before" "${rss_connected:-0}" "${rss_drained:-0}" "$connected" "$loaders" "$sources" \
    "$hard" "$cap" "${open_files:-}" "${loader_rss:-0}")
result "$out/last.json" "$whole_before" "$whole_after" "${window_before:-$whole_before}" \
    "${window_after:-$whole_after}" "$(getconf CLK_TCK)" "${rss_drained:-$(rss_kib)}" "$bus" "$workers" \
    "$out/groups.txt" "${extra[*]}" "${redis_window_before:-$redis_before}" \
    "${redis_window_after:-$redis_after}" "$added"
