"""Docker: Prefect 1's docker storage, as code in place or as a directory of an image.

Prefect 1's ``Docker`` storage built an image holding the flow and ran the flow inside it.
Here it describes where the flow's code is:

* Without an image: the flow runs inside the image already, so the code is where it runs.
  Nothing is copied; ``destination`` is the folder of ``path``.
* With an image (``image="registry/repo:tag"``, or Prefect 1's ``registry_url``,
  ``image_name`` and ``image_tag``): the folder of ``path`` is read out of the image's
  layers over the registry HTTP API (:mod:`runner_storage.storage.registry`) and published
  as an immutable version, so a sidecar that cannot see the image's container still
  keeps the code current. The revision is the image's manifest digest: a no-op pull is
  one small manifest request (none when the reference pins a digest).

:func:`pull_docker_image` is the pull step of an image (``to_pull_step()`` writes it),
runnable by Prefect's worker.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import anyio
import anyio.to_thread

from runner_storage.exceptions import ConfigurationError, NotFoundError, SourceError, disk_error
from runner_storage.publish import Backend, Materialized, PreviousVersion
from runner_storage.publish.managed import ManagedStorage
from runner_storage.publish.publisher import Verifier
from runner_storage.publish.retention import DEFAULT_GRACE_SECONDS, DEFAULT_KEEP
from runner_storage.secrets import (
    Secret,
    SecretValue,
    is_secret_like,
    resolve_secret,
    secret_from_placeholder,
    secret_values,
)
from runner_storage.steps.emit import secret_placeholder, set_working_directory_step
from runner_storage.storage.registry import (
    MAX_CONFIG_BYTES,
    AuthCache,
    Descriptor,
    ImageManifest,
    ImageReference,
    LayerApplier,
    RegistryClient,
    check_layer_type,
    parse_manifest,
    select_platform,
)
from runner_storage.types import Revision, SyncResult, fingerprint

__all__ = [
    "BUILD_ONLY_ARGUMENTS",
    "DEFAULT_LAYER_CONCURRENCY",
    "PULL_DOCKER_IMAGE_STEP",
    "Docker",
    "DockerBackend",
    "pull_docker_image",
]

#: Our pull step for an image, runnable by Prefect's worker.
PULL_DOCKER_IMAGE_STEP = "runner_storage.deployments.steps.pull_docker_image"
#: Layers downloaded at once.
DEFAULT_LAYER_CONCURRENCY = 4
#: Prefect 1 arguments that only shaped the image build; accepted and ignored.
BUILD_ONLY_ARGUMENTS = (
    "base_image",
    "dockerfile",
    "dockerignore",
    "python_dependencies",
    "env_vars",
    "files",
    "prefect_version",
    "local_image",
    "ignore_healthchecks",
    "base_url",
    "tls_config",
    "build_kwargs",
    "prefect_directory",
    "extra_dockerfile_commands",
)
#: Prefect 1's ``Storage`` keyword arguments; accepted and ignored (they served its agent).
_STORAGE_KEYWORDS = frozenset({"result", "secrets", "labels", "add_default_labels"})
_MANIFEST_FORMAT = 1


class Docker(ManagedStorage):
    """Prefect 1's ``Docker`` storage: the flow file at ``path``, in place or in an image.

    Without an image, the code is already where the flow runs (the flow runs in the
    image): ``destination`` is the folder of ``path``, ``pull_code()`` copies nothing, and
    the pull step is ``set_working_directory``. With one, the folder of ``path`` is read
    from the image's layers (see the module docstring) and ``destination`` is
    ``BASE/NAME``, holding that folder's content.

    Example::

        Docker(path="/opt/prefect/flows/etl.py", stored_as_script=True)   # in place
        Docker(
            registry_url="registry.example.com/team", image_name="flows", image_tag="1.4",
            path="/opt/prefect/flows/etl.py", stored_as_script=True,
            username="puller", password=NamedSecret("REGISTRY_PASSWORD"),
        )

    Args:
        registry_url: Prefect 1's: the registry (and path) the image was pushed to; with
            ``image_name`` and ``image_tag`` it names the image,
            ``registry_url/image_name:image_tag``.
        base_image, dockerfile, dockerignore, python_dependencies, env_vars, files,
            prefect_version, local_image, ignore_healthchecks, base_url, tls_config,
            build_kwargs, prefect_directory, extra_dockerfile_commands: Prefect 1's build
            arguments (:data:`BUILD_ONLY_ARGUMENTS`): accepted and ignored, since the
            image is built already.
        image_name: Prefect 1's image name (may hold the registry when ``registry_url`` is
            not given).
        image_tag: Prefect 1's image tag.
        path: the flow file: its absolute path inside the image (with an image), or on
            this machine (without one; relative to the working directory).
        stored_as_script: Prefect 1's; ``False`` without ``path`` means a pickled flow,
            which is refused (unpickling fetched bytes runs arbitrary code).
        extra_dockerfile_commands: see the build arguments.
        image: the image reference, ``registry/repository:tag`` or
            ``registry/repository@sha256:...`` (pinned); instead of Prefect 1's three
            fields. There is no default registry: the host comes first.
        username: the registry login's user (text or a secret).
        password: its password or token: a :class:`~runner_storage.Secret` (or
            :class:`~runner_storage.storage.NamedSecret`), read at every pull; plain text
            works for pulls, but ``to_pull_step()`` refuses it.
        insecure: ``None`` (default): plain HTTP only for a loopback registry
            (``localhost``, ``127.0.0.0/8``, ``::1``), HTTPS otherwise; ``True``: plain
            HTTP; ``False``: HTTPS even on loopback. A ``registry_url`` starting with
            ``http://`` or ``https://`` sets it when not given.
        pull_interval: seconds between pulls; None pulls once.
        name: the destination name under the base path (with an image); the repository
            path (``team/flows``) by default.
        keep_versions: how many published versions to keep.
        grace_period: seconds a retired version is kept at least, for running work.
        **kwargs: Prefect 1's ``Storage`` arguments (``result``, ``secrets``, ``labels``,
            ``add_default_labels``), accepted and ignored.

    Raises:
        ConfigurationError: no ``path`` (a pickled flow without ``stored_as_script``), a
            missing flow file (without an image), an invalid image reference, the image
            given twice or in part, or a password without a user.
        TypeError: an argument Prefect 1 does not have either.
    """

    def __init__(  # noqa: PLR0917 - Prefect 1's signature, positional as there
        self,
        registry_url: str | None = None,
        base_image: str | None = None,
        dockerfile: str | None = None,
        dockerignore: str | None = None,
        python_dependencies: list[str] | None = None,
        image_name: str | None = None,
        image_tag: str | None = None,
        env_vars: dict[str, Any] | None = None,
        files: dict[str, str] | None = None,
        prefect_version: str | None = None,
        local_image: bool = False,
        ignore_healthchecks: bool = False,
        base_url: str | None = None,
        tls_config: Any = False,
        build_kwargs: dict[str, Any] | None = None,
        prefect_directory: str = "/opt/prefect",
        path: str | os.PathLike[str] | None = None,
        stored_as_script: bool = False,
        extra_dockerfile_commands: list[str] | None = None,
        *,
        image: str | None = None,
        username: SecretValue = None,
        password: SecretValue = None,
        insecure: bool | None = None,
        pull_interval: float | None = 60,
        name: str | None = None,
        keep_versions: int = DEFAULT_KEEP,
        grace_period: float = DEFAULT_GRACE_SECONDS,
        **kwargs: Any,
    ) -> None:
        unknown = sorted(set(kwargs) - _STORAGE_KEYWORDS)
        if unknown:
            raise TypeError(f"Docker() got an unexpected keyword argument {unknown[0]!r}")
        # Prefect 1's attributes, kept under their names for code that reads them.
        self.registry_url = registry_url
        self.base_image = base_image
        self.dockerfile = dockerfile
        self.dockerignore = dockerignore
        self.python_dependencies = python_dependencies
        self.image_name = image_name
        self.image_tag = image_tag
        self.env_vars = env_vars
        self.files = files
        self.prefect_version = prefect_version
        self.local_image = local_image
        self.ignore_healthchecks = ignore_healthchecks
        self.base_url = base_url
        self.tls_config = tls_config
        self.build_kwargs = build_kwargs
        self.prefect_directory = prefect_directory
        self.path = None if path is None else os.fspath(path)
        self.stored_as_script = stored_as_script
        self.extra_dockerfile_commands = extra_dockerfile_commands

        self._reference = _image_reference(image, registry_url, image_name, image_tag)
        if self.path is None:
            if not stored_as_script:
                raise ConfigurationError(
                    "Docker without path holds a pickled flow, which is refused: unpickling"
                    " fetched bytes runs arbitrary code; store the flow as a script and give"
                    " path= (its file) with stored_as_script=True"
                )
            raise ConfigurationError(
                "Docker needs path=, the flow file's path (inside the image, when one is given)"
            )
        insecure = _checked_login(username, password, insecure, registry_url)
        self._username = username
        self._password = password
        self._insecure = insecure
        self._explicit_name = name
        self._auth = AuthCache()
        if self._reference is None:
            self._flow_file = Path(os.path.abspath(Path(self.path).expanduser()))
            if not self._flow_file.is_file():
                raise ConfigurationError(
                    f"flow file {self._flow_file} does not exist"
                    + (" (it is a folder)" if self._flow_file.is_dir() else "")
                    + ": give the path of the flow script where the flow runs, or image= to"
                    " read it from an image"
                )
            self._image_path = PurePosixPath()
            default_name = "docker"
        else:
            self._image_path = _image_path(self.path)
            default_name = self._reference.repository
        super().__init__(
            name=name or default_name,
            pull_interval=pull_interval,
            keep_versions=keep_versions,
            grace_period=grace_period,
        )

    # -- what runners use ------------------------------------------------------------------

    @property
    def image(self) -> str | None:
        """The image reference (``registry/repository:tag``), or None for code in place.

        Prefect 1 called this ``name``; here ``name`` is the destination name, as for every
        storage that publishes.
        """
        return None if self._reference is None else str(self._reference)

    @property
    def destination(self) -> Path:
        """The folder holding the flow: ``BASE/NAME`` with an image, else ``path``'s folder."""
        if self._reference is None:
            return self._flow_file.parent
        return super().destination

    @property
    def flow_path(self) -> Path:
        """The flow file: ``destination / basename(path)``, or ``path`` itself in place."""
        if self._reference is None:
            return self._flow_file
        return self.destination / self._image_path.name

    async def pull_code(
        self, *, verify: Verifier | None = None, timeout: float | None = None
    ) -> SyncResult:
        """Publish the image's folder if the image changed; in place, just check the file.

        Args:
            verify: a pre-publish check (see :meth:`ManagedStorage.pull_code`); unused in
                place.
            timeout: seconds the pull may take (see :meth:`ManagedStorage.pull_code`).

        Returns:
            What the pull did; in place always unchanged, with the folder as revision.

        Raises:
            NotFoundError: the flow file is gone (in place), or the image, its folder or
                the flow file is missing.
            AuthenticationError: the registry refused the login, or needs one.
            TransientSourceError: the registry failed or could not be reached.
            UnsafeContentError: a layer would write outside the folder.
            SourceError: a blob does not match its digest, or the image is not readable.
        """
        if self._reference is None:
            if not await anyio.Path(self._flow_file).is_file():
                raise NotFoundError(
                    f"flow file {self._flow_file} does not exist any more: check the mount or"
                    " image it came from"
                )
            return SyncResult(revision=str(self._flow_file.parent), changed=False)
        return await super().pull_code(verify=verify, timeout=timeout)

    async def check(self) -> Revision | None:
        """The image's digest as a revision (one manifest request); None in place."""
        if self._reference is None:
            return None
        return await super().check()

    def to_pull_step(self) -> dict[str, Any]:
        """The Prefect pull step: ``set_working_directory`` in place, else ``pull_docker_image``.

        The image's step is ours (:data:`PULL_DOCKER_IMAGE_STEP`), with the login as
        placeholders.

        Raises:
            ConfigurationError: the password (or a secret username) has no placeholder:
                plain text would be written into the step.
        """
        if self._reference is None:
            return set_working_directory_step(str(self._flow_file.parent))
        step: dict[str, Any] = {
            "requires": "runner-storage",
            "image": str(self._reference),
            "path": str(self._image_path),
        }
        if self._username is not None:
            step["username"] = (
                self._username
                if isinstance(self._username, str)
                else secret_placeholder(self._username, what="the registry username")
            )
        if self._password is not None:
            step["password"] = secret_placeholder(self._password, what="the registry password")
        if self._insecure is not None:
            step["insecure"] = self._insecure
        if self._explicit_name is not None:
            step["name"] = self.name
        return {PULL_DOCKER_IMAGE_STEP: step}

    def backend(self) -> Backend:
        """A backend for one pull of the image: one manifest request, then what changed.

        Raises:
            ConfigurationError: in place, where there is nothing to publish.
        """
        if self._reference is None:
            raise ConfigurationError(
                f"Docker without an image publishes nothing: {self._flow_file.parent} is used"
                " as it is"
            )
        return DockerBackend(
            reference=self._reference,
            path=self._image_path,
            login=self._login,
            insecure=self._insecure,
            auth=self._auth,
            redact=self.redact,
        )

    def __repr__(self) -> str:
        if self._reference is None:
            return f"Docker(path={str(self._flow_file)!r})"
        return f"Docker(image={str(self._reference)!r}, path={str(self._image_path)!r})"

    # -- ManagedStorage's hooks ------------------------------------------------------------

    def _login(self) -> tuple[str, str] | None:
        """The login, read now (secrets are read at every pull)."""
        if self._username is None:
            return None
        user = resolve_secret(self._username)
        password = "" if self._password is None else resolve_secret(self._password)
        return user, password

    def _source_label(self) -> str:
        if self._reference is None:
            return str(self._flow_file)
        # Without tag or digest: following another tag of the same image is no conflict.
        return f"docker://{self._reference.name}"

    def _secret_values(self) -> list[str]:
        return secret_values({"password": self._password})

    def _identity(self) -> tuple[Any, ...]:
        if self._reference is None:
            return (self._flow_file,)
        return (
            str(self._reference),
            str(self._image_path),
            self._username,
            self._password,
            self._insecure,
        )


