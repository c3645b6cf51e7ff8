"""A local stand-in for the Hugging Face hub's file endpoints, on 127.0.0.1 only.

Serves `/{repo}/resolve/{revision}/{path}` for HEAD and GET with the headers huggingface_hub reads
(X-Repo-Commit, ETag, Content-Length) and byte ranges; can cut a transfer once, serve damaged bytes, or
redirect a file to another server as the hub redirects LFS files to its CDN. ETags are the hub's: the
sha256 of an LFS file's content (binary weights), the git blob sha1 of any other file.
"""

from __future__ import annotations

import hashlib
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote

from engine.weights.downloads import file_states, planned_files

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class FakeHub:
    def __init__(self, repos: dict[str, dict[str, bytes]]):
        self.repos = repos
        self.cut_once: dict[str, int] = {}  # path -> bytes to send before dropping the connection
        self.corrupt: dict[str, int] = {}  # path -> how many more full transfers to damage
        self.slow: dict[str, float] = {}  # path -> seconds to wait per 16 KiB sent
        self.log: list[tuple[str, str, str | None]] = []
        self.authorization: list[tuple[str, str | None]] = []  # (path, Authorization header) per request
        self.redirect: dict[str, str] = {}  # path -> endpoint of the server it is redirected to
        self.served: dict[str, int] = {}
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def locate(self) -> tuple[str, bytes] | None:
                parts = unquote(self.path.split("?")[0]).lstrip("/").split("/")
                if len(parts) < 5 or parts[2] != "resolve":
                    return None
                repo, path = "/".join(parts[:2]), "/".join(parts[4:])
                content = hub.repos.get(repo, {}).get(path)
                return None if content is None else (path, content)

            def headers_for(self, content: bytes, length: int) -> None:
                self.send_header("X-Repo-Commit", COMMIT)
                self.send_header("ETag", f'"{etag(self.path, content)}"')
                self.send_header("Content-Length", str(length))
                self.send_header("Accept-Ranges", "bytes")

            def redirected(self, found: tuple[str, bytes] | None) -> bool:
                hub.authorization.append((self.path, self.headers.get("Authorization")))
                if found is None or found[0] not in hub.redirect:
                    return False
                self.send_response(302)
                self.send_header("Location", hub.redirect[found[0]] + self.path)
                self.send_header("X-Repo-Commit", COMMIT)
                self.send_header("X-Linked-Etag", f'"{etag(self.path, found[1])}"')
                self.send_header("X-Linked-Size", str(len(found[1])))
                self.send_header("Content-Length", "0")
                self.end_headers()
                return True

            def do_HEAD(self) -> None:
                found = self.locate()
                hub.log.append(("HEAD", self.path, None))
                if self.redirected(found):
                    return
                if found is None:
                    self.send_response(404)
                    self.send_header("X-Error-Code", "EntryNotFound")
                    self.end_headers()
                    return
                self.send_response(200)
                self.headers_for(found[1], len(found[1]))
                self.end_headers()

            def do_GET(self) -> None:
                found = self.locate()
                requested = self.headers.get("Range")
                hub.log.append(("GET", self.path, requested))
                if self.redirected(found):
                    return
                if found is None:
                    self.send_response(404)
                    self.end_headers()
                    return
                path, content = found
                start = int(requested.split("=")[1].split("-")[0]) if requested else 0
                if start == 0 and hub.corrupt.get(path, 0) > 0:
                    hub.corrupt[path] -= 1
                    content = bytes([content[0] ^ 0xFF]) + content[1:]
                body = content[start:]
                self.send_response(206 if start else 200)
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(content) - 1}/{len(content)}")
                self.headers_for(content, len(body))
                self.end_headers()
                cut = hub.cut_once.pop(path, None)
                if cut is not None and cut < len(body):
                    self.wfile.write(body[:cut])
                    hub.served[path] = hub.served.get(path, 0) + cut
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                pause = hub.slow.get(path)
                pieces = [body[i : i + 16384] for i in range(0, len(body), 16384)] if pause else [body]
                try:
                    for piece in pieces:
                        self.wfile.write(piece)
                        self.wfile.flush()
                        hub.served[path] = hub.served.get(path, 0) + len(piece)
                        if pause:
                            time.sleep(pause)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client went away (a cancelled download)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeHub:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


def etag(path: str, content: bytes) -> str:
    if path.endswith((".safetensors", ".pt", ".bin", ".model")):  # stored with git LFS on the hub
        return hashlib.sha256(content).hexdigest()
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


def states(root: Path, checksums: dict[str, str]) -> dict[str, str]:
    """Each planned file of the whole release under `root` -> its state (missing, present, verified, ...)."""
    return {s.local: s.state for s in file_states(root, planned_files(root, "all", checksums))}
