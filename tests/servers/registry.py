"""A container registry: Debian's ``docker-registry`` (distribution 2.8), and images for it.

The registry runs from a config file (``storage: filesystem`` in a temporary folder,
``http: addr: 127.0.0.1:PORT``) as a subprocess in its own process group, one per session
per login mode: anonymous (:func:`registry`), Docker's token authentication with a small
token service of ours that signs JWTs the registry verifies (:func:`token_registry`), and
htpasswd Basic authentication (:func:`basic_registry`, bcrypt through the ``crypt``
module or ``bcrypt``; skipped where neither exists). Tests stay apart by using fresh
repository names (:func:`new_repository`).

Images are made without any container engine: :class:`Layer` builds a tar layer (files
with modes, directories, links, whiteouts, devices, hostile names), and
:meth:`RegistryServer.push_image` pushes the blobs, the config and an OCI or Docker v2
manifest over the registry API itself; :meth:`RegistryServer.push_index` adds an image
index over several platforms.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import gzip
import hashlib
import http.client
import io
import itertools
import json
import secrets
import tarfile
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from servers.procs import (
    LOOPBACK,
    AccessLog,
    LoggedRequest,
    ManagedProcess,
    ThreadedHTTPServerHandle,
    http_status,
    start_process,
)

REGISTRY_BINARY = Path("/usr/bin/docker-registry")
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
SERVICE = "runner-storage-test-registry"
ISSUER = "runner-storage-test-tokens"
_repositories = itertools.count(1)


def new_repository(prefix: str = "flows") -> str:
    """A repository name no other test uses (``team/<prefix>-N-xxxx``)."""
    return f"team/{prefix}-{next(_repositories)}-{secrets.token_hex(3)}"


def sha256(data: bytes) -> str:
    """``sha256:<hex>`` of ``data``."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


# --- layers --------------------------------------------------------------------------------


@dataclass
class Layer:
    """A layer under construction: tar entries in order, gzip-compressed unless told not.

    Names are written exactly as given (``../x`` and ``/abs`` included), so hostile layers
    can be made too.
    """

    compress: bool = True
    _entries: list[tuple[tarfile.TarInfo, bytes | None]] = field(default_factory=list)

    def _add(self, info: tarfile.TarInfo, data: bytes | None = None) -> Layer:
        info.mtime = info.mtime or 1_700_000_000
        self._entries.append((info, data))
        return self

    def file(self, name: str, data: bytes | str, mode: int = 0o644, mtime: int = 0) -> Layer:
        """A regular file."""
        body = data.encode() if isinstance(data, str) else data
        info = tarfile.TarInfo(name)
        info.size, info.mode, info.mtime = len(body), mode, mtime
        return self._add(info, body)

    def dir(self, name: str, mode: int = 0o755) -> Layer:
        """A directory."""
        info = tarfile.TarInfo(name)
        info.type, info.mode = tarfile.DIRTYPE, mode
        return self._add(info)

    def symlink(self, name: str, target: str) -> Layer:
        """A symbolic link."""
        info = tarfile.TarInfo(name)
        info.type, info.linkname, info.mode = tarfile.SYMTYPE, target, 0o777
        return self._add(info)

    def hardlink(self, name: str, target: str) -> Layer:
        """A hard link to an earlier entry (``target`` is its archive name)."""
        info = tarfile.TarInfo(name)
        info.type, info.linkname, info.mode = tarfile.LNKTYPE, target, 0o644
        return self._add(info)

    def whiteout(self, path: str) -> Layer:
        """Delete ``path`` of lower layers (``dir/.wh.NAME``)."""
        folder, _, base = path.rpartition("/")
        return self.file(f"{folder}/.wh.{base}" if folder else f".wh.{base}", b"", 0o600)

    def opaque(self, folder: str) -> Layer:
        """Hide everything lower layers put in ``folder`` (``folder/.wh..wh..opq``)."""
        return self.file(f"{folder.rstrip('/')}/.wh..wh..opq", b"", 0o600)

    def fifo(self, name: str) -> Layer:
        """A named pipe."""
        info = tarfile.TarInfo(name)
        info.type, info.mode = tarfile.FIFOTYPE, 0o644
        return self._add(info)

    def device(self, name: str) -> Layer:
        """A character device (1:3, /dev/null's numbers)."""
        info = tarfile.TarInfo(name)
        info.type, info.mode, info.devmajor, info.devminor = tarfile.CHRTYPE, 0o666, 1, 3
        return self._add(info)

    def tar(self) -> bytes:
        """The uncompressed tar."""
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
            for info, data in self._entries:
                archive.addfile(info, io.BytesIO(data) if data is not None else None)
        return buffer.getvalue()

    def blob(self) -> bytes:
        """The layer as pushed: gzip of the tar (fixed mtime, so equal layers are equal)."""
        raw = self.tar()
        return gzip.compress(raw, mtime=0) if self.compress else raw


