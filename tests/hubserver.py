"""A local stand-in for the Hugging Face Hub: the requests huggingface_hub makes to check a token,
create a model repository and commit files to it (regular uploads, no LFS), served from a thread.

Point the client at it with HF_ENDPOINT. Files committed land in `HubServer.repos[repo][path]`.
"""

from __future__ import annotations

import base64
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class HubServer:
    token: str = "hf_good"
    user: str = "tester"
    fail_commits: bool = False
    repos: dict[str, dict[str, bytes]] = field(default_factory=dict)
    private: dict[str, bool] = field(default_factory=dict)
    requests: list[str] = field(default_factory=list)
    url: str = ""

    def __enter__(self) -> HubServer:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _reply(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)

            def _authorised(self) -> bool:
                if self.headers.get("Authorization") == f"Bearer {hub.token}":
                    return True
                self._reply(401, {"error": "Invalid credentials in Authorization header"},
                            {"X-Error-Message": "Invalid credentials in Authorization header"})
                return False

            def _body(self) -> bytes:
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def do_GET(self) -> None:  # noqa: N802
                hub.requests.append(f"GET {self.path}")
                if self.path.startswith("/api/whoami"):
                    if self._authorised():
                        self._reply(200, {"name": hub.user, "type": "user",
                                          "auth": {"accessToken": {"role": "write"}}})
                    return
                self._reply(404, {"error": "not found"}, {"X-Error-Code": "EntryNotFound"})

            def do_POST(self) -> None:  # noqa: N802
                hub.requests.append(f"POST {self.path}")
                body = self._body()
                if not self._authorised():
                    return
                if self.path == "/api/repos/create":
                    request = json.loads(body)
                    repo = f"{request.get('organization') or hub.user}/{request['name']}"
                    if not repo.startswith(f"{hub.user}/"):
                        self._reply(403, {"error": "You don't have the rights to create a model under this namespace"},
                                    {"X-Error-Message": "You don't have the rights to create a model under this namespace"})
                        return
                    if repo in hub.repos:
                        self._reply(409, {"error": "You already created this model repo", "url": f"{hub.url}/{repo}"})
                        return
                    hub.repos[repo] = {}
                    hub.private[repo] = bool(request.get("private")) or request.get("visibility") == "private"
                    self._reply(200, {"url": f"{hub.url}/{repo}", "name": repo})
                elif self.path == "/api/validate-yaml":
                    self._reply(200, {"errors": [], "warnings": []})
                elif "/preupload/" in self.path:
                    files = json.loads(body)["files"]
                    self._reply(200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                                                for f in files]})
                elif "/commit/" in self.path:
                    repo = self.path.split("/api/models/", 1)[1].rsplit("/commit/", 1)[0]
                    if hub.fail_commits:
                        self._reply(500, {"error": "Internal Error"})
                        return
                    for line in body.decode().splitlines():
                        entry = json.loads(line)
                        if entry["key"] == "file":
                            value = entry["value"]
                            hub.repos.setdefault(repo, {})[value["path"]] = base64.b64decode(value["content"])
                    self._reply(200, {"success": True, "commitOid": "0" * 40,
                                      "commitUrl": f"{hub.url}/{repo}/commit/{'0' * 40}"})
                else:
                    self._reply(404, {"error": "not found"})

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._server.shutdown()
        self._server.server_close()
