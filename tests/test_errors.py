"""Errors translated once per transport, onto one tree, with one-line redacted messages.

The fsspec table (``runner_storage.fs.errors``) and git's (``runner_storage.git.errors``)
are tested with the errors their stacks really raise, and an HTTP status means the same
thing in both: :func:`runner_storage.exceptions.status_error` decides it once.
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from runner_storage.exceptions import (
    AuthenticationError,
    NotFoundError,
    PublishError,
    RunnerStorageError,
    SourceError,
    TransientSourceError,
    describe_error,
    one_line,
    status_error,
)
from runner_storage.fs.errors import translate_error
from runner_storage.git.errors import git_failure, refusal_stderr


def botocore_error(code: str, status: int) -> Exception:
    """A botocore ClientError as S3 would return it."""
    from botocore.exceptions import ClientError

    error: Exception = ClientError(
        {"Error": {"Code": code, "Message": code}, "ResponseMetadata": {"HTTPStatusCode": status}},
        "ListObjectsV2",
    )
    return error


def azure_error(status: int, code: str) -> Exception:
    """An azure-core HttpResponseError with a status and error code."""
    from azure.core.exceptions import HttpResponseError

    error: Any = HttpResponseError(message=f"{code}\nRequestId: 1")
    error.status_code = status
    error.error_code = code  # azure-storage-blob attaches it the same way
    return error  # type: ignore[no-any-return]


def aiohttp_error(status: int) -> Exception:
    """An aiohttp ClientResponseError with ``status``, as fsspec's HTTP filesystem raises."""
    import aiohttp
    from multidict import CIMultiDict, CIMultiDictProxy
    from yarl import URL

    url = URL("http://127.0.0.1/flows/a.txt")
    info = aiohttp.RequestInfo(url, "GET", CIMultiDictProxy(CIMultiDict()), url)
    return aiohttp.ClientResponseError(info, (), status=status, message="nope")


def gcsfs_error(code: int) -> Exception:
    """A gcsfs HttpError with ``code``."""
    from gcsfs.retry import HttpError

    error: Exception = HttpError({"code": code, "message": "boom"})
    return error


def chained(outer: Exception, cause: Exception) -> Exception:
    """``outer`` raised from ``cause``, as s3fs does."""
    outer.__cause__ = cause
    return outer


class TestErrorTranslation:
    """Every upstream error lands in the branch of the tree that says what to do."""

    @pytest.mark.parametrize(
        ("make", "expected"),
        [
            pytest.param(lambda: PermissionError("Access Denied"), AuthenticationError, id="perm"),
            pytest.param(
                lambda: botocore_error("AccessDenied", 403),
                AuthenticationError,
                id="s3-access-denied",
            ),
            pytest.param(
                lambda: botocore_error("InvalidAccessKeyId", 403),
                AuthenticationError,
                id="s3-bad-key",
            ),
            pytest.param(
                lambda: botocore_error("SignatureDoesNotMatch", 403),
                AuthenticationError,
                id="s3-bad-secret",
            ),
            pytest.param(
                lambda: chained(PermissionError("denied"), botocore_error("X", 403)),
                AuthenticationError,
                id="s3fs-chain",
            ),
            pytest.param(
                lambda: azure_error(403, "AuthorizationFailure"),
                AuthenticationError,
                id="azure-403",
            ),
            pytest.param(lambda: aiohttp_error(401), AuthenticationError, id="http-401"),
            pytest.param(
                lambda: OSError("Forbidden: b/o\nno access"), AuthenticationError, id="gcsfs-403"
            ),
            pytest.param(lambda: gcsfs_error(401), AuthenticationError, id="gcsfs-401"),
            pytest.param(lambda: FileNotFoundError("b/key"), NotFoundError, id="fnf"),
            pytest.param(
                lambda: botocore_error("NoSuchBucket", 404), NotFoundError, id="s3-no-bucket"
            ),
            pytest.param(
                lambda: azure_error(404, "ContainerNotFound"), NotFoundError, id="azure-404"
            ),
            pytest.param(lambda: aiohttp_error(404), NotFoundError, id="http-404"),
            pytest.param(
                lambda: botocore_error("SlowDown", 503), TransientSourceError, id="s3-slowdown"
            ),
            pytest.param(
                lambda: OSError(errno.EBUSY, "SlowDown"), TransientSourceError, id="s3fs-ebusy"
            ),
            pytest.param(
                lambda: botocore_error("InternalError", 500), TransientSourceError, id="s3-500"
            ),
            pytest.param(
                lambda: azure_error(503, "ServerBusy"), TransientSourceError, id="azure-503"
            ),
            pytest.param(lambda: aiohttp_error(502), TransientSourceError, id="http-502"),
            pytest.param(lambda: gcsfs_error(503), TransientSourceError, id="gcsfs-503"),
            pytest.param(TimeoutError, TransientSourceError, id="timeout"),
            pytest.param(ConnectionResetError, TransientSourceError, id="reset"),
            pytest.param(lambda: ValueError("odd"), SourceError, id="anything-else"),
        ],
    )
    def test_upstream_errors_are_mapped(
        self, make: Callable[[], Exception], expected: type[RunnerStorageError]
    ) -> None:
        """Representative errors of s3fs, gcsfs, adlfs and aiohttp map to our tree."""
        error, _ = translate_error(make(), where="s3://b/p", redact=str)
        assert type(error) is expected
        assert "s3://b/p" in str(error)
        assert "\n" not in str(error)

    def test_local_write_errors_are_publish_errors(self, tmp_path: Path) -> None:
        """An OSError about a path inside the staging directory is the local disk's fault."""
        staging = tmp_path / "staging"
        denied = PermissionError(errno.EACCES, "Permission denied", str(staging / "0"))
        error, _ = translate_error(denied, where="s3://b", redact=str, staging=staging)
        assert isinstance(error, PublishError)

    def test_secrets_in_upstream_text_are_redacted_and_unchained(self) -> None:
        """If an upstream message carries a secret, ours hides it and cuts the chain."""
        error, chain = translate_error(
            ValueError("bad key sk-123456"),
            where="s3://b",
            redact=lambda text: text.replace("sk-123456", "***"),
        )
        assert "sk-123456" not in str(error)
        assert "***" in str(error)
        assert chain is False