def _checked_login(
    username: SecretValue, password: SecretValue, insecure: bool | None, registry_url: str | None
) -> bool | None:
    """Check the login and the scheme rule; ``insecure`` as ``registry_url``'s scheme says.

    Raises:
        ConfigurationError: a password without a user, a value of the wrong type.
    """
    if password is not None and username is None:
        raise ConfigurationError(
            "a registry password was given without a username: give username= too"
        )
    for value, what in ((username, "username"), (password, "password")):
        if value is not None and not (isinstance(value, str) or is_secret_like(value)):
            raise ConfigurationError(
                f"the registry {what} must be text or a secret, got {type(value).__name__}"
            )
    if insecure is not None and not isinstance(insecure, bool):
        raise ConfigurationError(f"insecure must be True, False or None, got {insecure!r}")
    scheme, separator, _ = (registry_url or "").partition("://")
    if insecure is None and separator and scheme.lower() in ("http", "https"):
        return scheme.lower() == "http"  # Prefect 1's registry_url may say which
    return insecure


def _image_reference(
    image: str | None,
    registry_url: str | None,
    image_name: str | None,
    image_tag: str | None,
) -> ImageReference | None:
    """The image described, if any: ``image``, or Prefect 1's three fields."""
    prefect1 = registry_url or image_name or image_tag
    if image is not None:
        if prefect1:
            raise ConfigurationError(
                "the image is given twice: use image= or Prefect 1's registry_url, image_name"
                " and image_tag, not both"
            )
        return ImageReference.parse(image)
    if not prefect1:
        return None
    if not image_name or not image_tag:
        raise ConfigurationError(
            "Docker storage is missing required fields image_name and image_tag: give both"
            " as the image was built (or image=), or none of registry_url, image_name and"
            " image_tag for code already in place"
        )
    registry = (registry_url or "").strip().rstrip("/")
    for scheme in ("https://", "http://"):
        registry = registry.removeprefix(scheme)
    composed = str(PurePosixPath(registry, image_name)) if registry else image_name
    return ImageReference.parse(f"{composed}:{image_tag}")


