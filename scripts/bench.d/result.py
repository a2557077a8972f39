#!/usr/bin/env python3
"""The server-side figures of one `scripts/bench` run (its `run` and `wide` modes), added to the
load tool's JSON report and printed as one line `RESULT {...}`.

Arguments: REPORT WHOLE_BEFORE WHOLE_AFTER WINDOW_BEFORE WINDOW_AFTER CLK_TCK RSS_KIB BUS WORKERS
GROUPS_FILE BENCH_FLAGS REDIS_BEFORE REDIS_AFTER REDIS_PROCESSES [EXTRA_JSON]: the workers' CPU
ticks ("USER SYSTEM") before and after the whole run and the delivery window, their RSS, the
`/healthz` samples of `poll_groups`, Redis's ticks ("USER SYSTEM PROXY_USER PROXY_SYSTEM") over
the window, and fields the caller adds as they are (a JSON object; its `machine_ticks`, the
machine's "USER SYSTEM IRQ" ticks at the window's two ends, become the `machine_cpu_*` figures).
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
    extra = json.loads(sys.argv[15])
    # The whole machine over the window (`machine_ticks`, USER_HZ as CLK_TCK): what the server
    # spends and what it makes others spend (the tool's reads, the receive in softirq).
    machine = extra.pop("machine_ticks", None)
    if machine and all(machine):
        m_user, m_system, m_irq = ((b - a) / hz for a, b in zip(*(ticks(t) for t in machine)))
        report.update(
            machine_cpu_us_per_delivery=us(m_user + m_system + m_irq, frames),
            machine_cpu_user_us_per_delivery=us(m_user, frames),
            machine_cpu_system_us_per_delivery=us(m_system, frames),
            machine_cpu_irq_us_per_delivery=us(m_irq, frames))
    # FANOUT_BENCH_PERF: cpu-clock samples of every CPU over the window, by process; a sample is
    # 1/hz s of a CPU, whatever ran in the process's context (softirq included).
    samples = extra.pop("perf_samples", None)
    if samples:
        per = lambda n: us(n / samples["hz"], frames)
        report.update(
            server_cpu_inclusive_us_per_delivery=per(samples["server"]),
            tool_cpu_inclusive_us_per_delivery=per(samples["tool"]),
            redis_cpu_inclusive_us_per_delivery=per(samples["redis"]),
            machine_cpu_inclusive_us_per_delivery=per(samples["all"]))
    report.update(extra)
print("RESULT " + json.dumps(report))