# --- pushed images -------------------------------------------------------------------------


@dataclass(frozen=True)
class PushedImage:
    """An image pushed by :meth:`RegistryServer.push_image`."""

    repository: str
    tag: str | None
    digest: str
    manifest: bytes
    media_type: str
    layers: tuple[str, ...]
    config: str

    def reference(self, registry: RegistryServer, *, pinned: bool = False) -> str:
        """``host:port/repo:tag``, or ``host:port/repo@digest`` when ``pinned``."""
        if pinned or self.tag is None:
            return f"{registry.host}/{self.repository}@{self.digest}"
        return f"{registry.host}/{self.repository}:{self.tag}"


class RegistryServer:
    """A running ``docker-registry``.

    Attributes: ``host`` (``127.0.0.1:PORT``), ``url`` (``http://host``), ``root`` (its
    storage folder), ``process``; ``push_headers`` gives the ``Authorization`` a push to a
    repository needs (none for the anonymous registry). Request counting reads its access
    log (see :meth:`requests`).
    """

    def __init__(
        self,
        process: ManagedProcess,
        root: Path,
        push_headers: Callable[[str], dict[str, str]] = lambda _repo: {},
    ) -> None:
        self.process = process
        self.port = process.port
        self.host = f"{LOOPBACK}:{self.port}"
        self.url = f"http://{self.host}"
        self.root = root
        self.push_headers = push_headers
        self._log = AccessLog(process)

    def stop(self) -> None:
        """Stop the registry; assert nothing of it is left and the port is closed."""
        self.process.stop()

    # --- raw HTTP ---------------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        """One request to the registry: ``(status, headers, body)``."""
        connection = http.client.HTTPConnection(LOOPBACK, self.port, timeout=30)
        try:
            connection.request(method, path, body=body, headers=headers or {})
            answer = connection.getresponse()
            data = answer.read()
            return answer.status, dict(answer.getheaders()), data
        finally:
            connection.close()

    def _checked(
        self, method: str, path: str, expected: int, body: bytes | None, headers: dict[str, str]
    ) -> dict[str, str]:
        status, answer, data = self.request(method, path, body, headers)
        if status != expected:
            raise AssertionError(f"{method} {path}: {status} {data[:300]!r}")
        return answer

    # --- pushing ----------------------------------------------------------------------------

    def push_blob(self, repository: str, data: bytes) -> str:
        """Upload a blob (POST, then PUT with its digest); return the digest."""
        digest = sha256(data)
        auth = self.push_headers(repository)
        answer = self._checked("POST", f"/v2/{repository}/blobs/uploads/", 202, b"", auth)
        location = urlsplit(answer["Location"])
        query = f"{location.query}&" if location.query else ""
        self._checked(
            "PUT",
            f"{location.path}?{query}digest={digest}",
            201,
            data,
            {**auth, "Content-Type": "application/octet-stream"},
        )
        return digest

    def push_manifest(self, repository: str, reference: str, body: bytes, media_type: str) -> str:
        """Put a manifest under a tag or its digest; return its digest."""
        auth = self.push_headers(repository)
        self._checked(
            "PUT",
            f"/v2/{repository}/manifests/{reference}",
            201,
            body,
            {**auth, "Content-Type": media_type},
        )
        return sha256(body)

    def push_image(
        self,
        repository: str,
        tag: str | None,
        layers: list[Layer],
        *,
        docker_format: bool = False,
        architecture: str = "amd64",
    ) -> PushedImage:
        """Push layers, a config and a manifest (OCI, or Docker v2); tag it unless None."""
        blobs = [layer.blob() for layer in layers]
        digests = [self.push_blob(repository, blob) for blob in blobs]
        config = json.dumps(
            {
                "architecture": architecture,
                "os": "linux",
                "config": {},
                "rootfs": {"type": "layers", "diff_ids": [sha256(x.tar()) for x in layers]},
            }
        ).encode()
        config_digest = self.push_blob(repository, config)
        if docker_format:
            media_type, config_type = (
                DOCKER_MANIFEST,
                "application/vnd.docker.container.image.v1+json",
            )
            layer_type = "application/vnd.docker.image.rootfs.diff.tar.gzip"
        else:
            media_type, config_type = OCI_MANIFEST, "application/vnd.oci.image.config.v1+json"
            layer_type = "application/vnd.oci.image.layer.v1.tar+gzip"
        manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": media_type,
                "config": {"mediaType": config_type, "digest": config_digest, "size": len(config)},
                "layers": [
                    {
                        "mediaType": layer_type
                        if layer.compress
                        else "application/vnd.oci.image.layer.v1.tar",
                        "digest": digest,
                        "size": len(blob),
                    }
                    for layer, blob, digest in zip(layers, blobs, digests, strict=True)
                ],
            },
            indent=2,
        ).encode()
        digest = sha256(manifest)
        self.push_manifest(repository, tag or digest, manifest, media_type)
        return PushedImage(
            repository, tag, digest, manifest, media_type, tuple(digests), config_digest
        )

    def push_index(
        self,
        repository: str,
        tag: str,
        images: dict[str, PushedImage],
        *,
        docker_format: bool = False,
    ) -> PushedImage:
        """Push an index (manifest list) of ``{"arch": image}``, all linux.

        An attestation-like ``unknown/unknown`` entry, pointing at the first image, comes
        first: it must never be chosen.
        """
        entries = [
            {
                "mediaType": image.media_type,
                "digest": image.digest,
                "size": len(image.manifest),
                "platform": {"architecture": architecture, "os": "linux"},
            }
            for architecture, image in images.items()
        ]
        first = next(iter(images.values()))
        entries.insert(
            0,
            {
                "mediaType": first.media_type,
                "digest": first.digest,
                "size": len(first.manifest),
                "platform": {"architecture": "unknown", "os": "unknown"},
            },
        )
        media_type = DOCKER_LIST if docker_format else OCI_INDEX
        body = json.dumps(
            {"schemaVersion": 2, "mediaType": media_type, "manifests": entries}
        ).encode()
        digest = self.push_manifest(repository, tag, body, media_type)
        return PushedImage(repository, tag, digest, body, media_type, (), "")

    def blob_file(self, digest: str) -> Path:
        """Where the registry keeps a blob's bytes (to damage it on purpose)."""
        hexdigest = digest.removeprefix("sha256:")
        return self.root / "docker/registry/v2/blobs/sha256" / hexdigest[:2] / hexdigest / "data"

    # --- request counting -------------------------------------------------------------------

    def reset_requests(self) -> None:
        """Start counting requests from now (pushes count too)."""
        self._log.reset()

    def requests(self) -> list[LoggedRequest]:
        """Requests the registry answered since :meth:`reset_requests`."""
        return self._log.requests()


