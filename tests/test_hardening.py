"""Issue 13, against the real server: gunicorn (and the `_wsgi.py` script) serving the stock
label-studio-ml app, the local fake LLM scripted for retries and replies.

One test (or group) per finding of the security and robustness probe:
1 credentials in debug logs, 2 request size and memory bounds, 3 429s apart from the 5xx
retry budget, 4 clear 4xx instead of 500s, 5 a linear reply parser, 6 log injection,
7 /health while predictions hang, 8 exposure warning, 9 the web stack's versions,
10 legacy /train and webhooks for unseen projects.
"""

from __future__ import annotations

import base64
import http.client
import json
import re
import secrets
import select
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from packaging.version import Version

import tests.fake_llm.server as fake
from my_ml_backend.labeling.parsing import SALVAGE_MAX_CHARS, parse_reply
from my_ml_backend.server.guards import RequestGuard, server_options
from my_ml_backend.server.stack import FLOORS, web_stack
from tests.conftest import ROOT, TEST_KEY, Backend, config, free_port

USER = "mluser"
PASS = "Pw-" + secrets.token_hex(8)
LS_KEY = "lsk-" + secrets.token_hex(16)
ACCESS_TOKEN = "acc-" + secrets.token_hex(10)
TASK_PASSWORD = "tdp-" + secrets.token_hex(10)
INTRUDER_PASS = "intr-" + secrets.token_hex(8)
JUNK_PASS = "junk-" + secrets.token_hex(8)
BODY_MARK = "body-" + secrets.token_hex(10)
CLASSIFY = config("text_classification")
PROJECT = "1.1700000000"


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


AUTH = [("Authorization", basic(USER, PASS))]


class LabelStudioStub:
    """Answers the SDK's task listing with no task and records the paths asked (the resync's target)."""

    def __init__(self) -> None:
        paths = self.paths = []

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                paths.append(self.path)
                body = json.dumps({"tasks": [], "total": 0, "total_annotations": 0, "total_predictions": 0}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def call(
    backend: Backend, method: str, path: str, body: object = None, headers: list[tuple[str, str]] | None = None,
    raw: bytes | None = None, timeout: float = 60,
) -> tuple[int, dict, float]:
    """One request with any headers (duplicates included); (status, JSON body, seconds)."""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    conn = http.client.HTTPConnection("127.0.0.1", backend.port, timeout=timeout)
    started = time.monotonic()
    try:
        conn.putrequest(method, path)
        for name, value in [("Content-Type", "application/json"), *(AUTH if headers is None else headers)]:
            conn.putheader(name, value)
        conn.putheader("Content-Length", str(len(data or b"")))
        conn.endheaders(data)
        response = conn.getresponse()
        text = response.read()
    finally:
        conn.close()
    try:
        parsed = json.loads(text or b"null")
    except ValueError:
        parsed = {"raw": text.decode(errors="replace")}
    return response.status, parsed, time.monotonic() - started


def send_head_only(
    backend: Backend, path: str, length: int, first: bytes, headers: list[tuple[str, str]]
) -> tuple[str, float]:
    """Announce `length` bytes, send only `first`, and read the answer: it must come without the rest."""
    head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {length}\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers) + "\r\n"
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", backend.port), timeout=10) as sock:
        sock.sendall(head.encode() + first)
        answer = sock.recv(65536).decode(errors="replace")
    return answer.split("\r\n", 1)[0], time.monotonic() - started


def worker_rss_mb(backend: Backend) -> list[float]:
    """Resident memory of the gunicorn workers (children of the master), in MB."""
    sizes = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == backend.proc.pid:
                status = (stat.parent / "status").read_text()
                sizes.append(int(re.search(r"VmRSS:\s+(\d+)", status).group(1)) / 1024)
        except (OSError, AttributeError, IndexError):
            continue
    return sizes


def all_output(backend: Backend) -> str:
    """stdout/stderr of the server and every file under its log directory."""
    texts = [backend.stdout.read_text(encoding="utf-8", errors="replace")]
    texts += [p.read_text(encoding="utf-8", errors="replace") for p in backend.log_dir.rglob("*") if p.is_file()]
    return "\n".join(texts)


