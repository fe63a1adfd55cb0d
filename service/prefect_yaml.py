"""A prefect.yaml's pull sections as daemon sources (``prefect_yaml`` in the settings).

Each deployment's steps are read in order, as Prefect's worker would run them, and each
step that pulls code becomes the source that keeps that code current:

============================  ============================================
step                          source
============================  ============================================
``git_clone``                 ``kind = "git"`` (Prefect's name or ours)
``pull_from_remote_storage``  ``kind = "remote"``
``pull_snapshot``             ``kind = "snapshot"``
``pull_with_block``           ``kind = "block"`` (from the block file)
``pull_codecommit``           ``kind = "codecommit"`` (Prefect 1's CodeCommit)
``pull_docker_image``         ``kind = "docker"`` (Prefect 1's Docker, an image)
``pull_webhook``              ``kind = "webhook"`` (Prefect 1's Webhook)
``set_working_directory``     where later steps run; no source
``run_shell_script``,         the exec hook of the source before them when
``pip_install_requirements``  ``step_hooks`` is on; otherwise skipped, with a note
============================  ============================================

Placeholders are resolved as Prefect resolves them
(:class:`~runner_storage.steps.prefect_yaml.StepContext`); a secret stays a secret: a
whole ``{{ $VAR }}`` in a credential or a storage setting is read from the environment at
every pull, and a block file's ``{ env | file }`` values stay references, so neither
reaches the settings, the logs or ``/sources``. A step's ``{{ id.directory }}`` is the
absolute folder its source publishes (``root/NAME``).
"""

from __future__ import annotations

import inspect
import os
import shlex
import string
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runner_storage.exceptions import ConfigurationError
from runner_storage.secrets import DESCEND, Secret, is_secret_like, resolve_secret, token_of, walk
from runner_storage.steps.prefect_yaml import (
    FLOW_RUN_STEPS,
    Deployment,
    PullStep,
    StepContext,
    read_prefect_yaml,
    select_deployments,
)
from runner_storage.steps.templating import (
    Placeholder,
    PlaceholderKind,
    UnresolvedPlaceholderError,
    find_placeholders,
    render,
)

__all__ = ["Translated", "sources_from_prefect_yaml"]

#: Seconds a step hook may run (a pip install takes longer than the default hook).
STEP_HOOK_TIMEOUT = 900.0


@dataclass
class Translated:
    """What a prefect.yaml gave: sources, notes about skipped steps, and problems.

    Attributes:
        sources: each source's options, as a ``[[sources]]`` entry.
        origins: for each source, the deployments and steps it came from.
        notes: one line per step that was skipped.
        problems: one line per step that cannot be kept current.
    """

    sources: list[dict[str, Any]] = field(default_factory=list)
    origins: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def sources_from_prefect_yaml(
    path: Path,
    deployments: Sequence[str] | None,
    *,
    root: Path,
    context: StepContext,
    step_hooks: bool,
) -> Translated:
    """The sources that keep the named deployments' pull sections current.

    Args:
        path: the prefect.yaml.
        deployments: the deployments to keep (all for None or empty).
        root: the daemon's root, where the sources publish.
        context: where placeholders get their values (its outputs start empty).
        step_hooks: whether flow-run steps become exec hooks.

    Two deployments pulling the same code share one source; two that would publish
    different code under one name are a problem.
    """
    translated = Translated()
    try:
        selected = select_deployments(read_prefect_yaml(path), deployments, path=path)
    except ConfigurationError as exc:
        translated.problems.append(str(exc))
        return translated
    by_name: dict[str, int] = {}
    for deployment in selected:
        where = f"prefect.yaml {path}: deployment {deployment.name!r}"
        step_context = StepContext(
            environ=context.environ, blocks=context.blocks, variables=context.variables
        )
        for options, origin in _Deployment(deployment, where, root, step_context, step_hooks).run(
            translated
        ):
            name = str(options.pop("_destination"))
            known = by_name.get(name)
            if known is None:
                by_name[name] = len(translated.sources)
                translated.sources.append(options)
                translated.origins.append(origin)
            elif translated.sources[known] == options:
                translated.origins[known] += f"; {origin}"
            else:
                translated.problems.append(
                    f"{origin} and {translated.origins[known]} both publish {name!r} with"
                    " different settings: give one of the steps another clone_directory_name"
                    " (or another URL)"
                )
    return translated


