#!/usr/bin/env python3
"""The server-side figures of one `scripts/bench` run (its `run` and `wide` modes), added to the
load tool's JSON report and printed as one line `RESULT {...}`.

Arguments: REPORT WHOLE_BEFORE WHOLE_AFTER WINDOW_BEFORE WINDOW_AFTER CLK_TCK RSS_KIB BUS WORKERS
GROUPS_FILE BENCH_FLAGS REDIS_BEFORE REDIS_AFTER REDIS_PROCESSES [EXTRA_JSON]: the workers' CPU
ticks ("USER SYSTEM") before and after the whole run and the delivery window, their RSS, the
`/healthz` samples of `poll_groups`, Redis's ticks ("USER SYSTEM PROXY_USER PROXY_SYSTEM") over
the window, and fields the caller adds as they are (a JSON object).
"""
import json, sys
report = json.load(open(sys.argv[1]))
ticks = lambda text: [int(t) for t in text.split()]
whole_before, whole_after, window_before, window_after = (ticks(a) for a in sys.argv[2:6])
hz, rss, bus, workers = int(sys.argv[6]), int(sys.argv[7]), sys.argv[8], int(sys.argv[9])
groups_file, flags = sys.argv[10], sys.argv[11]
redis_before, redis_after, redis_processes = ticks(sys.argv[12]), ticks(sys.argv[13]), int(sys.argv[14])
# Redis's user, system, then docker-proxy's user, system, over the same window as the workers'.
redis = [(redis_after[i] - redis_before[i]) / hz for i in range(4)]
user, system = ((window_after[i] - window_before[i]) / hz for i in (0, 1))
cpu = user + system
whole = (sum(whole_after) - sum(whole_before)) / hz
groups, dropped, closed = {}, {}, {}
for line in open(groups_file):
    pid, count, dropped_metrics, slow_closed = line.split()
    groups[pid] = max(groups.get(pid, 0), int(count))
    # Counters since start: the last sample of each worker is its most.
    dropped[pid] = max(dropped.get(pid, 0), int(dropped_metrics))
    closed[pid] = max(closed.get(pid, 0), int(slow_closed))
messages = report["published"] or 1
frames = report["frames"] or 1
items = report["received"] or 1
us = lambda seconds, per: round(seconds * 1e6 / per, 3)
report.update(
    bus=bus, workers=workers, bench_flags=flags,
    # From `bench: publishing` to `bench: drained`; the whole run (connects and closes too) apart.
    server_cpu_seconds=cpu, server_cpu_user_seconds=user, server_cpu_system_seconds=system,
    server_cpu_seconds_whole_run=whole,
    server_cpu_us_per_message=us(cpu, messages),
    server_cpu_user_us_per_message=us(user, messages),
    server_cpu_system_us_per_message=us(system, messages),
    # A delivery is a frame written to a client (one item each unless batched or conflated).
    server_cpu_us_per_delivery=us(cpu, frames),
    server_cpu_user_us_per_delivery=us(user, frames),
    server_cpu_system_us_per_delivery=us(system, frames),
    server_cpu_us_per_item=us(cpu, items),
    server_rss_kib=rss,
    # Every Redis process (6 for a cluster: masters and replicas), then the single Redis's
    # docker-proxy, over the window: CPU per message published.
    redis_processes=redis_processes,
    redis_cpu_user_seconds=redis[0], redis_cpu_system_seconds=redis[1],
    redis_cpu_us_per_message=us(redis[0] + redis[1], messages),
    redis_cpu_user_us_per_message=us(redis[0], messages),
    redis_cpu_system_us_per_message=us(redis[1], messages),
    docker_proxy_cpu_seconds=redis[2] + redis[3],
    docker_proxy_cpu_us_per_message=us(redis[2] + redis[3], messages),
    server_groups_max_by_pid=groups,
    # As last polled (up to a second before the end): metrics dropped from slow clients' queues.
    server_dropped_metrics_by_pid=dropped, server_slow_consumers_closed_by_pid=closed)
if len(sys.argv) > 15:
    report.update(json.loads(sys.argv[15]))
print("RESULT " + json.dumps(report))
