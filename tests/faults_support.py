"""Harness for the fault tests (tests/test_faults.py): real processes, a webhook receiver,
an OpenAI-compatible stub LLM and a batch client that retries like an integrator would.

Everything listens on 127.0.0.1 only. Processes are started with ``subprocess.Popen`` and
killed by their own pid (SIGKILL for the faults, SIGTERM at the end).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

from tests.support import chat_completion, wait_until
from triage import webhooks

# The worker command, in one place: the lead parametrises the fault tests over worker engines
# (e.g. ``triage worker --engine procrastinate``) by passing another command here.
DEFAULT_WORKER_CMD: tuple[str, ...] = (sys.executable, "-m", "cli.main", "worker")
API_CMD: tuple[str, ...] = (sys.executable, "-m", "cli.main", "serve", "--no-worker")
CLI_CMD: tuple[str, ...] = (sys.executable, "-m", "cli.main")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ------------------------------------------------------------------------------- processes


@dataclass
class Proc:
    """One product process with its log file."""

    name: str
    argv: Sequence[str]
    env: dict[str, str]
    log_path: Path
    popen: subprocess.Popen[bytes] | None = None

    def start(self) -> Proc:
        log = self.log_path.open("ab")
        log.write(f"\n=== start {' '.join(self.argv)}\n".encode())
        log.flush()
        self.popen = subprocess.Popen(
            list(self.argv),
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=Path(__file__).resolve().parents[1],
        )
        log.close()
        return self

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def kill9(self) -> None:
        """SIGKILL: no cleanup, no graceful shutdown, connections dropped mid-transaction."""
        assert self.popen is not None
        os.kill(self.popen.pid, signal.SIGKILL)
        self.popen.wait(30)

    def stop(self) -> None:
        if self.popen is None or self.popen.poll() is not None:
            return
        self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(20)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(10)

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


def product_env(database_url: str, data_dir: Path, **extra: str) -> dict[str, str]:
    """Environment for API, worker and CLI processes: fast leases and sweeps so recovery of a
    killed worker's cases happens within the test, not after the production two minutes."""
    env = {
        **os.environ,
        "TRIAGE_ENVIRONMENT": "test",
        "TRIAGE_DATABASE_URL": database_url,
        "TRIAGE_DATA_DIR": str(data_dir),
        "TRIAGE_LEASE_SECONDS": "8",
        "TRIAGE_SLA_SWEEP_SECONDS": "2",
        "TRIAGE_WORKER_POLL_SECONDS": "0.5",
        "TRIAGE_WEBHOOK_BACKOFF_BASE_SECONDS": "0.5",
        "TRIAGE_WEBHOOK_BACKOFF_MAX_SECONDS": "2",
        "TRIAGE_WEBHOOK_MAX_ATTEMPTS": "50",
        "TRIAGE_RATE_LIMIT_PER_SECOND": "0",
        "PYTHONUNBUFFERED": "1",
    }
    env.pop("TRIAGE_FAULT_CRASH_AT_STAGE", None)
    env.update(extra)
    return env