def guarded_env(llm: fake.FakeLLMServer, stub: LabelStudioStub) -> dict[str, str]:
    return {
        "MODELSCOPE_API_KEY": TEST_KEY,
        "MODELSCOPE_API_URL": llm.base_url,
        "LLM_TIMEOUT": "5",
        "LLM_MAX_RETRIES": "2",
        "LLM_CACHE": "off",
        "DEBUG": "true",
        "BASIC_AUTH_USER": USER,
        "BASIC_AUTH_PASS": PASS,
        "LABEL_STUDIO_URL": stub.url,
        "LABEL_STUDIO_API_KEY": LS_KEY,
        "MAX_REQUEST_MB": "5",
        "MODEL_CACHE_CHARS": "400000",
    }


@pytest.fixture(scope="module")
def stub() -> Iterator[LabelStudioStub]:
    s = LabelStudioStub()
    yield s
    s.stop()


@pytest.fixture(scope="module", params=["gunicorn", "script"])
def guarded(request: pytest.FixtureRequest, llm_server: fake.FakeLLMServer, stub: LabelStudioStub,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backend]:
    """DEBUG=true, basic auth, 5 MB body limit: gunicorn 2 workers x 4 threads, or `python _wsgi.py`."""
    options = ["--workers", "2", "--threads", "4", "--timeout", "120"] if request.param == "gunicorn" else None
    b = Backend(guarded_env(llm_server, stub), tmp_path_factory.mktemp(f"guarded-{request.param}"), gunicorn=options)
    b.kind = request.param  # type: ignore[attr-defined]
    yield b
    b.stop()


@pytest.fixture()
def gunicorn_only(guarded: Backend) -> Backend:
    if guarded.kind != "gunicorn":  # type: ignore[attr-defined]
        pytest.skip("measured on gunicorn workers")
    return guarded


# 1. Credentials never in logs, debug mode included --------------------------------------------


def test_debug_logs_and_replies_hold_no_credential(guarded: Backend, llm: fake.FakeLLMServer) -> None:
    replies = []
    status, body, _ = call(guarded, "POST", "/setup", {
        "project": PROJECT, "schema": CLASSIFY, "access_token": ACCESS_TOKEN, "hostname": "http://ls",
        "extra_params": None,
    })
    assert status == 200, body
    replies.append(body)
    llm.enqueue(fake.chat('{"sentiment": "正面"}'))
    status, body, _ = call(guarded, "POST", "/predict", {
        "tasks": [{"id": 1, "data": {"text": "很好"}}], "project": PROJECT, "label_config": CLASSIFY,
        "params": {"login": "someone", "password": TASK_PASSWORD, "context": None},
    })
    assert status == 200 and body["results"][0]["result"], body
    replies.append(body)
    two_headers = [[*AUTH, ("Authorization", basic("intruder", INTRUDER_PASS))],
                   [("Authorization", basic("intruder", INTRUDER_PASS)), *AUTH]]
    for headers in two_headers:
        status, body, _ = call(guarded, "GET", "/health", headers=headers)
        assert status == 401, body  # two Authorization headers are refused, never half-read
        replies.append(body)
    junk = basic(USER, JUNK_PASS)
    junk = junk[:14] + "!!$$" + junk[14:] + "%%"
    status, body, _ = call(guarded, "GET", "/health", headers=[("Authorization", junk)])
    assert status == 401
    replies.append(body)
    # 50 MB from a client without credentials: answered 401 before the body is read.
    first = json.dumps({"tasks": [{"data": {"text": BODY_MARK}}]}).encode()[:-1] + b" " * 65536
    line, seconds = send_head_only(guarded, "/predict", 50 * 1024 * 1024, first, [])
    assert " 401 " in line and seconds < 5, (line, seconds)
    # With credentials but over MAX_REQUEST_MB: 413, also before reading.
    line, seconds = send_head_only(guarded, "/predict", 50 * 1024 * 1024, first, AUTH)
    assert " 413 " in line and seconds < 5, (line, seconds)
    time.sleep(0.5)  # let the handlers flush

    output = all_output(guarded)
    # Debug mode traces what the seed promises: the fields, the prompt, the reply and its token usage.
    assert "Task 1 fields" in output and "Task 1 prompt" in output and "很好" in output
    assert "completion tokens" in output and "正面" in output
    assert "/predict -> 200" in output  # one line per request instead of headers and body
    assert len(output) < 2_000_000, len(output)  # no request body in the log
    planted = [PASS, LS_KEY, ACCESS_TOKEN, TASK_PASSWORD, INTRUDER_PASS, JUNK_PASS, BODY_MARK, TEST_KEY]
    tokens = [basic(USER, PASS)[6:], basic("intruder", INTRUDER_PASS)[6:], basic(USER, JUNK_PASS)[6:]]
    text = output + json.dumps(replies)
    for secret in planted:
        windows = {secret[i : i + 10] for i in range(len(secret) - 9)}
        leaked = [w for w in windows if w in text]
        assert not leaked, (secret, leaked)
    for token in tokens:  # any 12 characters of the base64 past the user name's part
        leaked = [token[i : i + 12] for i in range(12, len(token) - 11) if token[i : i + 12] in text]
        assert not leaked, (token, leaked)


