"""A container registry client (the OCI distribution API) and the layers of an image.

:class:`RegistryClient` speaks the registry HTTP API that every registry serves (the OCI
distribution spec, Docker's registry v2): one manifest request resolves a tag to its
digest, then manifests and blobs are fetched by digest and each is checked against it
(sha256), so nothing the registry or a proxy changed is ever used. Logins: anonymous,
HTTP Basic, and Docker's token flow (a 401 with ``WWW-Authenticate: Bearer realm=...``
sends us to the realm for a token, with the Basic login when there is one); what a
client learned (the scheme, the tokens until they expire) is kept in an
:class:`AuthCache` between pulls, so a no-op pull is one request.

:class:`LayerApplier` applies an image's layers, in order, to a local folder, keeping only
what lies under one directory of the image: gzip or plain tar, OCI whiteouts
(``.wh.NAME``) and opaque directories (``.wh..wh..opq``). Layer content is untrusted:
absolute names and ``..`` are refused, symlinks and hard links must stay inside the
directory, device files and FIFOs are skipped, and nothing is ever written through a
symlink.

No container engine is needed, and none is used: a sidecar cannot see another
container's files, but it can read the image from the registry.

Transport rules:

* ``https://`` unless the registry host is loopback (``localhost``, ``127.0.0.0/8``,
  ``::1``), which is plain ``http://`` as Docker treats it; ``insecure=True`` asks for plain
  HTTP anywhere, ``insecure=False`` for HTTPS even on loopback. A token service on plain
  HTTP gets a login only under the same rule.
* Redirects (blob stores) are followed, and the ``Authorization`` header goes only to the
  registry's (or token service's) own origin.
* Proxies and ``.netrc`` from the environment are not used. TLS is verified with the
  system's certificates (``SSL_CERT_FILE`` and ``SSL_CERT_DIR`` apply).
* The client runs on asyncio (aiohttp), anyio's default backend, as Prefect and the
  daemon do.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import ipaddress
import json
import os
import platform
import re
import shutil
import stat
import tarfile
import time
import zlib
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import quote, urlencode, urljoin, urlsplit

import aiohttp
import anyio
import anyio.from_thread

from runner_storage.exceptions import (
    AuthenticationError,
    ConfigurationError,
    NotFoundError,
    SourceError,
    TransientSourceError,
    UnsafeContentError,
    describe_error,
    disk_error,
    status_error,
)
from runner_storage.secrets import public_url

__all__ = [
    "DOCKER_MANIFEST",
    "DOCKER_MANIFEST_LIST",
    "MANIFEST_TYPES",
    "OCI_INDEX",
    "OCI_MANIFEST",
    "AuthCache",
    "Descriptor",
    "ImageManifest",
    "ImageReference",
    "LayerApplier",
    "RegistryClient",
    "check_layer_type",
    "machine_platform",
    "parse_manifest",
    "registry_scheme",
    "select_platform",
]

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
#: What a manifest request accepts, best first.
MANIFEST_TYPES = (OCI_INDEX, OCI_MANIFEST, DOCKER_MANIFEST_LIST, DOCKER_MANIFEST)
_INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_MANIFEST_LIST})
_IMAGE_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
_CONFIG_TYPES = frozenset(
    {"application/vnd.oci.image.config.v1+json", "application/vnd.docker.container.image.v1+json"}
)

#: The largest manifest or index read (the OCI spec's advice to registries is 4 MiB).
MAX_MANIFEST_BYTES = 4 << 20
#: The largest image config read.
MAX_CONFIG_BYTES = 16 << 20
#: Seconds to connect, and between two reads of an answer, before a request fails.
REQUEST_TIMEOUT_SECONDS = 60.0
_MAX_REDIRECTS = 5
_CHUNK = 1 << 20
_TOKEN_MARGIN_SECONDS = 10.0
_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_WHITEOUT = ".wh."
_OPAQUE = ".wh..wh..opq"

_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_HOST_NAME = (
    r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*"
)
_HOST = re.compile(rf"(?:{_HOST_NAME}|\[[0-9A-Fa-f:.]+\])(?::[0-9]{{1,5}})?")
_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_CHALLENGE_PARAM = re.compile(r'([A-Za-z_][\w-]*)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]*))')


# --- references ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageReference:
    """An image in a registry: ``registry/repository:tag`` or ``registry/repository@digest``.

    Attributes:
        registry: the registry's host, with its port if any (``127.0.0.1:5000``).
        repository: the repository path (``team/flows``).
        tag: the tag (``latest`` when the reference names neither tag nor digest).
        digest: the pinned manifest digest (``sha256:<64 hex digits>``), if any; it wins
            over the tag, as in Docker.
    """

    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @classmethod
    def parse(cls, text: str) -> ImageReference:
        """Parse an image reference; the registry host must be part of it.

        Raises:
            ConfigurationError: not a reference, no registry host, or a bad part.
        """
        if not isinstance(text, str) or not text or text != text.strip() or " " in text:
            raise ConfigurationError(
                f"invalid image reference {text!r}: write it as registry/repository:tag,"
                " like registry.example.com/team/flows:1.0"
            )
        rest, digest = text, None
        if "@" in text:
            rest, _, digest = text.partition("@")
            if not _DIGEST.fullmatch(digest):
                raise ConfigurationError(
                    f"invalid digest in image reference {text!r}: write it as"
                    " sha256:<64 lowercase hex digits>"
                )
        name, tag = rest, None
        if rest.rfind(":") > rest.rfind("/"):
            name, _, tag = rest.rpartition(":")
            if not _TAG.fullmatch(tag):
                raise ConfigurationError(
                    f"invalid tag {tag!r} in image reference {text!r}: use letters, digits,"
                    " '_', '.' and '-' (at most 128, not starting with '.' or '-')"
                )
        registry, slash, repository = name.partition("/")
        if not slash or not (
            "." in registry or ":" in registry or registry == "localhost" or registry[:1] == "["
        ):
            raise ConfigurationError(
                f"image reference {text!r} names no registry host: write the registry first,"
                " like registry.example.com/team/flows:1.0 (there is no default registry)"
            )
        if not _HOST.fullmatch(registry) or not _port_ok(registry):
            raise ConfigurationError(
                f"invalid registry host {registry!r} in image reference {text!r}"
            )
        if not repository or not all(_COMPONENT.fullmatch(p) for p in repository.split("/")):
            raise ConfigurationError(
                f"invalid repository {repository!r} in image reference {text!r}: use lowercase"
                " letters, digits and separators ('.', '_', '-') between '/'"
            )
        if tag is None and digest is None:
            tag = "latest"
        return cls(registry, repository, tag, digest)

    @property
    def hostname(self) -> str:
        """The registry's host name, without port or brackets."""
        return urlsplit(f"//{self.registry}").hostname or self.registry

    @property
    def reference(self) -> str:
        """What a manifest request names: the digest if pinned, else the tag."""
        return self.digest or self.tag or "latest"

    @property
    def name(self) -> str:
        """``registry/repository``, the image without tag or digest."""
        return f"{self.registry}/{self.repository}"

    def __str__(self) -> str:
        text = self.name
        if self.tag is not None:
            text += f":{self.tag}"
        if self.digest is not None:
            text += f"@{self.digest}"
        return text