class _Deployment:
    """One deployment's steps, turned into sources in order."""

    def __init__(
        self,
        deployment: Deployment,
        where: str,
        root: Path,
        context: StepContext,
        step_hooks: bool,
    ) -> None:
        self.deployment = deployment
        self.where = where
        self.root = root
        self.context = context
        self.step_hooks = step_hooks
        self.workdir = root
        self.sources: list[tuple[dict[str, Any], str]] = []

    def run(self, translated: Translated) -> list[tuple[dict[str, Any], str]]:
        for step in self.deployment.steps:
            label = f"{self.where}, {step.describe()}"
            try:
                self._step(step, label, translated)
            except (ConfigurationError, UnresolvedPlaceholderError) as exc:
                translated.problems.append(f"{label}: {exc}")
                return []
        return self.sources

    def _step(self, step: PullStep, label: str, translated: Translated) -> None:
        kind = step.kind
        if kind is None:
            raise ConfigurationError(
                f"{step.function} is not a step runner-storage can keep current: use"
                " git_clone, pull_from_remote_storage, pull_snapshot, pull_with_block,"
                " pull_codecommit, pull_docker_image or pull_webhook,"
                " or leave this deployment out (--deployment)"
            )
        if kind in FLOW_RUN_STEPS:
            self._flow_run_step(step, label, translated)
            return
        if kind == "pull_package":
            translated.notes.append(
                f"{label}: a packaged script is unpacked by the flow run itself; skipped"
            )
            return
        _check_arguments(step, kind)
        if kind == "pull_webhook":
            self._add(step, self._webhook_source(step))
            return
        inputs = self._render(step, secret_keys=_SECRET_INPUTS.get(kind, ()))
        if kind == "set_working_directory":
            directory = self._directory(inputs.get("directory"))
            self.workdir = directory
            self.context.record(step, {"directory": str(directory)})
            return
        options = {
            "git_clone": _git_source,
            "pull_from_remote_storage": _remote_source,
            "pull_snapshot": _snapshot_source,
            "pull_with_block": self._block_source,
            "pull_codecommit": _codecommit_source,
            "pull_docker_image": _docker_source,
        }[kind](inputs)
        self._add(step, options)

    def _add(self, step: PullStep, options: dict[str, Any]) -> None:
        self.context.record(step, {"directory": str(self.root / options["_destination"])})
        self.sources.append((options, f"{self.where} ({step.describe()})"))

    def _webhook_source(self, step: PullStep) -> dict[str, Any]:
        """Our ``pull_webhook`` step as a ``webhook`` source, secrets read at every pull.

        Each ``{{ $VAR }}`` becomes Prefect 1's ``${VAR}``, which the webhook source fills
        from the environment at each pull; every other placeholder is rendered now, and
        ``$`` elsewhere is written as ``$$``. A secret block would be written into the
        settings, so it is refused.
        """

        def template(item: Any, _key: str | None, _path: str) -> Any:
            if not isinstance(item, str):
                return DESCEND
            written, rest = [], item
            for placeholder in find_placeholders(item):
                before, _, rest = rest.partition(placeholder.text)
                written.append(before.replace("$", "$$"))
                value = self.context.resolve(placeholder)  # set now, or one line naming it
                if placeholder.kind is PlaceholderKind.ENV:
                    written.append(f"${{{placeholder.key}}}")
                elif is_secret_like(value):
                    raise ConfigurationError(
                        f"{placeholder.text} is a secret, which a webhook source would keep"
                        " in its settings: use {{ $VAR }} instead"
                    )
                else:
                    written.append(str(value).replace("$", "$$"))
            return "".join(written) + rest.replace("$", "$$")

        inputs = dict(step.inputs)
        url = (inputs.get("get_flow_request_kwargs") or {}).get("url")
        options: dict[str, Any] = {"kind": "webhook"}
        for key in ("get_flow_request_kwargs", "get_flow_request_http_method"):
            if inputs.get(key) is not None:
                options[key] = walk(inputs[key], template)
        for key in ("flow_script_path", "name"):
            if inputs.get(key) is not None:
                options[key] = render(inputs[key], self.context.resolve)
        if not isinstance(url, str) or not url:
            raise ConfigurationError("get_flow_request_kwargs must hold the url of the flow")
        from runner_storage.storage.webhook import default_name  # noqa: PLC0415

        options["_destination"] = options.get("name") or default_name(
            options["get_flow_request_kwargs"]["url"], options.get("flow_script_path")
        )
        return options

    def _render(self, step: PullStep, *, secret_keys: Sequence[str] | str) -> dict[str, Any]:
        """The step's inputs resolved; secrets at ``secret_keys`` stay secret references.

        ``secret_keys`` is the inputs holding secrets, or ``"*"`` for every input but the
        ones the step names its location with (settings passed to fsspec).
        """
        inputs = {
            key: self._env_secrets(value) if _holds_secrets(key, secret_keys) else value
            for key, value in step.inputs.items()
        }
        rendered: dict[str, Any] = render(inputs, self.context.resolve)
        return {
            key: walk(value, _secret_table)
            if _holds_secrets(key, secret_keys)
            else walk(value, _reveal)
            for key, value in rendered.items()
        }

    def _env_secrets(self, value: Any) -> Any:
        """Each whole ``{{ $VAR }}`` inside ``value`` kept as a reference read at every pull.

        Raises:
            UnresolvedPlaceholderError: the variable is not set now.
        """

        def convert(item: Any, _key: str | None, _path: str) -> Any:
            if not isinstance(item, str):
                return DESCEND
            found = find_placeholders(item)
            if len(found) == 1 and found[0].text == item and found[0].kind is PlaceholderKind.ENV:
                self.context.resolve(found[0])  # set now, or one line naming it
                return _EnvReference(found[0])
            return item

        return walk(value, convert)

    def _env_value(self, value: Any) -> Any:
        """An ``env`` value of a shell step: a whole ``{{ $VAR }}`` kept as a reference."""
        found = find_placeholders(value) if isinstance(value, str) else []
        if len(found) == 1 and found[0].text == value and found[0].kind is PlaceholderKind.ENV:
            self.context.resolve(found[0])  # set now, or one line naming it
            return _EnvReference(found[0])
        return render(value, self.context.resolve)

    def _directory(self, value: Any) -> Path:
        if not isinstance(value, str) or not value:
            raise ConfigurationError("directory must be a folder's path")
        directory = Path(value).expanduser()
        return directory if directory.is_absolute() else self.workdir / directory

    def _block_source(self, inputs: dict[str, Any]) -> dict[str, Any]:
        slug, name = inputs.get("block_type_slug"), inputs.get("block_document_name")
        if not isinstance(slug, str) or not isinstance(name, str):
            raise ConfigurationError("block_type_slug and block_document_name must be text")
        try:
            fields = self.context.blocks.document(slug, name)
        except KeyError as exc:
            raise ConfigurationError(
                f"{exc.args[0]}: add it to the block file (blocks_file), as [{slug}.{name}]"
            ) from None
        from runner_storage.blocks.filesystems import (  # noqa: PLC0415 - fsspec, when used
            BLOCK_CLASSES,
            from_block_document,
        )

        from_block_document(slug, name, fields)  # the block's own checks, one line each
        classes = BLOCK_CLASSES
        options: dict[str, Any] = {
            "kind": "block",
            "name": f"{slug}-{name}",
            "block": classes[slug],
            "basepath": walk(fields.get("basepath"), _reveal),
            "_destination": f"{slug}-{name}",
        }
        if slug == "remote-file-system" and fields.get("settings"):
            options["settings"] = walk(fields["settings"], _secret_table)
        return options

    def _flow_run_step(self, step: PullStep, label: str, translated: Translated) -> None:
        if not self.step_hooks:
            translated.notes.append(
                f"{label}: runs inside a flow run; skipped (set step_hooks = true to run it"
                " after each publish of the source before it)"
            )
            return
        if not self.sources:
            translated.notes.append(f"{label}: no source before it to run after; skipped")
            return
        _check_arguments(step, step.kind or "")
        given = dict(step.inputs)
        # A whole {{ $VAR }} in env stays a reference the hook's shell expands from its
        # own environment: its value never reaches the hook's command line.
        env = given.pop("env", None) or {}
        if not isinstance(env, Mapping):
            raise ConfigurationError("env must be a mapping of variable names to values")
        inputs: dict[str, Any] = render(given, self.context.resolve)
        inputs["env"] = {name: self._env_value(value) for name, value in env.items()}
        for placeholder in find_placeholders(step.inputs):
            if placeholder.kind is PlaceholderKind.BLOCK and is_secret_like(
                self.context.resolve(placeholder)
            ):
                raise ConfigurationError(
                    f"{placeholder.text} is a secret, and a hook's command line is visible to"
                    " every user of this machine: read it inside the script from a file or"
                    " an environment variable instead"
                )
        directory = self._directory(inputs.get("directory") or str(self.workdir))
        script = _hook_script(step.kind or "", inputs, directory)
        options, _ = self.sources[-1]
        hooks = options.setdefault("hooks", {"timeout": STEP_HOOK_TIMEOUT})
        previous = hooks.get("exec")
        body = f"{previous[2]}\n{script}" if previous else f"set -e\n{script}"
        hooks["exec"] = ["/bin/sh", "-c", body, "runner-storage-step-hook"]


