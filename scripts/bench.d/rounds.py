#!/usr/bin/env python3
"""`scripts/bench rounds`: one load, several servers, in interleaved rounds, compared by round.

Usage: scripts/bench rounds ROUNDS CLIENTS RATE DURATION REFERENCE OTHER... [-- FLAG...]

Each server is LABEL=BUS:WORKERS[:TARGET_DIR[:NAME=VALUE,...]]: the bus (`floor` for the
machine's floor), the workers (the floor's threads), the cargo target directory whose release
binaries to run (default: $CARGO_TARGET_DIR or target/; build another commit into its own
directory to compare builds; the load tool is the default directory's for all) and environment words for the server (FANOUT_BENCH_SERVER_ENV, e.g.
FANOUT_THREADS=1). Every round runs each server once, in the order given, with
`scripts/bench run CLIENTS RATE DURATION BUS WORKERS` and FANOUT_BENCH_PERF=1 (CPU per delivery
counted inclusively: see scripts/bench; FANOUT_BENCH_ROUNDS_NO_PERF=1 runs without `perf`, for
latency without its cost, and counts /proc's utime + stime), so that a drift of the machine (this one moves by ±15%
within minutes) falls on every server alike.

Prints, per server, the CPU per delivery of each round, the mean, and its ratio to REFERENCE
taken round by round (mean and standard error of the per-round ratios: the figure to quote), the
latency's p50 and p99 ranges (to the read), the p99 range to the arrival (the kernel's stamp at
the client's socket, without the tool's own wait) and lost + duplicated items summed (anything but 0 is a failure and
makes the exit status 1). Every run's `RESULT` line goes to $FANOUT_BENCH_OUT/rounds.jsonl with its
label and round.
"""
import json
import os
import statistics
import subprocess
import sys


def parse_server(text):
    label, _, spec = text.partition("=")
    parts = spec.split(":")
    if not label or len(parts) < 2:
        sys.exit(f"rounds: a server is LABEL=BUS:WORKERS[:TARGET_DIR[:ENV]], not {text!r}")
    return {
        "label": label,
        "bus": parts[0],
        "workers": parts[1],
        "target": parts[2] if len(parts) > 2 and parts[2] else None,
        "env": parts[3].replace(",", " ") if len(parts) > 3 else "",
    }


def run_once(server, load, flags):
    env = dict(os.environ, FANOUT_BENCH_PERF="1", FANOUT_BENCH_NO_BUILD="1")
    if os.environ.get("FANOUT_BENCH_ROUNDS_NO_PERF"):
        # Latency without `perf record`'s own cost: CPU is then /proc's (utime + stime).
        del env["FANOUT_BENCH_PERF"]
    # One tool for every server: the default target directory's, unless FANOUT_BENCH_TOOL says.
    default_target = os.environ.get("CARGO_TARGET_DIR", "target")
    env.setdefault("FANOUT_BENCH_TOOL", os.path.join(default_target, "release", "fanout-bench"))
    if server["target"]:
        env["CARGO_TARGET_DIR"] = server["target"]
    if server["env"]:
        env["FANOUT_BENCH_SERVER_ENV"] = server["env"]
    command = ["scripts/bench", "run", *load, server["bus"], server["workers"], *flags]
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    sys.exit(f"rounds: {' '.join(command)} gave no RESULT:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")


def cpu_of(result):
    """The server's CPU per delivery: inclusive (perf) when measured, else /proc's."""
    return result.get("server_cpu_inclusive_us_per_delivery", result["server_cpu_us_per_delivery"])


def mean_and_error(values):
    if len(values) < 2:
        return values[0], float("nan")
    return statistics.mean(values), statistics.stdev(values) / len(values) ** 0.5


def main(argv):
    flags = []
    if "--" in argv:
        at = argv.index("--")
        argv, flags = argv[:at], argv[at + 1:]
    if len(argv) < 6:
        sys.exit(__doc__)
    rounds, load, servers = int(argv[0]), argv[1:4], [parse_server(s) for s in argv[4:]]
    out = os.environ.get("FANOUT_BENCH_OUT", "target/bench")
    os.makedirs(out, exist_ok=True)
    results = {s["label"]: [] for s in servers}
    with open(os.path.join(out, "rounds.jsonl"), "a") as log:
        for round_ in range(1, rounds + 1):
            for server in servers:
                result = run_once(server, load, flags)
                results[server["label"]].append(result)
                log.write(json.dumps(dict(result, label=server["label"], round=round_)) + "\n")
                log.flush()
                cpu = cpu_of(result)
                print(f"round {round_} {server['label']}: {cpu} µs per delivery, "
                      f"p99 {result['latency_ms']['p99']} ms (to arrival "
                      f"{result.get('arrival_latency_ms', {}).get('p99')} ms), lost {result['lost']}, "
                      f"duplicated {result['duplicated']}", flush=True)
    reference = results[servers[0]["label"]]
    failed = False
    print(f"\n{'server':<16} {'µs per delivery, each round':<48} {'mean':>6}  ratio to {servers[0]['label']}"
          "         p50 ms       p99 ms      p99 to arrival ms      lost+dup")
    for server in servers:
        runs = results[server["label"]]
        cpu = [cpu_of(r) for r in runs]
        ratios = [c / cpu_of(r) for c, r in zip(cpu, reference)]
        ratio, error = mean_and_error(ratios)
        p50 = [r["latency_ms"]["p50"] for r in runs]
        p99 = [r["latency_ms"]["p99"] for r in runs]
        # Older RESULT lines have no arrival latency: 0 there.
        arrival = [r.get("arrival_latency_ms", {}).get("p99", 0.0) for r in runs]
        bad = sum(r["lost"] + r["duplicated"] for r in runs)
        failed |= bad > 0
        each = " ".join(f"{c:.2f}" for c in cpu)
        print(f"{server['label']:<16} {each:<48} {statistics.mean(cpu):>6.2f}  {ratio:.3f} ± {error:.3f}"
              f"      {min(p50):.1f}–{max(p50):.1f}      {min(p99):.1f}–{max(p99):.1f}"
              f"      {min(arrival):.2f}–{max(arrival):.2f}      {bad}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
