"""What Server-Sent Event readers that never read hold in a storywire server.

Starts `storywire serve --http` on loopback, opens N readers of `GET /v1/events` from
127.0.0.2-254 (a reader sends its request and never reads a byte), publishes E events of about
1 KiB with the CLI as fast as it takes them, and prints the server's RSS before the readers, with
them all connected, and after the events, per reader; then waits for `storywire_sse_stalled_total`
to count the readers cut off (bounded by a deadline) and prints the RSS after. Stops the server by
its PID.

Usage: python3 bench/stalled_sse.py path/to/storywire [N] [E]
"""

import re
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

CUT_OFF_DEADLINE = 120


def rss_kib(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def metric(http, name):
    with urllib.request.urlopen(f"http://{http}/metrics", timeout=10) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    return 0.0


def opening(story):
    return ('{"storyId":"%s","eventId":"open-%s","headline":"Opened","change":'
            '{"storyOpened":{"headline":"A story","summary":"x"}}}\n' % (story, story))


def main(binary, readers, events):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    work = Path(tempfile.mkdtemp(prefix="storywire-stalled-"))
    log = open(work / "server.log", "wb")
    server = subprocess.Popen(
        [binary, "serve", "--listen", "127.0.0.1:0", "--http", "127.0.0.1:0",
         "--retain-events", str(events + 10)],
        stdout=log, stderr=log, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 15
        grpc = http = None
        while time.monotonic() < deadline and not (grpc and http):
            text = (work / "server.log").read_text(errors="replace")
            grpc = re.search(r"storywire listening address=(\S+)", text)
            http = re.search(r"storywire HTTP listening address=(\S+)", text)
            time.sleep(0.05)
        grpc, http = grpc.group(1), http.group(1)
        host, port = http.rsplit(":", 1)
        publish = [binary, "publish", "--server", f"http://{grpc}"]
        subprocess.run(publish, input=opening("s0"), text=True, check=True, capture_output=True)
        idle = rss_kib(server.pid)
        sockets = []
        for n in range(readers):
            s = socket.socket()
            s.bind((f"127.0.0.{2 + n // 2000 % 253}", 0))
            s.connect((host, int(port)))
            s.sendall(b"GET /v1/events HTTP/1.1\r\nhost: x\r\naccept: text/event-stream\r\n\r\n")
            sockets.append(s)
        while metric(http, 'storywire_subscribers_open{transport="sse"}') < readers:
            time.sleep(0.1)
        connected = rss_kib(server.pid)
        note = "n" * 900
        # A story holds at most 1,000 notes: a new story every 900 events.
        lines = "".join(
            (opening(f"s{i // 900}") if i % 900 == 0 and i > 0 else "")
            + '{"storyId":"s%d","eventId":"e%d","headline":"Update %d","change":{"contextAdded":'
            '{"text":"%s"}}}\n' % (i // 900, i, i, note) for i in range(events))
        done = subprocess.run(publish, input=lines, text=True, capture_output=True)
        if done.returncode != 0:
            sys.exit(f"publish: {done.stdout[-500:]}{done.stderr[-500:]}")
        published = rss_kib(server.pid)
        print(f"{readers} stalled SSE readers, {events} events of about 1 KiB:")
        print(f"  RSS idle {idle} KiB; connected {connected} KiB "
              f"({(connected - idle) / readers:.1f} KiB per reader); after the events "
              f"{published} KiB ({(published - idle) / readers:.1f} KiB per reader)")
        start = time.monotonic()
        while metric(http, "storywire_sse_stalled_total") < readers:
            if time.monotonic() - start > CUT_OFF_DEADLINE:
                break
            time.sleep(1)
        cut = metric(http, "storywire_sse_stalled_total")
        print(f"  cut off: {cut:.0f} of {readers} within {time.monotonic() - start:.0f} s; "
              f"RSS then {rss_kib(server.pid)} KiB")
        for s in sockets:
            s.close()
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 2000,
         int(sys.argv[3]) if len(sys.argv) > 3 else 20000)
