"""Tables for the pure sync planner, in the spirit of rclone's march tests."""

from __future__ import annotations

from typing import Any

import pytest

from runner_storage.exceptions import UnsafeContentError
from runner_storage.fs.entries import Entry, is_directory_marker, safe_relative_path
from runner_storage.remote.plan import (
    MANIFEST_FORMAT,
    check_tree,
    entries_from_manifest,
    listing_revision,
    manifest_for,
    plan_sync,
)


def e(path: str, size: int = 1, tag: str = "t1") -> Entry:
    """A short way to write an entry (path, size, content tag) in a table."""
    return Entry(path, size, tag)


class TestSafeRelativePath:
    """Object keys become relative paths that cannot leave the version."""

    @pytest.mark.parametrize(
        ("key", "prefix", "expected"),
        [
            pytest.param("bucket/folder/a.py", "bucket/folder", "a.py", id="top-level"),
            pytest.param("bucket/folder/x/y/z.py", "bucket/folder", "x/y/z.py", id="nested"),
            pytest.param("bucket/folder/a.py", "bucket/folder/", "a.py", id="prefix-slash"),
            pytest.param("bucket/a.py", "bucket", "a.py", id="bucket-root"),
            pytest.param("/folder/a.py", "/folder", "a.py", id="memory-style"),
            pytest.param("/a.py", "/", "a.py", id="filesystem-root"),
            pytest.param("b/f/...", "b/f", "...", id="three-dots-is-a-name"),
            pytest.param("b/f/..a", "b/f", "..a", id="dotdot-prefix-is-a-name"),
            pytest.param("b/f/a b/ü.py", "b/f", "a b/ü.py", id="spaces-unicode"),
            pytest.param("b/f/.hidden", "b/f", ".hidden", id="hidden-file"),
        ],
    )
    def test_accepts(self, key: str, prefix: str, expected: str) -> None:
        """Ordinary keys map to the part below the prefix."""
        assert safe_relative_path(key, prefix) == expected

    @pytest.mark.parametrize(
        ("key", "fragment"),
        [
            pytest.param("b/f/../x", "'..'", id="dotdot"),
            pytest.param("b/f/a/../../x", "'..'", id="dotdot-nested"),
            pytest.param("b/f/..", "'..'", id="dotdot-alone"),
            pytest.param("b/f//abs", "absolute", id="leading-slash"),
            pytest.param("b/f/a\\b", "backslash", id="backslash"),
            pytest.param("b/f/..\\x", "backslash", id="backslash-dotdot"),
            pytest.param("b/f/a\0b", "control", id="nul"),
            pytest.param("b/f/a\nb", "control", id="newline"),
            pytest.param("b/f/a\x7fb", "control", id="delete"),
            pytest.param("b/f/a//b", "empty", id="empty-component"),
            pytest.param("b/f/a/", "empty", id="trailing-slash"),
            pytest.param("b/f/./a", "'.'", id="dot-component"),
            pytest.param("b/f/", "prefix itself", id="prefix-marker"),
            pytest.param("b/other/a", "not below", id="outside-prefix"),
            pytest.param("b/fx/a", "not below", id="sibling-with-common-start"),
        ],
    )
    def test_rejects(self, key: str, fragment: str) -> None:
        """Hostile or ambiguous keys raise UnsafeContentError naming the problem."""
        with pytest.raises(UnsafeContentError, match="nothing was published") as caught:
            safe_relative_path(key, "b/f")
        assert fragment in str(caught.value)
        assert "\n" not in str(caught.value)


class TestDirectoryMarkers:
    """Folder placeholders are skipped; everything else is content."""

    @pytest.mark.parametrize(
        ("key", "size", "expected"),
        [
            pytest.param("b/flows/sub/", 0, True, id="marker"),
            pytest.param("b/flows/sub/", None, True, id="marker-without-size"),
            pytest.param("b/flows/", 0, True, id="prefix-marker"),
            pytest.param("b/flows/sub/", 3, False, id="slash-key-with-content"),
            pytest.param("b/flows/empty.txt", 0, False, id="empty-file"),
            pytest.param("b/flows/a.py", 5, False, id="file"),
        ],
    )
    def test_table(self, key: str, size: int | None, expected: bool) -> None:
        """Only keys ending in '/' that hold nothing are markers."""
        assert is_directory_marker(key, size) is expected


