"""A stand-in for a Kubeflow Pipelines cluster, for tests of ``kdflow submit`` and ``kdflow schedule``.

It speaks the KFP v2beta1 REST endpoints that ``kfp.Client`` (kfp 2.17.3, through kfp_server_api)
calls for them, with the field names kfp_server_api deserialises (snake_case, except the
``recurringRuns`` list), and records every request: method, path, query, headers and the decoded
body (JSON, or the fields and files of a multipart upload; ``Recorded.parts()`` gives all of it as
text, for tests that assert a value never reached the cluster). Endpoints it does not know answer 404
and are recorded too, so a test sees any call it did not expect.

    healthz                     GET    /apis/v2beta1/healthz
    pipelines by name           GET    /apis/v2beta1/pipelines?filter=...
    upload a pipeline           POST   /apis/v2beta1/pipelines/upload?name=...        (multipart)
    upload a version            POST   /apis/v2beta1/pipelines/upload_version?pipelineid=...&name=...
    versions of a pipeline      GET    /apis/v2beta1/pipelines/{id}/versions?sort_by=...&page_size=...
    experiments by name, create GET, POST /apis/v2beta1/experiments
    start a run, get a run      POST   /apis/v2beta1/runs, GET /apis/v2beta1/runs/{id}
    recurring runs              POST, GET /apis/v2beta1/recurringruns, DELETE .../recurringruns/{id}

A ``http.server.ThreadingHTTPServer`` on 127.0.0.1, port 0 (the OS picks one), served from a daemon
thread. Bounded: bodies over 32 MiB (KFP's upload limit) get 413, requests beyond ``MAX_REQUESTS``
get 503, an idle connection is dropped after ``CONNECTION_TIMEOUT_S``, and the server stops itself
after ``MAX_LIFETIME_S`` even if a test never calls ``stop()`` (the fixture does, in teardown).
"""

from __future__ import annotations

import datetime as dt
import email.parser
import email.policy
import itertools
import json
import re
import threading
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import yaml

API = "/apis/v2beta1"
MAX_BODY = 32 * 1024 * 1024
MAX_REQUESTS = 500
# Guards against a test that leaks a connection or the server, never limits a slow one: a loaded
# machine can pause a client for many seconds between two requests on one kept-alive connection.
CONNECTION_TIMEOUT_S = 120
MAX_LIFETIME_S = 3600


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, str]  # first value of each query parameter
    headers: dict[str, str]  # lower-case names
    body: Any = None  # parsed JSON; for multipart {"fields": {...}, "files": {name: (filename, bytes)}}

    @property
    def auth(self) -> str | None:
        return self.headers.get("authorization")

    def parts(self) -> dict[str, str]:
        """Everything the request sent, as text by where it was: "path", "query", "header NAME" and
        "body" (a multipart upload's files decoded as UTF-8), for tests that look for a value anywhere."""
        return {"path": self.path, "query": json.dumps(self.query),
                **{f"header {name}": value for name, value in self.headers.items()},
                "body": json.dumps(self.body, default=_as_text)}


class _NotFound(Exception):
    pass


