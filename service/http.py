"""The daemon's HTTP endpoints (loopback by default).

``GET /livez``, ``GET /readyz[?verbose]``, ``GET /metrics``, ``GET /sources``,
``POST /sync/NAME`` (bearer token; disabled when no token is configured) and the push
webhook receivers ``POST /hooks/{github,gitlab,bitbucket,generic}`` (each off until its
secret is configured; see :mod:`service.webhooks`).
"""

from __future__ import annotations

import contextlib
import hmac
import os
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import anyio
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from runner_storage.exceptions import CredentialsError
from runner_storage.publish.managed import ManagedStorage
from runner_storage.secrets import strip_url_credentials
from service.config import secrets_dir
from service.webhooks import PROVIDERS, Refused, read_delivery, receiver_secret

if TYPE_CHECKING:
    from service.daemon import Daemon

__all__ = ["build_app", "open_endpoints"]

_DAEMON: web.AppKey[Daemon] = web.AppKey("daemon")


def build_app(daemon: Daemon) -> web.Application:
    """The aiohttp application serving the daemon's endpoints."""
    app = web.Application(middlewares=[_security_headers])
    app[_DAEMON] = daemon
    app.router.add_get("/livez", _livez, allow_head=True)
    app.router.add_get("/readyz", _readyz, allow_head=True)
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/sources", _sources)
    app.router.add_post("/sync/{name:.+}", _sync)
    app.router.add_post("/hooks/{provider}", _hook)
    return app


@contextlib.asynccontextmanager
async def open_endpoints(daemon: Daemon) -> AsyncIterator[int]:
    """Serve the endpoints while the context lasts; it gives the bound port.

    Raises:
        StartupError: the address cannot be listened on (taken, not on this machine, a
            privileged port); the line names it and what to do.
    """
    from service.daemon import StartupError  # noqa: PLC0415 - the daemon imports this module

    settings = daemon.settings
    runner = web.AppRunner(build_app(daemon), access_log=None, handle_signals=False)
    await runner.setup()
    try:
        site = web.TCPSite(runner, settings.http_host, settings.http_port or 0)
        try:
            await site.start()
        except OSError as exc:
            address = _address(settings.http_host, settings.http_port or 0)
            reason = os.strerror(exc.errno) if exc.errno else str(exc)
            raise StartupError(
                f"cannot listen on {address}: {reason}; stop what uses it, or set http_port"
                f" (RUNNER_STORAGE_HTTP_PORT) to a free port"
            ) from None
        port = _bound_port(runner)
        daemon.log.info("http_listening", host=settings.http_host, port=port)
        yield port
    finally:
        with anyio.CancelScope(shield=True):
            await runner.cleanup()


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _bound_port(runner: web.AppRunner) -> int:
    for address in runner.addresses:
        if isinstance(address, tuple):
            return int(address[1])
    raise RuntimeError("the HTTP server is not bound to a TCP port")


@web.middleware
async def _security_headers(request: web.Request, handler: Any) -> web.StreamResponse:
    response: web.StreamResponse = await handler(request)
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


async def _livez(request: web.Request) -> web.Response:
    if request.app[_DAEMON].live():
        return web.Response(text="ok\n")
    return web.Response(status=503, text="event loop stalled\n")


async def _readyz(request: web.Request) -> web.Response:
    ready, checks = request.app[_DAEMON].readiness()
    status = 200 if ready else 503
    if "verbose" not in request.query:
        return web.Response(status=status, text="ok\n" if ready else "not ready\n")
    lines = [f"[{'+' if ok else '-'}]{name} {why}" for name, (ok, why) in sorted(checks.items())]
    lines.append("readyz check passed" if ready else "readyz check failed")
    return web.Response(status=status, text="\n".join(lines) + "\n")


async def _metrics(request: web.Request) -> web.Response:
    body = request.app[_DAEMON].metrics.render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def _sources(request: web.Request) -> web.Response:
    daemon = request.app[_DAEMON]
    now = time.time()
    payload = []
    for name, runtime in sorted(daemon.runtimes.items()):
        ready, why = runtime.readiness(now)
        storage = runtime.storage
        source = strip_url_credentials(runtime.settings.source)
        if isinstance(storage, ManagedStorage):
            source = storage.redact(source)
        payload.append(
            {
                "name": name,
                "source": source,
                "destination": str(storage.destination),
                "revision": runtime.revision,
                "ready": ready,
                "reason": why,
                "pulling": runtime.pulling,
                "last_success_age_seconds": (
                    None if runtime.last_success is None else round(now - runtime.last_success, 3)
                ),
                "next_pull_in_seconds": (
                    None if runtime.next_pull_at is None else round(runtime.next_pull_at - now, 3)
                ),
                "consecutive_failures": runtime.consecutive_failures,
                "last_error": runtime.last_error,
            }
        )
    return web.json_response({"sources": payload})


async def _sync(request: web.Request) -> web.Response:
    daemon = request.app[_DAEMON]
    token = daemon.settings.sync_token
    if token is None:
        return web.json_response(
            {"error": "the sync endpoint is disabled: set sync_token to enable it"}, status=403
        )
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    expected = token.get_secret_value().encode()
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), expected):
        return web.json_response(
            {"error": "a valid bearer token is required"},
            status=401,
            headers={"WWW-Authenticate": 'Bearer realm="runner-storage"'},
        )
    name = request.match_info["name"]
    if not daemon.request_sync(name):
        return web.json_response({"error": f"no source named {name!r}"}, status=404)
    return web.json_response({"source": name, "queued": True}, status=202)


async def _hook(request: web.Request) -> web.Response:
    """One push webhook delivery: verified, read, and the sources it changes woken."""
    daemon = request.app[_DAEMON]
    provider = request.match_info["provider"]
    settings = daemon.settings.webhooks
    secret = receiver_secret(settings, provider, secrets_dir(os.environ))
    if secret is None:
        return _refuse(daemon, provider, Refused(404, "off", f"no receiver at /hooks/{provider}"))
    limit = settings.max_body_bytes
    if (request.content_length or 0) > limit:
        return _refuse(daemon, provider, _too_large(limit))
    body = await request.content.read(limit + 1)
    if len(body) > limit:
        return _refuse(daemon, provider, _too_large(limit))
    try:
        delivery = read_delivery(provider, secret.get(), request.headers, body)
    except Refused as refused:
        return _refuse(daemon, provider, refused)
    except CredentialsError as exc:
        daemon.log.error("webhook_secret_unreadable", provider=provider, error=str(exc))
        return _refuse(daemon, provider, Refused(503, "secret_unreadable", str(exc)))
    if delivery.push is None:
        daemon.metrics.webhook_deliveries.labels(provider, "ping").inc()
        return web.json_response({"pong": True})
    names = daemon.sources_for(delivery.push)
    daemon.request_push(names, settings.debounce)
    daemon.metrics.webhook_deliveries.labels(provider, "accepted").inc()
    daemon.log.info("webhook_push", provider=provider, kind=delivery.event, sources=names)
    return web.json_response({"sources": names}, status=202)


def _too_large(limit: int) -> Refused:
    return Refused(413, "oversized", f"deliveries larger than {limit} bytes are refused")


def _refuse(daemon: Daemon, provider: str, refused: Refused) -> web.Response:
    label = provider if provider in PROVIDERS else "unknown"
    daemon.metrics.webhook_deliveries.labels(label, refused.reason).inc()
    if refused.status != 404:
        daemon.log.warning(
            "webhook_refused", provider=label, reason=refused.reason, status=refused.status
        )
    return web.json_response({"error": refused.message}, status=refused.status)
