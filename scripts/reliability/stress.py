#!/usr/bin/env python3
"""Load and fault injection against a real `hone serve`: can any client hold, crash or lose it?

Starts the release binary on a free loopback port (the default model, one model slot, a short
queue and a short request timeout), then runs five phases, each bounded in requests and time:

1. bursts at twice the capacity (running + queued) of /optimize and chat requests, streamed
   and not: only 200, 429 and 503 may come back, and 429/503 carry Retry-After;
2. disconnect storms: clients that send a request and close mid-run; afterwards the model slot
   and the queue are free again, a request is answered promptly, and /metrics counts the
   cancellations;
3. slowloris: many connections sending headers, or a body, a byte at a time; /health must stay
   responsive, and each slow connection must be cut off by the request timeout;
4. malformed HTTP (garbage request lines, bad Content-Length, oversized headers...): answered
   4xx or closed, never 5xx, never left hanging;
5. SIGTERM while a request runs: that request still gets 200 and the process exits 0.

Prints a Markdown table (requests sent, statuses, 5xx, hangs, crashes, lost requests) and exits
non-zero if any of 5xx, hangs, crashes or lost requests is not zero, or a check failed.

Python 3 standard library only. Traffic goes to 127.0.0.1 only.

    python3 scripts/reliability/stress.py              # builds with cargo first
    python3 scripts/reliability/stress.py --no-build   # uses target/release/hone as it is
"""

import argparse
import asyncio
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HOST = "127.0.0.1"

# The server's limits: capacity is MAX_CONCURRENCY running + MAX_QUEUE waiting.
MAX_CONCURRENCY = 1
MAX_QUEUE = 4
REQUEST_TIMEOUT_MS = 2000
MAX_CONNECTIONS = 256

# A request with no answer (nor a close) within this long has hung. Generous: a queued
# request waits for everything before it on two shared cores.
ANSWER_TIMEOUT = 120.0
# A slow connection still open this long after it started was not cut off by the timeout.
CUT_OFF_LIMIT = 3 * REQUEST_TIMEOUT_MS / 1000 + 5.0

PROMPT = "Name a primary color. Answer in one word."


class Result:
    """What one exchange came to: a status, or a close, a reset, a refusal, a hang."""

    __slots__ = ("status", "headers", "body", "outcome", "seconds")

    def __init__(self, outcome, status=None, headers=None, body=b"", seconds=0.0):
        self.outcome = outcome  # answered | closed | reset | refused | hang
        self.status = status
        self.headers = headers or {}
        self.body = body
        self.seconds = seconds

    def label(self):
        return str(self.status) if self.outcome == "answered" else self.outcome


async def read_response(reader):
    """Reads one HTTP/1.1 response; (status, headers, body). Raises on a close before it."""
    while True:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        # An interim answer (100 Continue) comes before the real one.
        if status >= 200:
            break
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = b""
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0].strip(), 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                break
            body += await reader.readexactly(size)
            await reader.readexactly(2)
    elif "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    else:
        body = await reader.read()
    return status, headers, body


async def exchange(raw, timeout=ANSWER_TIMEOUT, port=None):
    """Sends `raw` bytes on a new connection and reads one response."""
    start = time.monotonic()
    writer = None
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(HOST, port), timeout=10
        )
    except (ConnectionRefusedError, OSError, asyncio.TimeoutError):
        return Result("refused", seconds=time.monotonic() - start)
    try:
        writer.write(raw)
        await writer.drain()
        status, headers, body = await asyncio.wait_for(read_response(reader), timeout)
        return Result("answered", status, headers, body, time.monotonic() - start)
    except asyncio.TimeoutError:
        return Result("hang", seconds=time.monotonic() - start)
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError, IndexError):
        return Result("closed", seconds=time.monotonic() - start)
    except (ConnectionResetError, BrokenPipeError, OSError):
        return Result("reset", seconds=time.monotonic() - start)
    finally:
        writer.close()