@dataclass
class FakeKFP:
    """The cluster's state plus the recorded requests. ``run_states``: the states a run reports to
    successive GETs (the last one repeats); ``require_token``: answer 401 without this bearer token."""

    require_token: str | None = None
    run_states: list[str] = field(default_factory=lambda: ["RUNNING", "SUCCEEDED"])
    run_error: str = "task distill failed: out of memory"
    page_limit: int = 100  # the most items one list page holds, as a server caps page_size
    requests: list[Recorded] = field(default_factory=list)
    pipelines: dict[str, dict] = field(default_factory=dict)
    versions: dict[str, list[dict]] = field(default_factory=dict)
    experiments: dict[str, dict] = field(default_factory=dict)
    runs: dict[str, dict] = field(default_factory=dict)
    recurring_runs: dict[str, dict] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._clock = itertools.count()
        self._polls: dict[str, int] = {}
        self._server: ThreadingHTTPServer | None = None

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> "FakeKFP":
        fake = self

        class Handler(_Handler):
            kfp = fake

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        self._watchdog = threading.Timer(MAX_LIFETIME_S, self.stop)
        self._watchdog.daemon = True
        self._watchdog.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            self._watchdog.cancel()
            server.shutdown()
            server.server_close()

    def __enter__(self) -> "FakeKFP":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self._server is not None, "start() the fake first"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    # -- test helpers ----------------------------------------------------------------------------
    def calls(self, method: str, path: str) -> list[Recorded]:
        """The recorded requests of ``method`` to ``path`` (relative to /apis/v2beta1; a trailing *
        matches any rest)."""
        want = API + path
        return [r for r in self.requests if r.method == method and
                (r.path == want or (want.endswith("*") and r.path.startswith(want[:-1])))]

    def add_pipeline(self, name: str) -> tuple[str, str]:
        """A pipeline uploaded earlier, with one version: (pipeline id, version id)."""
        with self._lock:
            pipeline = self._new_pipeline(name, "")
            return pipeline["pipeline_id"], self.versions[pipeline["pipeline_id"]][0]["pipeline_version_id"]

    def add_recurring_run(self, name: str, cron: str) -> str:
        with self._lock:
            rid = str(uuid.uuid4())
            self.recurring_runs[rid] = {"recurring_run_id": rid, "display_name": name, "mode": "ENABLE",
                                        "status": "ENABLED", "trigger": {"cron_schedule": {"cron": cron}},
                                        "max_concurrency": "1", "no_catchup": True, "created_at": self._now(),
                                        "pipeline_version_reference": {"pipeline_id": "p", "pipeline_version_id": "v"}}
            return rid

    # -- the API ---------------------------------------------------------------------------------
    def _now(self) -> str:
        # Strictly increasing, so "created_at desc" orders as upload order does.
        return (dt.datetime(2025, 1, 1, tzinfo=dt.timezone.utc)
                + dt.timedelta(seconds=next(self._clock))).strftime("%Y-%m-%dT%H:%M:%SZ")

    def _new_pipeline(self, name: str, description: str) -> dict:
        pid = str(uuid.uuid4())
        self.pipelines[pid] = {"pipeline_id": pid, "display_name": name, "name": name, "description": description,
                               "created_at": self._now()}
        self.versions[pid] = []
        self._new_version(pid, name, description)  # KFP makes the first version along with the pipeline
        return self.pipelines[pid]

    def _new_version(self, pid: str, name: str, description: str) -> dict:
        if any(v["display_name"] == name for v in self.versions[pid]):
            raise ValueError(f"a version named {name} already exists")
        version = {"pipeline_id": pid, "pipeline_version_id": str(uuid.uuid4()), "display_name": name,
                   "name": name, "description": description, "created_at": self._now()}
        self.versions[pid].append(version)
        return version

    def handle(self, req: Recorded) -> tuple[int, dict]:
        path, q, body = req.path, req.query, req.body
        if path == f"{API}/healthz" and req.method == "GET":
            return 200, {"multi_user": False, "pipeline_store": "database"}
        if self.require_token and req.auth != f"Bearer {self.require_token}":
            return 401, {"code": 16, "message": "Unauthenticated: bad or missing bearer token"}
        route = (req.method, re.sub(r"^" + API, "", path))
        with self._lock:
            try:
                return self._route(route, q, body)
            except _NotFound as exc:
                return 404, {"code": 5, "message": str(exc)}
            except ValueError as exc:
                return 409, {"code": 6, "message": str(exc)}

    def _route(self, route: tuple[str, str], q: dict, body: Any) -> tuple[int, dict]:
        method, path = route
        if route == ("GET", "/pipelines"):
            found = [p for p in self.pipelines.values() if _matches(p, q.get("filter"))]
            return 200, ({"pipelines": found, "total_size": len(found)} if found else {})
        if route == ("POST", "/pipelines/upload"):
            name, (_, data) = q["name"], body["files"]["uploadfile"]
            _check_spec(data)
            if any(p["display_name"] == name for p in self.pipelines.values()):
                raise ValueError(f"a pipeline named {name} already exists")
            return 200, self._new_pipeline(name, q.get("description", ""))
        if route == ("POST", "/pipelines/upload_version"):
            pid, (_, data) = q.get("pipelineid", ""), body["files"]["uploadfile"]
            _check_spec(data)
            if pid not in self.pipelines:
                raise _NotFound(f"no pipeline {pid}")
            return 200, self._new_version(pid, q["name"], q.get("description", ""))
        if m := re.fullmatch(r"/pipelines/([^/]+)/versions", path):
            if m[1] not in self.pipelines:
                raise _NotFound(f"no pipeline {m[1]}")
            versions = sorted(self.versions[m[1]], key=lambda v: v["created_at"],
                              reverse=q.get("sort_by", "").endswith(" desc"))
            return 200, self._page("pipeline_versions", versions, q)
        if route == ("GET", "/experiments"):
            found = [e for e in self.experiments.values() if _matches(e, q.get("filter"))
                     and (not q.get("namespace") or e.get("namespace") == q["namespace"])]
            return 200, ({"experiments": found, "total_size": len(found)} if found else {})
        if route == ("POST", "/experiments"):
            eid = str(uuid.uuid4())
            self.experiments[eid] = {**body, "experiment_id": eid, "created_at": self._now(),
                                     "storage_state": "AVAILABLE"}
            return 200, self.experiments[eid]
        if route == ("POST", "/runs"):
            self._check_reference(body)
            rid = str(uuid.uuid4())
            self.runs[rid] = {**body, "run_id": rid, "state": "PENDING", "created_at": self._now()}
            return 200, self.runs[rid]
        if method == "GET" and (m := re.fullmatch(r"/runs/([^/]+)", path)):
            if m[1] not in self.runs:
                raise _NotFound(f"no run {m[1]}")
            n = self._polls[m[1]] = self._polls.get(m[1], -1) + 1
            state = self.run_states[min(n, len(self.run_states) - 1)]
            run = {**self.runs[m[1]], "state": state}
            if state == "FAILED":
                run["error"] = {"code": 2, "message": self.run_error}
            return 200, run
        if route == ("POST", "/recurringruns"):
            self._check_reference(body)
            rid = str(uuid.uuid4())
            self.recurring_runs[rid] = {**body, "recurring_run_id": rid, "created_at": self._now(),
                                        "status": "ENABLED" if body.get("mode") == "ENABLE" else "DISABLED"}
            return 200, self.recurring_runs[rid]
        if route == ("GET", "/recurringruns"):
            return 200, self._page("recurringRuns", list(self.recurring_runs.values()), q)
        if method == "DELETE" and (m := re.fullmatch(r"/recurringruns/([^/]+)", path)):
            if self.recurring_runs.pop(m[1], None) is None:
                raise _NotFound(f"no recurring run {m[1]}")
            return 200, {}
        raise _NotFound(f"fake KFP has no route {method} {path}")

    def _page(self, key: str, items: list, q: dict) -> dict:
        start = int(q.get("page_token") or 0)
        size = min(int(q.get("page_size") or 10), self.page_limit)
        page = {key: items[start:start + size], "total_size": len(items)} if items else {}
        if start + size < len(items):
            page["next_page_token"] = str(start + size)
        return page

    def _check_reference(self, body: dict) -> None:
        ref = body.get("pipeline_version_reference") or {}
        versions = self.versions.get(ref.get("pipeline_id", ""), [])
        if not any(v["pipeline_version_id"] == ref.get("pipeline_version_id") for v in versions):
            raise _NotFound(f"no pipeline version {ref}")
        if body.get("experiment_id") not in self.experiments:
            raise _NotFound(f"no experiment {body.get('experiment_id')}")


