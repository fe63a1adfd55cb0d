"""Which URLs the fsspec boundary takes, and what each protocol needs installed.

Pure lookups in fsspec's registry and in the import system: nothing here imports an
implementation. A cloud protocol whose package is missing (``s3://`` without s3fs) is
refused when the storage is made, found by :func:`importlib.util.find_spec`, which locates
a package without importing it.
"""

from __future__ import annotations

import importlib.util
from typing import Any
from urllib.parse import urlsplit

import fsspec
from fsspec.registry import known_implementations

from runner_storage.exceptions import (
    ConfigurationError,
    MissingDependencyError,
    describe_error,
    exception_chain,
)
from runner_storage.fs import ftp

__all__ = [
    "EXTRAS",
    "SINGLE_CONNECTION",
    "check_protocol",
    "is_installed",
    "is_known",
    "missing_dependency",
    "required_package",
    "url_settings",
]

#: The extra of runner-storage that installs each cloud protocol's package.
EXTRAS = {
    "s3": "s3",
    "s3a": "s3",
    "gs": "gcs",
    "gcs": "gcs",
    "az": "azure",
    "abfs": "azure",
    "abfss": "azure",
    "adl": "azure",
}

#: Protocols whose filesystem is one connection that two threads must never share
#: (fsspec's FTP wraps one ftplib connection): never pooled, one download at a time.
SINGLE_CONNECTION = frozenset({ftp.PROTOCOL})

_WRAPS = "it wraps another filesystem; give the storage URL itself, like s3://bucket/path"
#: Protocols fsspec knows that RemoteStorage refuses, and why.
_UNSUPPORTED = dict.fromkeys(
    (
        "async_wrapper",
        "asyncwrapper",
        "blockcache",
        "cached",
        "dir",
        "filecache",
        "generic",
        "reference",
        "simplecache",
    ),
    _WRAPS,
)


def is_known(protocol: str) -> bool:
    """Whether fsspec has an implementation registered or known for ``protocol``."""
    return protocol in fsspec.registry or protocol in known_implementations


def check_protocol(url: str, *, user: str = "RemoteStorage") -> str:
    """Return the protocol of ``url`` after checking that fsspec knows it.

    Cheap: the protocol's package, when it is one of runner-storage's extras, is looked
    up, not imported. ``user`` names what the URL was given to, in messages.

    Raises:
        MissingDependencyError: the protocol needs an extra that is not installed
            (``s3://`` without s3fs); the message says what to install.
        ConfigurationError: the URL is empty, unparseable, chained, has no scheme, names a
            protocol fsspec does not know, or one RemoteStorage does not support, or an
            ``ftp://`` URL names no server.
    """
    if not isinstance(url, str) or not url.strip():
        raise ConfigurationError(f"the {user} URL is empty: give one like s3://bucket/path")
    try:
        scheme = urlsplit(url).scheme
    except ValueError as exc:
        raise ConfigurationError(f"cannot parse the {user} URL: {exc}") from None
    if "::" in url.split("://", 1)[0]:
        raise ConfigurationError(
            f"chained fsspec URLs like {url.split('::', 1)[0]}::... are not supported: give"
            " the storage URL itself"
        )
    if not scheme:
        raise ConfigurationError(
            f"the {user} URL has no scheme: give one like s3://bucket/path, or use"
            " LocalStorage for a local folder"
        )
    if scheme in _UNSUPPORTED:
        raise ConfigurationError(f"{scheme}:// is not supported by {user}: {_UNSUPPORTED[scheme]}")
    if not is_known(scheme):
        raise ConfigurationError(
            f"unknown protocol {scheme}:// for {user}: use one fsspec knows, such as"
            " s3://, gs://, az://, https:// or memory://"
        )
    if scheme == ftp.PROTOCOL:
        ftp.check_url(url)
    if scheme in EXTRAS and not is_installed(required_package(scheme) or scheme):
        raise _extra_missing(scheme)
    return scheme


def is_installed(package: str) -> bool:
    """Whether ``package`` can be imported, found without importing it."""
    try:
        return importlib.util.find_spec(package) is not None
    except (ImportError, ValueError):  # a broken parent package, or a module without a spec
        return False


def _extra_missing(protocol: str) -> MissingDependencyError:
    package = required_package(protocol) or protocol
    return MissingDependencyError(
        f"the {protocol}:// protocol needs the {package} package, which is not installed:"
        f" pip install 'runner-storage[{EXTRAS[protocol]}]'"
    )


def url_settings(protocol: str, url: str) -> dict[str, Any]:
    """The filesystem settings ``url`` itself carries, under the settings given to a storage.

    Most filesystems take their address from the path; fsspec's FTP filesystem takes host,
    port, username and password as settings only, so they come from the URL. Empty for
    every other protocol.
    """
    return ftp.url_settings(url) if protocol == ftp.PROTOCOL else {}


def required_package(protocol: str) -> str | None:
    """The package that implements ``protocol``, for a pull step's ``requires``.

    Prefect's rule (the top-level package of the fsspec implementation), made independent
    of what happens to be imported; None for fsspec's own implementations, which every
    Prefect installation has.
    """
    known = known_implementations.get(protocol)
    if known is not None:
        package = str(known["class"]).split(".", 1)[0]
    elif protocol in fsspec.registry:
        package = fsspec.registry[protocol].__module__.split(".", 1)[0]
    else:
        return None
    return None if package == "fsspec" else package


def missing_dependency(protocol: str, exc: ImportError) -> MissingDependencyError:
    """What to install for ``protocol``, after importing (or building) its filesystem failed."""
    if protocol in EXTRAS:
        return _extra_missing(protocol)
    missing = next(
        (e.name for e in exception_chain(exc) if isinstance(e, ModuleNotFoundError) and e.name),
        None,
    )
    if missing is None:  # installed, but it does not import: a broken or mismatched version
        package = required_package(protocol) or protocol
        return MissingDependencyError(
            f"the {protocol}:// protocol cannot load its implementation"
            f" ({describe_error(exc.__cause__ or exc)}): reinstall {package} in a version that"
            " matches the installed fsspec"
        )
    module = missing.split(".", 1)[0]
    # fsspec's own advice names the distribution to install, which the module may not.
    advice = known_implementations.get(protocol, {}).get("err")
    install = advice or f"pip install {module}"
    return MissingDependencyError(
        f"the {protocol}:// protocol needs the {module} module, which is not installed: {install}"
    )