def request(method, path, body=None, extra=""):
    """A request's bytes; the connection closes after the answer."""
    data = body.encode() if isinstance(body, str) else (body or b"")
    head = f"{method} {path} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n"
    if body is not None:
        head += f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n"
    return (head + extra + "\r\n").encode() + data


def optimize_body(max_tokens, stream=False, strategy="best_of_n"):
    return json.dumps(
        {
            "prompt": PROMPT,
            "strategy": strategy,
            "n": 2,
            "rounds": 1,
            "max_tokens": max_tokens,
            "constraints": [],
            "stream": stream,
        }
    )


def chat_body(max_tokens, stream=False):
    return json.dumps(
        {
            "model": "default",
            "messages": [{"role": "user", "content": PROMPT}],
            "max_tokens": max_tokens,
            "stream": stream,
        }
    )


class Phase:
    """Counts for one row of the summary table."""

    def __init__(self, name):
        self.name = name
        self.sent = 0
        self.labels = Counter()
        self.hangs = 0
        self.lost = 0
        self.fivexx = 0
        self.crashes = 0
        self.faults = 0  # faults injected: clients that left, slow or malformed requests, signals
        self.failures = []  # checks that failed, in words
        self.notes = []

    def count(self, result, lost_if_closed=True):
        self.sent += 1
        self.labels[result.label()] += 1
        if result.outcome == "hang":
            self.hangs += 1
        elif result.outcome in ("closed", "reset", "refused") and lost_if_closed:
            self.lost += 1
        elif result.outcome == "answered" and result.status >= 500:
            # 503 with Retry-After is a documented refusal (shutting down), not a failure.
            if not (result.status == 503 and "retry-after" in result.headers):
                self.fivexx += 1

    def fail(self, what):
        self.failures.append(what)


class Server:
    def __init__(self, binary, extra_env):
        env = dict(os.environ)
        env.setdefault("RUST_LOG", "warn")
        env.update(extra_env)
        args = [
            binary, "serve", "--host", HOST, "--port", "0", "--model", "default", "--cpu",
            "--max-concurrency", str(MAX_CONCURRENCY), "--max-queue", str(MAX_QUEUE),
            "--request-timeout-ms", str(REQUEST_TIMEOUT_MS),
            "--max-connections", str(MAX_CONNECTIONS), "--workers", "2",
        ]
        os.makedirs(os.path.join(ROOT, "target"), exist_ok=True)
        self.log = open(os.path.join(ROOT, "target", "reliability-server.log"), "w+")
        self.proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                                     stderr=self.log)
        self.port = None

    def wait_ready(self, limit=600):
        """The port from the start-up line, once the model is loaded."""
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"hone serve exited with {self.proc.returncode}:\n{self.text()}")
            m = re.search(r"serving .* on http://127\.0\.0\.1:(\d+)", self.text())
            if m:
                self.port = int(m.group(1))
                return
            time.sleep(0.2)
        raise SystemExit("hone serve did not start in time")

    def text(self):
        self.log.flush()
        with open(self.log.name, errors="replace") as f:
            return f.read()

    def alive(self):
        return self.proc.poll() is None


async def get(server, path, timeout=ANSWER_TIMEOUT):
    return await exchange(request("GET", path), timeout, server.port)


async def metric(server, name):
    """The sum of a metric family's samples, from /metrics."""
    r = await get(server, "/metrics", 30)
    if r.outcome != "answered" or r.status != 200:
        return None
    total = 0.0
    for line in r.body.decode().splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def wait_idle(server, limit):
    """Seconds until /health shows nothing running and nothing queued; None if never."""
    start = time.monotonic()
    while time.monotonic() - start < limit:
        r = await get(server, "/health", 5)
        if r.outcome == "answered" and r.status == 200:
            h = json.loads(r.body)
            if h.get("in_flight") == 0 and h.get("queue_depth") == 0:
                return time.monotonic() - start
        await asyncio.sleep(0.1)
    return None