def _write_config(workdir: Path, port: int, root: Path, auth: dict[str, Any] | None) -> Path:
    lines = [
        "version: 0.1",
        "log:",
        "  level: info",
        "  formatter: text",
        "  accesslog:",
        "    disabled: false",
        "storage:",
        "  filesystem:",
        f"    rootdirectory: {json.dumps(str(root))}",
        "  delete:",
        "    enabled: true",
        "  maintenance:",
        "    uploadpurging:",
        "      enabled: false",
        "http:",
        f"  addr: {LOOPBACK}:{port}",
        f"  secret: {secrets.token_hex(16)}",
    ]
    if auth is not None:
        lines.append("auth:")
        for scheme, settings in auth.items():
            lines.append(f"  {scheme}:")
            lines.extend(f"    {key}: {json.dumps(value)}" for key, value in settings.items())
    path = workdir / f"config-{port}.yml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def start_registry(
    workdir: Path,
    *,
    auth: dict[str, Any] | None = None,
    push_headers: Callable[[str], dict[str, str]] = lambda _repo: {},
) -> RegistryServer:
    """Start ``docker-registry serve`` on a free loopback port (storage under ``workdir``).

    Ready when ``GET /v2/`` answers 200 (anonymous) or 401 (with ``auth``).
    """
    if not REGISTRY_BINARY.exists():
        pytest.fail(f"{REGISTRY_BINARY} is missing: run `make system-deps` (docker-registry)")
    root = workdir / "storage"
    root.mkdir(exist_ok=True)
    expected = 200 if auth is None else 401
    process = start_process(
        "docker-registry",
        lambda port: [REGISTRY_BINARY, "serve", _write_config(workdir, port, root, auth)],
        ready=lambda port: http_status("/v2/", port) == expected,
        log_dir=workdir,
        cwd=workdir,
    )
    return RegistryServer(process, root, push_headers)


