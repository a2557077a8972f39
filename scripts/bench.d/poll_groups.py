#!/usr/bin/env python3
"""Polls a worker's /healthz every second until killed, appending one line per answer to FILE:
"PID GROUPS DROPPED_METRICS SLOW_CLOSED" (`scripts/bench`'s poll_groups).

Arguments: HOST:PORT FILE. One process for the whole run, so that the polling costs the machine
next to nothing beside the server under test; a failed poll is skipped.
"""
import json
import sys
import time
import urllib.request

address, path = sys.argv[1], sys.argv[2]
with open(path, "a", buffering=1) as out:
    while True:
        time.sleep(1)
        try:
            with urllib.request.urlopen(f"http://{address}/healthz", timeout=2) as answer:
                health = json.load(answer)
            delivery = health["delivery"]
            out.write(f'{health["pid"]} {delivery.get("groups", 0)} '
                      f'{delivery["dropped_metrics"]} {delivery["slow_consumers_closed"]}\n')
        except (OSError, ValueError, KeyError):
            continue