# --- 1. bursts --------------------------------------------------------------------------------

async def bursts(server, rounds):
    phase = Phase("bursts at 2x capacity")
    capacity = MAX_CONCURRENCY + MAX_QUEUE
    for burst in range(rounds):
        raws = []
        for i in range(2 * capacity):
            kind = i % 4
            if kind == 0:
                raws.append(request("POST", "/optimize", optimize_body(8)))
            elif kind == 1:
                raws.append(request("POST", "/v1/chat/completions", chat_body(8)))
            elif kind == 2:
                raws.append(request("POST", "/optimize", optimize_body(8, stream=True)))
            else:
                raws.append(request("POST", "/v1/chat/completions", chat_body(8, stream=True)))
        results = await asyncio.gather(*(exchange(r, port=server.port) for r in raws))
        for raw, r in zip(raws, results, strict=True):
            phase.count(r)
            if r.outcome == "answered":
                if r.status not in (200, 429, 503):
                    what = raw.split(b"\r\n", 1)[0].decode()
                    phase.fail(f"burst {burst + 1}, {what}: status {r.status} after "
                               f"{r.seconds:.1f} s: {r.body[:200]!r}")
                if r.status in (429, 503) and "retry-after" not in r.headers:
                    phase.fail(f"{r.status} without Retry-After")
                if r.status == 200 and b"error" in r.body[:20]:
                    phase.fail(f"200 with an error: {r.body[:200]!r}")
    if phase.labels["200"] == 0 or phase.labels["429"] == 0:
        phase.fail(f"a burst beyond capacity should see both 200 and 429: {dict(phase.labels)}")
    return phase


# --- 2. disconnect storms ---------------------------------------------------------------------

async def leave_early(server, raw, after):
    """Sends a request and closes the connection `after` seconds later, unless answered."""
    try:
        reader, writer = await asyncio.open_connection(HOST, server.port)
    except OSError:
        return Result("refused")
    writer.write(raw)
    await writer.drain()
    try:
        status, _, _ = await asyncio.wait_for(read_response(reader), after)
        return Result("answered", status)
    except asyncio.TimeoutError:
        return Result("closed")
    except (asyncio.IncompleteReadError, ConnectionResetError, OSError):
        return Result("reset")
    finally:
        writer.close()


async def storms(server, waves, clients):
    phase = Phase("disconnect storms")
    before = await metric(server, "hone_requests_cancelled_total") or 0.0
    left = 0
    for _ in range(waves):
        tasks = []
        for i in range(clients):
            stream = i % 3 == 2
            raw = (request("POST", "/optimize", optimize_body(48, stream=stream))
                   if i % 2 == 0 else
                   request("POST", "/v1/chat/completions", chat_body(48, stream=stream)))
            tasks.append(leave_early(server, raw, random.uniform(0.05, 1.5)))
        for r in await asyncio.gather(*tasks):
            # A client that left on purpose is not a lost request; one the server dropped is.
            phase.count(r, lost_if_closed=r.outcome != "closed")
            left += r.outcome == "closed"
            phase.faults += 1
        # Afterwards: the slot and the queue are free within a decoding step or so.
        idle = await wait_idle(server, 30)
        if idle is None:
            phase.hangs += 1
            phase.fail("the model slot or the queue stayed taken after the clients left")
        else:
            phase.notes.append(f"idle {idle:.1f} s after a wave")
    # ... and a request is answered promptly.
    r = await exchange(request("POST", "/v1/chat/completions", chat_body(8)), 60, server.port)
    phase.count(r)
    if r.outcome != "answered" or r.status != 200:
        phase.fail(f"the request after the storm got {r.label()}")
    else:
        phase.notes.append(f"next request answered in {r.seconds:.1f} s")
    after = await metric(server, "hone_requests_cancelled_total") or 0.0
    phase.notes.append(f"{left} clients left mid-request; cancellations counted: {after - before:.0f}")
    if after - before < 1:
        phase.fail("/metrics shows no cancellation")
    return phase


