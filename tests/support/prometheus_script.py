"""A scripted Prometheus on loopback, for the end-to-end tiers whose pods serve no metrics (kwok).

It answers Prometheus' instant-query API (POST /api/v1/query) as a real server would answer the
canary analysis' three queries (requests, 5xx answers, latency buckets; see
aliasroll.analysis.prometheus), with windows the test sets per model: an `Answer` says how many
requests each track served in the interval, how many of them were 5xx, and whether the server
answers at all (HTTP 500, or a connection closed without an answer). Every answer is within 50 ms.
Per model, so a canary left over from an earlier test reads its own.

    with ScriptedPrometheus() as prometheus:
        prometheus.set(model, FAILING)   # spec.canary.analysis.prometheus.address: prometheus.url
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs


@dataclass(frozen=True)
class Answer:
    """One model's windows over an analysis interval, or how the server fails to give them."""

    production_requests: float = 400.0
    # None: Prometheus has no sample of the canary's series at all (its pods not scraped yet).
    canary_requests: float | None = 100.0
    canary_errors: float = 0.0
    production_errors: float = 0.0
    # Not 200: the server answers this HTTP status with Prometheus' error body.
    status: int = 200
    # The connection is closed without an answer: the server is as good as unreachable.
    hang_up: bool = False


PASSING = Answer()
FEW = Answer(canary_requests=5.0)  # below any minRequests the tests set: Inconclusive
FAILING = Answer(canary_errors=50.0)  # half of the canary's answers 5xx
SERVER_ERROR = Answer(status=500)
HANG_UP = Answer(hang_up=True)
NO_CANARY_SAMPLES = Answer(canary_requests=None)


def errors(percent: float) -> Answer:
    """`percent` of the canary's 100 requests answered 5xx; production answers none."""
    return Answer(canary_errors=percent)


class ScriptedPrometheus:
    """Answers each model's queries with the `Answer` set for it (PASSING by default), and keeps when
    each model was asked (`asked`), so a test can tell how often the operator measured."""

    def __init__(self) -> None:
        self._answers: dict[str, Answer] = {}
        self._asked: dict[str, list[float]] = {}
        self._lock = threading.Lock()
        script = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                query = parse_qs(self.rfile.read(length).decode()).get("query", [""])[0]
                answer = script.answer_for(query)
                if answer.hang_up:
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                if answer.status != 200:
                    result: dict[str, Any] = {
                        "status": "error",
                        "errorType": "internal",
                        "error": "scripted failure",
                    }
                else:
                    result = {
                        "status": "success",
                        "data": {"resultType": "vector", "result": script.samples(query, answer)},
                    }
                body = json.dumps(result).encode()
                self.send_response(answer.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                """Quiet."""

        self._server = _QuietServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> ScriptedPrometheus:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def set(self, model: str, answer: Answer) -> None:
        """From now on, `model`'s queries get `answer`."""
        with self._lock:
            self._answers[model] = answer

    def asked(self, model: str) -> list[float]:
        """When (time.monotonic()) each measurement of `model` was asked for: one per measurement (the
        analysis asks three queries at once; the request count's query stands for them)."""
        with self._lock:
            return list(self._asked.get(model, ()))

    def answer_for(self, promql: str) -> Answer:
        model = _model(promql)
        with self._lock:
            if model is not None and "_count" in promql and "_bucket" not in promql:
                self._asked.setdefault(model, []).append(time.monotonic())
            return self._answers.get(model or "", PASSING)

    def samples(self, promql: str, answer: Answer) -> list[dict[str, Any]]:
        """The instant vector Prometheus would answer `promql` with."""
        versions = re.search(r'version=~"([^"]*)"', promql)
        if versions is None:
            return []
        named = versions.group(1).split("|")
        # One version alone: a bake's reading of the new production (it is the "canary" here).
        production, canary = (named[0], named[1]) if len(named) == 2 else (None, named[0])
        requests: dict[str, float] = {}
        errors: dict[str, float] = {}
        if production is not None:
            requests[production] = answer.production_requests
            errors[production] = answer.production_errors
        if answer.canary_requests is not None:
            requests[canary] = answer.canary_requests
            errors[canary] = answer.canary_errors
        if 'code=~"5.."' in promql:
            return [_sample({"version": version}, count) for version, count in errors.items()]
        if "_bucket" in promql:
            return [
                _sample({"version": version, "le": le}, count)
                for version, count in requests.items()
                for le in ("0.05", "+Inf")
            ]
        return [_sample({"version": version}, count) for version, count in requests.items()]


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A connection hung up on purpose (HANG_UP) is no error worth a traceback."""


def _model(promql: str) -> str | None:
    found = re.search(r'model="([^"]*)"', promql)
    return found.group(1) if found else None


def _sample(labels: dict[str, str], value: float) -> dict[str, Any]:
    return {"metric": labels, "value": [1767261600.0, str(value)]}