#: Which inputs of each step hold secrets ("*": all but its location).
_SECRET_INPUTS: dict[str, Sequence[str] | str] = {
    "git_clone": ("access_token", "credentials"),
    "pull_from_remote_storage": "*",
    "pull_snapshot": "*",
    "pull_docker_image": ("password",),
}
_ALL_BUT_LOCATION = "*"
#: The inputs that say where the code is, never secrets.
_LOCATION_INPUTS = frozenset({"url", "root", "snapshot", "ref"})


def _holds_secrets(key: str, secret_keys: Sequence[str] | str) -> bool:
    if secret_keys == _ALL_BUT_LOCATION:
        return key not in _LOCATION_INPUTS
    return key in secret_keys


def _check_arguments(step: PullStep, kind: str) -> None:
    """Refuse inputs the step's function does not take, as calling it would."""
    from runner_storage.deployments import steps  # noqa: PLC0415 - the step functions

    functions: dict[str, Callable[..., Any]] = {
        "git_clone": steps.git_clone,
        "pull_from_remote_storage": steps.pull_from_remote_storage,
        "pull_snapshot": steps.pull_snapshot,
        "pull_with_block": steps.pull_with_block,
        "set_working_directory": steps.set_working_directory,
        "pull_codecommit": steps.pull_codecommit,
        "pull_docker_image": steps.pull_docker_image,
        "pull_webhook": steps.pull_webhook,
    }
    function = functions.get(kind)
    if function is None:
        return
    try:
        inspect.signature(function).bind(**step.inputs)
    except TypeError as exc:
        raise ConfigurationError(f"{exc}; see the step's arguments in the README") from None


