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
from runner_storage.factory import SourceKind, classify_source
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
    "BlockSource",
    "GitCredentialSettings",
    "GitSource",
    "HookSettings",
    "LocalSource",
    "RemoteSource",
    "SecretRef",
    "SnapshotSource",
    "SourceBase",
    "SourceSettings",
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

    kind: SourceKind | Literal["block"]
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


#: The model of each kind, by its tag. A new kind: its model here and in SourceSettings.
MODELS: dict[str, type[SourceBase]] = {
    "git": GitSource,
    "remote": RemoteSource,
    "snapshot": SnapshotSource,
    "local": LocalSource,
    "block": BlockSource,
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
    | Annotated[BlockSource, Tag("block")],
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
