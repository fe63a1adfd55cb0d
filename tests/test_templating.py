"""Prefect's templating of pull steps, the local block file, and the step context.

``runner_storage.steps.templating`` follows ``prefect.utilities.templating``: the same
placeholder pattern and kinds, a whole-string placeholder keeping its value's type, inline
placeholders written as text, environment variables always text. On purpose it differs
where Prefect silently drops what it cannot resolve: here that is an error naming the
placeholder. Rows marked "Prefect:" are inputs and results of Prefect's own
``tests/utilities/test_templating.py`` (hard-coded from its source; Prefect is not
imported here).

``BlockFile`` gives Prefect block documents from a TOML or YAML file and a secrets
directory, with ``{env | file | value}`` tables as :class:`~runner_storage.Secret`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from runner_storage import Secret
from runner_storage.exceptions import ConfigurationError
from runner_storage.steps.blockfile import BlockFile
from runner_storage.steps.prefect_yaml import PullStep, StepContext
from runner_storage.steps.templating import (
    Placeholder,
    PlaceholderKind,
    UnresolvedPlaceholderError,
    find_placeholders,
    lookup_path,
    render,
)

#: A distinctive secret value: no message, anywhere, may contain it.
CANARY = "hunter2-canary-9f3b7c"
GIT_CLONE = "prefect.deployments.steps.git_clone"
WHERE = "prefect.yaml /srv/prefect.yaml: deployment 'prod'"


def resolver(values: Mapping[str, Any]) -> Any:
    """A resolver over ``values`` keyed by placeholder name; others are unresolved."""

    def resolve(placeholder: Placeholder) -> Any:
        if placeholder.name not in values:
            raise UnresolvedPlaceholderError(placeholder, "not in the test's values")
        return values[placeholder.name]

    return resolve


def context(
    outputs: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    blocks: BlockFile | None = None,
    variables: Mapping[str, Any] | None = None,
) -> StepContext:
    """A StepContext with only what is given (never the process environment)."""
    return StepContext(
        environ=dict(environ or {}),
        blocks=blocks or BlockFile(),
        variables=dict(variables or {}),
        outputs=dict(outputs or {}),
    )


def block_file(tmp_path: Path, text: str, suffix: str = ".toml", **kwargs: Any) -> BlockFile:
    """``text`` written as a block file under ``tmp_path`` and loaded."""
    path = tmp_path / f"blocks{suffix}"
    path.write_text(text)
    return BlockFile.load(path, **kwargs)


class TestPlaceholders:
    """What a placeholder is: its kind and key from its name, as Prefect's types."""

    @pytest.mark.parametrize(
        ("text", "kind", "key"),
        [
            ("{{ $GITHUB_TOKEN }}", PlaceholderKind.ENV, "GITHUB_TOKEN"),
            ("{{prefect.blocks.secret.gh-token}}", PlaceholderKind.BLOCK, "secret.gh-token"),
            (
                "{{ prefect.blocks.github-credentials.acme.token }}",
                PlaceholderKind.BLOCK,
                "github-credentials.acme.token",
            ),
            ("{{ prefect.variables.branch }}", PlaceholderKind.VARIABLE, "branch"),
            ("{{ clone-step.directory }}", PlaceholderKind.STEP_OUTPUT, "clone-step.directory"),
            ("{{   people[0].name }}", PlaceholderKind.STEP_OUTPUT, "people[0].name"),
        ],
    )
    def test_kind_and_key(self, text: str, kind: PlaceholderKind, key: str) -> None:
        """The prefix decides the kind; the key is the name without it; text is as written."""
        (placeholder,) = find_placeholders(text)
        assert (placeholder.kind, placeholder.key, placeholder.text) == (kind, key, text)

    def test_found_through_nested_mappings_and_lists_in_order(self) -> None:
        """Strings at any depth are searched; other scalars hold none."""
        template = {
            "repository": "https://host/{{ prefect.variables.org }}/repo.git",
            "credentials": {"token": "{{ $TOKEN }}", "retries": 3, "verify": True},
            "directories": ["{{ a.b }}", {"deeper": ["x {{ c }} y {{ d }}"]}, None],
        }
        assert [p.name for p in find_placeholders(template)] == [
            "prefect.variables.org",
            "$TOKEN",
            "a.b",
            "c",
            "d",
        ]

    @pytest.mark.parametrize("text", ["", "plain", "{ a }", "{{ }}", "{{ a b }}", "{{ a/b }}"])
    def test_text_that_is_no_placeholder(self, text: str) -> None:
        """Prefect's pattern: one word of letters, digits, ``_ . - [ ] $`` between braces."""
        assert find_placeholders(text) == []


