"""The remote client against a scripted loopback fault server: the right error or success, the right
number of attempts, within the deadline, and never the token in an error or a log line."""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
import time
import tracemalloc
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from conftest import TOKEN
from inference import (
    AuthenticationError,
    BadResponse,
    Engine,
    InferenceTimeout,
    ModelLoadError,
    RateLimited,
    RemoteUnavailable,
    Settings,
    load_model,
)
from inference.wire import Spec

OK = (200, {"Content-Type": "application/json"}, b'{"generated_text": "hello there"}')
OK_LIST = (200, {"Content-Type": "application/json"}, b'[{"generated_text": "hello there"}]')


class FaultServer(ThreadingHTTPServer):
    """Answers each POST with the next scripted behaviour (the last one repeats)."""

    daemon_threads = True

    def __init__(self, script, *, get=None, handler=None):
        super().__init__(("127.0.0.1", 0), handler or _Handler)
        self.script, self.hits, self.stop = list(script), 0, threading.Event()
        self.get = get  # the behaviour of every GET (/models, /health); None: 404
        self.dropped = threading.Event()  # a dripping answer found the client gone

    def next(self):
        self.hits += 1
        return self.script.pop(0) if len(self.script) > 1 else self.script[0]


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):  # keep test output quiet
        pass

    def _drip(self, byte: bytes) -> None:
        while not self.server.stop.wait(0.2):
            try:
                self.wfile.write(byte)
                self.wfile.flush()
            except OSError:  # the client hung up
                self.server.dropped.set()
                return

    def do_GET(self):
        self._answer(self.server.get or (404, {"Content-Type": "application/json"}, b'{"error": {"code": "not_found"}}'))

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self._answer(self.server.next())

    def _answer(self, behaviour):
        if behaviour == "drip":  # headers at once, then one byte of the body every 0.2 s, forever
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", "1000000")
            self.end_headers()
            return self._drip(b" ")
        if behaviour == "drip-headers":  # the status line, then one byte of a header every 0.2 s, forever
            self.wfile.write(b"HTTP/1.1 200 OK\r\nX-Slow: ")
            return self._drip(b"a")
        if behaviour == "slow-stream":  # a stream of one event every 0.2 s, forever
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.end_headers()
            return self._drip(b'data: {"token": "a"}\n\n')
        if behaviour == "hang":  # never answer
            self.server.stop.wait(30)
            return
        if behaviour == "stall-stream":  # one event of a stream, then silence
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.end_headers()
            self.wfile.write(b'data: {"token": "hello"}\n\n')
            self.wfile.flush()
            self.server.stop.wait(30)
            return
        if behaviour == "gzip-bomb":  # 256 MiB of zeros in a quarter of a megabyte
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Encoding", "gzip")
            self.send_header("Content-Length", str(len(_gzip_bomb())))
            self.end_headers()
            self.wfile.write(_gzip_bomb())
            return
        if behaviour == "endless-stream":  # events as fast as the client takes them, forever
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.end_headers()
            event = b'data: {"token": "' + b"a" * 10_000 + b'"}\n\n'
            try:
                while not self.server.stop.is_set():
                    self.wfile.write(event)
            except OSError:
                self.server.dropped.set()
            return
        status, headers, body = behaviour
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@contextlib.contextmanager
def fault_server(script, **options):
    server = FaultServer(script, **options)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.stop.set()
        server.shutdown()
        server.server_close()


@functools.cache
def _gzip_bomb() -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)  # 31: the gzip container
    chunk = bytes(2**20)
    return b"".join([*(compressor.compress(chunk) for _ in range(256)), compressor.flush()])


def _big_json(size: int) -> tuple:
    return (200, {"Content-Type": "application/json"}, b'{"generated_text": "' + b"a" * size + b'"}')


def _status(code, body=b'{"error": {"code": "x", "message": "scripted"}}', **headers):
    return (code, {"Content-Type": "application/json", **headers}, body)