def _port_ok(registry: str) -> bool:
    port = registry.rpartition(":")[2] if not registry.endswith("]") else ""
    return not port.isdigit() or 0 < int(port) < 65536


def _is_loopback(hostname: str) -> bool:
    if hostname.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(hostname).is_loopback
    except ValueError:
        return False


def registry_scheme(hostname: str, insecure: bool | None) -> str:
    """``http`` or ``https`` for a registry host (see the module docstring)."""
    if insecure is None:
        return "http" if _is_loopback(hostname) else "https"
    return "http" if insecure else "https"


# --- manifests -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Descriptor:
    """A content descriptor: what a manifest says about a blob or another manifest."""

    media_type: str
    digest: str
    size: int
    platform: dict[str, Any] | None = None

    @classmethod
    def from_json(cls, value: object, *, where: str) -> Descriptor:
        """Read a descriptor from a manifest.

        Raises:
            SourceError: it is not a descriptor with a sha256 digest and a size.
        """
        if not isinstance(value, dict):
            raise SourceError(f"the manifest of {where} holds a malformed descriptor")
        digest, size = value.get("digest"), value.get("size")
        media_type = value.get("mediaType")
        if not isinstance(digest, str) or not _DIGEST.fullmatch(digest):
            raise SourceError(
                f"the manifest of {where} names a blob by {digest!r}, not a sha256 digest:"
                " only sha256 digests are supported"
            )
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise SourceError(f"the manifest of {where} gives blob {digest} no valid size")
        found = value.get("platform")
        return cls(
            media_type if isinstance(media_type, str) else "",
            digest,
            size,
            found if isinstance(found, dict) else None,
        )


@dataclass(frozen=True)
class ImageManifest:
    """An image manifest: its config blob and its layers, lowest first."""

    config: Descriptor
    layers: tuple[Descriptor, ...]


def parse_manifest(
    body: bytes, content_type: str, *, where: str
) -> ImageManifest | tuple[Descriptor, ...]:
    """An image manifest, or the entries of an index (a manifest list).

    Raises:
        SourceError: not JSON, a schema 1 manifest, or of a kind that is not an image.
    """
    try:
        document = json.loads(body)
    except ValueError:
        raise SourceError(f"the manifest of {where} is not JSON") from None
    if not isinstance(document, dict):
        raise SourceError(f"the manifest of {where} is not a JSON object")
    if document.get("schemaVersion") == 1:
        raise SourceError(
            f"{where} has a schema 1 manifest, which is not supported: push the image again"
            " with a current Docker, podman or buildah"
        )
    declared = document.get("mediaType")
    kind = declared if isinstance(declared, str) and declared else content_type
    if kind in _INDEX_TYPES or (not kind and "manifests" in document):
        entries = document.get("manifests")
        if not isinstance(entries, list):
            raise SourceError(f"the image index of {where} lists no manifests")
        return tuple(Descriptor.from_json(e, where=where) for e in entries)
    if kind in _IMAGE_TYPES or (not kind and "layers" in document):
        layers = document.get("layers")
        if not isinstance(layers, list):
            raise SourceError(f"the manifest of {where} lists no layers")
        return ImageManifest(
            Descriptor.from_json(document.get("config"), where=where),
            tuple(Descriptor.from_json(layer, where=where) for layer in layers),
        )
    raise SourceError(
        f"{where} is not a container image (its manifest is {kind or 'of an unknown type'})"
    )


_ARCHITECTURES = {
    "x86_64": ("amd64", None),
    "amd64": ("amd64", None),
    "aarch64": ("arm64", None),
    "arm64": ("arm64", None),
    "armv7l": ("arm", "v7"),
    "armv6l": ("arm", "v6"),
    "i386": ("386", None),
    "i686": ("386", None),
    "ppc64le": ("ppc64le", None),
    "s390x": ("s390x", None),
    "riscv64": ("riscv64", None),
}