# --- 3. slowloris -----------------------------------------------------------------------------

async def slow_client(server, head, body_first, interval, limit):
    """Sends `head` (and then a body) a byte at a time; seconds until the server cut it off
    (an answer or a close), or None if it was still open after `limit`."""
    start = time.monotonic()
    try:
        reader, writer = await asyncio.open_connection(HOST, server.port)
    except OSError:
        return "refused", 0.0
    status = None

    async def listen():
        nonlocal status
        try:
            s, _, _ = await read_response(reader)
            status = s
        except Exception:
            pass

    listener = asyncio.ensure_future(listen())
    try:
        if body_first:
            writer.write(head)
            await writer.drain()
            payload = b'{"prompt": "' + b"a" * 10_000
        else:
            payload = head + b"X-Slow: " + b"a" * 10_000
        for byte in payload:
            if listener.done() or time.monotonic() - start > limit:
                break
            writer.write(bytes([byte]))
            try:
                await writer.drain()
            except OSError:
                break
            await asyncio.sleep(interval)
        try:
            await asyncio.wait_for(asyncio.shield(listener), max(0.0, limit - (time.monotonic() - start)))
        except asyncio.TimeoutError:
            return "open", time.monotonic() - start
        return (str(status) if status else "closed"), time.monotonic() - start
    finally:
        listener.cancel()
        writer.close()


async def slowloris(server, headers_clients, body_clients):
    phase = Phase("slowloris (slow headers, slow bodies)")
    slow_head = (f"POST /optimize HTTP/1.1\r\nHost: {HOST}\r\n").encode()
    body_head = (f"POST /optimize HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: application/json\r\n"
                 f"Content-Length: 10020\r\n\r\n").encode()
    tasks = [slow_client(server, slow_head, False, 0.1, CUT_OFF_LIMIT)
             for _ in range(headers_clients)]
    tasks += [slow_client(server, body_head, True, 0.1, CUT_OFF_LIMIT)
              for _ in range(body_clients)]
    slow = asyncio.gather(*tasks)
    # /health while they trickle.
    latencies = []
    health = Phase("health during slowloris")
    t0 = time.monotonic()
    while time.monotonic() - t0 < CUT_OFF_LIMIT:
        r = await get(server, "/health", 5)
        health.count(r)
        if r.outcome == "answered":
            latencies.append(r.seconds)
            if r.status != 200 or json.loads(r.body).get("status") != "ok":
                health.fail(f"/health answered {r.status}")
        await asyncio.sleep(0.25)
    outcomes = await slow
    cut = [s for o, s in outcomes if o != "open"]
    for o, s in outcomes:
        # A slow client gets 408 or a closed connection; each counts as a request sent.
        phase.sent += 1
        phase.faults += 1
        phase.labels[o] += 1
        if o == "open":
            phase.hangs += 1
        elif o not in ("408", "closed", "400", "413", "431"):
            phase.fail(f"slow client got {o}")
        if o.isdigit() and int(o) >= 500:
            phase.fivexx += 1
    if cut:
        phase.notes.append(f"cut off after {min(cut):.1f}-{max(cut):.1f} s "
                           f"(request timeout {REQUEST_TIMEOUT_MS / 1000:.0f} s)")
    if latencies:
        latencies.sort()
        health.notes.append(f"{len(latencies)} checks, p50 {latencies[len(latencies) // 2] * 1000:.0f} ms, "
                            f"max {latencies[-1] * 1000:.0f} ms")
        if latencies[-1] > 2.0:
            health.fail(f"/health took {latencies[-1]:.1f} s")
    return [phase, health]


# --- 4. malformed HTTP ------------------------------------------------------------------------