class TestRender:
    """Placeholders replaced by what the resolver gives."""

    @pytest.mark.parametrize(
        "value",
        [3, 2.5, True, None, {"username": "u", "token": "t"}, ["flows", "lib"]],
        ids=["int", "float", "bool", "none", "dict", "list"],
    )
    def test_whole_string_keeps_the_type(self, value: Any) -> None:
        """A string that is one placeholder and nothing else becomes the value itself."""
        assert render({"x": "{{ step.value }}"}, resolver({"step.value": value})) == {"x": value}

    @pytest.mark.parametrize("name", ["prefect.blocks.secret.gh", "prefect.variables.token"])
    def test_whole_string_secret_stays_a_secret_object(self, name: str) -> None:
        """A Secret stays a Secret (the step reads it when it uses it), unrevealed."""
        secret = Secret(CANARY, name="gh")
        rendered = render({"access_token": f"{{{{ {name} }}}}"}, resolver({name: secret}))
        assert rendered["access_token"] is secret

    def test_whole_string_environment_variable_is_text(self) -> None:
        """As Prefect's apply_values: an environment placeholder gives text, whatever it holds."""
        rendered = render(["{{ $COUNT }}"], resolver({"$COUNT": 3}))
        assert rendered == ["3"]

    def test_several_inline_placeholders(self) -> None:
        """Each inline placeholder is written as text; a repeated one everywhere."""
        values = {"$HOST": "git.example", "prefect.variables.org": "acme", "n": 2}
        rendered = render(
            "https://{{ $HOST }}/{{prefect.variables.org}}/r{{ n }}-{{ n }}.git",
            resolver(values),
        )
        assert rendered == "https://git.example/acme/r2-2.git"

    def test_inline_secret_is_revealed(self) -> None:
        """A Secret inside text can only be its value (the step receives plain text)."""
        secret = Secret(CANARY, name="gh")
        rendered = render(
            "Authorization: Bearer {{ prefect.blocks.secret.gh }}",
            resolver({"prefect.blocks.secret.gh": secret}),
        )
        assert rendered == f"Authorization: Bearer {CANARY}"

    @pytest.mark.parametrize("value", [{"token": CANARY}, [CANARY]], ids=["dict", "list"])
    def test_inline_mapping_or_list_refused_naming_the_placeholder(self, value: Any) -> None:
        """No text form is right for a mapping in text: refused, naming it, value unshown."""
        text = "token={{ prefect.blocks.github-credentials.acme }}"
        with pytest.raises(UnresolvedPlaceholderError) as caught:
            render({"script": text}, resolver({"prefect.blocks.github-credentials.acme": value}))
        message = str(caught.value)
        assert "{{ prefect.blocks.github-credentials.acme }}" in message
        assert type(value).__name__ in message
        assert caught.value.placeholder.key == "github-credentials.acme"
        assert CANARY not in message
        assert "\n" not in message

    def test_kinds_filter_leaves_other_kinds_untouched(self) -> None:
        """Only the kinds asked for are resolved; others stay as written, whole or inline."""
        template = {
            "a": "{{ $HOST }}",
            "b": "{{ prefect.blocks.secret.gh }}",
            "c": "{{ clone.directory }}/{{ $HOST }}/{{ prefect.variables.org }}",
        }
        values = {"$HOST": "h", "clone.directory": "d"}
        only = frozenset({PlaceholderKind.ENV, PlaceholderKind.STEP_OUTPUT})
        assert render(template, resolver(values), kinds=only) == {
            "a": "h",
            "b": "{{ prefect.blocks.secret.gh }}",
            "c": "d/h/{{ prefect.variables.org }}",
        }

    def test_unresolvable_is_an_error_naming_it(self) -> None:
        """Unlike Prefect (which drops it), a placeholder without a value is an error."""
        template = {"repository": "ok", "branch": ["{{ prefect.variables.branch }}"]}
        with pytest.raises(UnresolvedPlaceholderError) as caught:
            render(template, resolver({}))
        assert str(caught.value).startswith("{{ prefect.variables.branch }} cannot be resolved")
        assert caught.value.placeholder.kind is PlaceholderKind.VARIABLE
        assert isinstance(caught.value, ConfigurationError)
        assert isinstance(caught.value, ValueError)

    def test_text_without_placeholders_never_asks_the_resolver(self) -> None:
        """Scalars and plain strings come back unchanged; the resolver is not called."""

        def refuse(placeholder: Placeholder) -> Any:
            raise AssertionError(f"asked for {placeholder}")

        template = {"a": "plain", "b": [1, None, False, "{ x }"], "c": {"d": 2.5}}
        assert render(template, refuse) == template


