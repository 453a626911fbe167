"""A loopback stand-in for the Hugging Face hub's HTTP API, as much of it as huggingface_hub's ``create_repo``,
``create_branch``, ``upload_folder`` and ``hf_hub_download`` use: repositories with branches of files, a token
that must be sent for every write, files committed inline (the preupload answer makes every file "regular"),
and the file endpoint with the headers ``hf_hub_download`` reads. Nothing leaves 127.0.0.1.
"""
from __future__ import annotations

import base64
import hashlib
import http.server
import json
import re
import threading

import yaml

TOKEN = "hf_stub_token_for_tests"


class HubStub:
    def __init__(self, token: str = TOKEN):
        self.token = token
        self.repos: dict[str, dict] = {}  # repo_id -> {"private": bool, "branches": {name: {path: bytes}}}
        self.commits: list[dict] = []
        self.log: list[tuple[str, str]] = []
        stub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_HEAD(self):
                stub._resolve(self, body=False)

            def do_GET(self):
                stub._resolve(self, body=True)

            def do_POST(self):
                stub._post(self)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()

    def files(self, repo_id: str, branch: str = "main") -> dict[str, bytes]:
        return self.repos[repo_id]["branches"][branch]

    # -- answers -------------------------------------------------------------------------------------------
    @staticmethod
    def _send(h, status: int, payload=None, headers: dict | None = None, body: bytes | None = None, head=False):
        data = body if body is not None else json.dumps(payload if payload is not None else {}).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/octet-stream" if body is not None else "application/json")
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        if not head:
            h.wfile.write(data)

    def _authorised(self, h) -> bool:
        if h.headers.get("authorization") == f"Bearer {self.token}":
            return True
        self._send(h, 401, {"error": "Invalid credentials in Authorization header"})
        return False

    def _post(self, h):
        path = h.path.split("?")[0]
        data = h.rfile.read(int(h.headers.get("Content-Length") or 0))
        self.log.append(("POST", path))
        if path == "/api/validate-yaml":
            try:
                yaml.safe_load(json.loads(data)["content"].split("---")[1])
            except Exception as e:  # the hub's answer to bad metadata
                return self._send(h, 400, {"errors": [{"message": str(e)}]})
            return self._send(h, 200, {"errors": [], "warnings": []})
        if not self._authorised(h):
            return None
        if path == "/api/repos/create":
            body = json.loads(data)
            repo_id = f"{body['organization']}/{body['name']}" if body.get("organization") else body["name"]
            if repo_id in self.repos:
                return self._send(h, 409, {"error": "You already created this model repo", "url": repo_id})
            private = bool(body.get("private")) or body.get("visibility") == "private"  # older and newer clients
            self.repos[repo_id] = {"private": private, "branches": {"main": {}}}
            return self._send(h, 200, {"url": f"{self.url}/{repo_id}", "name": repo_id})
        m = re.fullmatch(r"/api/models/(.+?/.+?)/(branch|preupload|commit)/(.+)", path)
        if not m or m.group(1) not in self.repos:
            return self._send(h, 404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
        repo, action, rev = m.group(1), m.group(2), m.group(3)
        branches = self.repos[repo]["branches"]
        if action == "branch":
            if rev in branches:
                return self._send(h, 409, {"error": f"Reference {rev} already exists"})
            branches[rev] = dict(branches["main"])
            return self._send(h, 200, {})
        if rev not in branches:
            return self._send(h, 404, {"error": f"Invalid rev id: {rev}"}, {"X-Error-Code": "RevisionNotFound"})
        if action == "preupload":
            files = json.loads(data)["files"]
            return self._send(h, 200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False,
                                                  "oid": None} for f in files]})
        header, added = {}, {}
        for line in data.decode().splitlines():
            item = json.loads(line)
            if item["key"] == "header":
                header = item["value"]
            elif item["key"] == "file":
                added[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
            else:
                return self._send(h, 400, {"error": f"the stand-in commits inline files only, not {item['key']}"})
        branches[rev].update(added)
        oid = hashlib.sha1(json.dumps(sorted(branches[rev])).encode() + str(len(self.commits)).encode()).hexdigest()
        self.commits.append({"repo": repo, "revision": rev, "summary": header.get("summary"), "files": sorted(added)})
        return self._send(h, 200, {"commitUrl": f"{self.url}/{repo}/commit/{oid}", "commitOid": oid,
                                   "pullRequestUrl": None})

    def _resolve(self, h, body: bool):
        path = h.path.split("?")[0]
        self.log.append((h.command, path))
        m = re.fullmatch(r"/(.+?/.+?)/resolve/([^/]+)/(.+)", path)
        if not m or m.group(1) not in self.repos:
            return self._send(h, 404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"},
                              head=not body)
        repo, rev, name = m.group(1), m.group(2), m.group(3)
        if self.repos[repo]["private"] and h.headers.get("authorization") != f"Bearer {self.token}":
            return self._send(h, 401, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"},
                              head=not body)
        files = self.repos[repo]["branches"].get(rev)
        if files is None or name not in files:
            return self._send(h, 404, {"error": "Entry not found"}, {"X-Error-Code": "EntryNotFound"},
                              head=not body)
        data = files[name]
        commit = hashlib.sha1(repo.encode() + rev.encode()).hexdigest()
        return self._send(h, 200, headers={"X-Repo-Commit": commit, "ETag": f'"{hashlib.sha256(data).hexdigest()}"'},
                          body=data, head=not body)
