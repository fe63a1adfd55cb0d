"""RemoteStorage: code in an object store or any fsspec filesystem, synced by listing diff.

A pull lists the URL once; when the listing's digest is the published one, that is all it
costs. Otherwise the new version is planned against the published one
(:mod:`runner_storage.remote.plan`): unchanged files are hard-linked from it, new and changed
objects downloaded concurrently, removed ones simply left out, and the result published
atomically by :class:`~runner_storage.publish.Publisher`.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote, urlsplit

from runner_storage.exceptions import ConfigurationError
from runner_storage.fs.paths import destination_name
from runner_storage.fs.protocols import check_protocol, required_package
from runner_storage.fs.transfer import check_concurrency
from runner_storage.publish.managed import ManagedStorage
from runner_storage.publish.retention import DEFAULT_GRACE_SECONDS, DEFAULT_KEEP
from runner_storage.remote.backend import RemoteBackend, public_url
from runner_storage.secrets import secret_values
from runner_storage.steps import pull_from_remote_storage_step

__all__ = ["DEFAULT_TRANSFER_CONCURRENCY", "RemoteStorage"]

DEFAULT_TRANSFER_CONCURRENCY = 16


class RemoteStorage(ManagedStorage):
    """Pull the contents of an fsspec URL, as Prefect's ``RemoteStorage`` does.

    The destination follows Prefect's rule, ``BASE/<netloc>/<path>``: ``s3://bucket/flows``
    publishes at ``BASE/bucket/flows``, ``memory://folder`` at ``BASE/folder``, and
    ``file:///srv/flows`` (no netloc) at ``BASE/srv/flows``. Credentials in the URL are
    never part of the name.

    Settings are passed to the fsspec filesystem with secrets
    (:class:`~runner_storage.Secret`, Prefect ``Secret`` blocks) resolved at every pull, so
    rotated credentials take effect on the next pull. Pulls whose resolved settings are
    equal share one filesystem and its warm connections; a rotated secret gets a new one,
    and so does the pull after a failed one.

    What a pull costs: one recursive listing, then one read per new or changed object.
    A no-op is the listing alone: one request on S3 and GCS, two on Azure (adlfs first
    asks whether the URL is a blob). HTTP has no listing API: each directory page is
    fetched and each file answered with a HEAD, for its size and validator. FTP lists
    with one MLSD (RFC 3659) per folder, over a connection of the pull's own (never one
    shared with another pull), and downloads one file at a time, whatever
    ``transfer_concurrency`` says; a server without MLSD is refused, since LIST output
    cannot tell a file rewritten with the same size.

    An object counts as changed when its size or content token changes: the ETag (S3,
    Azure), the MD5 (GCS), the ETag or else Last-Modified (HTTP), the mtime (file), the
    MLSD modification time, to the second (FTP).

    Example::

        storage = RemoteStorage(
            "s3://my-bucket/flows",
            key=Secret.from_env("AWS_ACCESS_KEY_ID"),
            secret=Secret.from_env("AWS_SECRET_ACCESS_KEY"),
        )
        result = await storage.pull_code()

    Args:
        url: the fsspec URL of a folder (or of a single object, published under its
            basename).
        pull_interval: seconds between pulls; None pulls once.
        keep_versions: how many published versions to keep.
        grace_period: seconds a retired version is kept at least, for running work.
        transfer_concurrency: the most objects downloaded at once (always 1 on ftp://).
        name: the destination name under the base path; Prefect's
            ``<netloc>/<path>`` when not given.
        **settings: settings of the fsspec filesystem (``key``, ``secret``,
            ``endpoint_url``, ``token``, ``connection_string``, ``username`` and
            ``password`` for ftp://...). An ftp:// URL's host, port and any
            ``user:password`` are settings too, under the ones given here.

    Raises:
        MissingDependencyError: the protocol needs an extra that is not installed
            (``s3://`` without s3fs: ``pip install 'runner-storage[s3]'``).
        ConfigurationError: the URL is empty or unparseable, its protocol unknown, it
            names no folder (or, for ftp://, no server), or an option is out of range.
    """

    def __init__(
        self,
        url: str,
        pull_interval: float | None = 60,
        *,
        keep_versions: int = DEFAULT_KEEP,
        grace_period: float = DEFAULT_GRACE_SECONDS,
        transfer_concurrency: int = DEFAULT_TRANSFER_CONCURRENCY,
        name: str | None = None,
        **settings: Any,
    ) -> None:
        self._protocol = check_protocol(url)
        check_concurrency(transfer_concurrency)
        self._url = url
        self._settings = settings
        self._transfer_concurrency = transfer_concurrency
        default_name = destination_name(url)
        super().__init__(
            # Checked even with a name: a URL without a bucket or folder lists a whole store.
            name=name or default_name,
            pull_interval=pull_interval,
            keep_versions=keep_versions,
            grace_period=grace_period,
        )

    def to_pull_step(self) -> dict[str, Any]:
        """A ``pull_from_remote_storage`` step, with secret settings as placeholders.

        ``requires`` names the package of the protocol's fsspec implementation (``s3fs``,
        ``gcsfs``, ``adlfs``); it is left out for fsspec's own protocols.

        Raises:
            ConfigurationError: a secret setting is plain text, or the URL holds a password.
        """
        if urlsplit(self._url).password:
            raise ConfigurationError(
                "the URL holds a password, which would be written into the pull step: pass"
                " credentials as settings with Secret.from_env(...) instead"
            )
        return pull_from_remote_storage_step(
            url=self._url,
            settings=self._settings,
            requires=required_package(self._protocol),
        )

    def __repr__(self) -> str:
        return f"RemoteStorage(url={public_url(self._url)!r})"

    def _identity(self) -> tuple[Any, ...]:
        return (self._url, self._settings)

    def _source_label(self) -> str:
        return public_url(self._url)

    def _secret_values(self) -> list[str]:
        values = secret_values(self._settings, protocol=self._protocol)
        password = urlsplit(self._url).password
        if password:
            # As written in the URL, and decoded as the filesystem is given it (ftp://).
            values.extend({password, unquote(password)})
        return values

    def backend(self) -> RemoteBackend:
        """A backend for one pull: one listing, then the transfers if needed."""
        return RemoteBackend(
            url=self._url,
            protocol=self._protocol,
            settings=self._settings,
            concurrency=self._transfer_concurrency,
            redact=self.redact,
        )