def machine_platform() -> tuple[str, str | None]:
    """This machine's architecture as image indexes name it (``amd64``, ``arm64``...)."""
    machine = platform.machine().lower()
    return _ARCHITECTURES.get(machine, (machine, None))


def select_platform(entries: Iterable[Descriptor], *, where: str) -> Descriptor:
    """The entry of an index to pull: this machine's Linux image, else linux/amd64.

    Else the first Linux image: flow code is rarely tied to one architecture. Entries that
    are not images (attestations, whose platform is ``unknown/unknown``) are never chosen.

    Raises:
        NotFoundError: the index holds no Linux image.
    """
    images = [
        e
        for e in entries
        if e.platform is not None
        and e.platform.get("os") == "linux"
        and (e.media_type in _IMAGE_TYPES or not e.media_type)
    ]
    architecture, variant = machine_platform()

    def rank(entry: Descriptor) -> int:
        assert entry.platform is not None  # noqa: S101 - filtered above
        found = entry.platform.get("architecture")
        if found == architecture and entry.platform.get("variant") in (None, variant):
            return 0
        if found == architecture:
            return 1
        return 2 if found == "amd64" else 3

    if not images:
        raise NotFoundError(
            f"the image index of {where} holds no linux image: push one built for linux"
        )
    return min(images, key=rank)  # min is stable: the first of equal rank


# --- logins --------------------------------------------------------------------------------


@dataclass
class AuthCache:
    """What a registry asked for, and the tokens it gave, kept from one pull to the next.

    Kept in memory only, for one login: a changed login (a rotated password) starts afresh.
    """

    login_key: str | None = None
    scheme: str | None = None
    realm: str | None = None
    service: str | None = None
    tokens: dict[str, tuple[str, float]] = field(default_factory=dict)

    def for_login(self, key: str | None) -> None:
        """Forget everything learned with another login."""
        if key != self.login_key:
            self.login_key, self.scheme, self.realm, self.service = key, None, None, None
            self.tokens.clear()

    def token(self, scope: str) -> str | None:
        """A token for ``scope`` that has not expired, if one is held."""
        held = self.tokens.get(scope)
        if held is None or held[1] <= time.monotonic():
            self.tokens.pop(scope, None)
            return None
        return held[0]


def _challenges(headers: Iterable[str]) -> dict[str, dict[str, str]]:
    """``WWW-Authenticate`` values by lower-case scheme, with their parameters."""
    found: dict[str, dict[str, str]] = {}
    for header in headers:
        scheme, _, rest = header.strip().partition(" ")
        params = {
            m[1].lower(): (m[2].replace('\\"', '"') if m[2] is not None else m[3])
            for m in _CHALLENGE_PARAM.finditer(rest)
        }
        found.setdefault(scheme.lower(), params)
    return found


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    default = {"http": 80, "https": 443}.get(parts.scheme)
    return parts.scheme, (parts.hostname or "").lower(), parts.port or default


# --- the client ----------------------------------------------------------------------------