CASES = [
    # (script, deadline s, expected error or None, attempts, min seconds, message fragment)
    ("refused", 5, RemoteUnavailable, 3, 0, "cannot reach"),  # nothing listens
    ([_status(401)], 5, AuthenticationError, 1, 0, "REMOTE_INFERENCE_TOKEN"),  # wrong token
    ([_status(403)], 5, AuthenticationError, 1, 0, "refused the token"),  # forbidden
    ([_status(404)], 5, ModelLoadError, 1, 0, "does not serve"),  # unknown model
    ([_status(429, **{"Retry-After": "1"}), OK], 10, None, 2, 1.0, None),  # Retry-After honoured
    ([_status(503), _status(503), OK], 10, None, 3, 0, None),  # busy twice, then fine
    ([_status(503)], 10, RemoteUnavailable, 3, 0, "failed (503)"),  # busy every time
    ([_status(502, b"<html>Bad Gateway</html>")], 10, RemoteUnavailable, 3, 0, "Bad Gateway"),  # proxy error page
    ([_status(500)], 5, RemoteUnavailable, 1, 0, "failed (500)"),  # a server bug is not retried
    ([_status(429, **{"Retry-After": "60"})], 5, RateLimited, 1, 0, "retry after 60"),  # wait beyond the deadline
    ([_status(422)], 5, Exception, 1, 0, "refused the request (422)"),  # never retried
    (["drip"], 2, InferenceTimeout, 1, 2.0, "within 2 s"),  # slow drip past the deadline
    (["hang"], 2, InferenceTimeout, 1, 2.0, "within 2 s"),  # accepts, never answers
    (["drip-headers"], 2, InferenceTimeout, 1, 2.0, "within 2 s"),  # headers that never end
    ([(200, {"Content-Type": "text/html"}, b"<html>login page</html>")], 5, BadResponse, 1, 0, "login page"),
    ([(200, {"Content-Type": "application/json"}, b'{"text": "wrong key"}')], 5, BadResponse, 1, 0, "wrong shape"),
    ([OK_LIST], 5, None, 1, 0, None),  # the list shape is accepted too
]


@pytest.mark.parametrize(("script", "deadline", "error", "attempts", "at_least", "fragment"), CASES,
                         ids=[f"case{index}" for index in range(len(CASES))])
def test_fault_table(script, deadline, error, attempts, at_least, fragment, unused_port, caplog):
    caplog.set_level(logging.DEBUG)
    with contextlib.ExitStack() as stack:
        if script == "refused":
            url, server = f"http://127.0.0.1:{unused_port}/inference", None
        else:
            server = stack.enter_context(fault_server(script))
            url = f"http://127.0.0.1:{server.server_address[1]}/inference"
        settings = Settings(remote_enabled=True, remote_endpoints=(url,), remote_token=TOKEN, remote_timeout=deadline)
        engine = stack.enter_context(Engine(settings))
        model = load_model("any-model", task="text-generation", backend="remote", engine=engine)
        started = time.monotonic()
        if error is None:
            result = model("hello")
            elapsed = time.monotonic() - started
            assert result.text == "hello there" and result.attempts == attempts
        else:
            with pytest.raises(error) as caught:
                model("hello")
            elapsed = time.monotonic() - started
            assert fragment in str(caught.value)
            assert TOKEN not in str(caught.value) and TOKEN not in repr(caught.value)
            if server is not None and error is not InferenceTimeout:
                assert server.hits == attempts
        assert at_least <= elapsed <= deadline + 1.0
    assert TOKEN not in caplog.text


@pytest.mark.parametrize("behaviour", ["drip", "drip-headers"])
def test_a_timed_out_call_lets_go_of_the_connection(behaviour):
    # The call ends at the deadline, and nothing keeps reading the drip after it.
    with fault_server([behaviour]) as server:
        settings = Settings(remote_enabled=True, remote_token=TOKEN, remote_timeout=1,
                            remote_endpoints=(f"http://127.0.0.1:{server.server_address[1]}/inference",))
        with Engine(settings) as engine:
            with pytest.raises(InferenceTimeout):
                load_model("m", task="text-generation", backend="remote", engine=engine)("hi")
            assert server.dropped.wait(1.5)  # the server's next writes find the connection closed