class TestListingRevision:
    """The revision is a digest of the listing, independent of listing order."""

    def test_order_does_not_matter(self) -> None:
        """The same entries in another order give the same revision."""
        entries = [e("b"), e("a"), e("c/d")]
        assert listing_revision(entries) == listing_revision(reversed(entries))

    @pytest.mark.parametrize(
        "changed",
        [
            pytest.param([e("a", 2), e("b")], id="size"),
            pytest.param([e("a", tag="t2"), e("b")], id="token"),
            pytest.param([e("a2"), e("b")], id="path"),
            pytest.param([e("a")], id="removed"),
            pytest.param([e("a"), e("b"), e("c")], id="added"),
        ],
    )
    def test_any_change_changes_it(self, changed: list[Entry]) -> None:
        """A different size, token, path or set of files gives a different revision."""
        assert listing_revision([e("a"), e("b")]) != listing_revision(changed)

    def test_fields_cannot_run_together(self) -> None:
        """Path, size and token are delimited, so shifting text between them shows."""
        assert listing_revision([Entry("a1", 2, "")]) != listing_revision([Entry("a", 12, "")])

    def test_empty_listing(self) -> None:
        """An empty listing has the digest of nothing (the caller refuses to publish it)."""
        assert listing_revision([]) == (
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        )


class TestCheckTree:
    """A listing must form a tree before anything is written."""

    @pytest.mark.parametrize(
        "entries",
        [
            pytest.param([e("a"), e("b/c")], id="flat-and-nested"),
            pytest.param([e("a/b"), e("a/c"), e("ab")], id="common-prefix-not-a-dir"),
            pytest.param([], id="empty"),
        ],
    )
    def test_accepts(self, entries: list[Entry]) -> None:
        """Files and directories that do not overlap are fine."""
        check_tree(entries)

    @pytest.mark.parametrize(
        ("entries", "fragment"),
        [
            pytest.param([e("a"), e("a/b")], "'a' and 'a/b' conflict", id="file-then-dir"),
            pytest.param([e("x/y/z"), e("x/y")], "'x/y' and 'x/y/z'", id="dir-then-file"),
            pytest.param([e("x"), e("x/y/z")], "'x' and 'x/y/z'", id="deep"),
            pytest.param([e("a"), e("a", 2)], "twice", id="duplicate"),
        ],
    )
    def test_rejects(self, entries: list[Entry], fragment: str) -> None:
        """A path that would be a file and a directory, or appears twice, is refused."""
        with pytest.raises(UnsafeContentError, match="nothing was published") as caught:
            check_tree(entries)
        assert fragment in str(caught.value)


class TestManifest:
    """Manifests round-trip, and a damaged one only costs downloads."""

    def test_round_trip(self) -> None:
        """A manifest gives back the entries it was made from."""
        entries = [e("b", 3, "x"), e("a/c", 0, "")]
        manifest = manifest_for(entries)
        assert manifest == {"format": MANIFEST_FORMAT, "entries": [["a/c", 0, ""], ["b", 3, "x"]]}
        assert entries_from_manifest(manifest) == {"a/c": e("a/c", 0, ""), "b": e("b", 3, "x")}

    @pytest.mark.parametrize(
        "manifest",
        [
            pytest.param(None, id="none"),
            pytest.param([], id="not-a-mapping"),
            pytest.param({"entries": [["a", 1, "t1"]]}, id="no-format"),
            pytest.param({"format": 99, "entries": [["a", 1, "t1"]]}, id="future-format"),
            pytest.param({"format": MANIFEST_FORMAT, "entries": "a"}, id="entries-not-list"),
        ],
    )
    def test_unreadable_is_empty(self, manifest: Any) -> None:
        """Anything unexpected reads as an empty manifest."""
        assert entries_from_manifest(manifest) == {}

    @pytest.mark.parametrize(
        "row",
        [
            pytest.param(["a", "1", "t"], id="size-not-int"),
            pytest.param(["a", 1], id="short"),
            pytest.param(["../a", 1, "t"], id="unsafe-path"),
            pytest.param([1, 1, "t"], id="path-not-str"),
            pytest.param({"a": 1}, id="not-a-row"),
        ],
    )
    def test_bad_rows_are_skipped(self, row: Any) -> None:
        """Rows that are malformed or unsafe are dropped, good rows kept."""
        manifest = {"format": MANIFEST_FORMAT, "entries": [row, ["ok", 1, "t"]]}
        assert entries_from_manifest(manifest) == {"ok": e("ok", 1, "t")}