# --- the token service ---------------------------------------------------------------------


@dataclass(frozen=True)
class TokenRequest:
    """One request the token service answered: query, Authorization header, status."""

    query: dict[str, list[str]]
    authorization: str | None
    status: int


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


class TokenService(ThreadedHTTPServerHandle):
    """Docker's token authentication: ``GET /token?service=&scope=`` with a Basic login.

    Answers a JWT (RS256, its certificate in ``x5c``) the registry verifies against
    ``certificate`` (``rootcertbundle``), granting the scopes asked for to the one user it
    knows (``username``/``password``); a wrong or missing login is 401. Every request is
    recorded in ``requests``.
    """

    def __init__(self, workdir: Path, username: str, password: str) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import rsa
        from cryptography.x509.oid import NameOID

        self.username, self.password = username, password
        self.requests: list[TokenRequest] = []
        self.lock = threading.Lock()
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ISSUER)])
        now = datetime.datetime.now(datetime.timezone.utc)
        certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self._key, hashes.SHA256())
        )
        self.certificate = workdir / "token-cert.pem"
        self.certificate.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        self._x5c = base64.b64encode(certificate.public_bytes(serialization.Encoding.DER))
        server = ThreadingHTTPServer((LOOPBACK, 0), partial(_TokenHandler, owner=self))
        server.daemon_threads = True
        super().__init__("token-service", server)
        self.realm = f"http://{LOOPBACK}:{self.port}/token"

    def mint(self, subject: str, access: list[dict[str, Any]], lifetime: int = 300) -> str:
        """A signed token granting ``access`` (``[{"type", "name", "actions"}]``)."""
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        now = int(time.time())
        header = {"typ": "JWT", "alg": "RS256", "x5c": [self._x5c.decode("ascii")]}
        claims = {
            "iss": ISSUER,
            "sub": subject,
            "aud": SERVICE,
            "exp": now + lifetime,
            "nbf": now - 5,
            "iat": now,
            "jti": uuid.uuid4().hex,
            "access": access,
        }
        signing_input = ".".join(
            _b64url(json.dumps(part, separators=(",", ":")).encode()) for part in (header, claims)
        )
        signature = self._key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{signing_input}.{_b64url(signature)}"

    def push_headers(self, repository: str) -> dict[str, str]:
        """``Authorization`` for pushing to ``repository`` (a token minted directly)."""
        access = [{"type": "repository", "name": repository, "actions": ["pull", "push"]}]
        return {"Authorization": f"Bearer {self.mint(self.username, access)}"}

    def reset_requests(self) -> None:
        """Forget the requests recorded so far."""
        with self.lock:
            self.requests.clear()


