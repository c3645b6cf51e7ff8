"""A local stand-in for ModelScope's HTTP file API, on 127.0.0.1 only.

Speaks the two shapes the downloader uses (as ModelScope's own client library calls them):
`GET /api/v1/models/{owner}/{name}/repo/files?Revision=master&Recursive=true`, a JSON envelope
`{"Code": 200, "Data": {"Files": [{"Name", "Path", "Type", "Size", "Sha256", ...}]}, "Success": true}`
with folders as `"Type": "tree"` entries; and
`GET /api/v1/models/{owner}/{name}/repo?Revision=master&FilePath=...`, the file's bytes, with byte
ranges. Can cut a transfer once, damage bytes in transit, or list a file under another Sha256 than its
bytes have.
"""

from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlparse

COMMIT = "fedcba9876543210fedcba9876543210fedcba98"


class FakeModelScope:
    def __init__(self, repos: dict[str, dict[str, bytes]]):
        self.repos = repos  # ModelScope id -> {path: content}
        self.cut_once: dict[str, int] = {}  # path -> bytes to send before dropping the connection
        self.corrupt: dict[str, int] = {}  # path -> how many more full transfers to damage
        self.listed_sha256: dict[str, str] = {}  # path -> the Sha256 the list names instead of the true one
        self.log: list[tuple[str, str, str | None]] = []  # (what, path or repo, Range)
        self.headers: list[dict[str, str]] = []
        self.served: dict[str, int] = {}
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def reply(self, code: int, body: bytes, headers: dict[str, str] | None = None) -> None:
                self.send_response(code)
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                fake.headers.append(dict(self.headers.items()))
                url = urlparse(self.path)
                query = {key: values[0] for key, values in parse_qs(url.query).items()}
                path = unquote(url.path)
                if not path.startswith("/api/v1/models/") or query.get("Revision") != "master":
                    self.reply(404, json.dumps({"Code": 404, "Message": "not found"}).encode())
                    return
                rest = path.removeprefix("/api/v1/models/")
                if rest.endswith("/repo/files"):
                    self.listing(rest.removesuffix("/repo/files"), query)
                elif rest.endswith("/repo") and "FilePath" in query:
                    self.file(rest.removesuffix("/repo"), query["FilePath"])
                else:
                    self.reply(404, b"{}")

            def listing(self, repo: str, query: dict[str, str]) -> None:
                fake.log.append(("list", repo, None))
                files = fake.repos.get(repo)
                if files is None or query.get("Recursive") != "true":
                    self.reply(404, json.dumps({"Code": 404, "Message": f"{repo} not found"}).encode())
                    return
                entries = []
                for folder in sorted({p.rsplit("/", 1)[0] for p in files if "/" in p}):
                    entries.append(
                        {"Name": folder.rsplit("/", 1)[-1], "Path": folder, "Type": "tree", "Size": 0}
                    )
                for name, content in sorted(files.items()):
                    entries.append(
                        {
                            "Name": name.rsplit("/", 1)[-1],
                            "Path": name,
                            "Type": "blob",
                            "Size": len(content),
                            "Sha256": fake.listed_sha256.get(name, hashlib.sha256(content).hexdigest()),
                            "Revision": COMMIT,
                            "IsLFS": name.endswith((".safetensors", ".pt")),
                        }
                    )
                envelope = {"Code": 200, "Data": {"Files": entries}, "Message": "success", "Success": True}
                self.reply(200, json.dumps(envelope).encode(), {"Content-Type": "application/json"})

            def file(self, repo: str, name: str) -> None:
                requested = self.headers.get("Range")
                fake.log.append(("GET", name, requested))
                content = fake.repos.get(repo, {}).get(name)
                if content is None:
                    self.reply(404, json.dumps({"Code": 404, "Message": "file not found"}).encode())
                    return
                start = int(requested.split("=")[1].split("-")[0]) if requested else 0
                if start == 0 and fake.corrupt.get(name, 0) > 0:
                    fake.corrupt[name] -= 1
                    content = bytes([content[0] ^ 0xFF]) + content[1:]
                body = content[start:]
                self.send_response(206 if start else 200)
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(content) - 1}/{len(content)}")
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Accept-Ranges", "bytes")
                self.end_headers()
                cut = fake.cut_once.pop(name, None)
                if cut is not None and cut < len(body):
                    body = body[:cut]
                    self.close_connection = True
                self.wfile.write(body)
                self.wfile.flush()
                fake.served[name] = fake.served.get(name, 0) + len(body)
                if cut is not None:
                    self.connection.shutdown(2)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeModelScope:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
