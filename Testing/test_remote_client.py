"""bridge.remote's client against a server that refuses an upload before reading it (as `serve` does for a wrong
token): the user gets the server's reason, not a broken pipe (seen once in a fresh-clone CI run)."""

from __future__ import annotations

import http.server
import json
import threading
from pathlib import Path

import pytest
from PancreasDiNTSLib.bridge.remote import RemoteError, ServerClient


class Refusing(http.server.BaseHTTPRequestHandler):
    """Answers 401 at once and closes, without reading a request body."""

    def _refuse(self) -> None:
        body = json.dumps({"error": "missing or wrong token"}).encode()
        self.send_response(401)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)
        self.close_connection = True

    do_GET = do_POST = _refuse

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def refusing_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Refusing)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_a_refused_upload_gives_the_servers_reason(refusing_server: str, tmp_path: Path) -> None:
    big = tmp_path / "ct.nii.gz"
    big.write_bytes(b"\0" * (32 << 20))  # far more than the socket buffers: the send fails once the server closes
    client = ServerClient(refusing_server, "wrong", timeout=10)
    for _ in range(3):
        with pytest.raises(RemoteError) as error:
            client.submit(big, "nifti", {})
        assert "HTTP 401" in str(error.value) and "check the token" in str(error.value)
