#!/usr/bin/env python3
"""Instructions per message from a callgrind dump of one worker (`scripts/bench instructions`).

Usage: instructions.py REPORT.json CALLGRIND_DUMP...

Prints the pieces of the per-message path (each function's inclusive count per message, the
largest among callgrind's entries for it: its other entries are parts inlined elsewhere) and one
line `RESULT {...}` of JSON. The dump covers the measured window only (`callgrind_control -z`
before it, `-d` after), so the instructions are the worker's for the tool's published messages.
"""

import json
import re
import subprocess
import sys

# (label, a regex matched against callgrind_annotate's `file:function` text)
PIECES = [
    ("HTTP connection (hyper), whole", r"Dispatcher<.*>::poll_catch$"),
    ("  POST body decode (JsonBody::decode)", r"fanout_http::body::JsonBody::decode$"),
    ("  publish (RedisPublisher::publish_within)", r"RedisPublisher::publish_within::\{\{closure\}\}$"),
    ("  envelope encode (Envelope::to_json), every call", r"fanout_domain::envelope::Envelope::to_json$"),
    ("subscriber (Listener::run), whole", r"fanout_redis::subscriber::Listener::run::\{\{closure\}\}$"),
    ("  Redis reply parsing (redis-rs ValueCodec)", r"ValueCodec as tokio_util::codec::decoder::Decoder>::decode$"),
    ("  envelope decode (Envelope::from_json)", r"fanout_domain::envelope::Envelope::from_json$"),
    ("  copies (RecentMessages::first_copy)", r"fanout_redis::copies::RecentMessages::first_copy$"),
    ("  delivery (LocalDelivery::deliver)", r"as fanout_domain::ports::LocalDelivery>::deliver$"),
    ("    snapshot (LatestMetrics::record)", r"fanout_ws::snapshot::LatestMetrics::record$"),
    ("allocator (malloc)", r"malloc\.c:malloc$"),
    ("allocator (free)", r"malloc\.c:free$"),
]

LINE = re.compile(r"^\s*([\d,]+) \(\s*[\d.]+%\)\s+(.*?)(?: \[[^\]]*\])?$")


def main():
    report = json.load(open(sys.argv[1]))
    messages = report["published"] - report["refused"]
    if messages <= 0:
        sys.exit("instructions: no message was published")
    totals = 0
    pieces = {label: 0 for label, _ in PIECES}
    for dump in sys.argv[2:]:
        text = subprocess.run(
            ["callgrind_annotate", "--inclusive=yes", "--threshold=100", "--auto=no", dump],
            capture_output=True, text=True, check=True,
        ).stdout
        for line in text.splitlines():
            if "PROGRAM TOTALS" in line:
                totals += int(line.split()[0].replace(",", ""))
                continue
            match = LINE.match(line)
            if not match:
                continue
            count, name = int(match.group(1).replace(",", "")), match.group(2)
            for label, pattern in PIECES:
                if re.search(pattern, name):
                    pieces[label] = max(pieces[label], count)
    per_message = {label: round(count / messages) for label, count in pieces.items()}
    print(f"{messages} messages, {report['clients']} client(s), lost {report['lost']}, "
          f"duplicated {report['duplicated']}")
    print(f"{'instructions per message, whole worker':<52} {totals / messages:>10,.0f}")
    for label, count in per_message.items():
        print(f"{label:<52} {count:>10,}")
    print("RESULT " + json.dumps({
        "messages": messages,
        "clients": report["clients"],
        "lost": report["lost"],
        "duplicated": report["duplicated"],
        "instructions_per_message": round(totals / messages),
        "pieces_per_message": per_message,
    }))


if __name__ == "__main__":
    main()