class TestAgainstPrefect:
    """The same inputs as Prefect's own tests give the same results, where semantics agree.

    Values are earlier steps' outputs (Prefect's ``apply_values(template, values)``) and
    the environment (its ``os.environ`` for ``$`` placeholders).
    """

    @pytest.mark.parametrize(
        ("template", "values", "environ", "expected"),
        [
            # Prefect: test_apply_values_simple_string_with_one_placeholder
            ("Hello, {{name}}!", {"name": "Alice"}, {}, "Hello, Alice!"),
            # Prefect: test_apply_values_simple_string_with_multiple_placeholders
            (
                "Hello, {{first_name}} {{last_name}}!",
                {"first_name": "Alice", "last_name": "Smith"},
                {},
                "Hello, Alice Smith!",
            ),
            # Prefect: test_apply_values_dictionary_with_placeholders
            (
                {"name": "{{first_name}} {{last_name}}", "age": "{{age}}"},
                {"first_name": "Alice", "last_name": "Smith", "age": 30},
                {},
                {"name": "Alice Smith", "age": 30},
            ),
            # Prefect: test_apply_values_dictionary_with_null
            (
                {"last_name": None, "age": "{{age}}"},
                {"age": 30},
                {},
                {"last_name": None, "age": 30},
            ),
            # Prefect: test_apply_values_nested_dictionary_with_placeholders
            (
                {
                    "name": {"first_name": "{{ first_name }}", "last_name": "{{ last_name }}"},
                    "age": "{{age}}",
                },
                {"first_name": "Alice", "last_name": "Smith", "age": 30},
                {},
                {"name": {"first_name": "Alice", "last_name": "Smith"}, "age": 30},
            ),
            # Prefect: test_apply_values_list_with_placeholders
            (
                ["Hello, {{first_name}} {{last_name}}!", {"name": "{{first_name}} {{last_name}}"}],
                {"first_name": "Alice", "last_name": "Smith"},
                {},
                ["Hello, Alice Smith!", {"name": "Alice Smith"}],
            ),
            # Prefect: test_apply_values_integer/float/boolean/none_input
            (123, {"name": "Alice"}, {}, 123),
            (3.14, {"pi": 3.14}, {}, 3.14),
            (True, {"flag": False}, {}, True),
            (None, {"key": "value"}, {}, None),
            # Prefect: test_apply_values_with_dot_delimited_placeholder_str (and _with_list)
            ("Hello {{ person.name }}!", {"person": {"name": "Arthur"}}, {}, "Hello Arthur!"),
            ("Hello {{ people[0].name }}!", {"people": [{"name": "Arthur"}]}, {}, "Hello Arthur!"),
            # Prefect: test_apply_values_with_dot_delimited_placeholder_dict (and _with_list)
            (
                {"right now we need": "{{ people.superman }}"},
                {"people": {"superman": {"first_name": "Superman", "age": 30}}},
                {},
                {"right now we need": {"first_name": "Superman", "age": 30}},
            ),
            (
                {"right now we need": "{{ people[0] }}"},
                {"people": [{"first_name": "Superman", "age": 30}]},
                {},
                {"right now we need": {"first_name": "Superman", "age": 30}},
            ),
            # Prefect: test_template_with_unconventional_spacing (through apply_values)
            (
                "Hello {{    first_name }} {{ last_name }}!",
                {"first_name": "A", "last_name": "B"},
                {},
                "Hello A B!",
            ),
            # Prefect: "{{x}}{{x}}" is one placeholder used twice, replaced inline
            ("{{x}}{{x}}", {"x": 1}, {}, "11"),
            # Prefect: the environment inline, and whole (always text, via str())
            ("Hello {{$MY_ENV_VAR}}!", {}, {"MY_ENV_VAR": "VALUE"}, "Hello VALUE!"),
            ({"n": "{{ $N }}"}, {}, {"N": "5"}, {"n": "5"}),
            # Prefect: test_apply_values_skip_prefixes_does_not_affect_other_placeholders,
            # the build step's output in the shape of Prefect's run_steps
            (
                {"image": "{{ build-image.image }}", "tags": ["{{ version }}"]},
                {"build-image": {"image": "img:latest"}, "version": "v1"},
                {},
                {"image": "img:latest", "tags": ["v1"]},
            ),
        ],
    )
    def test_row(
        self, template: Any, values: dict[str, Any], environ: dict[str, str], expected: Any
    ) -> None:
        """``render`` with a StepContext holding ``values`` gives Prefect's result."""
        ctx = context(outputs=values, environ=environ)
        assert render(template, ctx.resolve) == expected

    def test_block_placeholders_left_for_the_block_pass(self) -> None:
        """Prefect: test_does_not_apply_values_to_block_document_placeholders.

        Prefect's apply_values leaves block placeholders for a later pass; ``kinds=`` does
        the same here.
        """
        template = "Hello {{prefect.blocks.document.name}}!"
        kinds = frozenset({PlaceholderKind.STEP_OUTPUT, PlaceholderKind.ENV})
        assert render(template, context(outputs={"name": "Alice"}).resolve, kinds=kinds) == (
            template
        )

    @pytest.mark.parametrize(
        ("template", "prefects"),
        [
            # Prefect: test_apply_values_dictionary_with_unset_value -> {"age": 30}
            ({"last_name": "{{last_name}}", "age": "{{age}}"}, {"age": 30}),
            # Prefect: test_apply_values_clears_placeholder_for_missing_env_vars -> ""
            ("{{ $MISSING_ENV_VAR }}", ""),
        ],
    )
    def test_where_prefect_drops_a_placeholder_this_refuses(
        self, template: Any, prefects: Any
    ) -> None:
        """The deliberate difference: Prefect gives ``prefects``; here it is an error."""
        with pytest.raises(UnresolvedPlaceholderError):
            render(template, context(outputs={"age": 30}).resolve)


