import pytest

from common.env import ConfigurationError, env_bool, env_float, env_int, env_list, env_secret, env_str


def test_it_reads_typed_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("X_INT", "42")
    monkeypatch.setenv("X_FLOAT", "2.5")
    monkeypatch.setenv("X_BOOL", "yes")
    monkeypatch.setenv("X_LIST", "a, b,,c")
    assert env_int("X_INT", 1) == 42
    assert env_float("X_FLOAT", 1.0) == 2.5
    assert env_bool("X_BOOL", False) is True
    assert env_list("X_LIST") == ["a", "b", "c"]


def test_it_uses_defaults_when_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("X_UNSET", raising=False)
    assert env_int("X_UNSET", 7) == 7
    assert env_str("X_UNSET", "d") == "d"
    assert env_bool("X_UNSET", True) is True


@pytest.mark.parametrize(
    ("reader", "raw", "message"),
    [
        (lambda: env_int("X_BAD", 1), "ten", "X_BAD='ten' is not an integer"),
        (lambda: env_bool("X_BAD", False), "maybe", "is not a boolean"),
        (lambda: env_int("X_BAD", 1, minimum=5), "3", "below the minimum"),
        (lambda: env_float("X_BAD", 1.0, maximum=2), "3", "above the maximum"),
    ],
)
def test_it_fails_loudly_on_a_bad_value(monkeypatch: pytest.MonkeyPatch, reader, raw: str, message: str) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("X_BAD", raw)
    with pytest.raises(ConfigurationError, match=message):
        reader()


def test_it_requires_a_setting_without_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("X_REQUIRED", raising=False)
    with pytest.raises(ConfigurationError, match="X_REQUIRED must be set"):
        env_str("X_REQUIRED")


def test_it_reads_secrets_from_a_file(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    secret = tmp_path / "secret"
    secret.write_text("s3cret\n")
    monkeypatch.setenv("X_SECRET_FILE", str(secret))
    assert env_secret("X_SECRET") == "s3cret"
    monkeypatch.setenv("X_SECRET_FILE", str(tmp_path / "missing"))
    with pytest.raises(ConfigurationError, match="cannot be read"):
        env_secret("X_SECRET")