class _TokenHandler(BaseHTTPRequestHandler):
    def __init__(self, *args: Any, owner: TokenService) -> None:
        self.owner = owner
        super().__init__(*args)

    def log_message(self, format: str, *args: Any) -> None:
        """Keep the test output clean: requests are recorded instead."""

    def _answer(self, status: int, body: bytes) -> None:
        self.send_response(status)
        if status == HTTPStatus.UNAUTHORIZED:
            self.send_header("WWW-Authenticate", 'Basic realm="tokens"')
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        """Answer a token for a good login, else 401."""
        owner = self.owner
        parts = urlsplit(self.path)
        query = parse_qs(parts.query)
        authorization = self.headers.get("Authorization")
        expected = base64.b64encode(f"{owner.username}:{owner.password}".encode()).decode()
        if parts.path != "/token":
            status, body = 404, b"{}"
        elif authorization != f"Basic {expected}" or query.get("service") != [SERVICE]:
            status, body = 401, b'{"details": "bad login"}'
        else:
            access = []
            for scope in query.get("scope", []):
                kind, name, actions = scope.split(":", 2) if scope.count(":") >= 2 else ("", "", "")
                access.append({"type": kind, "name": name, "actions": actions.split(",")})
            token = owner.mint(owner.username, access)
            status = 200
            body = json.dumps({"token": token, "access_token": token, "expires_in": 300}).encode()
        with owner.lock:
            owner.requests.append(TokenRequest(query, authorization, status))
        self._answer(status, body)


# --- fixtures ------------------------------------------------------------------------------


@dataclass
class AuthRegistry:
    """A registry that needs a login, and that login."""

    registry: RegistryServer
    username: str
    password: str
    tokens: TokenService | None = None


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    """Session-wide anonymous registry; use ``new_repository()`` per test."""
    server = start_registry(tmp_path_factory.mktemp("registry"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def token_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuthRegistry]:
    """Session-wide registry with Docker's token authentication, and its token service."""
    workdir = tmp_path_factory.mktemp("token-registry")
    tokens = TokenService(workdir, "puller", f"pw-{secrets.token_hex(8)}")
    tokens.start()
    try:
        auth = {
            "token": {
                "realm": tokens.realm,
                "service": SERVICE,
                "issuer": ISSUER,
                "rootcertbundle": str(tokens.certificate),
            }
        }
        server = start_registry(workdir, auth=auth, push_headers=tokens.push_headers)
        try:
            yield AuthRegistry(server, tokens.username, tokens.password, tokens)
        finally:
            server.stop()
    finally:
        tokens.stop()


def _bcrypt_hash(password: str) -> str | None:
    """A bcrypt hash for htpasswd, or None when this Python can make none."""
    with contextlib.suppress(ImportError):
        import bcrypt  # type: ignore[import-not-found]

        return str(bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=5)).decode())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            import crypt
        except ImportError:
            return None
    salt = "$2b$05$" + base64.b64encode(secrets.token_bytes(16)).decode()[:22].replace("+", ".")
    hashed = crypt.crypt(password, salt)
    return hashed if hashed and hashed.startswith("$2b$") else None