def paths(entries: tuple[Entry, ...]) -> list[str]:
    """The paths of a plan column."""
    return [entry.path for entry in entries]


class TestPlanSync:
    """Pairing a listing with the published manifest, like rclone's march."""

    @pytest.mark.parametrize(
        ("listing", "previous", "link", "download", "removed"),
        [
            pytest.param([e("a"), e("b")], None, [], ["a", "b"], [], id="cold"),
            pytest.param([e("a"), e("b")], [e("a"), e("b")], ["a", "b"], [], [], id="same"),
            pytest.param(
                [e("a", tag="t2"), e("b")], [e("a"), e("b")], ["b"], ["a"], [], id="modified"
            ),
            pytest.param([e("a", 5), e("b")], [e("a"), e("b")], ["b"], ["a"], [], id="resized"),
            pytest.param(
                [e("a"), e("b"), e("c")], [e("a"), e("b")], ["a", "b"], ["c"], [], id="added"
            ),
            pytest.param([e("a")], [e("a"), e("b")], ["a"], [], ["b"], id="deleted"),
            pytest.param(
                [e("a"), e("d/x", tag="t9"), e("n")],
                [e("a"), e("d/x"), e("gone/y")],
                ["a"],
                ["d/x", "n"],
                ["gone/y"],
                id="mixed",
            ),
            pytest.param([e("b/a")], [e("b/a", tag="")], [], ["b/a"], [], id="token-appears"),
            pytest.param([e("a", tag="")], [e("a", tag="")], [], ["a"], [], id="no-token-no-link"),
            pytest.param([e("a/b")], [e("a")], [], ["a/b"], ["a"], id="file-became-directory"),
            pytest.param([e("a")], [e("a/b")], [], ["a"], ["a/b"], id="directory-became-file"),
            pytest.param([], [e("a")], [], [], ["a"], id="everything-gone"),
        ],
    )
    def test_table(
        self,
        listing: list[Entry],
        previous: list[Entry] | None,
        link: list[str],
        download: list[str],
        removed: list[str],
    ) -> None:
        """Unchanged entries are linked, new or changed downloaded, missing ones removed."""
        manifest = None if previous is None else manifest_for(previous)
        plan = plan_sync(listing, manifest)
        assert paths(plan.link) == link
        assert paths(plan.download) == download
        assert list(plan.removed) == removed

    def test_download_bytes(self) -> None:
        """The plan reports how many bytes the downloads will move."""
        plan = plan_sync([e("a", 3), e("b", 4), e("c", 5)], manifest_for([e("b", 4)]))
        assert plan.download_bytes == 8

    def test_damaged_manifest_downloads_everything(self) -> None:
        """With an unreadable manifest nothing is linked: every file is fetched again."""
        plan = plan_sync([e("a"), e("b")], {"format": MANIFEST_FORMAT, "entries": None})
        assert paths(plan.download) == ["a", "b"]
        assert plan.link == ()

    def test_conflicting_listing_is_refused(self) -> None:
        """A listing where a path is both a file and a directory never reaches the disk."""
        with pytest.raises(UnsafeContentError, match="'a' and 'a/b' conflict"):
            plan_sync([e("a"), e("a/b")], None)