class Api:
    """``triage serve --no-worker`` on a fixed port, restartable after a kill."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.proc = Proc(
            "api",
            [*API_CMD, "--host", "127.0.0.1", "--port", str(self.port), "--no-upgrade"],
            env,
            log_path,
        )

    def start(self) -> None:
        self.proc.start()
        wait_until(self.ready, deadline_s=120, what="API readiness (/readyz)")

    def ready(self) -> bool:
        if not self.proc.alive():
            raise AssertionError("API process exited:\n" + self.proc.log_tail())
        try:
            return httpx.get(f"{self.base}/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False


# ------------------------------------------------------------------------------- receiver


class WebhookReceiver:
    """Records every callback delivery (event id, body, signature valid?) and answers 204."""

    def __init__(self, secret: str) -> None:
        self.secret = secret
        self.deliveries: list[tuple[str, dict[str, Any], bool]] = []
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers["Content-Length"])).decode()
                ok = webhooks.verify_signature(
                    outer.secret,
                    self.headers.get("X-Triage-Timestamp", ""),
                    raw,
                    self.headers.get("X-Triage-Signature", ""),
                )
                with outer._lock:
                    outer.deliveries.append(
                        (self.headers.get("X-Triage-Event-Id", ""), json.loads(raw), ok)
                    )
                self.send_response(204)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def event_counts(self) -> Counter[str]:
        with self._lock:
            return Counter(event_id for event_id, _, _ in self.deliveries)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# ------------------------------------------------------------------------------- stub LLM

# A draft that passes the advisor's output contract for any case: no ids, amounts, dates or
# quantities in the prose, no actions, no citations, a queue from the default set.
STUB_DRAFT = {
    "summary": "The customer reports a problem with this shipment; the facts are on the case.",
    "queue": "warehouse_ops",
    "routing_rationale": "Stub model: warehouse operations check the pick first.",
    "proposed_actions": [],
    "next_steps": ["Check the pick record.", "Confirm the facts with the customer."],
    "customer_message": "Thank you for telling us, we are looking into it.",
    "citations": [],
}


class StubLLM:
    """An OpenAI-compatible chat-completions endpoint on a fixed port that can be taken down
    (connection refused) and brought back, counting the calls it answered."""

    def __init__(self) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.calls = 0
        self._server: ThreadingHTTPServer | None = None
        self._body = json.dumps(
            chat_completion(
                STUB_DRAFT,
                model="stub-model",
                completion_id="chatcmpl-stub",
                completion_tokens=10,
            )
        ).encode()

    def up(self) -> None:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", "0")))
                outer.calls += 1
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(outer._body)))
                self.end_headers()
                self.wfile.write(outer._body)

            def log_message(self, *args: object) -> None:
                return None

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def down(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


# ------------------------------------------------------------------------------- client


@dataclass
class BatchClient:
    """Submits batches over HTTP from a thread, one at a time, each only once the test has
    released it (so faults land at known points of the load). A batch that fails on a
    connection error or a 5xx is retried, forever, with the same Idempotency-Key and payload.
    """

    base: Callable[[], str]
    api_key: str
    batches: list[list[dict[str, Any]]]
    key_prefix: str
    accepted: dict[str, str] = field(default_factory=dict)  # source case id -> case id
    outcomes: Counter[str] = field(default_factory=Counter)
    errors: list[tuple[int, str]] = field(default_factory=list)  # (batch index, error)
    durations: list[float] = field(default_factory=list)  # seconds per answered batch
    in_flight: int | None = None
    sent: int = 0  # batches fully answered with 2xx
    failure: BaseException | None = None

    def __post_init__(self) -> None:
        self._released = threading.Semaphore(0)
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="batch-client", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def release(self, n: int) -> None:
        for _ in range(n):
            self._released.release()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise AssertionError(f"client still sending after {timeout:.0f}s: {self.errors[-5:]}")
        if self.failure is not None:
            raise AssertionError(f"client failed: {self.failure!r}")

    def _run(self) -> None:
        try:
            with httpx.Client(timeout=60) as http:
                for i, batch in enumerate(self.batches):
                    self._released.acquire()
                    self._send(http, i, batch)
        except BaseException as exc:  # surfaced by join()
            self.failure = exc

    def _send(self, http: httpx.Client, i: int, batch: list[dict[str, Any]]) -> None:
        headers = {
            "Authorization": f"Bearer {self.api_key}",
            "Idempotency-Key": f"{self.key_prefix}-batch-{i}",
        }
        while True:
            self.in_flight = i
            started = time.monotonic()
            try:
                resp = http.post(
                    f"{self.base()}/v1/cases/batch", json={"items": batch}, headers=headers
                )
            except httpx.TransportError as exc:
                self.errors.append((i, f"{type(exc).__name__}: {exc}"))
                self.in_flight = None
                time.sleep(0.3)
                continue
            self.in_flight = None
            if resp.status_code >= 500:
                self.errors.append((i, f"HTTP {resp.status_code}: {resp.text[:200]}"))
                time.sleep(0.3)
                continue
            if resp.status_code >= 300:
                raise AssertionError(f"batch {i}: HTTP {resp.status_code}: {resp.text[:500]}")
            body = resp.json()
            with self._lock:
                self.durations.append(time.monotonic() - started)
                for item in body["items"]:
                    self.outcomes[item["outcome"]] += 1
                    if item["outcome"] in ("created", "replayed"):
                        source_id = batch[item["index"]]["source"]["case_id"]
                        self.accepted[source_id] = item["case_id"]
                self.sent += 1
            return