def test_a_stalled_stream_ends_at_the_deadline():
    with fault_server(["stall-stream"]) as server:
        settings = Settings(remote_enabled=True, remote_token=TOKEN, remote_timeout=2,
                            remote_endpoints=(f"http://127.0.0.1:{server.server_address[1]}/inference",))
        with Engine(settings) as engine:
            stream = load_model("m", task="text-generation", backend="remote", engine=engine).stream("hi")
            started = time.monotonic()
            pieces = []
            with pytest.raises(InferenceTimeout, match="did not finish within 2 s"):
                for piece in stream:
                    pieces.append(piece)
            assert pieces == ["hello"]
            assert time.monotonic() - started <= 2.0 + 1.0


def test_closing_a_stream_hangs_up_at_once():
    with fault_server(["slow-stream"]) as server:
        settings = Settings(remote_enabled=True, remote_token=TOKEN,
                            remote_endpoints=(f"http://127.0.0.1:{server.server_address[1]}/inference",))
        with Engine(settings) as engine:
            with load_model("m", task="text-generation", backend="remote", engine=engine).stream("hi") as stream:
                assert next(stream) == "a"
            assert server.dropped.wait(1.5)  # the server's next event finds the connection closed


def test_status_calls_are_not_bound_by_a_finished_call(server_url):
    # The deadline belongs to a call: afterwards the same pooled client serves /health and /models normally.
    settings = Settings(remote_enabled=True, remote_endpoints=(f"{server_url}/inference",), remote_token=TOKEN,
                        remote_timeout=0.5)
    with Engine(settings) as engine:
        client = engine.remote_client()
        with pytest.raises(ModelLoadError):
            client.infer(Spec(model_id="no-such-model", task="text-generation"))
        time.sleep(0.6)  # past that call's deadline
        assert client.health()["status"] == "ok"


def test_retries_are_logged_without_the_token(caplog):
    caplog.set_level(logging.DEBUG)
    with fault_server([_status(503), OK]) as server, Engine() as engine:
        settings = Settings(remote_enabled=True, remote_token=TOKEN,
                            remote_endpoints=(f"http://127.0.0.1:{server.server_address[1]}/inference",))
        assert load_model("m", task="text-generation", backend="remote", engine=engine, settings=settings)("hi").attempts == 2
    assert "retrying 127.0.0.1" in caplog.text and "503" in caplog.text
    assert TOKEN not in caplog.text


def _mock_engine(handler) -> Engine:
    settings = Settings(remote_enabled=True, remote_endpoints=("http://gpu-box:8000/inference",), remote_token=TOKEN,
                        remote_timeout=5)
    return Engine(settings, http_client=httpx.Client(transport=httpx.MockTransport(handler)))


def test_connection_dropped_mid_response_is_not_retried():
    calls = []

    def handler(request):
        calls.append(request)
        assert request.headers["authorization"] == f"Bearer {TOKEN}"
        raise httpx.RemoteProtocolError("peer closed connection without sending complete message body")

    with _mock_engine(handler) as engine:
        with pytest.raises(RemoteUnavailable, match="RemoteProtocolError") as caught:
            load_model("m", task="text-generation", backend="remote", engine=engine)("hi")
    assert len(calls) == 1  # the request may have run: it is not sent twice
    assert TOKEN not in str(caught.value)


def test_read_timeout_maps_to_inference_timeout():
    def handler(request):
        raise httpx.ReadTimeout("timed out")

    with _mock_engine(handler) as engine:
        with pytest.raises(InferenceTimeout) as caught:
            load_model("m", task="text-generation", backend="remote", engine=engine)("hi")
    assert isinstance(caught.value, TimeoutError)