def _image_path(path: str) -> PurePosixPath:
    """``path`` inside an image: absolute, without ``..``, in a folder other than ``/``."""
    inside = PurePosixPath(path)
    if not inside.is_absolute() or ".." in inside.parts:
        raise ConfigurationError(
            f"path {path!r} must be the flow file's absolute path inside the image, without"
            " '..', like /opt/prefect/flows/etl.py"
        )
    if len(inside.parts) < 3:
        raise ConfigurationError(
            f"path {path!r} is at the image's root, and the whole image would be published:"
            " keep the flow in a folder, like /opt/prefect/flows/etl.py"
        )
    return inside


@dataclass(frozen=True)
class DockerBackend:
    """One pull of an image's folder: resolve the digest, then apply what is needed.

    Layers a previous pull found to hold nothing under the folder are not downloaded
    again (the published version's manifest remembers them by digest), so a new tag that
    shares its base with the last one costs only its new layers.

    Attributes:
        reference: the image.
        path: the flow file inside the image; its folder is published.
        login: reads the login at every pull (None: anonymous).
        insecure: the scheme rule (see :func:`runner_storage.storage.registry.registry_scheme`).
        auth: what earlier pulls learned about logging in.
        redact: removes the login's secrets from text.
        concurrency: layers downloaded at once.
    """

    reference: ImageReference
    path: PurePosixPath
    login: Callable[[], tuple[str, str] | None]
    insecure: bool | None
    auth: AuthCache
    redact: Callable[[str], str]
    concurrency: int = DEFAULT_LAYER_CONCURRENCY

    def _client(self) -> RegistryClient:
        return RegistryClient(
            self.reference,
            login=self.login(),
            insecure=self.insecure,
            auth=self.auth,
            redact=self.redact,
        )

    def _revision(self, digest: str, detail: Any = None) -> Revision:
        tree = fingerprint("docker-image", _MANIFEST_FORMAT, digest, str(self.path))
        return Revision(id=digest.removeprefix("sha256:"), digest=tree, detail=detail)

    async def resolve(self) -> Revision:
        """The manifest digest: one HEAD, or nothing at all when the reference pins it."""
        if self.reference.digest is not None:
            return self._revision(self.reference.digest)
        async with self._client() as client:
            digest, media_type, body = await client.resolve()
        return self._revision(digest, (media_type, body))

    async def materialize(
        self, revision: Revision | None, staging: Path, previous: PreviousVersion | None
    ) -> Materialized:
        """Apply the image's layers to ``staging``, keeping only the flow's folder.

        Raises:
            NotFoundError: the image has no such folder or flow file.
            UnsafeContentError: a layer would write outside the folder.
            SourceError: a blob does not match its digest, or the image is unreadable.
        """
        if revision is None:  # resolve always gives one
            revision = await self.resolve()
        digest = f"sha256:{revision.id}"
        where = str(self.reference)
        directory = PurePosixPath(*self.path.parent.parts[1:])
        known = _known_layers(previous, directory)
        blobs = staging.with_name(f"{staging.name}.blobs")
        applier = LayerApplier(staging, directory, where=where)
        touched: dict[str, bool] = {}
        try:
            await anyio.to_thread.run_sync(_make_dir, blobs)
            async with self._client() as client:
                manifest = await self._image_manifest(client, digest, revision.detail)
                needed = [
                    layer for layer in manifest.layers if known.get(layer.digest) is not False
                ]
                for layer in needed:
                    check_layer_type(layer, where=where)
                await self._apply_layers(client, needed, blobs, applier, touched)
                fetched = client.bytes_fetched
            await anyio.to_thread.run_sync(applier.finish)
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(shutil.rmtree, blobs, True)
        await anyio.to_thread.run_sync(self._check_flow_file, staging)
        layers = {
            layer.digest: touched.get(layer.digest, bool(known.get(layer.digest, True)))
            for layer in manifest.layers
        }
        return Materialized(
            revision=revision,
            files_fetched=applier.files,
            bytes_fetched=fetched,
            manifest={"format": _MANIFEST_FORMAT, "directory": str(directory), "layers": layers},
        )

    async def _image_manifest(
        self, client: RegistryClient, digest: str, detail: Any
    ) -> ImageManifest:
        """The image manifest for this machine, its config checked."""
        where = str(self.reference)
        body: bytes | None = None
        if isinstance(detail, tuple) and detail[1] is not None:
            media_type, body = detail  # resolve hashed it already
        if body is None:
            body, media_type = await client.manifest(digest)
        parsed = parse_manifest(body, media_type, where=where)
        if not isinstance(parsed, ImageManifest):
            entry = select_platform(parsed, where=where)
            body, media_type = await client.manifest(entry.digest)
            parsed = parse_manifest(body, media_type or entry.media_type, where=where)
            if not isinstance(parsed, ImageManifest):
                raise NotFoundError(
                    f"the image index of {where} points to another index, not to an image:"
                    " push a single-level index"
                )
        config = await client.small_blob(parsed.config, MAX_CONFIG_BYTES)
        _check_config(config, parsed, where=where)
        return parsed

    async def _apply_layers(
        self,
        client: RegistryClient,
        layers: list[Descriptor],
        blobs: Path,
        applier: LayerApplier,
        touched: dict[str, bool],
    ) -> None:
        """Download layers concurrently (bounded) and apply them in order as they arrive."""
        limiter = anyio.CapacityLimiter(self.concurrency)
        arrived = [anyio.Event() for _ in layers]
        failures: list[BaseException | None] = [None] * len(layers)
        targets = [blobs / f"{uuid.uuid4().hex}.layer" for _ in layers]

        async def download(index: int) -> None:
            try:
                async with limiter:
                    await client.download_blob(layers[index], targets[index])
            except Exception as exc:  # noqa: BLE001 - handed to the applying loop
                failures[index] = exc
            finally:
                arrived[index].set()

        async def apply_in_order() -> None:
            for index, layer in enumerate(layers):
                await arrived[index].wait()
                error = failures[index]
                if error is not None:
                    raise error
                touched[layer.digest] = await anyio.to_thread.run_sync(
                    applier.apply, targets[index], layer.digest
                )
                await anyio.to_thread.run_sync(_unlink, targets[index])

        failure: BaseException | None = None
        async with anyio.create_task_group() as group:
            for index in range(len(layers)):
                group.start_soon(download, index)
            try:
                await apply_in_order()
            except Exception as exc:  # noqa: BLE001 - raised below, outside the group
                failure = exc
                group.cancel_scope.cancel()
        if failure is not None:
            raise failure

    def _check_flow_file(self, staging: Path) -> None:
        flow = staging / self.path.name
        if flow.is_file():
            return
        folder = self.path.parent
        try:
            present = sorted(os.listdir(staging))
        except OSError:
            present = []
        if not present:
            raise NotFoundError(
                f"{folder} is not in image {self.reference}, or is empty: check path (the"
                " flow file's path inside the image)"
            )
        shown = ", ".join(present[:8]) + (", ..." if len(present) > 8 else "")
        raise NotFoundError(
            f"flow file {self.path} is not in image {self.reference} ({folder} has: {shown}):"
            " check path"
        )


