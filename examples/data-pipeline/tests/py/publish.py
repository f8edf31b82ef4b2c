#!/usr/bin/env python3
"""Push sensor readings to a switchyard ZeroMQ PULL endpoint, some of them malformed.

Usage: publish.py ENDPOINT COUNT [BAD_EVERY]

Connects a PUSH socket to ENDPOINT and sends COUNT messages. Message i is malformed when
BAD_EVERY > 0 and i % BAD_EVERY == BAD_EVERY - 1; malformed messages rotate through five
kinds (truncated JSON, a missing field, bytes that are not UTF-8, a wrong type, an unknown
unit that only the process stage refuses). Prints one JSON object on stdout:
{"sent": N, "valid_ids": [...], "malformed_hex": [...]} once every message has been handed
to the network (the socket lingers until then).

The generator is mirrored by the Rust publisher in tests/zmq/main.rs; keep them in step.
"""

import json
import sys

import zmq

UNITS = ["c", "f", "k"]


def message(i, bad_every):
    if bad_every > 0 and i % bad_every == bad_every - 1:
        kind = (i // bad_every) % 5
        if kind == 0:
            return False, ('{"id": %d, "sensor": "trunc' % i).encode()
        if kind == 1:
            return False, json.dumps({"id": i, "value": 1.0}).encode()
        if kind == 2:
            return False, b"\xff\xfe" + str(i).encode()
        if kind == 3:
            return False, json.dumps({"id": i, "sensor": "s", "value": "hot"}).encode()
        return False, json.dumps({"id": i, "sensor": "s", "value": 1.0, "unit": "rankine"}).encode()
    body = {"id": i, "sensor": "sensor-%d" % (i % 7), "value": 20.0 + (i % 13), "unit": UNITS[i % 3]}
    return True, json.dumps(body).encode()


def main():
    endpoint = sys.argv[1]
    count = int(sys.argv[2])
    bad_every = int(sys.argv[3]) if len(sys.argv) > 3 else 0
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PUSH)
    # Wait (up to 60 s) for queued messages to reach the peer when closing.
    sock.setsockopt(zmq.LINGER, 60000)
    sock.connect(endpoint)
    valid_ids = []
    malformed = []
    for i in range(count):
        ok, payload = message(i, bad_every)
        sock.send(payload)
        if ok:
            valid_ids.append(i)
        else:
            malformed.append(payload.hex())
    sock.close()
    ctx.term()
    json.dump({"sent": count, "valid_ids": valid_ids, "malformed_hex": malformed}, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