def test_request_is_multipart_with_typed_parts(photo):
    seen = {}

    def handler(request):
        if request.method == "GET":  # the class-name lookup (GET /models); this endpoint has none
            return httpx.Response(404, json={"error": {"code": "not_found", "message": "no such route"}})
        seen["content_type"] = request.headers["content-type"]
        seen["body"] = request.read()
        seen["accept"] = request.headers["accept"]
        return httpx.Response(200, json=[{"label": "cat", "score": 0.9, "box": {"xmin": 1, "ymin": 2, "xmax": 3, "ymax": 4}}])

    with _mock_engine(handler) as engine:
        result = load_model("m", task="object-detection", backend="remote", engine=engine)(photo, threshold=0.4)
    body = seen["body"]
    assert seen["content_type"].startswith("multipart/form-data; boundary=")
    assert b'name="spec"' in body and b"Content-Type: application/json" in body
    assert b'"threshold":0.4' in body and b'"model_id":"m"' in body
    assert b'name="image"; filename="image.png"' in body and b"Content-Type: image/png" in body
    assert seen["accept"] == "application/json"
    assert result.class_names == ["cat"] and result.detections.xyxy.tolist() == [[1, 2, 3, 4]]
    assert TOKEN.encode() not in body


def test_encoded_input_is_sent_as_is(photo):
    buffer = __import__("io").BytesIO()
    photo.save(buffer, format="JPEG", quality=80)
    jpeg = buffer.getvalue()
    seen = {}

    def handler(request):
        if request.method == "GET":
            return httpx.Response(404)
        seen["body"] = request.read()
        return httpx.Response(200, json={"generated_text": "a photo"})

    with _mock_engine(handler) as engine:
        load_model("m", task="image-to-text", backend="remote", engine=engine)(jpeg)
    assert jpeg in seen["body"] and b"Content-Type: image/jpeg" in seen["body"]  # not decoded and re-encoded


def test_model_list_is_fetched_once_for_many_handles(photo):
    gets = []

    def handler(request):
        if request.method == "GET":
            gets.append(request.url.path)
            return httpx.Response(200, json={"models": [{"id": "m", "task": "object-detection", "classes": ["cat"]}]})
        return httpx.Response(200, json=[{"label": "cat", "score": 0.9, "box": {"xmin": 1, "ymin": 2, "xmax": 3, "ymax": 4}}])

    with _mock_engine(handler) as engine:
        for _ in range(3):  # a new handle per call, as the app makes on every rerun
            assert load_model("m", task="object-detection", backend="remote", engine=engine)(photo).class_names == ["cat"]
    assert gets == ["/models"]


def test_a_model_list_from_a_starting_server_is_not_kept(photo):
    # Right after start the server lists its models before it has read their configs: no task, no classes.
    # Class ids (and so the colours of the boxes) must follow the model's classes once they are known.
    listings = [
        {"models": [{"id": "m", "task": None, "classes": [], "status": "not loaded"}]},
        {"models": [{"id": "m", "task": "object-detection", "classes": ["dog", "cat"], "status": "loaded"}]},
    ]
    gets = []

    def handler(request):
        if request.method == "GET":
            gets.append(request.url.path)
            return httpx.Response(200, json=listings[min(len(gets), len(listings)) - 1])
        return httpx.Response(200, json=[{"label": "cat", "score": 0.9, "box": {"xmin": 1, "ymin": 2, "xmax": 3, "ymax": 4}}])

    with _mock_engine(handler) as engine:
        class_ids = [load_model("m", task="object-detection", backend="remote", engine=engine)(photo).detections.class_id
                     .tolist() for _ in range(3)]
    assert class_ids == [[1], [1], [1]]  # the model's own id for "cat", not its place among the labels seen
    assert gets == ["/models", "/models"]  # the starting list is asked again; the settled one is kept


def test_reprs_never_show_the_token():
    with _mock_engine(lambda request: httpx.Response(200, json={"generated_text": "x"})) as engine:
        model = load_model("m", task="text-generation", backend="remote", engine=engine)
        for thing in (engine, engine.settings, engine.remote_client(), model, model("hi")):
            assert TOKEN not in repr(thing)
        assert "token=set" in repr(engine.remote_client())


