#!/usr/bin/env python3
"""Writes a hash-chained audit log of N records (default 100,000) with a signed checkpoint
after every 99 records, computing the chain (SHA-256 of each exact line) and the checkpoint
HMACs (failoverd-audit-checkpoint/v1 message) here, independently of failoverd; plus an
export of the last 30,000 records and the key. For measuring `failoverd audit verify`:

    python3 scripts/audit-bench-log.py /tmp/bench 100000
    /usr/bin/time -v target/debug/failoverd audit verify /tmp/bench/audit.jsonl
    /usr/bin/time -v target/debug/failoverd audit verify --key /tmp/bench/key \\
        /tmp/bench/audit.jsonl /tmp/bench/export.jsonl
"""
import hashlib
import hmac
import json
import os
import sys

out_dir = sys.argv[1] if len(sys.argv) > 1 else "."
n_records = int(sys.argv[2]) if len(sys.argv) > 2 else 100_000
os.makedirs(out_dir, exist_ok=True)
key = b"bench-key-of-32-bytes-0123456789"
with open(os.path.join(out_dir, "key"), "wb") as f:
    f.write(key)

prev = "0" * 64
seq = 0
lines = []


def record(action, actor, inputs, reason, outcome, playbook="case-management"):
    global prev, seq
    seq += 1
    r = {
        "seq": seq,
        "time": "2027-01-15T08:%02d:%02d.123456789Z" % ((seq // 60) % 60, seq % 60),
        "prev": prev,
        "actor": actor,
        "action": action,
        "playbook": playbook,
        "reason": reason,
        "inputs": inputs,
        "before": {"route": [{"destination": {"host": "web.demo.svc.cluster.local"}, "weight": 100}]},
        "after": {"route": [{"destination": {"host": "web.demo-dr.svc.cluster.local"}, "weight": 100}]},
        "outcome": outcome,
    }
    line = json.dumps(r, separators=(",", ":"))
    lines.append(line)
    prev = hashlib.sha256(line.encode()).hexdigest()


moves = 0
while seq < n_records:
    record(
        "failover",
        "engine",
        {"probes": {"http": {"failures": 3, "threshold": 3}}, "slo": {"errorRate": 0.31}},
        "primary failing: 3 consecutive probe failures",
        "written",
    )
    moves += 1
    if moves % 99 == 0 and seq < n_records:
        t = "2027-01-15T09:00:00Z"
        msg = f"failoverd-audit-checkpoint/v1\nseq={seq}\nhash={prev}\ntime={t}\n"
        record(
            "audit-checkpoint",
            "failoverd",
            {
                "seq": seq,
                "hash": prev,
                "time": t,
                "keyId": hashlib.sha256(key).hexdigest()[:8],
                "hmac": hmac.new(key, msg.encode(), hashlib.sha256).hexdigest(),
            },
            f"signed checkpoint of the chain head: seq {seq}",
            "noted",
            "",
        )

with open(os.path.join(out_dir, "audit.jsonl"), "w") as f:
    f.write("\n".join(lines) + "\n")
with open(os.path.join(out_dir, "export.jsonl"), "w") as f:
    f.write("\n".join(lines[-30_000:]) + "\n")
