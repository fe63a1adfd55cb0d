"""Docker, Prefect 1's docker storage: code in place, and a folder read out of an image.

Images are pushed to a real registry (Debian's ``docker-registry``) over its own API by
the fixtures of ``servers/registry.py``: tar layers made here, a config, OCI or Docker v2
manifests and indexes. No container engine takes part, on either side.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import anyio
import pytest
from servers.registry import (
    AuthRegistry,
    Layer,
    PushedImage,
    RedirectingFront,
    RegistryServer,
    new_repository,
)

from runner_storage.exceptions import (
    AuthenticationError,
    ConfigurationError,
    NotFoundError,
    SourceError,
    TransientSourceError,
    UnsafeContentError,
)
from runner_storage.publish.layout import METADATA_DIR
from runner_storage.secrets import Secret
from runner_storage.storage.docker import PULL_DOCKER_IMAGE_STEP, Docker, pull_docker_image
from runner_storage.storage.registry import ImageReference, machine_platform
from runner_storage.storage.secrets import NamedSecret
from runner_storage.types import SyncResult

FLOW = "/opt/prefect/flows/etl.py"
FLOWS = "opt/prefect/flows"


def pull(storage: Docker) -> SyncResult:
    """Run one pull."""
    return anyio.run(storage.pull_code)


def files(root: Path) -> dict[str, bytes]:
    """Every regular file under ``root`` (the symlink followed), by relative path."""
    real = root.resolve()
    return {
        p.relative_to(real).as_posix(): p.read_bytes()
        for p in sorted(real.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


def state(storage: Docker, base: Path) -> dict[str, Any]:
    """The ``state.json`` of ``storage``."""
    path = base / METADATA_DIR / storage.name / "state.json"
    loaded: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return loaded


def base_layer() -> Layer:
    """What an image's base holds: system files, and a sibling of the flows folder."""
    return (
        Layer()
        .dir("usr/")
        .dir("usr/bin/")
        .file("usr/bin/python3", b"\x7fELF...", 0o755)
        .symlink("usr/bin/python", "python3")
        .dir("opt/")
        .dir("opt/prefect/")
        .file("opt/prefect/config.toml", "[server]\n")
    )


def flows_layer() -> Layer:
    """The flows folder, as a build's ``COPY`` makes it."""
    return (
        Layer()
        .dir("opt/prefect/flows/", 0o755)
        .file("opt/prefect/flows/etl.py", "print('etl v1')\n", 0o644)
        .file("opt/prefect/flows/run.sh", "#!/bin/sh\n", 0o755)
        .file("opt/prefect/flows/old.py", "old\n")
        .dir("opt/prefect/flows/lib/", 0o750)
        .file("opt/prefect/flows/lib/util.py", "X = 1\n", 0o600)
        .file("opt/prefect/flows/lib/stale.py", "stale\n")
    )


@pytest.fixture
def base(tmp_path: Path) -> Path:
    """The base path storages publish under."""
    return tmp_path / "base"


@pytest.fixture
def image(registry: RegistryServer) -> PushedImage:
    """A two-layer image in a fresh repository, tagged ``v1``."""
    return registry.push_image(new_repository(), "v1", [base_layer(), flows_layer()])


def docker(registry: RegistryServer, image: PushedImage, base: Path, **options: Any) -> Docker:
    """A Docker storage of ``image`` (by tag unless told), publishing under ``base``."""
    reference = options.pop("reference", None) or image.reference(registry)
    storage = Docker(image=reference, path=FLOW, stored_as_script=True, **options)
    storage.set_base_path(base)
    return storage


# --- code in place -------------------------------------------------------------------------


