"""Docker's API as multinic reads it (plugin.ops.engine.DockerAPI), against a local HTTP server on a unix
socket that answers as dockerd does: filters as lists of strings, errors as {"message"}, events as a
chunked stream of JSON lines that stays open."""

from __future__ import annotations

import http.server
import json
import socketserver
import threading
import time
from urllib.parse import parse_qs, urlsplit

import pytest

from plugin.ops import engine


class _Dockerd(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    seen: list[str] = []

    def log_message(self, *args: object) -> None:
        pass

    def _json(self, code: int, body: object) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        url = urlsplit(self.path)
        self.seen.append(self.path)
        if url.path == "/containers/json":
            filters = json.loads(parse_qs(url.query)["filters"][0])
            if not all(isinstance(v, list) for v in filters.values()):
                return self._json(400, {"message": "invalid filter"})
            return self._json(200, [{"Id": "c1", "filters": filters}])
        if url.path == "/version":
            return self._json(200, {"Version": "28.5.2", "ApiVersion": "1.51"})
        if url.path == "/events":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for n in (1, 2):
                line = json.dumps({"Type": "container", "Action": "start", "id": f"c{n}"}).encode() + b"\n"
                self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
                self.wfile.flush()
            time.sleep(30)  # open until the client goes
            return None
        return self._json(404, {"message": f"No such network: {url.path.rsplit('/', 1)[-1]}"})


@pytest.fixture()
def dockerd(tmp_path):
    path = str(tmp_path / "docker.sock")

    class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
        daemon_threads = True

        def get_request(self):  # BaseHTTPRequestHandler wants a (host, port) client address
            conn, _ = super().get_request()
            return conn, ("local", 0)

    server = Server(path, _Dockerd)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield engine.DockerAPI(f"unix://{path}", timeout=5)
    server.shutdown()
    server.server_close()


def test_filters_are_lists_of_strings_and_answers_are_json(dockerd):
    assert dockerd.containers(filters={"status": "running"}) == [{"Id": "c1", "filters": {"status": ["running"]}}]
    assert engine.EngineInfo.of(dockerd.version()).supported


def test_errors_say_what_dockerd_said(dockerd):
    with pytest.raises(engine.NotFound, match="No such network: n9") as caught:
        dockerd.inspect_network("n9")
    assert caught.value.status == 404
    with pytest.raises(engine.DockerError) as away:
        engine.DockerAPI("unix:///nonexistent/docker.sock").networks()
    assert away.value.status == 0  # not reachable: the watcher's session ends, it retries


def test_event_stream_is_read_as_it_comes_and_closed_from_another_thread(dockerd):
    stream = dockerd.events(decode=True, filters={"type": ["container"]})
    got = []

    def read():
        for event in stream:
            got.append(event["id"])

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    deadline = time.monotonic() + 5
    while len(got) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    stream.close()
    reader.join(5)
    assert got == ["c1", "c2"] and not reader.is_alive()


def test_an_answer_ends_at_its_length_when_the_server_keeps_the_connection(tmp_path):
    """dockerd closes after answering an HTTP/1.0 request; a server that keeps the connection open is
    read to its Content-Length, not to the timeout."""
    import socket

    path = str(tmp_path / "keep.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(1)
    body = json.dumps({"Id": "c1", "pad": "x" * 100_000}).encode()  # more than one read

    def answer() -> None:
        conn, _ = server.accept()
        conn.recv(4096)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                     % (len(body), body))
        time.sleep(10)  # and keeps it open
        conn.close()

    threading.Thread(target=answer, daemon=True).start()
    started = time.monotonic()
    assert engine.DockerAPI(f"unix://{path}", timeout=5).inspect_container("c1")["Id"] == "c1"
    assert time.monotonic() - started < 2
    server.close()


def test_only_unix_and_tcp():
    with pytest.raises(engine.DockerError, match="unix:///PATH or tcp://HOST:PORT only"):
        engine.DockerAPI("ssh://user@host")


@pytest.mark.parametrize("version, announces", [("20.10.24+dfsg1", False), ("27.5.1", False), ("28.5.2+dfsg4", True),
                                                ("29.1.0", True), ("garbage", False)])
def test_engine_28_announces_container_addresses_itself(version, announces):
    assert engine.EngineInfo(version, "1.41").announces_addresses is announces