class RegistryClient:
    """One pull's conversation with a registry about one repository.

    Use it as ``async with RegistryClient(...) as client:``; every answer is read inside.

    Args:
        reference: the image.
        login: ``(username, password)``, or None for anonymous pulls.
        insecure: the scheme rule (see :func:`registry_scheme`).
        auth: what earlier pulls learned about logging in; updated in place.
        redact: removes the login's secrets from text.
        timeout: seconds to connect and between two reads of an answer.
    """

    def __init__(
        self,
        reference: ImageReference,
        *,
        login: tuple[str, str] | None,
        insecure: bool | None,
        auth: AuthCache,
        redact: Callable[[str], str],
        timeout: float = REQUEST_TIMEOUT_SECONDS,
    ) -> None:
        self.reference = reference
        self._login = login
        self._insecure = insecure
        self._base = f"{registry_scheme(reference.hostname, insecure)}://{reference.registry}"
        self._repo = f"/v2/{reference.repository}"
        self._scope = f"repository:{reference.repository}:pull"
        self._auth = auth
        self._redact = redact
        self._timeout = timeout
        self._session: aiohttp.ClientSession | None = None
        key = None
        if login is not None:
            key = hashlib.sha256("\0".join(login).encode("utf-8", "surrogatepass")).hexdigest()
        auth.for_login(key)
        #: Bytes read from the registry (manifests and blobs) by this client.
        self.bytes_fetched = 0

    async def __aenter__(self) -> RegistryClient:
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(
                total=None, connect=self._timeout, sock_read=self._timeout
            ),
            auto_decompress=False,  # a blob's bytes are what its digest covers
            trust_env=False,
            headers={"User-Agent": "runner-storage", "Accept-Encoding": "identity"},
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def where(self) -> str:
        """The image as messages name it."""
        return str(self.reference)

    # -- what callers use ------------------------------------------------------------------

    async def resolve(self) -> tuple[str, str, bytes | None]:
        """The digest the reference names now, with one manifest request.

        A HEAD, unless the registry sends no ``Docker-Content-Digest``; then a GET, whose
        body is hashed (and returned, so it need not be fetched again).

        Returns:
            ``(digest, media type, body or None)``.

        Raises:
            NotFoundError: the repository or tag does not exist.
            AuthenticationError, TransientSourceError, SourceError: see :meth:`manifest`.
        """
        path = f"{self._repo}/manifests/{quote(self.reference.reference, safe=':')}"
        accept = {"Accept": ", ".join(MANIFEST_TYPES)}
        async with self._open("HEAD", path, accept, what=f"the manifest of {self.where}") as answer:
            digest = answer.headers.get("Docker-Content-Digest", "")
            media_type = _media_type(answer.headers.get("Content-Type", ""))
        if _DIGEST.fullmatch(digest):
            return digest, media_type, None
        body, media_type = await self._read_manifest(path)
        return "sha256:" + hashlib.sha256(body).hexdigest(), media_type, body

    async def manifest(self, digest: str) -> tuple[bytes, str]:
        """The manifest (or index) with ``digest``, checked against it.

        Returns:
            ``(body, media type)``.

        Raises:
            NotFoundError: the registry does not hold it.
            AuthenticationError: the login was refused, or one is needed.
            TransientSourceError: the registry failed or could not be reached.
            SourceError: the body does not match the digest, or is too large.
        """
        body, media_type = await self._read_manifest(f"{self._repo}/manifests/{digest}")
        found = "sha256:" + hashlib.sha256(body).hexdigest()
        if found != digest:
            raise SourceError(
                f"the registry answered manifest {digest} of {self.reference.name} with"
                f" content whose digest is {found}: it is corrupt; nothing was published"
            )
        return body, media_type

    async def small_blob(self, descriptor: Descriptor, limit: int) -> bytes:
        """A small blob (an image config) in memory, checked against its digest and size.

        Raises:
            SourceError: it is larger than ``limit`` or does not match its descriptor.
            NotFoundError, AuthenticationError, TransientSourceError: see :meth:`manifest`.
        """
        if descriptor.size > limit:
            raise SourceError(
                f"blob {descriptor.digest} of {self.where} is {descriptor.size} bytes, more"
                f" than the {limit} accepted for an image config"
            )
        digest = hashlib.sha256()
        chunks: list[bytes] = []
        async with self._open(
            "GET", self._blob_path(descriptor), {}, what=self._blob(descriptor)
        ) as answer:
            async for chunk in self._chunks(answer, descriptor.size):
                digest.update(chunk)
                chunks.append(chunk)
        body = b"".join(chunks)
        self._check_blob(descriptor, len(body), digest.hexdigest())
        return body

    async def download_blob(self, descriptor: Descriptor, target: Path) -> int:
        """Stream a blob into the new file ``target``, checked against digest and size.

        Returns:
            The number of bytes written.

        Raises:
            SourceError: the content does not match its descriptor (remove ``target``).
            PublishError: ``target`` cannot be written.
            NotFoundError, AuthenticationError, TransientSourceError: see :meth:`manifest`.
        """
        digest = hashlib.sha256()
        written = 0
        try:
            output = await anyio.open_file(target, "xb")
        except OSError as exc:
            raise disk_error(f"cannot create {target}", exc) from None
        async with output:
            what = self._blob(descriptor)
            async with self._open("GET", self._blob_path(descriptor), {}, what=what) as answer:
                async for chunk in self._chunks(answer, descriptor.size):
                    digest.update(chunk)
                    written += len(chunk)
                    try:
                        await output.write(chunk)
                    except OSError as exc:
                        raise disk_error(f"cannot write {target}", exc) from None
        self._check_blob(descriptor, written, digest.hexdigest())
        return written

    async def tags(self) -> list[str] | None:
        """The repository's tags (first page), or None when the repository does not exist.

        Raises:
            AuthenticationError, TransientSourceError, SourceError: see :meth:`manifest`.
        """
        try:
            async with self._open(
                "GET", f"{self._repo}/tags/list", {}, what=f"the tags of {self.reference.name}"
            ) as answer:
                body = await self._read(answer, MAX_MANIFEST_BYTES, "the tag list")
        except NotFoundError:
            return None
        try:
            tags = json.loads(body).get("tags") or []
        except (ValueError, AttributeError):
            return []
        return [t for t in tags if isinstance(t, str)]

    # -- blobs -----------------------------------------------------------------------------

    def _blob_path(self, descriptor: Descriptor) -> str:
        return f"{self._repo}/blobs/{descriptor.digest}"

    def _blob(self, descriptor: Descriptor) -> str:
        return f"blob {descriptor.digest} of {self.where}"

    def _check_blob(self, descriptor: Descriptor, size: int, hexdigest: str) -> None:
        if size != descriptor.size or f"sha256:{hexdigest}" != descriptor.digest:
            raise SourceError(
                f"the registry answered blob {descriptor.digest} of {self.reference.name} with"
                f" {size} bytes whose digest is sha256:{hexdigest} (the manifest says"
                f" {descriptor.size} bytes): it is corrupt; nothing was published"
            )

    async def _chunks(self, answer: aiohttp.ClientResponse, size: int) -> AsyncIterator[bytes]:
        """The body, failing as soon as it runs past ``size`` bytes."""
        read = 0
        try:
            async for chunk in answer.content.iter_chunked(_CHUNK):
                read += len(chunk)
                self.bytes_fetched += len(chunk)
                if read > size:
                    raise SourceError(
                        f"the registry sent more than the {size} bytes the manifest gives"
                        f" {self.where}: it is corrupt; nothing was published"
                    )
                yield chunk
        except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as exc:
            raise self._unreachable(exc) from None

    async def _read(self, answer: aiohttp.ClientResponse, limit: int, what: str) -> bytes:
        chunks: list[bytes] = []
        read = 0
        try:
            async for chunk in answer.content.iter_chunked(_CHUNK):
                read += len(chunk)
                self.bytes_fetched += len(chunk)
                if read > limit:
                    raise SourceError(
                        f"{what} of {self.where} is larger than {limit} bytes: refused"
                    )
                chunks.append(chunk)
        except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as exc:
            raise self._unreachable(exc) from None
        return b"".join(chunks)

    async def _read_manifest(self, path: str) -> tuple[bytes, str]:
        accept = {"Accept": ", ".join(MANIFEST_TYPES)}
        async with self._open("GET", path, accept, what=f"the manifest of {self.where}") as answer:
            media_type = _media_type(answer.headers.get("Content-Type", ""))
            body = await self._read(answer, MAX_MANIFEST_BYTES, "the manifest")
        return body, media_type

    # -- requests, logins and errors -------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _open(
        self, method: str, path: str, headers: dict[str, str], *, what: str
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """An answer with a success status, after the login the registry asks for."""
        url = self._base + path
        answer = await self._send(method, url, headers, await self._authorization())
        if answer.status == 401:
            challenges = _challenges(answer.headers.getall("WWW-Authenticate", []))
            answer.release()
            authorization = await self._answer_challenge(challenges)
            answer = await self._send(method, url, headers, authorization)
        try:
            if answer.status >= 300:
                raise await self._failure(answer, method, what)
            yield answer
        finally:
            answer.release()

    async def _send(
        self, method: str, url: str, headers: dict[str, str], authorization: str | None
    ) -> aiohttp.ClientResponse:
        """Send one request, following redirects; credentials only to ``url``'s origin."""
        assert self._session is not None, "use the client as an async context manager"  # noqa: S101
        origin = _origin(url)
        for _ in range(_MAX_REDIRECTS + 1):
            sent = dict(headers)
            if authorization is not None and _origin(url) == origin:
                sent["Authorization"] = authorization
            try:
                answer = await self._session.request(
                    method, url, headers=sent, allow_redirects=False
                )
            except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as exc:
                raise self._unreachable(exc, host=urlsplit(url).hostname) from None
            location = answer.headers.get("Location")
            if answer.status not in (301, 302, 303, 307, 308) or not location:
                return answer
            answer.release()
            url = urljoin(url, location)
            if urlsplit(url).scheme not in ("http", "https"):
                raise SourceError(
                    f"{self.reference.registry} redirected a request for {self.where} to a"
                    " URL that is not http(s): refused"
                )
            if answer.status == 303:
                method = "GET"
        raise SourceError(
            f"{self.reference.registry} redirected a request for {self.where} more than"
            f" {_MAX_REDIRECTS} times: refused"
        )

    async def _authorization(self) -> str | None:
        """The ``Authorization`` header to send first, from what earlier answers taught."""
        auth = self._auth
        if auth.scheme == "basic" and self._login is not None:
            return _basic(self._login)
        if auth.scheme == "bearer" and auth.realm is not None:
            token = auth.token(self._scope)
            if token is None:
                token = await self._fetch_token(auth.realm, auth.service, self._scope)
            return f"Bearer {token}"
        return None

    async def _answer_challenge(self, challenges: dict[str, dict[str, str]]) -> str:
        """The header that answers a 401's ``WWW-Authenticate`` (a fresh token for Bearer).

        Raises:
            AuthenticationError: the registry wants a login and none was given, or it asks
                for a scheme we do not speak.
        """
        auth = self._auth
        if "bearer" in challenges and challenges["bearer"].get("realm"):
            params = challenges["bearer"]
            auth.tokens.pop(self._scope, None)
            auth.scheme, auth.realm, auth.service = "bearer", params["realm"], params.get("service")
            scope = params.get("scope") or self._scope
            token = await self._fetch_token(params["realm"], auth.service, scope)
            return f"Bearer {token}"
        if "basic" in challenges:
            if self._login is None:
                raise AuthenticationError(
                    f"{self.reference.registry} needs a login to pull {self.where}: give"
                    " username and password"
                )
            auth.scheme = "basic"
            return _basic(self._login)
        offered = ", ".join(sorted(challenges)) or "none"
        raise AuthenticationError(
            f"{self.reference.registry} refused to serve {self.where} without a login of a"
            f" kind we do not speak (offered: {offered}): use Basic or token authentication"
        )

    async def _fetch_token(self, realm: str, service: str | None, scope: str) -> str:
        """A token from the registry's token service (Docker's token authentication).

        Raises:
            AuthenticationError: the token service refused the login.
            SourceError: the realm is not http(s), or would get a login over plain HTTP.
        """
        assert self._session is not None  # noqa: S101 - only called inside the context
        parts = urlsplit(realm)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise SourceError(
                f"{self.reference.registry} sends logins to a token service that is not an"
                f" http(s) URL ({public_url(realm)}): refused"
            )
        plain = parts.scheme == "http"
        if (
            plain
            and self._login is not None
            and not (self._insecure or (self._insecure is None and _is_loopback(parts.hostname)))
        ):
            raise SourceError(
                f"{self.reference.registry} sends logins to a plain-http token service"
                f" ({public_url(realm)}): refused; pass insecure=True if that is intended"
            )
        query = {"scope": scope, **({"service": service} if service else {})}
        url = realm + ("&" if parts.query else "?") + urlencode(query)
        headers = {"Accept": "application/json"}
        login = _basic(self._login) if self._login is not None else None
        answer = await self._send("GET", url, headers, login)
        try:
            if answer.status in (401, 403):
                who = f"the login of {self._login[0]!r}" if self._login else "an anonymous pull"
                raise AuthenticationError(
                    f"the token service of {self.reference.registry} ({public_url(realm)})"
                    f" refused {who} for {self.reference.name}: check username and password"
                )
            if answer.status >= 300:
                raise await self._failure(answer, "GET", f"a token for {self.where}")
            body = await self._read(answer, MAX_MANIFEST_BYTES, "the token answer")
        finally:
            answer.release()
        try:
            document = json.loads(body)
            token = document.get("token") or document.get("access_token")
            expires_in = float(document.get("expires_in") or 60)
        except (ValueError, AttributeError, TypeError):
            token = None
        if not isinstance(token, str) or not token:
            raise SourceError(
                f"the token service of {self.reference.registry} ({public_url(realm)})"
                " answered without a token"
            )
        lifetime = max(0.0, expires_in - _TOKEN_MARGIN_SECONDS)
        self._auth.tokens[scope] = (token, time.monotonic() + lifetime)
        if scope != self._scope:
            self._auth.tokens[self._scope] = (token, time.monotonic() + lifetime)
        return token

    async def _failure(self, answer: aiohttp.ClientResponse, method: str, what: str) -> SourceError:
        """The one-line error for an unsuccessful answer."""
        codes = ""
        if method != "HEAD":
            with contextlib.suppress(SourceError):
                codes = _error_codes(await self._read(answer, 64 << 10, "the error answer"))
        status = answer.status
        detail = f"HTTP {status}" + (f" {codes}" if codes else "")
        kind = status_error(status)
        registry = self.reference.registry
        if kind is AuthenticationError:
            who = f"user {self._login[0]!r}" if self._login else "an anonymous pull"
            return AuthenticationError(
                f"{registry} refused {what} to {who} ({detail}): check username and password,"
                f" and that the user may pull {self.reference.repository}"
            )
        if kind is NotFoundError:
            return await self._not_found(what, detail)
        if kind is TransientSourceError:
            return TransientSourceError(f"{registry} failed to serve {what} ({detail}); will retry")
        return SourceError(f"{registry} refused {what} ({detail})")

    async def _not_found(self, what: str, detail: str) -> NotFoundError:
        reference = self.reference
        if not what.startswith("the manifest") or reference.digest is not None:
            return NotFoundError(
                f"{reference.registry} has no {what.removeprefix('the ')} ({detail}): check the"
                " image reference"
            )
        tags = await self.tags()
        if tags is None:
            return NotFoundError(
                f"repository {reference.name} not found ({detail}): check the registry and"
                " image name"
            )
        known = ", ".join(sorted(tags)[:8]) + (", ..." if len(tags) > 8 else "")
        return NotFoundError(
            f"tag {reference.tag} not found in {reference.name} (it has: {known or 'no tags'}):"
            " check the image tag"
        )

    def _unreachable(self, exc: BaseException, host: str | None = None) -> SourceError:
        where = host or self.reference.registry
        text = describe_error(exc, redact=self._redact)
        if isinstance(exc, aiohttp.ClientSSLError | aiohttp.ClientConnectorCertificateError):
            return SourceError(
                f"TLS with {where} failed ({text}): trust its certificate (SSL_CERT_FILE), or"
                " use insecure=True for a plain-http registry"
            )
        return TransientSourceError(f"cannot reach registry {where} ({text}); will retry")


