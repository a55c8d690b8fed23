"""A one-shot HTTP listener on 127.0.0.1 for the authorization-code redirect (RFC 8252 section 7.3).

The authorization server sends the browser back to `http://127.0.0.1:{random port}/` with
the code (or an error) in the query; the listener keeps the first answer and shows a page
saying the window may be closed. It logs nothing: the query holds the authorization code.
"""

from __future__ import annotations

import html
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from mailwright.errors import TargetTimeoutError


class Loopback:
    """A one-shot HTTP listener on 127.0.0.1 that catches the authorization response."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        done = threading.Event()
        received: dict[str, str] = {}

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass  # the query holds the authorization code

            def do_GET(self) -> None:
                query = {k: v[-1] for k, v in parse_qs(urlsplit(self.path).query).items()}
                if not ({"code", "error"} & query.keys()):
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if not done.is_set():
                    received.update(query)
                    done.set()
                ok = "code" in query
                text = (
                    "Mailwright: authorization received. You can close this window."
                    if ok
                    else f"Mailwright: authorization failed ({html.escape(query.get('error', ''))})."
                )
                body = f"<!doctype html><title>Mailwright</title><p>{text}</p>".encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self._server = HTTPServer((host, 0), Handler)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="oauth-loopback",
            daemon=True,
        )
        self.done = done
        self.received = received
        self.redirect_uri = f"http://{host}:{self._server.server_address[1]}/"

    def __enter__(self) -> Loopback:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    def wait(self, key_name: str, timeout: float) -> dict[str, str]:
        if not self.done.wait(timeout):
            raise TargetTimeoutError(
                f"account key {key_name!r}: no authorization came back within {timeout:.0f} s",
                hint=f"open the URL shown, sign in and consent; then run mailwright account-keys "
                f"authorize {key_name} again",
            )
        return dict(self.received)


__all__ = ["Loopback"]