# --------------------------------------------------------------------------- what a server can make the client do


def _settings(server, **options) -> Settings:
    return Settings(remote_enabled=True, remote_token=TOKEN,
                    remote_endpoints=(f"http://127.0.0.1:{server.server_address[1]}/inference",), **options)


def test_a_gzip_bomb_is_refused_without_inflating_it():
    with fault_server(["gzip-bomb"]) as server, Engine(_settings(server)) as engine:
        model = load_model("m", task="text-generation", backend="remote", engine=engine)
        tracemalloc.start()
        try:
            with pytest.raises(BadResponse, match="more than 32 MB"):
                model("hi")
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert peak < 150 * 2**20  # the bound plus one decoded chunk, not the 256 MiB inside


def test_a_huge_answer_is_refused_at_the_bound():
    with fault_server([_big_json(8 * 2**20)]) as server, \
            Engine(_settings(server, max_response_bytes=2**20)) as engine:
        with pytest.raises(BadResponse, match="more than 1 MB in its body.*REMOTE_INFERENCE_MAX_RESPONSE_BYTES"):
            load_model("m", task="text-generation", backend="remote", engine=engine)("hi")


def test_an_endless_event_stream_is_cut_at_the_bound():
    with fault_server(["endless-stream"]) as server, \
            Engine(_settings(server, max_response_bytes=2**20)) as engine:
        stream = load_model("m", task="text-generation", backend="remote", engine=engine).stream("hi")
        with pytest.raises(BadResponse, match="in its event stream"):
            for _ in stream:
                pass
        assert server.dropped.wait(2)  # and the connection is closed


def test_a_huge_model_list_is_refused_at_the_bound():
    with fault_server([OK], get=_big_json(8 * 2**20)) as server, \
            Engine(_settings(server, max_response_bytes=2**20)) as engine:
        with pytest.raises(BadResponse, match="more than 1 MB"):
            engine.remote_client().models()


def test_a_dripping_model_list_counts_against_the_calls_deadline(photo):
    detections = (200, {"Content-Type": "application/json"},
                  b'[{"label": "cat", "score": 0.9, "box": {"xmin": 1, "ymin": 2, "xmax": 3, "ymax": 4}}]')
    with fault_server([detections], get="drip") as server, Engine(_settings(server, remote_timeout=2)) as engine:
        model = load_model("m", task="object-detection", backend="remote", engine=engine)
        started = time.monotonic()
        with contextlib.suppress(InferenceTimeout):  # in time with the boxes, or at the deadline: never after
            model(photo)
        assert time.monotonic() - started <= 2 + 1.0


def test_a_redirect_is_reported_as_a_redirect():
    redirect = (302, {"Location": "http://other-host:9000/inference?token=x"}, b"")
    with fault_server([redirect]) as server, Engine(_settings(server)) as engine:
        with pytest.raises(BadResponse, match="redirected the request to other-host:9000 \\(302\\)") as caught:
            load_model("m", task="text-generation", backend="remote", engine=engine)("hi")
    assert "not followed, on purpose" in str(caught.value) and "token=x" not in str(caught.value)


class _KeepAliveHandler(_Handler):
    """HTTP/1.1 with keep-alive; the second request on a connection finds it closed without an answer."""

    protocol_version = "HTTP/1.1"

    def setup(self):
        super().setup()
        self.requests = 0

    def do_POST(self):
        self.requests += 1
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.requests > 1:  # the server had closed this idle connection as the request went out
            self.server.hits += 1
            self.close_connection = True
            return
        self._answer(self.server.next())


def test_a_reset_on_a_reused_connection_is_sent_again():
    with fault_server([OK], handler=_KeepAliveHandler) as server, Engine(_settings(server)) as engine:
        model = load_model("m", task="text-generation", backend="remote", engine=engine)
        assert model("hi").attempts == 1
        result = model("hi again")  # goes out on the kept-alive connection, which the server drops
        assert result.text == "hello there" and result.attempts == 2