class _EnvReference:
    """A whole ``{{ $VAR }}`` kept for :func:`_secret_table` (checked to be set now)."""

    def __init__(self, placeholder: Placeholder) -> None:
        self.placeholder = placeholder


def _secret_table(value: Any, _key: str | None, _path: str) -> Any:
    """A secret as the settings' ``{ env | file | value [, name] }`` table."""
    if isinstance(value, _EnvReference):
        return {"env": value.placeholder.key}
    if not isinstance(value, Secret):
        return DESCEND
    table: dict[str, Any]
    if value.env_var is not None:
        table = {"env": value.env_var}
    elif value.file_path is not None:
        table = {"file": str(value.file_path)}
    else:
        table = {"value": value.get()}
    if value.name:
        table["name"] = value.name
    return table


def _reveal(value: Any, _key: str | None, _path: str) -> Any:
    return resolve_secret(value) if is_secret_like(value) else DESCEND


def _git_source(inputs: Mapping[str, Any]) -> dict[str, Any]:
    from runner_storage.git.url import default_name  # noqa: PLC0415 - the git family

    repository = inputs.get("repository")
    if not isinstance(repository, str) or not repository:
        raise ConfigurationError("repository must be a repository URL")
    if inputs.get("access_token") and inputs.get("credentials"):
        raise ConfigurationError("give access_token or credentials, not both (as Prefect)")
    options: dict[str, Any] = {"kind": "git", "source": repository}
    for key in ("branch", "commit_sha", "directories"):
        if inputs.get(key) is not None:
            options[key] = inputs[key]
    if inputs.get("include_submodules"):
        options["include_submodules"] = True
    if inputs.get("clone_directory_name"):
        options["name"] = inputs["clone_directory_name"]
    credentials = _git_credentials(inputs)
    if credentials is not None:
        options["credentials"] = credentials
    options["_destination"] = options.get("name") or default_name(repository, inputs.get("branch"))
    return options


def _git_credentials(inputs: Mapping[str, Any]) -> dict[str, Any] | None:
    if inputs.get("access_token"):
        return {"token": _as_table(inputs["access_token"])}
    given = inputs.get("credentials")
    if not given:
        return None
    if not isinstance(given, Mapping):
        return {"token": _as_table(given)}
    token = token_of(given)
    if token is None:
        raise ConfigurationError(
            "credentials hold no access_token, token or password: give one of them"
        )
    credentials: dict[str, Any] = {"token": _as_table(token)}
    if given.get("username"):
        credentials["username"] = walk(given["username"], _reveal)
    return credentials