# 2. Request size and memory bounds ------------------------------------------------------------


def test_oversized_bodies_get_413_before_they_are_read(guarded: Backend) -> None:
    line, seconds = send_head_only(guarded, "/setup", 60 * 1024 * 1024, b"{", AUTH)
    assert " 413 " in line and seconds < 2, (line, seconds)
    status, body, _ = call(guarded, "POST", "/predict", raw=b"{" + b" " * (4 * 1024 * 1024) + b"}")
    assert status == 400 and "tasks" in body["detail"], body  # under the limit: read as usual


def send_chunked(backend: Backend, path: str, chunks: list[bytes], headers: list[tuple[str, str]]) -> str:
    """POST `chunks` with Transfer-Encoding: chunked, stopping as soon as the server answers; its answer."""
    head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers) + "\r\n"
    with socket.create_connection(("127.0.0.1", backend.port), timeout=30) as sock:
        sock.sendall(head.encode())
        for chunk in [*chunks, b""]:
            if select.select([sock], [], [], 0.3)[0]:
                break
            sock.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
            data = sock.recv(65536)
            if not data:
                break
            answer += data
    return answer.decode(errors="replace")


def test_chunked_body_over_the_limit_is_cut(guarded: Backend) -> None:
    """Without Content-Length (chunked), reading stops one byte past the limit."""
    answer = send_chunked(guarded, "/predict", [b"{" + b" " * (1024 * 1024)] * 7, AUTH)
    assert answer.split()[1] == "413" and "MAX_REQUEST_MB" in answer, answer[:300]
    answer = send_chunked(guarded, "/predict", [b'{"tasks": ', b"[]}"], AUTH)
    assert answer.split("\r\n")[0].split()[1] in ("200", "400"), answer[:300]  # read as usual


def test_memory_stays_flat_for_big_unauthenticated_bodies(gunicorn_only: Backend) -> None:
    before = sum(worker_rss_mb(gunicorn_only))
    payload = b"{" + b" " * (50 * 1024 * 1024) + b"}"
    for headers in ([], AUTH):  # 401 without credentials, 413 with: neither reads the body
        try:
            status, _, _ = call(gunicorn_only, "POST", "/predict", raw=payload, headers=headers)
            assert status in (401, 413)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed while we were still sending: nothing was buffered
    grown = sum(worker_rss_mb(gunicorn_only)) - before
    print(f"worker RSS before {before:.0f} MB, growth {grown:.1f} MB after two 50 MB bodies")
    assert grown < 30, grown


def test_project_instructions_and_configs_are_bounded(guarded: Backend) -> None:
    status, body, _ = call(guarded, "POST", "/setup", {
        "project": PROJECT, "schema": CLASSIFY, "extra_params": {"instructions": "规则" * 50_000}})
    assert status == 400 and "MAX_INSTRUCTIONS_CHARS" in body["detail"], body
    huge = "<View><Text name='t' value='$text'/>" + "<!-- pad -->" * 100_000 + "</View>"
    status, body, _ = call(guarded, "POST", "/setup", {"project": PROJECT, "schema": huge})
    assert status == 400 and "MAX_CONFIG_CHARS" in body["detail"], body


