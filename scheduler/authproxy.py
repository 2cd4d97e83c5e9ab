"""`medgan auth-proxy`: HTTP basic authentication in front of endpoints that have none.

Flower 2.2 serves `/metrics` and `/healthcheck` without authentication even with `--basic-auth`, and
medgan's own Prometheus endpoint has none. In production the compose stack publishes neither
directly: this proxy does, and asks for the login on every path. Prometheus inside the stack
scrapes the services over the private compose network.

Built on tornado (already installed as Flower's server). Plain HTTP request/response only: Flower's
pages and API work through it; its event websockets do not.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import logging

from tornado import httpclient, web
from tornado.httputil import HTTPHeaders

log = logging.getLogger("medgan.authproxy")
HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailers",
              "transfer-encoding", "upgrade", "content-length", "content-encoding"}


def credentials_ok(header: str | None, user: str, password: str) -> bool:
    """Constant-time check of an `Authorization: Basic …` header."""
    if not header or not header.startswith("Basic "):
        return False
    try:
        given = base64.b64decode(header[6:], validate=True).decode()
    except (ValueError, UnicodeDecodeError):
        return False
    name, _, secret = given.partition(":")
    return hmac.compare_digest(name.encode(), user.encode()) & hmac.compare_digest(secret.encode(), password.encode())


class ProxyHandler(web.RequestHandler):
    SUPPORTED_METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS")

    def initialize(self, upstream: str, user: str, password: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.user, self.password = user, password

    async def _forward(self) -> None:
        if not credentials_ok(self.request.headers.get("Authorization"), self.user, self.password):
            self.set_status(401)
            self.set_header("WWW-Authenticate", 'Basic realm="medgan"')
            self.finish("authentication required\n")
            return
        headers = HTTPHeaders({k: v for k, v in self.request.headers.get_all()
                               if k.lower() not in HOP_BY_HOP and k.lower() not in ("host", "authorization")})
        body = self.request.body if self.request.method in ("POST", "PUT", "PATCH") else None
        req = httpclient.HTTPRequest(self.upstream + self.request.uri, method=self.request.method, headers=headers,
                                     body=body, follow_redirects=False, request_timeout=60,
                                     allow_nonstandard_methods=True, decompress_response=True)
        try:
            resp = await httpclient.AsyncHTTPClient().fetch(req, raise_error=False)
        except OSError as exc:
            self.set_status(502)
            self.finish(f"upstream unavailable: {exc}\n")
            return
        self.set_status(resp.code, resp.reason)
        for key, value in resp.headers.get_all():
            if key.lower() not in HOP_BY_HOP:
                self.add_header(key, value)
        if resp.body and self.request.method != "HEAD":
            self.write(resp.body)
        self.finish()

    get = head = post = put = delete = patch = options = _forward  # type: ignore[assignment]


def make_app(upstream: str, user: str, password: str) -> web.Application:
    return web.Application([(r"/.*", ProxyHandler, {"upstream": upstream, "user": user, "password": password})])


def serve(routes: dict[int, str], user: str, password: str, address: str = "0.0.0.0") -> None:
    """Listen on every port of `routes` (port → upstream URL) until stopped."""
    if not user or not password:
        raise ValueError("the auth proxy needs a user and a non-empty password")

    async def main() -> None:
        for port, upstream in routes.items():
            make_app(upstream, user, password).listen(port, address)
            log.info("auth proxy: %s:%d → %s", address, port, upstream)
        print("auth proxy ready", flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())