def malformed_cases():
    ok_body = optimize_body(8)
    n = len(ok_body)
    ct = "Content-Type: application/json\r\n"
    h = f"Host: {HOST}\r\n"
    cases = [
        ("garbage request line", b"GARBAGE\r\n\r\n"),
        ("binary noise", bytes(random.Random(1).randrange(256) for _ in range(2048))),
        ("NUL bytes", b"\x00\x01\x02\xff\xfe\r\n\r\n"),
        ("unknown HTTP version", f"GET /health HTTP/9.9\r\n{h}\r\n".encode()),
        ("no HTTP version", b"GET /health\r\n\r\n"),
        ("lowercase method with spaces", f"get  /health  HTTP/1.1\r\n{h}\r\n".encode()),
        ("control char in method", f"G\x01T /health HTTP/1.1\r\n{h}\r\n".encode()),
        ("header without colon", f"GET /health HTTP/1.1\r\n{h}NoColonHere\r\n\r\n".encode()),
        ("bare LF line endings", f"GET /health HTTP/1.1\n{h.strip()}\n\n".encode()),
        ("non-UTF-8 header value", b"GET /health HTTP/1.1\r\nHost: \xff\xfe\r\n\r\n"),
        ("Content-Length not a number",
         f"POST /optimize HTTP/1.1\r\n{h}{ct}Content-Length: abc\r\n\r\n{ok_body}".encode()),
        ("negative Content-Length",
         f"POST /optimize HTTP/1.1\r\n{h}{ct}Content-Length: -5\r\n\r\n{ok_body}".encode()),
        ("two different Content-Lengths",
         f"POST /optimize HTTP/1.1\r\n{h}{ct}Content-Length: {n}\r\nContent-Length: 3\r\n\r\n{ok_body}".encode()),
        ("Content-Length past u64",
         f"POST /optimize HTTP/1.1\r\n{h}{ct}Content-Length: 99999999999999999999999\r\n\r\n{ok_body}".encode()),
        ("Content-Length over the body limit",
         f"POST /optimize HTTP/1.1\r\n{h}{ct}Content-Length: 1000000000\r\n\r\n{ok_body}".encode()),
        ("Content-Length longer than the body",
         f"POST /optimize HTTP/1.1\r\n{h}{ct}Content-Length: {n + 50}\r\n\r\n{ok_body}".encode()),
        ("Content-Length and chunked",
         f"POST /optimize HTTP/1.1\r\n{h}{ct}Content-Length: {n}\r\nTransfer-Encoding: chunked\r\n\r\n{ok_body}".encode()),
        ("bad chunk size",
         f"POST /optimize HTTP/1.1\r\n{h}{ct}Transfer-Encoding: chunked\r\n\r\nzz\r\n{ok_body}\r\n0\r\n\r\n".encode()),
        ("unknown transfer coding",
         f"POST /optimize HTTP/1.1\r\n{h}{ct}Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n".encode()),
        ("large header, under actix's 128 KiB head limit (100 KB)",
         f"GET /health HTTP/1.1\r\n{h}X-Big: {'a' * 100_000}\r\n\r\n".encode()),
        ("oversized header, over the head limit (200 KB)",
         f"GET /health HTTP/1.1\r\n{h}X-Big: {'a' * 200_000}\r\n\r\n".encode()),
        ("1 MB of header lines", (f"GET /health HTTP/1.1\r\n{h}" +
                                  f"X-Pad: {'b' * 1000}\r\n" * 1000 + "\r\n").encode()),
        ("200 headers", (f"GET /health HTTP/1.1\r\n{h}" +
                         "".join(f"X-H{i}: v\r\n" for i in range(200)) + "\r\n").encode()),
        ("100 KB URI", f"GET /{'a' * 100_000} HTTP/1.1\r\n{h}\r\n".encode()),
        ("absolute URI", f"GET http://{HOST}/health HTTP/1.1\r\n{h}\r\n".encode()),
        ("HTTP/1.0 without Host", b"GET /health HTTP/1.0\r\n\r\n"),
        ("pipelined garbage after a request",
         f"GET /health HTTP/1.1\r\n{h}\r\nBLAH BLAH\r\n\r\n".encode()),
        ("body on GET", f"GET /health HTTP/1.1\r\n{h}Content-Length: 5\r\n\r\nhello".encode()),
        ("Expect 100-continue, then nothing",
         f"POST /optimize HTTP/1.1\r\n{h}{ct}Content-Length: {n}\r\nExpect: 100-continue\r\n\r\n".encode()),
        ("connect and send nothing", b""),
    ]
    return cases