def _basic(login: tuple[str, str]) -> str:
    token = base64.b64encode(":".join(login).encode("utf-8", "surrogatepass")).decode("ascii")
    return f"Basic {token}"


def _media_type(content_type: str) -> str:
    return content_type.partition(";")[0].strip().lower()


def _error_codes(body: bytes) -> str:
    """The ``errors[].code`` of a registry's error answer, joined (``MANIFEST_UNKNOWN``)."""
    try:
        errors = json.loads(body).get("errors") or []
    except (ValueError, AttributeError):
        return ""
    codes = [e.get("code") for e in errors if isinstance(e, dict)]
    return ",".join(c for c in codes if isinstance(c, str) and c.isupper())[:100]


# --- layers --------------------------------------------------------------------------------


def check_layer_type(descriptor: Descriptor, *, where: str) -> None:
    """Refuse a layer we cannot apply, before anything is downloaded.

    Raises:
        SourceError: a zstd layer, or a media type that is not a tar layer.
    """
    media_type = descriptor.media_type
    if "zstd" in media_type:
        raise SourceError(
            f"layer {descriptor.digest} of {where} is zstd-compressed, which is not supported:"
            " build the image with gzip layers"
        )
    tar_layer = media_type.endswith((".tar", ".tar+gzip", ".tar.gzip")) and (
        ".layer." in media_type or ".rootfs." in media_type
    )
    if media_type and not tar_layer:
        raise SourceError(
            f"layer {descriptor.digest} of {where} has media type {media_type}, which is not a"
            " tar layer: only container images are supported"
        )