class TestLookupPath:
    """``a.b[0].c`` paths, as Prefect's ``get_from_dict``."""

    DATA: Mapping[str, Any] = {
        "clone": {"directory": "repo-main", "dirs": ["flows", {"name": "lib"}]},
        "people": [{"name": "Arthur"}, {"name": "Ford"}],
        "with-dash": {"x_y": 1},
        "none": None,
    }

    @pytest.mark.parametrize(
        ("path", "expected"),
        [
            ("clone.directory", "repo-main"),
            ("clone.dirs[0]", "flows"),
            ("clone.dirs[1].name", "lib"),
            ("people[1].name", "Ford"),
            ("with-dash.x_y", 1),
            ("none", None),
            ("clone", DATA["clone"]),
        ],
    )
    def test_found(self, path: str, expected: Any) -> None:
        """Dots enter mappings, ``[n]`` enters lists, at any depth."""
        assert lookup_path(self.DATA, path) == expected

    @pytest.mark.parametrize(
        ("path", "message"),
        [
            ("missing", "no 'missing'"),
            ("clone.nope", "no 'nope' in clone"),
            ("clone.dirs[5]", "no item [5] in clone.dirs"),
            ("clone.directory.deeper", "no 'deeper' in clone.directory"),
            ("people.name", "no 'name' in people"),
            ("none.x", "no 'x' in none"),
        ],
    )
    def test_missing_part_named(self, path: str, message: str) -> None:
        """A path leading nowhere: KeyError naming the missing part and where it was sought."""
        with pytest.raises(KeyError) as caught:
            lookup_path(self.DATA, path)
        assert caught.value.args[0] == message

    @pytest.mark.parametrize("path", ["people.1.name", "people[-1].name"])
    def test_prefects_other_index_forms(self, path: str) -> None:
        """Prefect: ``get_from_dict({'people': [..]}, 'people.1.name')`` is ``'Ford'``."""
        assert lookup_path(self.DATA, path) == "Ford"