def _matches(item: dict, filter_json: str | None) -> bool:
    """KFP's filter: here only EQUALS predicates (what kfp.Client sends to find a name; it spells the
    operation as the enum's number, 1, which the server's JSON decoding accepts as well as the name)."""
    if not filter_json:
        return True
    return all(p["operation"] in ("EQUALS", 1) and item.get(p["key"]) == p.get("stringValue")
               for p in json.loads(filter_json)["predicates"])


def _check_spec(data: bytes) -> None:
    """Refuse an upload that is not a compiled pipeline, as the API server does."""
    doc = next(yaml.safe_load_all(data))
    if not isinstance(doc, dict) or "pipelineInfo" not in doc or "root" not in doc:
        raise ValueError("the uploaded file is not a KFP pipeline spec")


class _Handler(BaseHTTPRequestHandler):
    kfp: FakeKFP
    protocol_version = "HTTP/1.1"  # keep-alive, as urllib3's pool expects
    timeout = CONNECTION_TIMEOUT_S

    def log_message(self, *args) -> None:  # quiet: the recorded requests are the log
        pass

    def _serve(self) -> None:
        url = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            self.close_connection = True
            return self._reply(413, {"code": 8, "message": "body too large"})
        raw = self.rfile.read(length) if length else b""
        req = Recorded(self.command, url.path, {k: v[0] for k, v in parse_qs(url.query).items()},
                       {k.lower(): v for k, v in self.headers.items()},
                       _decode(self.headers.get("Content-Type", ""), raw))
        with self.kfp._lock:
            if len(self.kfp.requests) >= MAX_REQUESTS:
                return self._reply(503, {"code": 14, "message": "fake KFP: request limit reached"})
            self.kfp.requests.append(req)
        try:
            status, body = self.kfp.handle(req)
        except Exception as exc:  # a malformed request: answer it, never hang the client
            status, body = 400, {"code": 3, "message": f"{type(exc).__name__}: {exc}"}
        self._reply(status, body)

    do_GET = do_POST = do_DELETE = _serve

    def _reply(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def _as_text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    raise TypeError(f"cannot show a {type(value).__name__} as text")


def _decode(content_type: str, raw: bytes) -> Any:
    if not raw:
        return None
    if content_type.startswith("multipart/form-data"):
        message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
            b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + raw)
        fields, files = {}, {}
        for part in message.iter_parts():
            name = part.get_param("name", header="content-disposition")
            if part.get_filename():
                files[name] = (part.get_filename(), part.get_payload(decode=True))
            else:
                fields[name] = part.get_content()
        return {"fields": fields, "files": files}
    return json.loads(raw)