def _as_table(value: Any) -> dict[str, Any]:
    """A secret input as a table; a literal (written into the prefect.yaml) as ``value``."""
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, str):
        return {"value": value}
    raise ConfigurationError(f"a token must be text, not {type(value).__name__}")


def _remote_source(inputs: Mapping[str, Any]) -> dict[str, Any]:
    from runner_storage.fs.paths import destination_name  # noqa: PLC0415

    url = inputs.get("url")
    if not isinstance(url, str) or not url:
        raise ConfigurationError("url must be a storage URL, e.g. s3://bucket/flows")
    settings = {key: value for key, value in inputs.items() if key != "url"}
    options: dict[str, Any] = {"kind": "remote", "source": url}
    if settings:
        options["settings"] = settings
    options["_destination"] = destination_name(url)
    return options


def _snapshot_source(inputs: Mapping[str, Any]) -> dict[str, Any]:
    from runner_storage.fs.paths import destination_name  # noqa: PLC0415

    root = inputs.get("root")
    if not isinstance(root, str) or not root:
        raise ConfigurationError("root must be the snapshot root's URL")
    options: dict[str, Any] = {"kind": "snapshot", "source": root}
    for key in ("ref", "snapshot"):
        if inputs.get(key) is not None:
            options[key] = inputs[key]
    settings = {k: v for k, v in inputs.items() if k not in ("root", "ref", "snapshot")}
    if settings:
        options["settings"] = settings
    options["_destination"] = destination_name(root.removeprefix("snapshot+"))
    return options


def _codecommit_source(inputs: Mapping[str, Any]) -> dict[str, Any]:
    """Our ``pull_codecommit`` step as a ``codecommit`` source (no secret in it)."""
    from runner_storage.storage.git import split_ref  # noqa: PLC0415

    repo = inputs.get("repo")
    if not isinstance(repo, str) or not repo:
        raise ConfigurationError("repo must be the CodeCommit repository's name")
    options: dict[str, Any] = {"kind": "codecommit"}
    for key in ("repo", "path", "commit", "client_options", "name"):
        if inputs.get(key) is not None:
            options[key] = inputs[key]
    branch, sha = split_ref(inputs.get("commit"))
    ref = branch or (sha[:12] if sha else None)
    options["_destination"] = inputs.get("name") or (f"{repo}-{ref}" if ref else repo)
    return options


def _docker_source(inputs: Mapping[str, Any]) -> dict[str, Any]:
    """Our ``pull_docker_image`` step as a ``docker`` source (the password a reference)."""
    from runner_storage.storage.registry import ImageReference  # noqa: PLC0415

    image = inputs.get("image")
    if not isinstance(image, str) or not image:
        raise ConfigurationError("image must be an image reference, host/repository:tag")
    options: dict[str, Any] = {"kind": "docker"}
    for key in ("image", "path", "username", "insecure", "name"):
        if inputs.get(key) is not None:
            options[key] = inputs[key]
    if inputs.get("password") is not None:
        options["password"] = _as_table(inputs["password"])
    options["_destination"] = inputs.get("name") or ImageReference.parse(image).repository
    return options


def _hook_script(kind: str, inputs: Mapping[str, Any], directory: Path) -> str:
    """A step as POSIX sh lines in a subshell: what Prefect would run, in ``directory``."""
    lines = [f"cd {shlex.quote(str(directory))}"]
    if kind == "pip_install_requirements":
        requirements = str(inputs.get("requirements_file") or "requirements.txt")
        lines.append(shlex.join([sys.executable, "-m", "pip", "install", "-q", "-r", requirements]))
    else:
        env = inputs.get("env") or {}
        lines += [
            # A reference is expanded by the hook's shell from its own environment.
            f'export {name}="${{{value.placeholder.key}}}"'
            if isinstance(value, _EnvReference)
            else f"export {name}={shlex.quote(str(value))}"
            for name, value in env.items()
            if str(name).isidentifier()
        ]
        script = str(inputs.get("script") or "")
        environment = {
            **os.environ,
            **{
                str(k): os.environ.get(v.placeholder.key, "")
                if isinstance(v, _EnvReference)
                else str(v)
                for k, v in env.items()
            },
        }
        expand = bool(inputs.get("expand_env_vars"))
        for line in script.splitlines():
            if not line.strip():
                continue
            command = string.Template(line).safe_substitute(environment) if expand else line
            # shell: true runs the line through the shell, as Prefect; else no shell at all.
            lines.append(
                command.strip() if inputs.get("shell") else shlex.join(shlex.split(command))
            )
    body = "\n".join(f"  {line}" for line in lines)
    return f"(\n  set -e\n{body}\n)"