class TestOneStatusTable:
    """An HTTP status means the same to every transport that speaks HTTP."""

    @pytest.mark.parametrize(
        ("status", "expected"),
        [
            (401, AuthenticationError),
            (403, AuthenticationError),
            (404, NotFoundError),
            (410, NotFoundError),
            (408, TransientSourceError),
            (425, TransientSourceError),
            (429, TransientSourceError),
            (500, TransientSourceError),
            (502, TransientSourceError),
            (503, TransientSourceError),
        ],
    )
    def test_fsspec_git_and_ref_lookups_agree(
        self, status: int, expected: type[RunnerStorageError]
    ) -> None:
        """Fsspec's HTTP errors, git's "returned error" lines and refused ref lookups alike."""
        assert status_error(status) is expected
        fsspec_error, _ = translate_error(aiohttp_error(status), where="https://h/p", redact=str)
        assert type(fsspec_error) is expected
        stderr = (
            f"fatal: unable to access 'https://h/r/': The requested URL returned error: {status}"
        )
        assert type(git_failure("fetch", "https://h/r", stderr, redact=str)) is expected
        refused = refusal_stderr("https://h/r", status)
        assert type(git_failure("list refs", "https://h/r", refused, redact=str)) is expected

    @pytest.mark.parametrize("status", [200, 301, 400, 418])
    def test_other_statuses_say_nothing_on_their_own(self, status: int) -> None:
        """A success, a redirect or another client error leaves the decision to the caller."""
        assert status_error(status) is None


class TestOneLineMessages:
    """What every transport shows of a third-party message: one redacted line."""

    def test_first_line_cut_after_redaction(self) -> None:
        """A secret that straddles the cut is still hidden: redaction comes first."""
        secret = "s3cr3t-" + "x" * 20
        text = "a" * 190 + secret + "\nsecond line"
        line = one_line(text, 200, redact=lambda t: t.replace(secret, "***"))
        assert "s3cr3t" not in line
        assert line == "a" * 190 + "***"
        assert one_line("\n\n  lead\nrest") == "lead"
        assert one_line("y" * 300, 50) == "y" * 47 + "..."

    def test_describe_error(self) -> None:
        """The type, then the first line; the type alone for an empty message."""
        assert describe_error(ValueError("bad\nworse")) == "ValueError: bad"
        assert describe_error(KeyboardInterrupt()) == "KeyboardInterrupt"
        hidden = describe_error(
            OSError("token=abc123 refused"), redact=lambda t: t.replace("abc123", "***")
        )
        assert hidden == "OSError: token=*** refused"

    def test_git_cuts_after_redacting(self) -> None:
        """Git's decisive line is redacted before it is cut to length."""
        secret = "ghp_" + "z" * 30
        stderr = "fatal: " + "w" * 280 + secret + " rejected"
        error = git_failure(
            "fetch", "https://h/r", stderr, redact=lambda t: t.replace(secret, "***")
        )
        assert "ghp_" not in str(error)
        assert "zzz" not in str(error)
