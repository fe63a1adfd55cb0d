"""The sources the daemon keeps in sync: one settings model per kind, joined in one union.

The options every kind shares (secrets, credentials, hooks) are in :mod:`service.options`.

:data:`SourceSettings` is discriminated on the source kind: ``kind`` when it is given,
otherwise what :func:`runner_storage.classify_source` says of ``source``, so a source
means the same storage to the daemon as to ``create_storage_from_source``. Each model
knows its own options and builds its own storage; a new kind is a new model here, not a
branch elsewhere. An option of another kind is refused by the model (pydantic's
``extra_forbidden``), and :mod:`service.problems` turns that into a line naming both
kinds.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

from pydantic import (
    Discriminator,
    Field,
    Tag,
    TypeAdapter,
    ValidationInfo,
    field_validator,
    model_validator,
)

from runner_storage.exceptions import ConfigurationError
from runner_storage.factory import classify_source
from runner_storage.secrets import strip_url_credentials
from service.options import (
    GitCredentialSettings,
    HookSettings,
    SecretRef,
    Strict,
    comma_list,
    refuse_url_credentials,
    secret_tables,
)

if TYPE_CHECKING:
    from runner_storage.local import LocalStorage
    from runner_storage.publish.managed import ManagedStorage

__all__ = [
    "SOURCE_KIND_ERROR",
    "AzureSource",
    "BitbucketSource",
    "BlockSource",
    "CodeCommitSource",
    "DockerSource",
    "GCSSource",
    "Git1Source",
    "GitCredentialSettings",
    "GitHubSource",
    "GitLabSource",
    "GitSource",
    "HookSettings",
    "LocalSource",
    "ModuleSource",
    "Prefect1Source",
    "RemoteSource",
    "S3Source",
    "SecretRef",
    "SnapshotSource",
    "SourceBase",
    "SourceSettings",
    "WebhookSource",
    "parse_source",
]

#: The pydantic error type of a source whose kind cannot be told.
SOURCE_KIND_ERROR = "source_kind"


class SourceBase(Strict, abc.ABC):
    """What every source has, whatever its kind.

    ``kind`` is the resolved kind (``auto`` is replaced by the model's own). The subclass
    of each kind adds its options and builds its storage.
    """

    #: Whether ``source`` describes a source of this kind (False: it is derived).
    described_by_source: ClassVar[bool] = True

    kind: str
    name: str | None = None
    source: str = Field(min_length=1)
    pull_interval: float | None = Field(default=60.0, gt=0)
    max_staleness: float | None = Field(default=None, gt=0)
    timeout: float = Field(default=600.0, gt=0)
    max_failures: int | None = Field(default=None, ge=1)
    hooks: HookSettings = Field(default_factory=HookSettings)

    @field_validator("kind", mode="before")
    @classmethod
    def _resolve_auto(cls, value: Any) -> Any:
        # The discriminator chose this model for "auto": record what it chose.
        return cls.model_fields["kind"].default if value == "auto" else value

    @classmethod
    def placeholder(cls) -> dict[str, Any]:
        """The least a valid source of this kind holds, to check one option's value alone."""
        return {"source": "placeholder"}

    @property
    def staleness_limit(self) -> float | None:
        """Seconds after which a published version counts as stale, None for never."""
        if self.max_staleness is not None:
            return self.max_staleness
        if self.pull_interval is None:
            return None
        return max(3 * self.pull_interval, self.pull_interval + 60.0)

    def shown(self) -> str:
        """The source as it may be shown: without credentials given in a URL."""
        return strip_url_credentials(self.source)

    def target(self) -> str:
        """What the storage is given: the classifier's target when it agrees with ``kind``.

        A forced kind that the classifier disagrees with gets the source as written.
        """
        try:
            kind, target = classify_source(self.source)
        except ConfigurationError:
            return self.source
        return target if kind == self.kind else self.source

    def build_storage(
        self, *, root: Path, keep_versions: int, grace_period: float
    ) -> ManagedStorage | LocalStorage:
        """The library storage for this source, based at ``root``.

        Args:
            root: the base path every source publishes under (``BASE``).
            keep_versions: how many published versions to keep.
            grace_period: seconds a retired version is kept at least.

        Raises:
            ConfigurationError: the storage refuses the options (one line, naming one).
        """
        storage = self._new_storage({"keep_versions": keep_versions, "grace_period": grace_period})
        storage.set_base_path(root)  # a local source stays where it is
        return storage

    @abc.abstractmethod
    def _new_storage(self, retention: dict[str, Any]) -> ManagedStorage | LocalStorage:
        """The storage of this kind; ``retention`` goes to storages that publish."""


class GitSource(SourceBase):
    """A git repository: branch, tag or commit, sparse directories, submodules, ssh."""

    kind: Literal["git"] = "git"
    branch: str | None = None
    commit_sha: str | None = None
    directories: list[str] | None = None
    include_submodules: bool = False
    depth: int = Field(default=1, ge=0)
    credentials: GitCredentialSettings | None = None
    ssh_key_file: Path | None = None
    known_hosts_file: Path | None = None

    _split_directories = field_validator("directories", mode="before")(comma_list)

    def _new_storage(self, retention: dict[str, Any]) -> ManagedStorage | LocalStorage:
        from runner_storage.git import GitRepository  # noqa: PLC0415 - the engine, when used

        credentials: dict[str, Any] | None = None
        if self.credentials is not None:
            credentials = {"access_token": self.credentials.token.to_secret()}
            if self.credentials.username is not None:
                credentials["username"] = self.credentials.username
        return GitRepository(
            self.target(),
            credentials=credentials,
            name=self.name,
            branch=self.branch,
            commit_sha=self.commit_sha,
            include_submodules=self.include_submodules,
            pull_interval=self.pull_interval,
            directories=self.directories,
            depth=self.depth,
            ssh_key_file=self.ssh_key_file,
            known_hosts_file=self.known_hosts_file,
            **retention,
        )


class RemoteSource(SourceBase):
    """An fsspec folder (object stores, HTTP); ``settings`` go to the filesystem."""

    kind: Literal["remote"] = "remote"
    settings: dict[str, Any] = Field(default_factory=dict)

    _secret_tables = field_validator("settings")(secret_tables)

    def fsspec_settings(self) -> dict[str, Any]:
        """The fsspec settings, with each ``{env=...}`` / ``{file=...}`` table a Secret."""
        return dict(self.settings)

    def _new_storage(self, retention: dict[str, Any]) -> ManagedStorage | LocalStorage:
        from runner_storage.remote import RemoteStorage  # noqa: PLC0415 - fsspec is heavy

        refuse_url_credentials(self.source)
        settings = self.fsspec_settings()
        return RemoteStorage(
            self.target(), pull_interval=self.pull_interval, name=self.name, **retention, **settings
        )


class SnapshotSource(SourceBase):
    """A snapshot root (``snapshot+s3://...``, or any root with ``kind = "snapshot"``).

    ``ref`` is followed (``latest`` by default) unless ``snapshot`` pins an id;
    ``settings`` go to the root's filesystem (secret tables as for remote sources).
    """

    kind: Literal["snapshot"] = "snapshot"
    ref: str = "latest"
    snapshot: str | None = None
    settings: dict[str, Any] = Field(default_factory=dict)

    _secret_tables = field_validator("settings")(secret_tables)

    @model_validator(mode="after")
    def _ref_or_snapshot(self) -> SnapshotSource:
        if self.snapshot is not None and "ref" in self.model_fields_set:
            raise ValueError(
                "ref and snapshot exclude each other: give ref (a name to follow) or snapshot"
                " (an id to pin)"
            )
        return self

    def _new_storage(self, retention: dict[str, Any]) -> ManagedStorage | LocalStorage:
        from runner_storage.snapshots.storage import SnapshotStorage  # noqa: PLC0415 - fsspec

        refuse_url_credentials(self.target())
        return SnapshotStorage(
            self.target(),
            ref=self.ref,
            snapshot=self.snapshot,
            pull_interval=self.pull_interval,
            name=self.name,
            **retention,
            **self.settings,
        )


class LocalSource(SourceBase):
    """A folder on this machine, used where it is: it publishes nothing.

    So it takes no ``name`` and no ``hooks``; they are refused when the storage is built,
    with the other problems of sources that are valid on their own.
    """

    kind: Literal["local"] = "local"

    def target(self) -> str:
        """The folder: a plain path, or the path of a ``file://`` or ``local://`` URL.

        Raises:
            ConfigurationError: the source is a URL of another scheme.
        """
        kind, target = classify_source(self.source)
        if kind == "local":
            return target
        if "://" in self.source:
            raise ConfigurationError(
                f'{self.shown()!r} is a {kind} URL, not a folder: remove kind = "local",'
                " or give a path"
            )
        return self.source  # a folder whose name ends in .git, say

    def _new_storage(self, retention: dict[str, Any]) -> ManagedStorage | LocalStorage:
        from runner_storage.local import LocalStorage  # noqa: PLC0415 - as the other kinds

        if self.hooks.configured():
            raise ConfigurationError("hooks need a source that publishes; local sources do not")
        if self.name is not None:
            raise ConfigurationError(
                "name does not apply to local sources: they are used where they are"
            )
        return LocalStorage(self.target(), pull_interval=self.pull_interval)


class BlockSource(SourceBase):
    """A filesystem block, pulled through ``BlockStorageAdapter``.

    ``block`` names the class and the other options are its arguments: ``basepath``, and
    for ``RemoteFileSystem`` its ``settings`` (secret tables as for remote sources).
    ``from_path`` is the folder inside the block to pull (default: all of it). A block
    source needs a ``name``: a block has no URL to derive one from. ``source`` is not
    given; it is the basepath, as the daemon shows the source.
    """

    described_by_source: ClassVar[bool] = False

    kind: Literal["block"] = "block"
    name: str = Field(min_length=1)
    block: Literal["LocalFileSystem", "RemoteFileSystem"]
    basepath: str = Field(min_length=1)
    settings: dict[str, Any] = Field(default_factory=dict)
    from_path: str | None = None

    _secret_tables = field_validator("settings")(secret_tables)

    @model_validator(mode="before")
    @classmethod
    def _source_is_the_basepath(cls, data: Any) -> Any:
        if not isinstance(data, Mapping):
            return data
        if "source" in data:
            raise ValueError(
                "source does not apply to block sources: the block's basepath says where the"
                " code is; remove source"
            )
        basepath = data.get("basepath")
        # Only basepath's own problems are reported when it is missing or not text.
        return {**data, "source": basepath if isinstance(basepath, str) and basepath else "block"}

    @field_validator("settings")
    @classmethod
    def _remote_only(cls, value: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        if value and info.data.get("block") == "LocalFileSystem":
            raise ValueError("only applies to RemoteFileSystem blocks; LocalFileSystem takes none")
        return value

    @classmethod
    def placeholder(cls) -> dict[str, Any]:
        """The least a valid block source holds."""
        return {"block": "LocalFileSystem", "basepath": "placeholder", "name": "placeholder"}

    def _new_storage(self, retention: dict[str, Any]) -> ManagedStorage | LocalStorage:
        # The block family and fsspec, only when a block source is built.
        from runner_storage.blocks.adapter import BlockStorageAdapter  # noqa: PLC0415
        from runner_storage.blocks.filesystems import (  # noqa: PLC0415
            LocalFileSystem,
            RemoteFileSystem,
        )

        block: LocalFileSystem | RemoteFileSystem
        if self.block == "RemoteFileSystem":
            refuse_url_credentials(self.basepath)
            block = RemoteFileSystem(self.basepath, settings=self.settings)
        else:
            block = LocalFileSystem(self.basepath)
        if self.from_path is not None:
            block.resolve_path(self.from_path)  # a from_path out of the block: refused now
        return BlockStorageAdapter(
            block,
            pull_interval=self.pull_interval,
            name=self.name,
            from_path=self.from_path,
            **retention,
        )


class Prefect1Source(SourceBase):
    """A Prefect 1 flow storage (``runner_storage.storage``), described by its arguments.

    The options are the class's own constructor arguments, by Prefect 1's names; secrets
    are named as in Prefect 1 (``access_token_secret = "GITHUB_ACCESS_TOKEN"``) and read
    at every pull from the environment or the secrets directory. ``source`` is not given:
    it is made from the arguments, for logs and ``/sources``.
    """

    described_by_source: ClassVar[bool] = False
    #: ``module:Class`` of the storage.
    storage_class: ClassVar[str]
    #: The options that make up the shown ``source``.
    shown_by: ClassVar[tuple[str, ...]]
    #: Whether the storage publishes (False: used where it is, like a local source).
    publishes: ClassVar[bool] = True

    @model_validator(mode="before")
    @classmethod
    def _source_from_arguments(cls, data: Any) -> Any:
        if not isinstance(data, Mapping):
            return data
        if "source" in data:
            raise ValueError(
                f"source does not apply to {cls.model_fields['kind'].default} sources: their"
                " options say where the code is; remove source"
            )
        return {**data, "source": f"{cls.model_fields['kind'].default}:{cls.describe(data)}"}

    @classmethod
    def describe(cls, data: Mapping[str, Any]) -> str:
        """The source as shown in logs and ``/sources``: the :attr:`shown_by` options."""
        parts = [str(data[key]) for key in cls.shown_by if data.get(key) not in (None, "")]
        return "/".join(parts) or "?"

    @classmethod
    def placeholder(cls) -> dict[str, Any]:
        """The least a valid source of this kind holds."""
        return dict.fromkeys(cls.shown_by[:1], "placeholder")

    def arguments(self) -> dict[str, Any]:
        """The storage's constructor arguments: this kind's own options that were set."""
        own = set(type(self).model_fields) - set(SourceBase.model_fields)
        return {key: getattr(self, key) for key in sorted(own) if key in self.model_fields_set}

    def _new_storage(self, retention: dict[str, Any]) -> ManagedStorage | LocalStorage:
        import importlib  # noqa: PLC0415

        module, _, name = self.storage_class.partition(":")
        factory = getattr(importlib.import_module(module), name)
        arguments = self.arguments()
        if self.publishes:
            arguments.update(name=self.name, **retention)
        elif self.name is not None or self.hooks.configured():
            raise ConfigurationError(
                f"name and hooks do not apply to {self.kind} sources: their code is used"
                " where it is"
            )
        storage: ManagedStorage | LocalStorage = factory(
            **arguments, pull_interval=self.pull_interval
        )
        return storage


class GitHubSource(Prefect1Source):
    """Prefect 1's ``GitHub``: ``repo``, ``path``, ``ref``, the token secret, ``base_url``."""

    storage_class: ClassVar[str] = "runner_storage.storage.hosts:GitHub"
    shown_by: ClassVar[tuple[str, ...]] = ("repo", "path")
    kind: Literal["github"] = "github"
    repo: str = Field(min_length=1)
    path: str = Field(min_length=1)
    ref: str | None = None
    access_token_secret: str | None = None
    base_url: str | None = None


class GitLabSource(Prefect1Source):
    """Prefect 1's ``GitLab``: ``repo`` (path or id), ``host``, ``path``, ``ref``, token secret."""

    storage_class: ClassVar[str] = "runner_storage.storage.hosts:GitLab"
    shown_by: ClassVar[tuple[str, ...]] = ("repo", "path")
    kind: Literal["gitlab"] = "gitlab"
    repo: str | int
    host: str | None = None
    path: str = Field(min_length=1)
    ref: str | None = None
    access_token_secret: str | None = None


class BitbucketSource(Prefect1Source):
    """Prefect 1's ``Bitbucket``: Server (``host``) or Cloud (``workspace``)."""

    storage_class: ClassVar[str] = "runner_storage.storage.hosts:Bitbucket"
    shown_by: ClassVar[tuple[str, ...]] = ("project", "repo", "path")
    kind: Literal["bitbucket"] = "bitbucket"
    project: str = Field(min_length=1)
    repo: str = Field(min_length=1)
    workspace: str | None = None
    host: str | None = None
    path: str = Field(min_length=1)
    ref: str | None = None
    access_token_secret: str | None = None
    cloud_username_secret: str | None = None
    cloud_app_password_secret: str | None = None


class CodeCommitSource(Prefect1Source):
    """Prefect 1's ``CodeCommit``: ``repo``, ``path``, ``commit``, ``client_options``."""

    storage_class: ClassVar[str] = "runner_storage.storage.codecommit:CodeCommit"
    shown_by: ClassVar[tuple[str, ...]] = ("repo", "path")
    kind: Literal["codecommit"] = "codecommit"
    repo: str = Field(min_length=1)
    path: str = Field(min_length=1)
    commit: str | None = None
    client_options: dict[str, Any] | None = None


class Git1Source(Prefect1Source):
    """Prefect 1's ``Git`` (kind ``git1``: ``git`` is the git repository source)."""

    storage_class: ClassVar[str] = "runner_storage.storage.git:Git"
    shown_by: ClassVar[tuple[str, ...]] = ("repo_host", "repo", "flow_path")
    kind: Literal["git1"] = "git1"
    flow_path: str = Field(min_length=1)
    repo: str | None = None
    repo_host: str = "github.com"
    flow_name: str | None = None
    git_token_secret_name: str | None = None
    git_token_username: str | None = None
    git_clone_url_secret_name: str | None = None
    branch_name: str | None = None
    tag: str | None = None
    commit: str | None = None
    clone_depth: int = Field(default=1, ge=0)
    use_ssh: bool = False
    format_access_token: bool = True


class S3Source(Prefect1Source):
    """Prefect 1's ``S3``: ``bucket``, ``key``, ``client_options`` (boto3's)."""

    storage_class: ClassVar[str] = "runner_storage.storage.buckets:S3"
    shown_by: ClassVar[tuple[str, ...]] = ("bucket", "key")
    kind: Literal["s3"] = "s3"
    bucket: str = Field(min_length=1)
    key: str = Field(min_length=1)
    client_options: dict[str, Any] | None = None

    _secret_tables = field_validator("client_options")(
        lambda value: secret_tables(value) if value else value
    )


class GCSSource(Prefect1Source):
    """Prefect 1's ``GCS``: ``bucket``, ``key``, ``project``, and gcsfs ``settings``."""

    storage_class: ClassVar[str] = "runner_storage.storage.buckets:GCS"
    shown_by: ClassVar[tuple[str, ...]] = ("bucket", "key")
    kind: Literal["gcs"] = "gcs"
    bucket: str = Field(min_length=1)
    key: str = Field(min_length=1)
    project: str | None = None
    settings: dict[str, Any] = Field(default_factory=dict)

    _secret_tables = field_validator("settings")(secret_tables)


class AzureSource(Prefect1Source):
    """Prefect 1's ``Azure``: ``container``, ``blob_name``, ``connection_string_secret``."""

    storage_class: ClassVar[str] = "runner_storage.storage.buckets:Azure"
    shown_by: ClassVar[tuple[str, ...]] = ("container", "blob_name")
    kind: Literal["azure"] = "azure"
    container: str = Field(min_length=1)
    blob_name: str = Field(min_length=1)
    connection_string_secret: str | None = None
    settings: dict[str, Any] = Field(default_factory=dict)

    _secret_tables = field_validator("settings")(secret_tables)


class ModuleSource(Prefect1Source):
    """Prefect 1's ``Module``: an installed module, used where it is."""

    storage_class: ClassVar[str] = "runner_storage.storage.local:Module"
    shown_by: ClassVar[tuple[str, ...]] = ("module",)
    publishes: ClassVar[bool] = False
    kind: Literal["module"] = "module"
    module: str = Field(min_length=1)


class WebhookSource(Prefect1Source):
    """Prefect 1's ``Webhook``: the get request, templated as Prefect 1 templated it.

    Its ``$VAR`` placeholders are filled from the environment and the named secrets at
    every pull. Only the get request is needed to pull; the build request is the deploy
    side's.
    """

    storage_class: ClassVar[str] = "runner_storage.storage.webhook:Webhook"
    shown_by: ClassVar[tuple[str, ...]] = ("flow_script_path",)
    kind: Literal["webhook"] = "webhook"
    get_flow_request_kwargs: dict[str, Any]
    get_flow_request_http_method: str = "GET"
    flow_script_path: str | None = None

    @classmethod
    def describe(cls, data: Mapping[str, Any]) -> str:
        """The url as written (templates unfilled, so no secret), without its query."""
        request = data.get("get_flow_request_kwargs")
        url = request.get("url") if isinstance(request, Mapping) else None
        if isinstance(url, str):
            return strip_url_credentials(url).split("?", 1)[0]
        return super().describe(data)

    @classmethod
    def placeholder(cls) -> dict[str, Any]:
        """The least a valid webhook source holds."""
        return {"get_flow_request_kwargs": {"url": "https://example.com/flow.py"}}

    def arguments(self) -> dict[str, Any]:
        """Prefect 1's arguments: no build request, the get request as given."""
        return {
            "build_request_kwargs": None,
            "build_request_http_method": None,
            **super().arguments(),
            "get_flow_request_http_method": self.get_flow_request_http_method,
        }


class DockerSource(Prefect1Source):
    """Prefect 1's ``Docker``: ``path`` where it is, or extracted from ``image``'s layers.

    ``username`` and ``password`` log in to the registry; ``password`` is a secret value
    (``{ env = "VAR" }``, ``{ file = "/path" }``).
    """

    storage_class: ClassVar[str] = "runner_storage.storage.docker:Docker"
    shown_by: ClassVar[tuple[str, ...]] = ("image", "registry_url", "image_name", "path")
    kind: Literal["docker"] = "docker"
    path: str = Field(min_length=1)
    image: str | None = None
    registry_url: str | None = None
    image_name: str | None = None
    image_tag: str | None = None
    username: str | None = None
    password: SecretRef | None = None
    insecure: bool | None = None

    def arguments(self) -> dict[str, Any]:
        """The constructor arguments, the password as a library secret."""
        arguments = super().arguments()
        if self.password is not None:
            arguments["password"] = self.password.to_secret()
        return arguments


#: The model of each kind, by its tag. A new kind: its model here and in SourceSettings.
MODELS: dict[str, type[SourceBase]] = {
    "git": GitSource,
    "remote": RemoteSource,
    "snapshot": SnapshotSource,
    "local": LocalSource,
    "block": BlockSource,
    "github": GitHubSource,
    "gitlab": GitLabSource,
    "bitbucket": BitbucketSource,
    "codecommit": CodeCommitSource,
    "git1": Git1Source,
    "s3": S3Source,
    "gcs": GCSSource,
    "azure": AzureSource,
    "module": ModuleSource,
    "docker": DockerSource,
    "webhook": WebhookSource,
}


def _source_kind(value: Any) -> str | None:
    """The tag of the model for ``value``, or None (reported as :data:`SOURCE_KIND_ERROR`)."""
    if isinstance(value, SourceBase):
        return value.kind
    if not isinstance(value, Mapping):
        return None
    kind = value.get("kind", "auto")
    if kind != "auto":
        return kind if kind in MODELS else None
    source = value.get("source")
    if not isinstance(source, str):
        return None
    try:
        return classify_source(source)[0]
    except ConfigurationError:
        return None


#: One source: the model of its kind.
SourceSettings = Annotated[
    Annotated[GitSource, Tag("git")]
    | Annotated[RemoteSource, Tag("remote")]
    | Annotated[SnapshotSource, Tag("snapshot")]
    | Annotated[LocalSource, Tag("local")]
    | Annotated[BlockSource, Tag("block")]
    | Annotated[GitHubSource, Tag("github")]
    | Annotated[GitLabSource, Tag("gitlab")]
    | Annotated[BitbucketSource, Tag("bitbucket")]
    | Annotated[CodeCommitSource, Tag("codecommit")]
    | Annotated[Git1Source, Tag("git1")]
    | Annotated[S3Source, Tag("s3")]
    | Annotated[GCSSource, Tag("gcs")]
    | Annotated[AzureSource, Tag("azure")]
    | Annotated[ModuleSource, Tag("module")]
    | Annotated[DockerSource, Tag("docker")]
    | Annotated[WebhookSource, Tag("webhook")],
    Discriminator(
        _source_kind,
        custom_error_type=SOURCE_KIND_ERROR,
        custom_error_message="the kind of this source cannot be told",
    ),
]

_ADAPTER: TypeAdapter[SourceSettings] = TypeAdapter(SourceSettings)


def parse_source(data: Any) -> SourceBase:
    """Validate one source given as a mapping.

    Raises:
        ValidationError: its locations start with the kind's tag; see
            :func:`service.problems.describe_source_error`.
    """
    source: SourceBase = _ADAPTER.validate_python(data)
    return source