def big_config(n: int, salt: int) -> str:
    controls = "".join(
        f'<Choices name="c{salt}_{i}" toName="t"><Choice value="a"/><Choice value="b"/></Choices>' for i in range(n)
    )
    return f'<View><Text name="t" value="$text"/>{controls}</View>'


def test_model_registry_memory_is_bounded(gunicorn_only: Backend) -> None:
    """24 projects, each with its own 3,000-control config (~250 KB, ~17 MB parsed); MODEL_CACHE_CHARS=400000.

    Unbounded (32 models per worker and a 64-entry parse cache) the two workers grew by
    24 x 17 = ~400 MB together; bounded, each keeps one such model.
    """
    before = worker_rss_mb(gunicorn_only)
    for i in range(24):
        setup = {"project": f"{100 + i}.1", "schema": big_config(3000, i)}
        status, body, _ = call(gunicorn_only, "POST", "/setup", setup)
        assert status == 200, body
    after = worker_rss_mb(gunicorn_only)
    growth = [a - b for a, b in zip(after, before, strict=True)]
    print(f"worker RSS {[round(b) for b in before]} -> {[round(a) for a in after]} MB")
    assert sum(growth) < 280, growth
    found = [call(gunicorn_only, "POST", "/versions", {"project": f"{100 + i}.1"})[1]["versions"] for i in range(24)]
    assert sum(bool(f) for f in found) <= 2, found  # each of the 2 workers keeps only its newest config


# 3. 429s do not use up the retry budget of server errors -------------------------------------


@pytest.mark.parametrize(
    ("script", "ok", "calls"),
    [
        ([fake.throttled(), fake.throttled(), fake.server_error(), "ok"], True, 4),
        ([fake.throttled(), fake.server_error(), fake.server_error(), "ok"], True, 4),
        ([fake.server_error(), fake.server_error(), "ok"], True, 3),
        ([fake.throttled()] * 4 + ["ok"], True, 5),
        ([fake.server_error()] * 3 + ["ok"], False, 3),  # LLM_MAX_RETRIES=2 still holds for 5xx
    ],
    ids=["429,429,500,ok", "429,500,500,ok", "500,500,ok", "429x4,ok", "500x3:fails"],
)
def test_throttles_are_counted_apart_from_server_errors(
    guarded: Backend, llm: fake.FakeLLMServer, script: list, ok: bool, calls: int
) -> None:
    llm.enqueue(*[fake.chat('{"sentiment": "中性"}') if r == "ok" else r for r in script])
    status, body, _ = call(guarded, "POST", "/predict", {
        "tasks": [{"id": 3, "data": {"text": "一般"}}], "project": PROJECT, "label_config": CLASSIFY})
    assert status == 200, body
    [prediction] = body["results"]
    assert bool(prediction.get("result")) is ok, prediction
    assert llm.chat_calls == calls


# 4. Clear 4xx instead of 500s; no internals in replies -----------------------------------------