async def malformed(server):
    phase = Phase("malformed HTTP")
    for name, raw in malformed_cases():
        r = await exchange(raw, CUT_OFF_LIMIT, server.port)
        # A refusal may be an answer or a closed connection; what must not happen is a 5xx
        # or no end at all.
        phase.count(r, lost_if_closed=False)
        phase.faults += 1
        if r.outcome == "answered" and r.status >= 500:
            phase.fail(f"{name}: {r.status}")
        if r.outcome == "refused":
            phase.fail(f"{name}: connection refused")
        phase.notes.append(f"{name}: {r.label()}")
    r = await get(server, "/health", 5)
    if r.outcome != "answered" or r.status != 200:
        phase.fail(f"/health after the malformed requests: {r.label()}")
    return phase


# --- 5. SIGTERM mid-run -----------------------------------------------------------------------

async def sigterm(server):
    phase = Phase("SIGTERM mid-run")
    running = asyncio.ensure_future(exchange(
        request("POST", "/optimize", optimize_body(48, strategy="best_of_n")), ANSWER_TIMEOUT,
        server.port))
    t0 = time.monotonic()
    while time.monotonic() - t0 < 30:
        r = await get(server, "/health", 5)
        if r.outcome == "answered" and json.loads(r.body).get("in_flight") == 1:
            break
        await asyncio.sleep(0.05)
    else:
        phase.fail("the request never started running")
    server.proc.send_signal(signal.SIGTERM)
    phase.faults += 1
    # A new request after the signal: 503 (shutting down) or refused (no longer listening).
    await asyncio.sleep(0.2)
    late = await exchange(request("POST", "/optimize", optimize_body(8)), 30, server.port)
    phase.count(late, lost_if_closed=False)
    if late.outcome == "answered" and late.status != 503:
        phase.fail(f"a request after SIGTERM got {late.status}")
    if late.outcome == "hang":
        phase.fail("a request after SIGTERM hung")
    r = await running
    phase.count(r)
    if r.outcome != "answered" or r.status != 200:
        phase.fail(f"the running request got {r.label()}")
    try:
        code = await asyncio.get_running_loop().run_in_executor(None, server.proc.wait, 60)
    except subprocess.TimeoutExpired:
        phase.fail("the process did not exit within 60 s of SIGTERM")
        server.proc.kill()
        code = None
    phase.notes.append(f"running request: {r.label()} after {r.seconds:.1f} s; "
                       f"late request: {late.label()}; exit code {code}")
    if code != 0:
        phase.fail(f"exit code {code}")
    return phase


# --- the run ----------------------------------------------------------------------------------

async def main_async(server, args):
    phases = []

    def check_alive(after, phase):
        if not server.alive():
            phase.crashes += 1
            raise RuntimeError(f"the server died during {after}")

    steps = [
        ("bursts", lambda: bursts(server, args.bursts)),
        ("storms", lambda: storms(server, args.waves, args.storm_clients)),
        ("slowloris", lambda: slowloris(server, args.slow_headers, args.slow_bodies)),
        ("malformed", lambda: malformed(server)),
    ]
    wanted = args.phases.split(",")
    steps = [(name, step) for name, step in steps if name in wanted]
    try:
        for name, step in steps:
            t = time.monotonic()
            got = await step()
            got = got if isinstance(got, list) else [got]
            for p in got:
                p.notes.append(f"{time.monotonic() - t:.0f} s")
            phases.extend(got)
            check_alive(name, got[0])
            print(f"# {name} done", file=sys.stderr)
        if "sigterm" in wanted:
            phases.append(await sigterm(server))
    except RuntimeError as e:
        print(f"# {e}", file=sys.stderr)
    if server.alive():
        server.proc.kill()
    return phases


