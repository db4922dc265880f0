"""A local HTTP server and small archives for the download tests (no network access)."""

from __future__ import annotations

import hashlib
import io
import threading
import time
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from PIL import Image

from shiftbench.datasets import download as D

PACS_DOMAINS = ("art_painting", "cartoon", "photo", "sketch")
PACS_CLASSES = ("dog", "elephant", "giraffe", "guitar", "horse", "house", "person")


def jpeg(value: int, size=(24, 20)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (value % 256, (3 * value) % 256, 40)).save(buf, "JPEG")
    return buf.getvalue()


def pacs_zip(per_class: int = 2) -> bytes:
    """PACS.zip as DomainBed's link serves it: kfold/<domain>/<class>/<image>."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for d in PACS_DOMAINS:
            for ci, c in enumerate(PACS_CLASSES):
                for k in range(per_class):
                    zf.writestr(f"kfold/{d}/{c}/pic_{k:03d}.jpg", jpeg(40 * ci + k))
    return buf.getvalue()


class Server:
    """A bounded local HTTP server: `files` maps a path to bytes; honours `Range`; can cut the
    first response of a path short, answer with an HTML page, or a status code."""

    def __init__(self, files: dict[str, bytes]):
        self.files, self.requests = dict(files), []
        self.truncate_once: set[str] = set()
        self.html: set[str] = set()
        self.delay = 0.0  # seconds each response waits before its body (overlapping clients)
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                outer.requests.append((self.path, self.headers.get("Range")))
                if self.path in outer.html:
                    body = b"<html>please accept the terms</html>"
                    self.send_response(200)
                    self.send_header("Content-Type", "text/html; charset=utf-8")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                data = outer.files.get(self.path)
                if data is None:
                    self.send_error(404)
                    return
                start = 0
                rng = self.headers.get("Range")
                if rng:
                    start = int(rng.split("=")[1].split("-")[0])
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                body = data[start:]
                if outer.delay:
                    time.sleep(outer.delay)
                if self.path in outer.truncate_once and not rng:
                    outer.truncate_once.discard(self.path)
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)
        # Never outlive the test, even if it hangs: the server stops itself after 120 s.
        self.stopper = threading.Timer(120.0, self.httpd.shutdown)

    def __enter__(self) -> Server:
        self.thread.start()
        self.stopper.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopper.cancel()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=10)


def toy_source(url: str, data: bytes, **kw) -> D.Source:
    remote = D.Remote(url, "toy.zip", "zip", sha256=hashlib.sha256(data).hexdigest(), **kw)
    return D.Source("Toy", "toy", (remote,), D.move_folders("art_painting", "cartoon"))
