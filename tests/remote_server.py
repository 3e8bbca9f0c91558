"""A local HTTP file server for remote-input tests: answers Range requests (one range, as object stores do),
counts the bytes it sends, and can be made to drop connections (a server gone mid-run)."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

RANGE = re.compile(r"bytes=(\d+)-(\d*)$")


class FileServer(ThreadingHTTPServer):
    """Serves the files of ``root`` on 127.0.0.1 (a free port) in a daemon thread.

    Attributes:
        sent: Body bytes sent, per file name.
        fail_after: Once this many body bytes were sent in all, every request is cut off without an answer.
        down: Cut off every request (the server is gone).
        forbidden: Names of files answered with 403 Forbidden.
        queries: The query strings of the requests (a signed URL's token).
        posts: The JSON bodies POSTed (STAC API searches).
        search: Answers a POSTed search body with the features of a FeatureCollection (a STAC API's ``/search``).
    """

    daemon_threads = True

    def __init__(self, root: Path) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.root = Path(root)
        self.sent: dict[str, int] = {}
        self.fail_after: int | None = None
        self.down = False
        self.forbidden: set[str] = set()
        self.queries: set[str] = set()
        self.posts: list[dict] = []
        self.search: Callable[[dict], list[dict]] | None = None
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    @property
    def total(self) -> int:
        return sum(self.sent.values())

    def refuse(self) -> bool:
        return self.down or (self.fail_after is not None and self.total >= self.fail_after)

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


class Handler(BaseHTTPRequestHandler):
    server: FileServer

    def log_message(self, *args: object) -> None:  # quiet
        pass

    def _file(self) -> Path | None:
        """The file a request names (as a proxy too: ``GET http://host/a/b.tif``, served from ``root/a/b.tif``)."""
        target = self.path.split("://", 1)[1].partition("/")[2] if "://" in self.path else self.path
        name, _, query = target.partition("?")
        if query:
            self.server.queries.add(query)
        path = self.server.root / name.lstrip("/")
        return path if path.is_file() else None

    def do_HEAD(self) -> None:  # noqa: N802 - http.server's name
        self._answer(body=False)

    def do_GET(self) -> None:  # noqa: N802
        self._answer(body=True)

    def do_POST(self) -> None:  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
        self.server.posts.append(body)
        if self.server.search is None:
            self.send_error(405)
            return
        data = json.dumps({"type": "FeatureCollection", "features": self.server.search(body), "links": []}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/geo+json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _answer(self, body: bool) -> None:
        if self.server.refuse():
            self.close_connection = True
            self.connection.close()
            return
        path = self._file()
        if path is None or path.name in self.server.forbidden:
            self.send_error(404 if path is None else 403)
            return
        data = path.read_bytes()
        start, stop, status = 0, len(data), 200
        match = RANGE.match(self.headers.get("Range", ""))
        if match:
            start = int(match.group(1))
            stop = min(len(data), int(match.group(2)) + 1 if match.group(2) else len(data))
            status = 206
        chunk = data[start:stop]
        self.send_response(status)
        self.send_header("Content-Length", str(len(chunk)))
        self.send_header("Accept-Ranges", "bytes")
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{stop - 1}/{len(data)}")
        ctype = "application/json" if path.suffix == ".json" else "image/tiff"
        self.send_header("Content-Type", ctype)
        self.end_headers()
        if body:
            self.wfile.write(chunk)
            with self.server.lock:
                self.server.sent[path.name] = self.server.sent.get(path.name, 0) + len(chunk)