def test_bad_input_gets_a_clear_4xx(guarded: Backend, llm: fake.FakeLLMServer) -> None:
    cases = [
        ("/predict", b"[" * 100_000 + b"]" * 100_000),
        ("/predict", b'{"tasks": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"),
        ("/setup", b'{"project": "1.1", "schema": "<View>\\ud800<Text name=\\"t\\" value=\\"$t\\"/></View>"}'),
        ("/setup", json.dumps({"project": "\ud800.1", "schema": CLASSIFY}).encode()),
        ("/versions", b"not json"),
        ("/versions", b"[1]"),
        ("/train", b"{}"),
    ]
    for action, annotation in [("ANNOTATION_CREATED", {"id": "abc", "result": [{}]}),
                               ("ANNOTATION_UPDATED", {"id": 2**70, "result": [{}]}),
                               ("ANNOTATION_CREATED", "not an object"),
                               ("ANNOTATION_CREATED", {"id": 1, "task": "x", "result": [{}]}),
                               ("ANNOTATION_CREATED", {"id": 1, "result": "not a list"})]:
        event = {"action": action, "project": {"id": 1, "label_config": CLASSIFY}, "annotation": annotation,
                 "task": {"id": 1, "data": {"text": "x"}}}
        cases.append(("/webhook", json.dumps(event).encode()))
    cases.append(("/webhook", json.dumps({"action": "ANNOTATIONS_DELETED", "project": {"id": 1},
                                          "annotations": [1, 2]}).encode()))
    for path, raw in cases:
        status, body, _ = call(guarded, "POST", path, raw=raw)
        assert 400 <= status < 500, (path, raw[:80], status, body)
        assert body.get("detail") and "Traceback" not in json.dumps(body) and str(ROOT) not in json.dumps(body)
    # A lone surrogate in a task's text is replaced, not fatal to the batch.
    llm.enqueue(fake.chat('{"sentiment": "正面"}'))
    raw = json.dumps({"tasks": [{"id": 1, "data": {"text": "好\ud800"}}], "project": PROJECT,
                      "label_config": CLASSIFY}).encode()
    status, body, _ = call(guarded, "POST", "/predict", raw=raw)
    assert status == 200 and body["results"][0]["result"], body
    health = call(guarded, "GET", "/health")[1]
    assert health["status"] == "UP" and "model_dir" not in health and str(ROOT) not in json.dumps(health)
    assert call(guarded, "GET", "/is_training?project=1")[:2] == (200, {"is_training": False})
    status, body, _ = call(guarded, "GET", "/no-such-route")
    assert status == 404 and body["status"] == 404
    assert "Traceback" not in guarded.stdout.read_text(errors="replace")  # no stock print of tracebacks


# 5. A linear reply parser ---------------------------------------------------------------------

MB = 1_000_000
HOSTILE = {
    "open braces": "{" * MB,
    "closed pairs": "{}" * (MB // 2),
    "key chain": '{"x":' * (MB // 5),
    "unterminated string": '{"a": "' + "x" * MB,
    "escaped quotes": '{"a":"' + '\\"' * (MB // 2),
    "think blocks": "<think>" * (MB // 7),
    "fences": "```" * (MB // 3),
    "fence then spaces": "```json" + " " * MB,
    "full-width": "｛“a”：" * (MB // 4),
    "objects": '{"other": 1}' * (MB // 12),
    "cjk text": "好" * MB,
    "mixed": ('{"a":[{"b":"{\\"c\\":' * 10 + "``` <think> “：") * (MB // 250),
}


# 1 MB, and the longest reply that parses as nothing and so also goes through json_repair (the salvage of a cut reply).
@pytest.mark.parametrize("size", [MB, SALVAGE_MAX_CHARS], ids=["1mb", "salvage size"])
@pytest.mark.parametrize("name", list(HOSTILE))
def test_parser_reads_anything_in_under_100ms(name: str, size: int) -> None:
    text = HOSTILE[name][:size]
    best = min(_parse_seconds(text) for _ in range(3))  # best of 3: other processes share the cores
    assert best < 0.1, (name, size, best)


def _parse_seconds(text: str) -> float:
    started = time.perf_counter()
    parse_reply(text, ["sentiment", "summary"])
    parse_reply(text, ["sentiment"])
    return (time.perf_counter() - started) / 2


def test_hostile_reply_costs_the_server_no_time(guarded: Backend, llm: fake.FakeLLMServer) -> None:
    llm.enqueue(fake.chat("{" * 20_000), fake.chat('{"x":' * 200_000), fake.chat('{"sentiment": "负面"}'))
    tasks = [{"id": i, "data": {"text": f"t{i}"}} for i in range(3)]
    status, body, seconds = call(guarded, "POST", "/predict", {"tasks": tasks, "project": PROJECT,
                                                               "label_config": CLASSIFY})
    assert status == 200 and len(body["results"]) == 3, body
    assert body["results"][2]["result"][0]["value"] == {"choices": ["负面"]}
    assert seconds < 5, seconds  # was 42 s of CPU for the first reply alone


# 6. Log injection -----------------------------------------------------------------------------


def test_control_characters_in_logged_values_are_escaped(guarded: Backend, llm: fake.FakeLLMServer) -> None:
    forged = "[2031-01-01 00:00:00,000] [ERROR] [forged]"
    llm.enqueue(fake.chat('{"sentiment": "正面"}'))
    task = {"id": f"7\n{forged} injected\r\x1b[31m", "data": {"text": f"x\n{forged} via text"}}
    status, _, _ = call(guarded, "POST", "/predict", {"tasks": [task], "project": PROJECT, "label_config": CLASSIFY})
    assert status == 200
    time.sleep(0.3)
    output = all_output(guarded)
    assert "\\n" + forged in output  # the value was logged, escaped
    assert not any(line.startswith(forged) for line in output.splitlines())
    assert "\x1b[31m" not in output


# 7. /health while predictions hang -----------------------------------------------------------


@pytest.fixture(scope="module")
def open_gunicorn(llm_server: fake.FakeLLMServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backend]:
    """No auth, bound to 127.0.0.1 only; 2 workers x 8 threads as in the probe."""
    env = {"MODELSCOPE_API_KEY": TEST_KEY, "MODELSCOPE_API_URL": llm_server.base_url, "LLM_TIMEOUT": "20",
           "LLM_MAX_RETRIES": "0", "LLM_CACHE": "off", "LLM_CONCURRENCY": "8"}
    b = Backend(env, tmp_path_factory.mktemp("open"), gunicorn=["--workers", "2", "--threads", "8"])
    yield b
    b.stop()


def test_health_answers_within_1s_while_16_predictions_hang(open_gunicorn: Backend, llm: fake.FakeLLMServer) -> None:
    llm.latency = 6.0  # the LLM hangs for 6 s on every call
    results: list[tuple[int, float]] = []

    def predict(i: int) -> None:
        status, _, seconds = call(open_gunicorn, "POST", "/predict", {
            "tasks": [{"id": i, "data": {"text": f"hang {i}"}}], "project": PROJECT, "label_config": CLASSIFY,
        }, headers=[])
        results.append((status, seconds))

    threads = [threading.Thread(target=predict, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    health_times = []
    for _ in range(5):
        status, body, seconds = call(open_gunicorn, "GET", "/health", headers=[], timeout=5)
        assert status == 200 and body["status"] == "UP"
        health_times.append(seconds)
        time.sleep(0.2)
    for t in threads:
        t.join(60)
    llm.latency = 0
    print(f"/health times during 16 hanging predictions: {[round(s, 3) for s in health_times]}; "
          f"predict answers: {sorted(results)}")
    assert max(health_times) < 1.0, health_times
    assert len(results) == 16 and {s for s, _ in results} <= {200, 503}
    # Each worker runs up to 7 (= 8 threads - 1); gunicorn may hand all 16 to one worker: the rest hear "retry".
    assert sum(s == 200 for s, _ in results) >= 7


# 8. Exposure ------------------------------------------------------------------------------------


def test_loud_warning_when_listening_beyond_loopback_without_auth(
    open_gunicorn: Backend, llm_server: fake.FakeLLMServer, tmp_path: Path
) -> None:
    assert "SECURITY WARNING" not in open_gunicorn.logs()  # 127.0.0.1 only: nothing to warn about
    env = {"MODELSCOPE_API_URL": llm_server.base_url}
    exposed = Backend(env, tmp_path / "exposed", gunicorn=["--bind", f"0.0.0.0:{free_port()}"])
    exposed.stop()
    assert "SECURITY WARNING: listening on 0.0.0.0 without authentication" in exposed.logs()
    with_auth = Backend({**env, "BASIC_AUTH_USER": "u", "BASIC_AUTH_PASS": "p" * 12}, tmp_path / "auth",
                        gunicorn=["--bind", f"0.0.0.0:{free_port()}"])
    with_auth.stop()
    assert "SECURITY WARNING" not in with_auth.logs()


def test_server_options_read_gunicorn_and_script_command_lines() -> None:
    assert server_options(["/v/bin/gunicorn", "-b", "0.0.0.0:9090", "--threads", "8", "app"], {}) == (["0.0.0.0"], 8)
    assert server_options(["/v/bin/gunicorn", "--bind=[::1]:9", "app"], {}) == (["[::1]"], 1)
    assert server_options(["/v/bin/gunicorn", "app"], {"PORT": "9090"}) == (["0.0.0.0"], 1)
    assert server_options(["/v/bin/gunicorn", "app"], {"GUNICORN_CMD_ARGS": "--threads 4"}) == (["127.0.0.1"], 4)
    assert server_options(["_wsgi.py", "--host", "127.0.0.1"], {}) == (["127.0.0.1"], None)
    assert server_options(["_wsgi.py"], {}) == (["0.0.0.0"], None)


def test_first_request_from_another_host_without_auth_is_warned(caplog: pytest.LogCaptureFixture) -> None:
    guard = RequestGuard(lambda environ, start: [b"{}"], max_bytes=100)
    environ = {"PATH_INFO": "/health", "REQUEST_METHOD": "GET", "REMOTE_ADDR": "10.1.2.3", "CONTENT_LENGTH": ""}
    for _ in range(2):
        guard(dict(environ), lambda status, headers: None)
    warnings = [r for r in caplog.records if "non-loopback" in r.getMessage()]
    assert len(warnings) == 1 and "10.1.2.3" in warnings[0].getMessage()


# 9. The web stack ----------------------------------------------------------------------------------


def test_installed_web_stack_is_past_the_known_advisories() -> None:
    rows = web_stack()
    for dist, installed, floor, _ in rows:
        print(f"{dist} {installed} (floor {floor.minimum}: {floor.advisories})")
    assert all(ok for *_, ok in rows), rows
    overrides = (ROOT / "overrides.txt").read_text()
    for dist, floor in FLOORS.items():  # what the install asks for is at least the floor
        match = re.search(rf"^{dist.lower()}>=([\d.]+)", overrides, re.M) or re.search(
            rf"^{dist.lower()}>=([\d.]+)", (ROOT / "requirements.txt").read_text().lower(), re.M)
        assert match and Version(match.group(1)) >= Version(floor.minimum), dist
    for path in ("scripts/setup_venv.sh", "Dockerfile"):
        assert "--override" in (ROOT / path).read_text() and "overrides.txt" in (ROOT / path).read_text(), path


# 10. Legacy /train and webhooks for unseen projects --------------------------------------------


def test_legacy_train_resyncs_the_project_by_its_id(guarded: Backend, stub: LabelStudioStub) -> None:
    stub.paths.clear()
    status, body, _ = call(guarded, "POST", "/train", {"project": PROJECT, "label_config": CLASSIFY,
                                                       "annotations": [{"id": 1}]})
    assert status == 201 and body["result"]["event"] == "START_TRAINING", body
    deadline = time.monotonic() + 10
    while not stub.paths and time.monotonic() < deadline:
        time.sleep(0.1)
    assert stub.paths and "project=1&" in stub.paths[0] + "&", stub.paths
    assert "invalid literal for int()" not in guarded.logs()


def test_webhook_for_an_unseen_project_is_stored_or_refused_with_a_reason(guarded: Backend) -> None:
    annotation = {"id": 77, "task": 9, "result": [{"from_name": "sentiment", "to_name": "text", "type": "choices",
                                                   "value": {"choices": ["正面"]}}]}
    event = {"action": "ANNOTATION_CREATED", "project": {"id": 424242}, "annotation": annotation,
             "task": {"id": 9, "data": {"text": "好"}}}
    status, body, _ = call(guarded, "POST", "/webhook", event)
    assert status == 422 and "424242" in body["detail"] and "label_config" in body["detail"], body
    event["project"]["label_config"] = CLASSIFY
    status, body, _ = call(guarded, "POST", "/webhook", event)
    assert status == 201 and "stored" in body["result"]["examples"], body