class TestBlockFile:
    """Block documents from a TOML or YAML file, and Secret blocks from a secrets directory."""

    TOML = """\
[secret.gh]
value = { file = "TOKEN_FILE" }

[secret.from-env]
value = { env = "RS_TEST_BLOCK_SECRET" }

[secret.literal]
value = { value = "literal-secret" }

[github-credentials.acme]
username = "bob"
token = { file = "TOKEN_FILE" }

[remote-file-system.flows]
basepath = "s3://acme-flows/prod"
settings = { key = "AKIA1", secret = { env = "RS_TEST_BLOCK_SECRET" }, opts = [{ value = "v" }] }

[json.config]
value = { branches = ["main", "dev"], retries = 2 }
"""
    YAML = """\
secret:
  gh:
    value: {file: TOKEN_FILE}
  from-env:
    value: {env: RS_TEST_BLOCK_SECRET}
  literal:
    value: {value: literal-secret}
github-credentials:
  acme:
    username: bob
    token: {file: TOKEN_FILE}
remote-file-system:
  flows:
    basepath: s3://acme-flows/prod
    settings:
      key: AKIA1
      secret: {env: RS_TEST_BLOCK_SECRET}
      opts: [{value: v}]
json:
  config:
    value: {branches: [main, dev], retries: 2}
"""

    @pytest.fixture(params=[".toml", ".yaml", ".yml"])
    def blocks(
        self, request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> BlockFile:
        """The same blocks as TOML, YAML or YML; the token file holds ``CANARY``."""
        token = tmp_path / "token"
        token.write_text(CANARY + "\n")
        monkeypatch.setenv("RS_TEST_BLOCK_SECRET", "from-the-environment")
        suffix: str = request.param
        text = self.TOML if suffix == ".toml" else self.YAML
        return block_file(tmp_path, text.replace("TOKEN_FILE", str(token)), suffix)

    def test_tables_become_secrets_read_at_use(
        self, blocks: BlockFile, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """``{env}``, ``{file}`` and ``{value}`` tables are Secrets; their text is read at use."""
        from_env = blocks.value("secret.from-env")
        assert isinstance(from_env, Secret)
        assert from_env.env_var == "RS_TEST_BLOCK_SECRET"
        assert from_env.get() == "from-the-environment"
        monkeypatch.setenv("RS_TEST_BLOCK_SECRET", "rotated")
        assert from_env.get() == "rotated"
        assert blocks.value("secret.gh").get() == CANARY
        assert blocks.value("secret.literal").get() == "literal-secret"
        assert CANARY not in repr(blocks.document("secret", "gh"))

    def test_secret_blocks_keep_their_name(self, blocks: BlockFile) -> None:
        """A Secret block's Secret names itself as Prefect's placeholder; other blocks' do not."""
        assert blocks.value("secret.gh").placeholder() == "{{ prefect.blocks.secret.gh }}"
        assert blocks.value("secret.from-env").name == "from-env"
        token = blocks.value("github-credentials.acme.token")
        assert isinstance(token, Secret)
        assert token.name is None

    def test_a_secret_block_in_plain_text_is_a_secret(self, tmp_path: Path) -> None:
        """``[secret.x] value = "text"`` is a named Secret too: never shown, placeholder kept."""
        blocks = block_file(tmp_path, f'[secret.plain]\nvalue = "{CANARY}"\n')
        value = blocks.value("secret.plain")
        assert isinstance(value, Secret)
        assert value.get() == CANARY
        assert value.placeholder() == "{{ prefect.blocks.secret.plain }}"
        assert CANARY not in repr(blocks.document("secret", "plain"))

    def test_secrets_at_any_depth_of_a_field(self, blocks: BlockFile) -> None:
        """Secrets inside a field's tables and lists become Secrets too; the rest is kept."""
        settings = blocks.value("remote-file-system.flows.settings")
        assert settings["key"] == "AKIA1"
        assert settings["secret"].get() == "from-the-environment"
        assert settings["opts"][0].get() == "v"
        assert blocks.value("remote-file-system.flows.basepath") == "s3://acme-flows/prod"

    @pytest.mark.parametrize(
        ("reference", "expected"),
        [
            ("secret.gh", CANARY),
            ("secret.gh.value", CANARY),
            ("github-credentials.acme.token", CANARY),
            ("github-credentials.acme.username", "bob"),
            ("json.config.retries", 2),
            ("json.config.value.branches[1]", "dev"),
            ("json.config.branches[0]", "main"),
        ],
    )
    def test_value_path_rules(self, blocks: BlockFile, reference: str, expected: Any) -> None:
        """A block holding only ``value`` gives it, unless the path starts with ``value``."""
        found = blocks.value(reference)
        assert (found.get() if isinstance(found, Secret) else found) == expected

    def test_value_of_a_block_with_more_fields_is_the_document(self, blocks: BlockFile) -> None:
        """A block with several fields gives them all, as a mapping."""
        document = blocks.value("github-credentials.acme")
        assert set(document) == {"username", "token"}

    def test_file_rotation_is_picked_up(self, tmp_path: Path) -> None:
        """A ``{file}`` Secret re-reads its file: a rotated token is used next time."""
        token = tmp_path / "token"
        token.write_text("first\n")
        blocks = block_file(tmp_path, f'[secret.gh]\nvalue = {{ file = "{token}" }}\n')
        secret = blocks.value("secret.gh")
        assert secret.get() == "first"
        token.write_text("second\n")
        assert secret.get() == "second"

    def test_secrets_directory_fallback(self, tmp_path: Path) -> None:
        """A Secret block not in the file is the file NAME in the secrets directory."""
        secrets = tmp_path / "secrets"
        secrets.mkdir()
        (secrets / "gh").write_text("from-dir\n")
        (secrets / "both").write_text("from-dir\n")
        blocks = block_file(
            tmp_path, '[secret.both]\nvalue = { value = "from-file" }\n', secrets_dir=secrets
        )
        found = blocks.value("secret.gh")
        assert isinstance(found, Secret)
        assert found.get() == "from-dir"
        assert found.placeholder() == "{{ prefect.blocks.secret.gh }}"
        assert blocks.value("secret.both").get() == "from-file"
        (secrets / "gh").write_text("rotated\n")
        assert found.get() == "rotated"
        only_dir = BlockFile.load(None, secrets_dir=secrets)
        assert only_dir.value("secret.gh").get() == "rotated"

    def test_secrets_directory_holds_only_secret_blocks(self, tmp_path: Path) -> None:
        """Other block types are never looked up as files."""
        (tmp_path / "acme").write_text("x")
        with pytest.raises(KeyError, match="no block github-credentials/acme in no block file"):
            BlockFile.load(None, secrets_dir=tmp_path).value("github-credentials.acme.token")

    def test_missing_block_says_where_it_looked(self, tmp_path: Path) -> None:
        """The message names the block, the file and, for a Secret, the secrets directory."""
        secrets = tmp_path / "secrets"
        secrets.mkdir()
        blocks = block_file(tmp_path, '[secret.gh]\nvalue = { value = "x" }\n', secrets_dir=secrets)
        with pytest.raises(KeyError) as caught:
            blocks.value("secret.other")
        assert caught.value.args[0] == (
            f"no block secret/other in block file {tmp_path / 'blocks.toml'} or the secrets"
            f" directory {secrets}"
        )
        with pytest.raises(KeyError) as caught:
            blocks.value("json.cfg")
        assert caught.value.args[0] == f"no block json/cfg in block file {tmp_path / 'blocks.toml'}"

    @pytest.mark.parametrize(
        ("reference", "message"),
        [
            ("secret.gh.value.token", "no 'token' in value in block secret/gh"),
            ("github-credentials.acme.password", "no 'password' in block github-credentials/acme"),
            ("secret", "expected prefect.blocks.TYPE.NAME, got prefect.blocks.secret"),
        ],
    )
    def test_missing_field_named(self, blocks: BlockFile, reference: str, message: str) -> None:
        """A path inside a block that leads nowhere names the part and the block."""
        with pytest.raises(KeyError) as caught:
            blocks.value(reference)
        assert caught.value.args[0] == message

    @pytest.mark.parametrize(
        ("name", "text", "expected"),
        [
            ("top-list.yaml", f"- {CANARY}\n", "expected a table of block types at its top"),
            ("slug.toml", f'secret = "{CANARY}"\n', "'secret' must be a table of block names"),
            ("block.toml", f'[secret]\ngh = "{CANARY}"\n', "[secret.gh] must be a table of"),
            (
                "two-keys.toml",
                f'[secret.gh]\nvalue = {{ env = "GH", value = "{CANARY}" }}\n',
                "[secret.gh] value gives env, value: give exactly one of env, file or value",
            ),
            (
                "empty-env.toml",
                '[secret.gh]\nvalue = { env = "" }\n',
                "[secret.gh] value.env must be a non-empty string",
            ),
            (
                "nested.toml",
                "[remote-file-system.f]\nsettings = { secret = { file = 3 } }\n",
                "[remote-file-system.f] settings['secret'].file must be a non-empty string",
            ),
            ("open.toml", f'[secret.gh]\nvalue = "{CANARY}\n', "cannot be parsed"),
            ("bad.toml", f"[secret.gh]\nvalue = {CANARY}\n", "cannot be parsed"),
            ("open.yaml", f"secret:\n  gh:\n    value: '{CANARY}\n", "cannot be parsed"),
            ("colon.yaml", f"secret:\n  gh:\n    value: {CANARY}: x\n", "cannot be parsed"),
            ("tab.yaml", f"secret:\n\tgh: {CANARY}\n", "cannot be parsed"),
            ("blocks.json", f'{{"secret": "{CANARY}"}}', "use a .toml, .yaml or .yml file"),
        ],
    )
    def test_malformed_file_is_one_line_without_the_secret(
        self, tmp_path: Path, name: str, text: str, expected: str
    ) -> None:
        """Each problem: a ConfigurationError of one line naming the file, no value in it."""
        path = tmp_path / name
        path.write_text(text)
        with pytest.raises(ConfigurationError) as caught:
            BlockFile.load(path)
        message = str(caught.value)
        assert expected in message
        assert str(path) in message
        assert CANARY not in message
        assert "\n" not in message

    def test_missing_file_is_one_line(self, tmp_path: Path) -> None:
        """A block file that is not there: one line naming it and the setting."""
        with pytest.raises(ConfigurationError) as caught:
            BlockFile.load(tmp_path / "absent.toml")
        assert str(caught.value) == (
            f"cannot read the block file {tmp_path / 'absent.toml'}: No such file or directory;"
            " set blocks_file to a readable TOML or YAML file"
        )

    @pytest.mark.parametrize("mark", ["*", "!"])
    def test_yaml_error_never_quotes_an_unquoted_secret(self, tmp_path: Path, mark: str) -> None:
        """A value YAML reads as an alias or a tag is refused without being shown."""
        path = tmp_path / "blocks.yaml"
        path.write_text(f"secret:\n  gh:\n    value: {mark}{CANARY}\n")
        with pytest.raises(ConfigurationError) as caught:
            BlockFile.load(path)
        assert CANARY not in str(caught.value)

    def test_invalid_environment_variable_name_names_the_block(self, tmp_path: Path) -> None:
        """``{ env = "BAD-NAME" }``: the message says which file and block hold it."""
        path = tmp_path / "blocks.toml"
        path.write_text('[secret.gh]\nvalue = { env = "BAD-NAME" }\n')
        with pytest.raises(ConfigurationError) as caught:
            BlockFile.load(path)
        assert str(path) in str(caught.value)
        assert "[secret.gh]" in str(caught.value)


class TestStepContext:
    """Where a step's placeholders get their values, and how failures are named."""

    def test_each_kind_from_its_place(self, tmp_path: Path) -> None:
        """Environment, block file, variables and earlier outputs, each by its kind."""
        blocks = block_file(tmp_path, '[secret.gh]\nvalue = { value = "tok" }\n')
        ctx = context(
            environ={"BRANCH": "main"}, blocks=blocks, variables={"depth": 1, "dirs": ["a"]}
        )
        ctx.record(PullStep(1, GIT_CLONE, {}, id="clone"), {"directory": "repo-main"})
        rendered = render(
            {
                "branch": "{{ $BRANCH }}",
                "token": "{{ prefect.blocks.secret.gh }}",
                "depth": "{{ prefect.variables.depth }}",
                "dirs": "{{ prefect.variables.dirs }}",
                "path": "{{ clone.directory }}/flows",
                "top": "{{ directory }}",
            },
            ctx.resolve,
        )
        assert rendered["token"].get() == "tok"
        assert {k: v for k, v in rendered.items() if k != "token"} == {
            "branch": "main",
            "depth": 1,
            "dirs": ["a"],
            "path": "repo-main/flows",
            "top": "repo-main",
        }

    def test_outputs_kept_by_id_and_merged_as_prefect_does(self) -> None:
        """Prefect's run_steps keeps ``outputs[id]`` and merges each output at the top."""
        ctx = context()
        ctx.record(PullStep(1, GIT_CLONE, {}, id="clone"), {"directory": "a"})
        ctx.record(PullStep(2, "x.y", {}), {"directory": "b", "extra": 1})
        ctx.record(PullStep(3, "x.z", {}, id="none"), None)
        assert ctx.outputs == {"clone": {"directory": "a"}, "directory": "b", "extra": 1}

    @pytest.mark.parametrize(
        ("placeholder", "reason"),
        [
            ("{{ $RS_NOT_SET }}", "the environment variable RS_NOT_SET is not set"),
            ("{{ prefect.variables.branch }}", "no variable 'branch'"),
            ("{{ prefect.blocks.secret.gh }}", "no block secret/gh in the block file"),
            ("{{ clone.directory }}", "no earlier step gives it"),
        ],
    )
    def test_render_names_deployment_step_and_placeholder(
        self, placeholder: str, reason: str
    ) -> None:
        """One line: where (the deployment), the step by number and function, the placeholder."""
        step = PullStep(2, GIT_CLONE, {"repository": "r", "branch": [placeholder]})
        with pytest.raises(ConfigurationError) as caught:
            context().render(step, where=WHERE)
        message = str(caught.value)
        assert message.startswith(f"{WHERE}, step 2 (git_clone): {placeholder} cannot be resolved")
        assert reason in message
        assert "\n" not in message

    def test_render_never_touches_the_steps_inputs(self) -> None:
        """The step as written keeps its placeholders (a later run renders it again)."""
        step = PullStep(1, GIT_CLONE, {"repository": "{{ $REPO }}", "opts": {"a": "{{ $REPO }}"}})
        assert context(environ={"REPO": "r"}).render(step, where=WHERE) == {
            "repository": "r",
            "opts": {"a": "r"},
        }
        assert step.inputs == {"repository": "{{ $REPO }}", "opts": {"a": "{{ $REPO }}"}}

    def test_inline_secret_that_cannot_be_read_is_named(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A Secret revealed into text but unreadable: the message says where, as any other."""
        monkeypatch.delenv("RS_UNSET_SECRET", raising=False)
        blocks = block_file(tmp_path, '[secret.gh]\nvalue = { env = "RS_UNSET_SECRET" }\n')
        step = PullStep(
            1,
            "prefect.deployments.steps.run_shell_script",
            {"script": "echo {{ prefect.blocks.secret.gh }}"},
        )
        with pytest.raises(ConfigurationError) as caught:
            context(blocks=blocks).render(step, where=WHERE)
        message = str(caught.value)
        assert WHERE in message
        assert "step 1 (run_shell_script)" in message
        assert "{{ prefect.blocks.secret.gh }}" in message
