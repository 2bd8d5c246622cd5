"""Settings: the environment, ``.env``, ``.env.example`` and clear errors."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from config import Settings, SettingsError, load_settings

ROOT = Path(__file__).resolve().parent.parent


def variable(name: str) -> str:
    """The environment variable of a Settings field: ``NOTIFY_<FIELD>`` unless aliased."""
    alias = Settings.model_fields[name].validation_alias
    return alias if isinstance(alias, str) else f"NOTIFY_{name.upper()}"


def test_env_example_lists_exactly_the_settings() -> None:
    """``.env.example`` names every Settings field, and nothing else."""
    text = (ROOT / ".env.example").read_text()
    named = set(re.findall(r"^([A-Z_]+)=", text, flags=re.MULTILINE))
    expected = {variable(name) for name in Settings.model_fields}
    assert named == expected


def test_env_example_comments_every_setting() -> None:
    """Every variable in ``.env.example`` has a comment line above it or its group."""
    lines = (ROOT / ".env.example").read_text().splitlines()
    for number, line in enumerate(lines):
        if re.match(r"^[A-Z_]+=", line):
            above = lines[:number]
            assert any(prior.startswith("# ") for prior in above[-3:]), line


def test_env_example_values_are_valid() -> None:
    """The example file loads as it is, and matches the defaults."""
    assert Settings(_env_file=ROOT / ".env.example") == Settings(_env_file=None)


def test_defaults_match_the_guide() -> None:
    """By default the log is ``log.txt`` and queries go to the same file."""
    settings = Settings(_env_file=None)
    assert settings.log_path == Path("log.txt")
    assert settings.query_log_path is None
    assert settings.effective_query_log_path == Path("log.txt")


def test_environment_variables_are_read(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """``NOTIFY_*`` variables set the fields."""
    monkeypatch.setenv("NOTIFY_LOG_PATH", str(tmp_path / "a.txt"))
    monkeypatch.setenv("NOTIFY_QUERY_LOG_PATH", str(tmp_path / "q.txt"))
    monkeypatch.setenv("NOTIFY_PORT", "9001")
    monkeypatch.setenv("NOTIFY_BATCH_SIZE", "7")
    settings = Settings(_env_file=None)
    assert settings.log_path == tmp_path / "a.txt"
    assert settings.effective_query_log_path == tmp_path / "q.txt"
    assert (settings.port, settings.batch_size) == (9001, 7)


def test_dotenv_file_is_read_and_environment_wins(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A ``.env`` file sets fields; a real environment variable overrides it."""
    env_file = tmp_path / ".env"
    env_file.write_text("NOTIFY_PORT=9100\nNOTIFY_QUEUE_SIZE=55\n")
    monkeypatch.setenv("NOTIFY_PORT", "9200")
    settings = Settings(_env_file=env_file)
    assert (settings.port, settings.queue_size) == (9200, 55)


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("NOTIFY_PORT", "abc"),
        ("NOTIFY_PORT", "70000"),
        ("NOTIFY_QUEUE_SIZE", "-1"),
        ("NOTIFY_BATCH_SIZE", "0"),
        ("NOTIFY_LOG_LEVEL", "loud"),
        ("NOTIFY_SHUTDOWN_TIMEOUT", "soon"),
    ],
)
def test_bad_value_is_one_line_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    """A bad value raises ``SettingsError`` whose message is one line naming the variable."""
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError) as caught:
        load_settings()
    message = str(caught.value)
    assert "\n" not in message
    assert f"{variable}={value!r}" in message


def test_readme_documents_every_setting() -> None:
    """README.md's settings table has a row for every Settings field."""
    readme = (ROOT / "README.md").read_text()
    missing = [
        variable(name) for name in Settings.model_fields if f"| `{variable(name)}` |" not in readme
    ]
    assert missing == []


@pytest.mark.parametrize("tokens", ["pässwörd", "ok-token,with space", "tab\there"])
def test_an_api_token_that_is_not_a_bearer_token_is_refused_hidden(
    monkeypatch: pytest.MonkeyPatch, tokens: str
) -> None:
    """A token of non-ASCII characters (it would match only if a client sent it in latin-1),
    or with a space: a settings error naming which, without the tokens."""
    monkeypatch.setenv("NOTIFY_API_TOKENS", tokens)
    with pytest.raises(SettingsError) as caught:
        load_settings()
    message = str(caught.value)
    assert "not printable ASCII without spaces" in message
    assert "NOTIFY_API_TOKENS" in message
    for token in tokens.split(","):
        assert token not in message