class TestInPlace:
    """Without an image, the flow runs where its file is: nothing moves."""

    def test_destination_is_the_flow_files_folder_and_nothing_is_copied(
        self, tmp_path: Path
    ) -> None:
        """Destination is the folder of path, flow_path the file; a pull copies nothing."""
        folder = tmp_path / "image" / "flows"
        folder.mkdir(parents=True)
        (folder / "etl.py").write_text("print(1)\n")
        storage = Docker(path=str(folder / "etl.py"), stored_as_script=True)
        storage.set_base_path(tmp_path / "base")
        result = pull(storage)
        assert storage.destination == folder
        assert storage.flow_path == folder / "etl.py"
        assert storage.image is None
        assert result.changed is False
        assert result.revision == str(folder)
        assert not (tmp_path / "base").exists()

    def test_relative_path_is_taken_from_the_working_directory(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A relative path means the file in the working directory, made absolute."""
        (tmp_path / "flow.py").write_text("x\n")
        monkeypatch.chdir(tmp_path)
        storage = Docker(path="flow.py", stored_as_script=True)
        assert storage.flow_path == tmp_path / "flow.py"
        assert storage.flow_path.is_absolute()

    def test_missing_flow_file_is_one_line_at_construction(self, tmp_path: Path) -> None:
        """A path that does not exist is refused at once, in one line naming it."""
        missing = tmp_path / "nowhere" / "etl.py"
        with pytest.raises(ConfigurationError) as caught:
            Docker(path=str(missing), stored_as_script=True)
        message = str(caught.value)
        assert str(missing) in message
        assert "\n" not in message

    def test_flow_file_removed_later_fails_the_pull(self, tmp_path: Path) -> None:
        """A file that vanished after construction fails the pull as not found."""
        flow = tmp_path / "etl.py"
        flow.write_text("x\n")
        storage = Docker(path=str(flow), stored_as_script=True)
        flow.unlink()
        with pytest.raises(NotFoundError, match="does not exist any more"):
            pull(storage)

    def test_pull_step_is_set_working_directory(self, tmp_path: Path) -> None:
        """The pull step enters the flow's folder, as Local and Module do."""
        (tmp_path / "etl.py").write_text("x\n")
        storage = Docker(path=str(tmp_path / "etl.py"), stored_as_script=True)
        assert storage.to_pull_step() == {
            "prefect.deployments.steps.set_working_directory": {"directory": str(tmp_path)}
        }
        assert anyio.run(storage.check) is None

    def test_prefect1_build_arguments_are_accepted_and_ignored(self, tmp_path: Path) -> None:
        """Every Prefect 1 argument is taken, positionally too, and kept as an attribute."""
        (tmp_path / "etl.py").write_text("x\n")
        storage = Docker(
            None,
            "python:3.11",
            None,
            ".dockerignore",
            ["pandas"],
            env_vars={"A": "1"},
            files={"/a": "/b"},
            prefect_version="1.4.1",
            local_image=True,
            ignore_healthchecks=True,
            base_url="unix:///var/run/docker.sock",
            tls_config=True,
            build_kwargs={"rm": False},
            prefect_directory="/srv/prefect",
            path=str(tmp_path / "etl.py"),
            stored_as_script=True,
            extra_dockerfile_commands=["RUN true"],
            labels=["a"],
            secrets=["S"],
            add_default_labels=False,
            result=None,
        )
        assert storage.base_image == "python:3.11"
        assert storage.python_dependencies == ["pandas"]
        assert storage.destination == tmp_path

    def test_an_argument_prefect1_does_not_have_is_a_type_error(self, tmp_path: Path) -> None:
        """A misspelt argument fails as a Python call would."""
        (tmp_path / "etl.py").write_text("x\n")
        with pytest.raises(TypeError, match="imag_name"):
            Docker(path=str(tmp_path / "etl.py"), stored_as_script=True, imag_name="x")


class TestConstruction:
    """What is refused before anything runs, each in one line."""

    def test_pickled_flow_is_refused(self) -> None:
        """No path and stored_as_script=False is a pickled flow: refused, saying why."""
        with pytest.raises(ConfigurationError, match="pickled flow") as caught:
            Docker(image="127.0.0.1:5000/team/flows:v1")
        assert "\n" not in str(caught.value)

    def test_path_is_required_with_an_image(self) -> None:
        """An image without path cannot tell which folder to publish."""
        with pytest.raises(ConfigurationError, match="needs path"):
            Docker(image="127.0.0.1:5000/team/flows:v1", stored_as_script=True)

    @pytest.mark.parametrize(
        ("path", "words"),
        [("etl.py", "absolute"), ("/opt/../etc/x.py", "absolute"), ("/etl.py", "root")],
    )
    def test_image_path_must_be_absolute_and_in_a_folder(self, path: str, words: str) -> None:
        """The flow file's path inside an image is absolute, without '..', not at '/'."""
        with pytest.raises(ConfigurationError, match=words):
            Docker(image="127.0.0.1:5000/team/flows:v1", path=path, stored_as_script=True)

    def test_prefect1_fields_compose_the_image(self) -> None:
        """registry_url/image_name:image_tag, as Prefect 1 names the image."""
        storage = Docker(
            registry_url="127.0.0.1:5000/team",
            image_name="flows",
            image_tag="2024-01-01",
            path=FLOW,
            stored_as_script=True,
        )
        assert storage.image == "127.0.0.1:5000/team/flows:2024-01-01"
        assert storage.name == "team/flows"
        assert storage.flow_path == storage.destination / "etl.py"

    @pytest.mark.parametrize(("scheme", "insecure"), [("http", True), ("https", False)])
    def test_a_scheme_in_registry_url_sets_insecure(self, scheme: str, insecure: bool) -> None:
        """``http://`` in Prefect 1's registry_url means plain HTTP, ``https://`` TLS."""
        storage = Docker(
            registry_url=f"{scheme}://registry.example.com/team",
            image_name="flows",
            image_tag="v1",
            path=FLOW,
            stored_as_script=True,
        )
        assert storage.image == "registry.example.com/team/flows:v1"
        assert storage.to_pull_step()[PULL_DOCKER_IMAGE_STEP]["insecure"] is insecure

    def test_https_is_kept_on_loopback_when_asked(self, registry: RegistryServer) -> None:
        """insecure=False asks for TLS even on loopback: a plain-HTTP registry then fails."""
        pushed = registry.push_image(new_repository(), "v1", [flows_layer()])
        storage = Docker(
            image=pushed.reference(registry), path=FLOW, stored_as_script=True, insecure=False
        )
        with pytest.raises(SourceError, match=r"TLS with 127\.0\.0\.1 failed") as caught:
            anyio.run(storage.check)
        assert "\n" not in str(caught.value)

    def test_image_name_may_hold_the_registry(self) -> None:
        """Without registry_url, image_name alone names registry and repository."""
        storage = Docker(
            image_name="localhost:5000/flows", image_tag="v1", path=FLOW, stored_as_script=True
        )
        assert storage.image == "localhost:5000/flows:v1"

    @pytest.mark.parametrize(
        ("arguments", "words"),
        [
            ({"registry_url": "127.0.0.1:5000"}, "image_name and image_tag"),
            ({"image_name": "127.0.0.1:5000/flows"}, "image_name and image_tag"),
            ({"image": "team/flows:v1"}, "no registry host"),
            ({"image": "127.0.0.1:5000/Team/flows:v1"}, "invalid repository"),
            ({"image": "127.0.0.1:5000/team/flows@sha256:abc"}, "sha256"),
            ({"image": "127.0.0.1:5000/team/flows:v1", "image_tag": "v2"}, "given twice"),
            ({"image": "127.0.0.1:5000/f:v1", "password": "pw"}, "without a username"),
            ({"image": "127.0.0.1:5000/f:v1", "username": 5}, "text or a secret"),
        ],
    )
    def test_bad_image_descriptions_are_one_line(
        self, arguments: dict[str, Any], words: str
    ) -> None:
        """A partial, ambiguous or malformed image description is refused in one line."""
        with pytest.raises(ConfigurationError, match=words) as caught:
            Docker(path=FLOW, stored_as_script=True, **arguments)
        assert "\n" not in str(caught.value)

    def test_references_parse_as_docker_writes_them(self) -> None:
        """Tag, digest, port and the default tag ``latest``."""
        digest = "sha256:" + "a" * 64
        assert ImageReference.parse("localhost:5000/a/b") == ImageReference(
            "localhost:5000", "a/b", "latest", None
        )
        pinned = ImageReference.parse(f"registry.example.com/a:1.0@{digest}")
        assert (pinned.tag, pinned.digest, pinned.reference) == ("1.0", digest, digest)
        assert str(pinned) == f"registry.example.com/a:1.0@{digest}"


# --- pulling an image ----------------------------------------------------------------------


class TestImagePull:
    """The folder of path, read from the layers and published as a version."""

    def test_the_folder_arrives_with_modes_and_nothing_else(
        self, registry: RegistryServer, image: PushedImage, base: Path
    ) -> None:
        """Only the flow's folder is published, files with their modes, folders rwx for us."""
        storage = docker(registry, image, base)
        result = pull(storage)
        assert result.changed is True
        assert result.revision == image.digest.removeprefix("sha256:")
        assert storage.destination == base / image.repository
        assert storage.flow_path.read_text() == "print('etl v1')\n"
        assert files(storage.destination) == {
            "etl.py": b"print('etl v1')\n",
            "run.sh": b"#!/bin/sh\n",
            "old.py": b"old\n",
            "lib/util.py": b"X = 1\n",
            "lib/stale.py": b"stale\n",
        }
        real = storage.destination.resolve()
        assert stat.S_IMODE((real / "run.sh").stat().st_mode) == 0o755
        assert stat.S_IMODE((real / "etl.py").stat().st_mode) == 0o644
        assert stat.S_IMODE((real / "lib/util.py").stat().st_mode) == 0o600
        assert stat.S_IMODE((real / "lib").stat().st_mode) == 0o750
        assert (real / "etl.py").stat().st_mtime == 1_700_000_000
        assert real.name.startswith(result.revision[:40])
        assert not list(base.rglob("python3"))
        assert not list(base.rglob("config.toml"))

    def test_second_pull_is_one_manifest_request_and_publishes_nothing(
        self, registry: RegistryServer, image: PushedImage, base: Path
    ) -> None:
        """An unchanged tag costs one HEAD of the manifest, and the version stays."""
        storage = docker(registry, image, base)
        pull(storage)
        live = os.readlink(storage.destination)
        registry.reset_requests()
        result = pull(storage)
        assert result.changed is False
        assert [(r.method, r.path) for r in registry.requests()] == [
            ("HEAD", f"/v2/{image.repository}/manifests/v1")
        ]
        assert os.readlink(storage.destination) == live

    def test_new_tag_push_with_whiteouts_and_an_opaque_folder_arrives(
        self, registry: RegistryServer, image: PushedImage, base: Path
    ) -> None:
        """A new layer deleting a file (whiteout) and resetting lib/ (opaque) takes effect.

        The base layer, known to hold nothing of the folder, is not downloaded again.
        """
        storage = docker(registry, image, base)
        pull(storage)
        first = storage.destination.resolve()
        change = (
            Layer()
            .whiteout("opt/prefect/flows/old.py")
            .dir("opt/prefect/flows/lib/", 0o755)
            .opaque("opt/prefect/flows/lib")
            .file("opt/prefect/flows/lib/new.py", "Y = 2\n")
            .file("opt/prefect/flows/etl.py", "print('etl v2')\n", 0o755)
        )
        again = registry.push_image(image.repository, "v1", [base_layer(), flows_layer(), change])
        registry.reset_requests()
        result = pull(storage)
        assert result.changed is True
        assert result.revision == again.digest.removeprefix("sha256:")
        assert files(storage.destination) == {
            "etl.py": b"print('etl v2')\n",
            "run.sh": b"#!/bin/sh\n",
            "lib/new.py": b"Y = 2\n",
        }
        assert stat.S_IMODE(storage.flow_path.stat().st_mode) == 0o755
        fetched = {r.path.rsplit("/", 1)[1] for r in registry.requests() if "/blobs/" in r.path}
        assert image.layers[0] not in fetched  # the base layer: skipped
        assert {again.layers[1], again.layers[2], again.config} <= fetched
        assert files(first)["old.py"] == b"old\n"  # the old version is untouched

    def test_whiteout_and_opaque_in_the_same_layer_keep_that_layers_entries(
        self, registry: RegistryServer, base: Path
    ) -> None:
        """An opaque marker after its folder's new entries hides only lower layers' files."""
        lower = Layer().file("opt/prefect/flows/etl.py", "v1").file("opt/prefect/flows/a", "a")
        upper = (
            Layer()
            .file("opt/prefect/flows/b", "b")
            .file("opt/prefect/flows/etl.py", "v2")
            .opaque("opt/prefect/flows")
        )
        pushed = registry.push_image(new_repository(), "v1", [lower, upper])
        storage = docker(registry, pushed, base)
        pull(storage)
        assert files(storage.destination) == {"b": b"b", "etl.py": b"v2"}

    def test_a_whiteout_of_the_folder_itself_empties_it(
        self, registry: RegistryServer, base: Path
    ) -> None:
        """Deleting the folder in a layer and recreating it leaves only the new content."""
        lower = Layer().file("opt/prefect/flows/etl.py", "v1").file("opt/prefect/flows/a", "a")
        upper = Layer().whiteout("opt/prefect/flows")
        top = Layer().file("opt/prefect/flows/etl.py", "v3")
        pushed = registry.push_image(new_repository(), "v1", [lower, upper, top])
        storage = docker(registry, pushed, base)
        pull(storage)
        assert files(storage.destination) == {"etl.py": b"v3"}

    def test_digest_reference_is_pulled_and_then_costs_no_request(
        self, registry: RegistryServer, image: PushedImage, base: Path
    ) -> None:
        """A pinned digest needs no request to resolve: once published, a pull is free."""
        storage = docker(registry, image, base, reference=image.reference(registry, pinned=True))
        assert pull(storage).changed is True
        assert storage.flow_path.is_file()
        registry.reset_requests()
        assert pull(storage).changed is False
        assert registry.requests() == []

    def test_docker_v2_manifests_and_an_uncompressed_layer(
        self, registry: RegistryServer, base: Path
    ) -> None:
        """Docker's v2 manifest and a plain tar layer work as OCI's do."""
        plain = Layer(compress=False).file("opt/prefect/flows/etl.py", "plain")
        pushed = registry.push_image(new_repository(), "v1", [plain], docker_format=True)
        storage = docker(registry, pushed, base)
        pull(storage)
        assert files(storage.destination) == {"etl.py": b"plain"}

    @pytest.mark.parametrize("docker_format", [False, True])
    def test_an_index_gives_this_machines_image(
        self, registry: RegistryServer, base: Path, docker_format: bool
    ) -> None:
        """From an index (OCI or a Docker manifest list), this machine's linux image."""
        repository = new_repository()
        mine, _ = machine_platform()
        other = "s390x" if mine != "s390x" else "amd64"
        images = {
            arch: registry.push_image(
                repository,
                None,
                [Layer().file("opt/prefect/flows/etl.py", arch)],
                docker_format=docker_format,
                architecture=arch,
            )
            for arch in (other, mine)
        }
        index = registry.push_index(repository, "multi", images, docker_format=docker_format)
        storage = docker(registry, index, base)
        result = pull(storage)
        assert result.revision == index.digest.removeprefix("sha256:")
        assert storage.flow_path.read_text() == mine

    def test_symlinks_inside_the_folder_are_kept_and_devices_skipped(
        self, registry: RegistryServer, base: Path
    ) -> None:
        """Relative links stay, absolute ones into the folder become relative; no devices."""
        layer = (
            Layer()
            .file("opt/prefect/flows/etl.py", "x")
            .dir("opt/prefect/flows/sub/")
            .symlink("opt/prefect/flows/sub/up.py", "../etl.py")
            .symlink("opt/prefect/flows/abs.py", "/opt/prefect/flows/etl.py")
            .hardlink("opt/prefect/flows/same.py", "opt/prefect/flows/etl.py")
            .fifo("opt/prefect/flows/pipe")
            .device("opt/prefect/flows/null")
        )
        pushed = registry.push_image(new_repository(), "v1", [layer])
        storage = docker(registry, pushed, base)
        pull(storage)
        real = storage.destination.resolve()
        assert os.readlink(real / "sub/up.py") == "../etl.py"
        assert os.readlink(real / "abs.py") == "etl.py"
        assert (real / "same.py").read_text() == "x"
        assert not (real / "pipe").exists()
        assert not (real / "null").exists()

    def test_missing_folder_or_flow_file_is_not_found(
        self, registry: RegistryServer, base: Path
    ) -> None:
        """An image without the flow's folder, or without the file, names what is there."""
        pushed = registry.push_image(new_repository(), "v1", [base_layer()])
        with pytest.raises(NotFoundError, match="/opt/prefect/flows is not in image"):
            pull(docker(registry, pushed, base))
        other = registry.push_image(
            new_repository(), "v1", [Layer().file("opt/prefect/flows/other.py", "x")]
        )
        with pytest.raises(NotFoundError, match=r"etl.py is not in image .*has: other.py"):
            pull(docker(registry, other, base))

    def test_corrupt_blob_is_refused_and_the_old_version_kept(
        self, registry: RegistryServer, image: PushedImage, base: Path
    ) -> None:
        """A layer whose bytes do not match its digest is refused; the live version stays."""
        storage = docker(registry, image, base)
        pull(storage)
        live = os.readlink(storage.destination)
        change = Layer().file("opt/prefect/flows/etl.py", "print('etl v2')\n")
        again = registry.push_image(image.repository, "v1", [base_layer(), flows_layer(), change])
        blob = registry.blob_file(again.layers[2])
        data = bytearray(blob.read_bytes())
        data[-10] ^= 0xFF
        blob.write_bytes(bytes(data))
        with pytest.raises(SourceError, match="corrupt") as caught:
            pull(storage)
        assert "\n" not in str(caught.value)
        assert os.readlink(storage.destination) == live
        assert storage.flow_path.read_text() == "print('etl v1')\n"
        recorded = state(storage, base)
        assert "corrupt" in recorded["last_error"]
        assert recorded["consecutive_failures"] == 1
        staging = base / METADATA_DIR / storage.name / "staging"
        assert not staging.exists() or not any(staging.iterdir())

    def test_unknown_tag_and_repository_are_not_found_in_one_line(
        self, registry: RegistryServer, image: PushedImage, base: Path
    ) -> None:
        """A missing tag names the tags there are; a missing repository says so."""
        tag = docker(registry, image, base, reference=f"{registry.host}/{image.repository}:nope")
        with pytest.raises(NotFoundError) as caught:
            pull(tag)
        assert "tag nope not found" in str(caught.value)
        assert "v1" in str(caught.value)
        repository = docker(registry, image, base, reference=f"{registry.host}/team/absent:v1")
        with pytest.raises(NotFoundError, match=r"repository .*team/absent not found") as caught:
            pull(repository)
        assert "\n" not in str(caught.value)

    def test_an_unreachable_registry_is_transient(self, base: Path) -> None:
        """Nothing listening: a transient error, to be retried."""
        from servers.procs import free_port

        storage = Docker(
            image=f"127.0.0.1:{free_port()}/team/flows:v1", path=FLOW, stored_as_script=True
        )
        storage.set_base_path(base)
        with pytest.raises(TransientSourceError, match="cannot reach registry"):
            pull(storage)


class TestHostileLayers:
    """Layer content is untrusted: nothing lands outside the version."""

    @pytest.mark.parametrize(
        ("layer", "words"),
        [
            (Layer().file("../evil.py", "x"), "climbs out"),
            (Layer().file("/opt/prefect/flows/abs.py", "x"), "absolute name"),
            (Layer().symlink("opt/prefect/flows/pw", "/etc/passwd"), "points outside"),
            (Layer().symlink("opt/prefect/flows/up", "../../../etc"), "points outside"),
            (Layer().hardlink("opt/prefect/flows/h", "etc/passwd"), "outside the directory"),
            (
                Layer()
                .symlink("opt/prefect/flows/lib", "sub")
                .dir("opt/prefect/flows/sub/")
                .file("opt/prefect/flows/lib/x.py", "x"),
                "behind the symlink",
            ),
        ],
    )
    def test_escaping_entries_are_refused(
        self, registry: RegistryServer, base: Path, tmp_path: Path, layer: Layer, words: str
    ) -> None:
        """``..``, absolute names, links out and paths through links: refused, unpublished."""
        flows = Layer().file("opt/prefect/flows/etl.py", "x")
        pushed = registry.push_image(new_repository(), "v1", [flows, layer])
        storage = docker(registry, pushed, base)
        with pytest.raises(UnsafeContentError, match=words) as caught:
            pull(storage)
        assert "\n" not in str(caught.value)
        assert not os.path.lexists(storage.destination)
        assert not (tmp_path / "evil.py").exists()
        assert not (base / "evil.py").exists()

    @pytest.mark.parametrize(
        ("attack", "words"),
        [
            (lambda layer: layer.whiteout("opt/prefect/flows/x/victim.txt"), "outside"),
            (lambda layer: layer.opaque("opt/prefect/flows/x"), "outside"),
            (
                lambda layer: layer.hardlink(
                    "opt/prefect/flows/h", "opt/prefect/flows/x/victim.txt"
                ),
                "no file",
            ),
        ],
    )
    def test_nothing_is_touched_behind_a_symlink_that_really_leads_out(
        self,
        registry: RegistryServer,
        base: Path,
        attack: Any,
        words: str,
    ) -> None:
        """A link that reads as inside but resolves out (through another link) is not followed.

        Whiteouts and opaque markers behind it delete nothing, hard links through it link
        nothing, and the link itself is refused before publishing.
        """
        # a/b/c/up -> ../../.. is the folder itself; x -> a/b/c/up/../../../.. reads as the
        # folder too, but really is four levels above the new version: BASE, for the
        # destination name "flows" (BASE/.runner-storage/flows/staging/<id>).
        layer = (
            Layer()
            .file("opt/prefect/flows/etl.py", "x")
            .dir("opt/prefect/flows/a/b/c/")
            .symlink("opt/prefect/flows/a/b/c/up", "../../..")
            .symlink("opt/prefect/flows/x", "a/b/c/up/../../../..")
        )
        pushed = registry.push_image(new_repository(), "v1", [attack(layer)])
        storage = docker(registry, pushed, base, name="flows")
        base.mkdir(parents=True)
        victim = base / "victim.txt"
        victim.write_text("keep me")
        with pytest.raises(UnsafeContentError, match=words):
            pull(storage)
        assert victim.read_text() == "keep me"
        assert victim.stat().st_nlink == 1
        assert not os.path.lexists(storage.destination)


# --- logins --------------------------------------------------------------------------------


class TestTokenLogin:
    """Docker's token authentication: 401 with a Bearer challenge, a token, the pull."""

    def test_pull_with_a_login_through_the_token_service(
        self, token_registry: AuthRegistry, base: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The login goes to the realm as Basic; later pulls reuse the token: one request."""
        registry, tokens = token_registry.registry, token_registry.tokens
        assert tokens is not None
        pushed = registry.push_image(new_repository(), "v1", [flows_layer()])
        monkeypatch.setenv("REGISTRY_PASSWORD", token_registry.password)
        storage = docker(
            registry,
            pushed,
            base,
            username=token_registry.username,
            password=NamedSecret("REGISTRY_PASSWORD"),
        )
        tokens.reset_requests()
        assert pull(storage).changed is True
        assert storage.flow_path.is_file()
        assert [r.status for r in tokens.requests] == [200]
        assert tokens.requests[0].query["scope"] == [f"repository:{pushed.repository}:pull"]
        assert (tokens.requests[0].authorization or "").startswith("Basic ")
        registry.reset_requests()
        assert pull(storage).changed is False
        assert len(registry.requests()) == 1
        assert len(tokens.requests) == 1

    def test_wrong_password_is_an_authentication_error_without_the_password(
        self, token_registry: AuthRegistry, base: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A refused login is one line naming the user; the password is nowhere."""
        registry = token_registry.registry
        pushed = registry.push_image(new_repository(), "v1", [flows_layer()])
        wrong = "wrong-" + token_registry.password
        monkeypatch.setenv("WRONG_REGISTRY_PASSWORD", wrong)
        storage = docker(
            registry,
            pushed,
            base,
            username=token_registry.username,
            password=Secret.from_env("WRONG_REGISTRY_PASSWORD"),
        )
        with pytest.raises(AuthenticationError, match="refused the login of 'puller'") as caught:
            pull(storage)
        assert "\n" not in str(caught.value)
        assert wrong not in str(caught.value)
        assert caught.value.__cause__ is None
        text = (base / METADATA_DIR / storage.name / "state.json").read_text()
        assert wrong not in text
        assert "refused" in text

    def test_no_login_is_an_authentication_error(
        self, token_registry: AuthRegistry, base: Path
    ) -> None:
        """An anonymous pull of a private registry is refused in one line."""
        registry = token_registry.registry
        pushed = registry.push_image(new_repository(), "v1", [flows_layer()])
        with pytest.raises(AuthenticationError, match="anonymous pull"):
            pull(docker(registry, pushed, base))


class TestBasicLogin:
    """htpasswd: HTTP Basic authentication, sent once the registry asked for it."""

    def test_pull_with_basic_login_then_one_request(
        self, basic_registry: AuthRegistry, base: Path
    ) -> None:
        """The login is sent after the first 401; the no-op pull sends it at once."""
        registry = basic_registry.registry
        pushed = registry.push_image(new_repository(), "v1", [flows_layer()])
        storage = docker(
            registry,
            pushed,
            base,
            username=basic_registry.username,
            password=Secret(basic_registry.password),
        )
        assert pull(storage).changed is True
        registry.reset_requests()
        assert pull(storage).changed is False
        assert [(r.method, r.status) for r in registry.requests()] == [("HEAD", 200)]

    def test_wrong_basic_password_and_missing_login(
        self, basic_registry: AuthRegistry, base: Path
    ) -> None:
        """A wrong password is an AuthenticationError without it; no login asks for one."""
        registry = basic_registry.registry
        pushed = registry.push_image(new_repository(), "v1", [flows_layer()])
        wrong = "nope-" + basic_registry.password
        storage = docker(registry, pushed, base, username="puller", password=wrong)
        with pytest.raises(AuthenticationError, match="refused") as caught:
            pull(storage)
        assert wrong not in str(caught.value)
        assert wrong not in (base / METADATA_DIR / storage.name / "state.json").read_text()
        with pytest.raises(AuthenticationError, match="needs a login"):
            pull(docker(registry, pushed, base / "anonymous"))

    def test_redirected_blobs_never_get_the_login(
        self, basic_registry: AuthRegistry, redirecting_front: RedirectingFront, base: Path
    ) -> None:
        """Blobs redirected to another origin (an object store) are fetched without it."""
        registry = basic_registry.registry
        pushed = registry.push_image(new_repository(), "v1", [base_layer(), flows_layer()])
        storage = Docker(
            image=f"{redirecting_front.host}/{pushed.repository}:v1",
            path=FLOW,
            stored_as_script=True,
            username=basic_registry.username,
            password=Secret(basic_registry.password),
        )
        storage.set_base_path(base)
        assert pull(storage).changed is True
        assert storage.flow_path.read_text() == "print('etl v1')\n"
        seen = redirecting_front.store_requests
        assert {path.rsplit("/", 1)[1] for path, _ in seen} == {*pushed.layers, pushed.config}
        assert [authorization for _, authorization in seen] == [None] * len(seen)


# --- pull steps ----------------------------------------------------------------------------


class TestPullStep:
    """``to_pull_step()`` writes our step; the step runs in-process as a worker would."""

    def test_pull_step_carries_placeholders_not_passwords(self) -> None:
        """The image, path, user and the password's placeholder: never its value."""
        storage = Docker(
            image="127.0.0.1:5000/team/flows:v1",
            path=FLOW,
            stored_as_script=True,
            username="puller",
            password=NamedSecret("REGISTRY_PASSWORD"),
        )
        assert storage.to_pull_step() == {
            PULL_DOCKER_IMAGE_STEP: {
                "requires": "runner-storage",
                "image": "127.0.0.1:5000/team/flows:v1",
                "path": FLOW,
                "username": "puller",
                "password": "{{ prefect.blocks.secret.registry-password }}",
            }
        }
        env = Docker(
            image="127.0.0.1:5000/team/flows:v1",
            path=FLOW,
            stored_as_script=True,
            name="flows",
            insecure=True,
        )
        assert env.to_pull_step()[PULL_DOCKER_IMAGE_STEP] == {
            "requires": "runner-storage",
            "image": "127.0.0.1:5000/team/flows:v1",
            "path": FLOW,
            "insecure": True,
            "name": "flows",
        }

    def test_a_plain_password_is_refused_in_the_pull_step(self) -> None:
        """A plain-text password would be written down: refused in one line."""
        storage = Docker(
            image="127.0.0.1:5000/team/flows:v1",
            path=FLOW,
            stored_as_script=True,
            username="puller",
            password="hunter22",
        )
        with pytest.raises(ConfigurationError, match="plain value") as caught:
            storage.to_pull_step()
        assert "hunter22" not in str(caught.value)

    def test_the_step_publishes_under_the_working_directory(
        self,
        token_registry: AuthRegistry,
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """pull_docker_image publishes the folder and returns its directory, relative."""
        registry = token_registry.registry
        pushed = registry.push_image(new_repository(), "v1", [flows_layer()])
        monkeypatch.chdir(tmp_path)
        monkeypatch.setenv("STEP_REGISTRY_PASSWORD", token_registry.password)

        async def run() -> dict[str, str]:
            return await pull_docker_image(
                pushed.reference(registry),
                FLOW,
                username=token_registry.username,
                password="{{ $STEP_REGISTRY_PASSWORD }}",
            )

        result = anyio.run(run)
        assert result == {"directory": pushed.repository}
        assert (tmp_path / pushed.repository / "etl.py").read_text() == "print('etl v1')\n"
        assert anyio.run(run) == result