def _known_layers(previous: PreviousVersion | None, directory: PurePosixPath) -> dict[str, bool]:
    """What the published version's pull learned: layer digest -> it touched the folder."""
    manifest = previous.manifest if previous is not None else None
    if (
        not isinstance(manifest, dict)
        or manifest.get("format") != _MANIFEST_FORMAT
        or manifest.get("directory") != str(directory)
        or not isinstance(manifest.get("layers"), dict)
    ):
        return {}
    return {k: v for k, v in manifest["layers"].items() if isinstance(v, bool)}


def _check_config(config: bytes, manifest: ImageManifest, *, where: str) -> None:
    """Refuse an artifact that is not a container image, or whose config disagrees."""
    kind = manifest.config.media_type
    if kind and kind not in (
        "application/vnd.oci.image.config.v1+json",
        "application/vnd.docker.container.image.v1+json",
    ):
        raise SourceError(
            f"{where} is not a container image (its config is {kind}): only images are supported"
        )
    try:
        document = json.loads(config)
        diff_ids = document.get("rootfs", {}).get("diff_ids")
    except (ValueError, AttributeError):
        raise SourceError(f"the config of {where} is not a JSON object") from None
    if isinstance(diff_ids, list) and len(diff_ids) != len(manifest.layers):
        raise SourceError(
            f"the config of {where} lists {len(diff_ids)} layers and its manifest"
            f" {len(manifest.layers)}: the image is inconsistent; push it again"
        )


