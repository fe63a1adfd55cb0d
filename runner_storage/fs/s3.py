"""s3fs: check what it hands to botocore, and share what every botocore session would redo."""

from __future__ import annotations

import contextlib
import datetime
import email.utils
import threading
from typing import Any

from fsspec.spec import AbstractFileSystem

from runner_storage.fs.settings import named_parameters, package_of, unknown_setting

__all__ = ["prepare_s3fs", "share_botocore_data"]

_BOTOCORE_LOADERS: dict[Any, Any] = {}
_BOTOCORE_LOCK = threading.Lock()


def prepare_s3fs(protocol: str, fs: AbstractFileSystem) -> None:
    """Check what s3fs passes on to botocore, share botocore's data, and build the client.

    s3fs hands every setting it does not know to botocore's session, which rejects an
    unknown name only when the first request builds it. Building the client now makes a
    misspelled setting, a bad endpoint or a missing profile a configuration error here
    instead of a failed (and retried) request; it is built on first use anyway.
    """
    if package_of(type(fs)) != "s3fs":
        return
    if getattr(fs, "session", True) is None:
        import aiobotocore.session  # noqa: PLC0415 - only when s3fs is in use

        taken = [
            *named_parameters(aiobotocore.session.AioSession.__init__),
            *named_parameters(type(fs).__init__),
        ]
        for name in sorted(getattr(fs, "kwargs", {})):
            if name not in taken:
                raise unknown_setting(protocol, type(fs), name, taken)
        _share_botocore_data(fs)
    fs.connect()


def _share_botocore_data(fs: AbstractFileSystem) -> None:
    """Give a new s3fs filesystem a botocore session that reuses what never changes.

    A session the caller passed in is left alone; see :func:`share_botocore_data`.
    """
    if type(fs).__module__.split(".", 1)[0] != "s3fs" or getattr(fs, "session", True) is not None:
        return
    try:
        import aiobotocore.session  # noqa: PLC0415 - only when s3fs is in use
    except ImportError:  # pragma: no cover - s3fs depends on it
        return
    session = aiobotocore.session.AioSession(**getattr(fs, "kwargs", {}))
    share_botocore_data(session)
    fs.session = session


def share_botocore_data(session: Any) -> None:
    """Make a new botocore (or aiobotocore) session reuse what every session would redo.

    Every botocore session loads and parses the same service models, endpoint rules and
    partitions (~1 MB of JSON, ~50 ms of CPU) and parses every listed ``LastModified``
    with dateutil (~50 us each: 0.1 s for 2,000 objects). Here all sessions of the process
    share one data loader (its cache holds the parsed models), and timestamps in ISO 8601
    (what S3 listings carry) are read with :meth:`datetime.datetime.fromisoformat`, falling
    back to botocore's parser for anything else. Credentials are still resolved per
    session.
    """
    from botocore.loaders import create_loader  # noqa: PLC0415 - only when S3 is in use

    data_path = session.get_config_variable("data_path")
    with _BOTOCORE_LOCK:
        loader = _BOTOCORE_LOADERS.get(data_path)
        if loader is None:
            loader = _BOTOCORE_LOADERS[data_path] = create_loader(data_path)
    session.register_component("data_loader", loader)
    session.get_component("response_parser_factory").set_parser_defaults(
        timestamp_parser=_parse_timestamp
    )


def _parse_timestamp(value: Any) -> Any:
    """S3's timestamps as aware datetimes, fast; anything else: botocore's parser.

    Listings carry ISO 8601 (``2024-05-01T12:00:00.000Z``), response headers HTTP dates
    (``Wed, 01 May 2024 12:00:00 GMT``, read by :mod:`email.utils`).
    """
    if isinstance(value, str) and len(value) >= 19 and value[10:11] == "T":
        text = value[:-1] + "+00:00" if value.endswith("Z") else value
        with contextlib.suppress(ValueError):
            parsed = datetime.datetime.fromisoformat(text)
            if parsed.tzinfo is not None:
                return parsed
    if isinstance(value, str) and value.endswith(" GMT") and value[3:5] == ", ":
        with contextlib.suppress(TypeError, ValueError, IndexError):
            return email.utils.parsedate_to_datetime(value)
    from botocore.utils import parse_timestamp  # noqa: PLC0415 - s3fs is in use

    return parse_timestamp(value)
