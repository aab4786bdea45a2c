"""A volume-driver plugin for the tests (run inside the plugin with the host's python3).

It serves Docker's volume plugin protocol on its socket and answers every Mount and Path
with the path in the environment variable ANSWER: what a malicious plugin could say.
"""

import http.server
import json
import os
import socketserver

SOCKET = "/run/docker/plugins/review.sock"
ANSWER = os.environ.get("ANSWER", "/data")
VOLUMES: dict[str, dict[str, str]] = {}


class Handler(http.server.BaseHTTPRequestHandler):
    def address_string(self) -> str:
        return "plugin"

    def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
        size = int(self.headers.get("Content-Length") or 0)
        req = json.loads(self.rfile.read(size) or b"{}")
        name = req.get("Name", "")
        path = self.path
        if path == "/Plugin.Activate":
            out = {"Implements": ["VolumeDriver"]}
        elif path == "/VolumeDriver.Create":
            VOLUMES[name] = {"Name": name}
            out = {"Err": ""}
        elif path in ("/VolumeDriver.Mount", "/VolumeDriver.Path"):
            out = {"Mountpoint": ANSWER, "Err": ""}
        elif path == "/VolumeDriver.Get":
            out = {"Volume": {"Name": name, "Mountpoint": ANSWER}, "Err": ""}
        elif path == "/VolumeDriver.List":
            out = {"Volumes": [{"Name": n} for n in VOLUMES], "Err": ""}
        elif path == "/VolumeDriver.Capabilities":
            out = {"Capabilities": {"Scope": "local"}}
        else:  # Remove, Unmount
            VOLUMES.pop(name, None) if path.endswith("Remove") else None
            out = {"Err": ""}
        body = json.dumps(out).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/vnd.docker.plugins.v1+json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class Server(socketserver.UnixStreamServer):
    def get_request(self):  # type: ignore[no-untyped-def]
        conn, _ = self.socket.accept()
        return conn, ("plugin", 0)


os.makedirs(os.path.dirname(SOCKET), exist_ok=True)
if os.path.exists(SOCKET):
    os.unlink(SOCKET)
Server(SOCKET, Handler).serve_forever()