def _make_dir(path: Path) -> None:
    try:
        path.mkdir(parents=True)
    except OSError as exc:
        raise disk_error(f"cannot create {path}", exc) from None


def _unlink(path: Path) -> None:
    path.unlink(missing_ok=True)


# --- the pull step ---------------------------------------------------------------------------


def _step_secret(value: str | None) -> SecretValue:
    """A step input as a secret: ``{{ $VAR }}`` read from the environment, else literal."""
    if value is None or not isinstance(value, str):
        return value
    secret = secret_from_placeholder(value)
    return secret if secret is not None else Secret(value)


async def pull_docker_image(
    image: str,
    path: str,
    *,
    username: str | None = None,
    password: str | None = None,
    insecure: bool | None = None,
    name: str | None = None,
) -> dict[str, str]:
    """Publish the folder of ``path`` from ``image`` under the working directory.

    The pull step :meth:`Docker.to_pull_step` writes for an image: the folder holding the
    flow file ``path`` is read from the image's layers over the registry API (no container
    engine), published as an immutable version with a symlink swapped atomically at
    ``<name>`` (the repository path unless ``name`` is given), and its ``directory``
    returned, relative to the working directory. Called again in the same worker, an
    unchanged image costs one manifest request.

    Example (``prefect.yaml``)::

        pull:
          - runner_storage.deployments.steps.pull_docker_image:
              requires: runner-storage
              image: registry.example.com/team/flows:1.4
              path: /opt/prefect/flows/etl.py
              username: puller
              password: "{{ prefect.blocks.secret.registry-password }}"

    Raises:
        ConfigurationError: a bad reference or path.
        RunnerStorageError: the pull failed; what was published before stays.
    """
    storage = Docker(
        image=image,
        path=path,
        stored_as_script=True,
        username=_step_secret(username),
        password=_step_secret(password),
        insecure=insecure,
        name=name,
        pull_interval=None,
    )
    storage.set_base_path(Path.cwd())
    await storage.pull_code()
    return {"directory": storage.name}