@pytest.fixture(scope="session")
def basic_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuthRegistry]:
    """Session-wide registry with htpasswd (HTTP Basic) authentication."""
    password = f"pw-{secrets.token_hex(8)}"
    hashed = _bcrypt_hash(password)
    if hashed is None:
        pytest.skip("no bcrypt here (neither the bcrypt package nor crypt with $2b$)")
    workdir = tmp_path_factory.mktemp("basic-registry")
    htpasswd = workdir / "htpasswd"
    htpasswd.write_text(f"puller:{hashed}\n", encoding="ascii")
    login = base64.b64encode(f"puller:{password}".encode()).decode()
    server = start_registry(
        workdir,
        auth={"htpasswd": {"realm": "test-registry", "path": str(htpasswd)}},
        push_headers=lambda _repo: {"Authorization": f"Basic {login}"},
    )
    yield AuthRegistry(server, "puller", password)
    server.stop()


# --- a front that redirects blobs elsewhere ------------------------------------------------


class _FrontHandler(BaseHTTPRequestHandler):
    def __init__(self, *args: Any, owner: RedirectingFront) -> None:
        self.owner = owner
        super().__init__(*args)

    def log_message(self, format: str, *args: Any) -> None:
        """Keep the test output clean."""

    def _reply(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _handle(self) -> None:
        owner = self.owner
        path = urlsplit(self.path).path
        if self.server is owner.store.server:  # the blob store: another origin
            with owner.lock:
                owner.store_requests.append((path, self.headers.get("Authorization")))
            repository, _, digest = path.removeprefix("/blob/").rpartition("/")
            status, _headers, body = owner.registry.request(
                "GET",
                f"/v2/{repository}/blobs/{digest}",
                headers=owner.registry.push_headers(repository),
            )
            self._reply(status, {"Content-Type": "application/octet-stream"}, body)
            return
        if self.command == "GET" and "/blobs/sha256:" in path:
            repository, _, digest = path.removeprefix("/v2/").rpartition("/blobs/")
            location = f"http://{LOOPBACK}:{owner.store.port}/blob/{repository}/{digest}"
            self._reply(307, {"Location": location}, b"")
            return
        forwarded = {
            k: v for k, v in self.headers.items() if k.lower() in ("authorization", "accept")
        }
        status, headers, body = owner.registry.request(self.command, self.path, None, forwarded)
        kept = {
            k: v
            for k, v in headers.items()
            if k.lower() in ("content-type", "docker-content-digest", "www-authenticate")
        }
        self._reply(status, kept, body)

    do_GET = _handle
    do_HEAD = _handle


class RedirectingFront:
    """A front for a registry that answers every blob GET with a 307 to another origin.

    As registries backed by an object store do. The other origin (``store``) serves the
    blob and records each request's path and ``Authorization`` header in
    ``store_requests``: a client must never send it the registry's login.
    """

    def __init__(self, registry: RegistryServer) -> None:
        self.registry = registry
        self.lock = threading.Lock()
        self.store_requests: list[tuple[str, str | None]] = []
        handler = partial(_FrontHandler, owner=self)
        self.front = ThreadedHTTPServerHandle(
            "registry-front", ThreadingHTTPServer((LOOPBACK, 0), handler)
        )
        self.store = ThreadedHTTPServerHandle(
            "blob-store", ThreadingHTTPServer((LOOPBACK, 0), handler)
        )
        for handle in (self.front, self.store):
            handle.server.daemon_threads = True
        self.host = f"{LOOPBACK}:{self.front.port}"

    def start(self) -> None:
        """Serve both origins."""
        self.front.start()
        self.store.start()

    def stop(self) -> None:
        """Stop both; assert they are gone."""
        self.front.stop()
        self.store.stop()


@pytest.fixture
def redirecting_front(basic_registry: AuthRegistry) -> Iterator[RedirectingFront]:
    """A front of the Basic-login registry whose blobs come from another origin."""
    front = RedirectingFront(basic_registry.registry)
    front.start()
    yield front
    front.stop()