class _Unsafe(Exception):  # internal: carries the message only
    pass


class LayerApplier:
    """Applies layers, lowest first, to ``root``, keeping only ``directory`` of the image.

    ``root`` becomes the content of ``directory`` (``opt/prefect/flows`` of the image is
    ``root`` itself). Each :meth:`apply` tells whether the layer changed, or could have
    changed, anything there: a layer that could not is the same for any later image, so
    a caller may skip it next time.

    Files get their mode (permission bits) and modification time; directories their mode,
    always with ``u+rwx`` so that a version can be deleted. Owners are not kept.

    Args:
        root: an empty folder.
        directory: the directory of the image to keep, relative to ``/``.
        where: the image, for messages.
    """

    def __init__(self, root: Path, directory: PurePosixPath, *, where: str) -> None:
        self._root = root
        self._prefix = directory.parts
        self._where = where
        self._dir_modes: dict[tuple[str, ...], int] = {}
        self._created: set[tuple[str, ...]] = set()
        self._keep: set[tuple[str, ...]] = set()
        self._checks = True
        self._touched = False
        #: Regular files written so far.
        self.files = 0

    def apply(self, blob: Path, digest: str) -> bool:
        """Apply one layer (a gzip or plain tar file); return whether it touched the tree.

        Raises:
            UnsafeContentError: an entry would escape the tree (``..``, an absolute name, a
                link pointing out, a path through a symlink).
            SourceError: the layer is not a readable tar (or is zstd).
            PublishError: the local disk failed.
        """
        self._created.clear()
        self._keep.clear()
        self._touched = False
        try:
            with open(blob, "rb") as handle:
                magic = handle.read(4)
        except OSError as exc:
            raise disk_error(f"cannot read {blob}", exc) from None
        if magic == _ZSTD_MAGIC:
            raise SourceError(
                f"layer {digest} of {self._where} is zstd-compressed, which is not supported:"
                " build the image with gzip layers"
            )
        try:
            with _open_tar(blob, gzipped=magic[:2] == _GZIP_MAGIC) as archive:
                for count, member in enumerate(archive):
                    if count % 256 == 0:
                        self._check_cancelled()
                    self._entry(archive, member)
        except _Unsafe as exc:
            raise UnsafeContentError(
                f"layer {digest} of {self._where}: {exc}; nothing was published"
            ) from None
        except (tarfile.TarError, EOFError, zlib.error, UnicodeError) as exc:
            raise SourceError(
                f"layer {digest} of {self._where} is not a readable tar archive"
                f" ({describe_error(exc)})"
            ) from None
        except OSError as exc:
            if exc.filename is None and exc.errno is None:  # gzip: not a gzip file, CRC...
                raise SourceError(
                    f"layer {digest} of {self._where} is not a readable tar archive"
                    f" ({describe_error(exc)})"
                ) from None
            raise disk_error(f"cannot write the layers of {self._where}", exc) from None
        return self._touched

    def finish(self) -> None:
        """Give directories their modes (deepest first); call after the last layer.

        Raises:
            PublishError: the local disk failed.
        """
        for parts, mode in sorted(self._dir_modes.items(), key=lambda i: -len(i[0])):
            path = self._real(parts)
            try:
                if path is not None and stat.S_ISDIR(path.lstat().st_mode):
                    os.chmod(path, (mode & 0o777) | 0o700)
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise disk_error(f"cannot set the mode of {path}", exc) from None

    # -- one entry -------------------------------------------------------------------------

    def _check_cancelled(self) -> None:
        if self._checks:
            try:
                anyio.from_thread.check_cancelled()
            except RuntimeError:  # not in an anyio worker thread: nothing to check
                self._checks = False

    def _path(self, parts: tuple[str, ...]) -> Path:
        return self._root.joinpath(*parts) if parts else self._root

    def _real(self, parts: tuple[str, ...]) -> Path | None:
        """The path of ``parts`` when every folder on the way is a real one (no symlink).

        None when one is missing, a file or a symlink: what lies behind a symlink is never
        touched, since a link (checked only by its text) might lead out of the tree.
        """
        path = self._root
        for part in parts[:-1]:
            path = path / part
            try:
                if not stat.S_ISDIR(path.lstat().st_mode):
                    return None
            except FileNotFoundError:
                return None
        return self._path(parts)

    def _inside(self, parts: tuple[str, ...]) -> tuple[str, ...] | None:
        """``parts`` relative to the kept directory, or None when outside it."""
        size = len(self._prefix)
        return parts[size:] if parts[:size] == self._prefix else None

    def _covers_prefix(self, parts: tuple[str, ...]) -> bool:
        """Whether ``parts`` is the kept directory or one of its ancestors."""
        return self._prefix[: len(parts)] == parts

    def _entry(self, archive: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        parts = _name_parts(member.name)
        if not parts:
            return  # the image root itself
        base = parts[-1]
        if base == _OPAQUE:
            self._opaque(parts[:-1])
            return
        if base.startswith(_WHITEOUT):
            hidden = base[len(_WHITEOUT) :]
            if not hidden or hidden in (".", ".."):
                raise _Unsafe(f"malformed whiteout {member.name!r}")
            self._whiteout((*parts[:-1], hidden))
            return
        relative = self._inside(parts)
        if relative is None:
            if self._covers_prefix(parts) and not member.isdir():
                # An ancestor of the directory became a file or link: the directory is gone.
                self._touched = True
                self._clear((), keep=False)
            return
        if not relative:
            if not member.isdir():  # the directory itself became a file or link
                self._touched = True
                self._clear((), keep=False)
            return  # its own entry: its mode is not published
        self._touched = True
        self._place(archive, member, relative)

    def _opaque(self, directory: tuple[str, ...]) -> None:
        relative = self._inside(directory)
        if relative is not None:
            self._touched = True
            self._clear(relative, keep=True)
        elif self._covers_prefix(directory):
            self._touched = True
            self._clear((), keep=True)

    def _whiteout(self, hidden: tuple[str, ...]) -> None:
        relative = self._inside(hidden)
        if relative is None:
            if self._covers_prefix(hidden):
                self._touched = True
                self._clear((), keep=True)
            return
        self._touched = True
        if not relative:
            self._clear((), keep=True)
        elif relative not in self._created:
            self._remove(relative)

    def _clear(self, directory: tuple[str, ...], *, keep: bool) -> None:
        """Remove what lower layers put under ``directory``.

        With ``keep``, this layer's own entries stay, as an opaque directory means.
        """
        path = self._real(directory)
        try:
            if path is None or not stat.S_ISDIR(path.lstat().st_mode):
                return
        except FileNotFoundError:
            return
        for child in list(os.scandir(path)):
            parts = (*directory, child.name)
            if keep and parts in self._keep:
                if child.is_dir(follow_symlinks=False):
                    self._clear(parts, keep=True)
                continue
            self._remove(parts)

    def _remove(self, relative: tuple[str, ...]) -> None:
        path = self._real(relative)
        if path is None:
            return
        try:
            info = path.lstat()
        except FileNotFoundError:
            return
        if stat.S_ISDIR(info.st_mode):
            os.chmod(path, info.st_mode | 0o700)
            shutil.rmtree(path)
        else:
            path.unlink()
        for parts in [p for p in self._dir_modes if p[: len(relative)] == relative]:
            del self._dir_modes[parts]

    def _parent_ready(self, relative: tuple[str, ...]) -> None:
        """Make the parents of ``relative`` directories; never pass through a symlink."""
        for depth in range(1, len(relative)):
            parts = relative[:depth]
            path = self._path(parts)
            try:
                info = path.lstat()
            except FileNotFoundError:
                path.mkdir(mode=0o755)
                self._mark(parts)
                continue
            if stat.S_ISLNK(info.st_mode):
                raise _Unsafe(
                    f"entry {'/'.join(relative)!r} lies behind the symlink {'/'.join(parts)!r}"
                )
            if not stat.S_ISDIR(info.st_mode):
                path.unlink()
                path.mkdir(mode=0o755)
                self._mark(parts)

    def _mark(self, relative: tuple[str, ...]) -> None:
        self._created.add(relative)
        for depth in range(1, len(relative) + 1):
            self._keep.add(relative[:depth])

    def _place(
        self, archive: tarfile.TarFile, member: tarfile.TarInfo, relative: tuple[str, ...]
    ) -> None:
        self._parent_ready(relative)
        path = self._path(relative)
        with contextlib.suppress(FileNotFoundError):
            info = path.lstat()
            if not (member.isdir() and stat.S_ISDIR(info.st_mode)):
                self._remove(relative)
        shown = "/".join(relative)
        if member.isdir():
            if not path.is_dir():
                path.mkdir(mode=0o700)
            self._dir_modes[relative] = member.mode
        elif member.isreg():
            source = archive.extractfile(member)
            assert source is not None  # noqa: S101 - regular members always have content
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
            descriptor = os.open(path, flags, 0o600)
            with os.fdopen(descriptor, "wb") as output:
                shutil.copyfileobj(source, output, _CHUNK)
                os.fchmod(output.fileno(), member.mode & 0o777)
            with contextlib.suppress(OSError, OverflowError, ValueError):
                os.utime(path, (member.mtime, member.mtime))
            self.files += 1
        elif member.issym():
            os.symlink(self._link_target(relative, member.linkname), path)
        elif member.islnk():
            target = _name_parts(member.linkname)
            inside = self._inside(target) if target else None
            if not inside:
                raise _Unsafe(
                    f"hard link {shown!r} points to {member.linkname!r}, outside the directory"
                    " kept from the image"
                )
            source_path = self._real(inside)
            try:
                regular = source_path is not None and stat.S_ISREG(source_path.lstat().st_mode)
            except FileNotFoundError:
                regular = False
            if source_path is None or not regular:
                raise _Unsafe(f"hard link {shown!r} points to {member.linkname!r}, no file")
            os.link(source_path, path)
            self.files += 1
        else:
            return  # devices and FIFOs are skipped: what lower layers had there is gone
        self._mark(relative)

    def _link_target(self, relative: tuple[str, ...], target: str) -> str:
        """A symlink's target, rewritten relative when absolute; refused when it leaves."""
        if not target:
            raise _Unsafe(f"symlink {'/'.join(relative)!r} has an empty target")
        if target.startswith("/"):
            resolved: list[str] = []
        else:
            resolved = [*self._prefix, *relative[:-1]]
        for part in target.split("/"):
            if part in ("", "."):
                continue
            if part == "..":
                if resolved:
                    resolved.pop()
            else:
                resolved.append(part)
        inside = self._inside(tuple(resolved))
        if inside is None:
            raise _Unsafe(
                f"symlink {'/'.join(relative)!r} -> {target!r} points outside the directory"
                " kept from the image"
            )
        if not target.startswith("/"):
            return target
        return os.path.relpath("/" + "/".join(inside), "/" + "/".join(relative[:-1]))


def _open_tar(blob: Path, *, gzipped: bool) -> tarfile.TarFile:
    """The layer as a tar stream, read once from start to end."""
    return tarfile.open(blob, mode="r|gz") if gzipped else tarfile.open(blob, mode="r|")


def _name_parts(name: str) -> tuple[str, ...]:
    """A tar entry's name as path parts, refusing absolute names and ``..``."""
    if name.startswith("/"):
        raise _Unsafe(f"entry {name!r} has an absolute name")
    parts = tuple(part for part in name.split("/") if part not in ("", "."))
    if ".." in parts:
        raise _Unsafe(f"entry {name!r} climbs out with '..'")
    return parts