KEYS = ("sent", "faults", "fivexx", "hangs", "crashes", "lost")


def table(phases, machine, seconds):
    out = []
    out.append(f"Machine: {machine}; {seconds:.0f} s in all.\n")
    out.append("| phase | requests sent | faults injected | statuses and ends | 5xx | hangs "
               "| crashes | lost |")
    out.append("| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: |")
    totals = defaultdict(int)
    for p in phases:
        labels = ", ".join(f"{k}: {v}" for k, v in sorted(p.labels.items()))
        out.append(f"| {p.name} | {p.sent} | {p.faults} | {labels} | {p.fivexx} | {p.hangs} "
                   f"| {p.crashes} | {p.lost} |")
        for k in KEYS:
            totals[k] += getattr(p, k)
    out.append(f"| **total** | {totals['sent']} | {totals['faults']} | | {totals['fivexx']} "
               f"| {totals['hangs']} | {totals['crashes']} | {totals['lost']} |")
    out.append("")
    out.append("5xx: answers 500-599 other than a 503 refusal with Retry-After. Hangs: no answer "
               f"nor close within {ANSWER_TIMEOUT:.0f} s (a slow client: not cut off within "
               f"{CUT_OFF_LIMIT:.0f} s; after a storm: the slot or queue still taken). Lost: a "
               "well-formed request whose connection closed or reset without a status. "
               "closed/reset/refused: the connection ended without an answer.\n")
    for p in phases:
        for n in p.notes:
            out.append(f"- {p.name}: {n}")
    failures = [(p.name, f) for p in phases for f in p.failures]
    if failures:
        out.append("\nFailed checks:")
        for name, f in failures:
            out.append(f"- {name}: {f}")
    return "\n".join(out), totals, failures


def machine():
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} CPUs (nproc)"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--binary", default=os.path.join(ROOT, "target", "release", "hone"))
    ap.add_argument("--no-build", action="store_true", help="use the binary as it is")
    ap.add_argument("--bursts", type=int, default=3, help="bursts of 2x capacity")
    ap.add_argument("--waves", type=int, default=3, help="disconnect storm waves")
    ap.add_argument("--storm-clients", type=int, default=16, help="clients per storm wave")
    ap.add_argument("--slow-headers", type=int, default=60, help="slow-header connections")
    ap.add_argument("--slow-bodies", type=int, default=40, help="slow-body connections")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--phases", default="bursts,storms,slowloris,malformed,sigterm",
                    help="comma-separated subset of the phases, in their fixed order")
    args = ap.parse_args()
    random.seed(args.seed)
    if not args.no_build:
        subprocess.run(["cargo", "build", "--release"], cwd=ROOT, check=True)
    started = time.monotonic()
    server = Server(args.binary, {})
    try:
        server.wait_ready()
        print(f"# hone serve on port {server.port}", file=sys.stderr)
        phases = asyncio.run(main_async(server, args))
    finally:
        if server.alive():
            server.proc.kill()
    text, totals, failures = table(phases, machine(), time.monotonic() - started)
    print(text)
    bad = totals["fivexx"] + totals["hangs"] + totals["lost"] + totals["crashes"]
    if bad or failures:
        print(f"\nFAILED: 5xx {totals['fivexx']}, hangs {totals['hangs']}, "
              f"crashes {totals['crashes']}, "
              f"lost {totals['lost']}, failed checks {len(failures)}; server log: "
              f"target/reliability-server.log", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
