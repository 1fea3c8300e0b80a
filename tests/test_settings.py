"""Settings: parsed once from the environment, bad values named."""

import pytest

from worker.errors import ConfigError
from worker.settings import Rate, Settings, parse_rate


@pytest.mark.parametrize(
    ("text", "count", "period_s"),
    [
        ("10/60s", 10, 60.0),
        ("10/2s", 10, 2.0),
        ("5/500ms", 5, 0.5),
        ("10/m", 10, 60.0),
        ("20/1h", 20, 3600.0),
        ("10/s", 10, 1.0),
        ("10/60", 10, 60.0),
        (" 3 / 1.5s ", 3, 1.5),
    ],
)
def test_parse_rate_accepts_documented_forms(text: str, count: int, period_s: float) -> None:
    """COUNT/PERIOD parses with s, ms, Celery's m/h and an implicit 1."""
    assert parse_rate(text) == Rate(count, period_s)


@pytest.mark.parametrize("text", ["", "10", "10/", "0/60s", "10/0s", "ten/60s", "10/60x", "-1/s"])
def test_parse_rate_rejects_and_names_bad_text(text: str) -> None:
    """A malformed rate raises ValueError quoting the text."""
    with pytest.raises(ValueError, match=r"is not a rate|at least 1"):
        parse_rate(text)


def test_defaults_are_the_documented_contract() -> None:
    """With an empty environment, the defaults of DESIGN.md §2 apply."""
    settings = Settings.from_env({})
    assert settings.redis_url == "redis://localhost:6379/0"
    assert settings.base_url == "https://coinswitch.co"
    assert settings.cancel_rate == Rate(10, 60.0)
    assert settings.status_rate == Rate(20, 60.0)
    assert settings.api_key is None and settings.secret_key is None


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("COINSWITCH_CANCEL_RATE_LIMIT", "ten per minute"),
        ("COINSWITCH_STATUS_RATE_LIMIT", "20/"),
        ("COINSWITCH_API_KEY", "not-hex"),
        ("COINSWITCH_BASE_URL", "ftp://example"),
        ("CANCEL_WORKER_POLL_MAX_DELAY_S", "soon"),
        ("CANCEL_WORKER_VISIBILITY_TIMEOUT_S", "-5"),
    ],
)
def test_bad_variable_is_named(variable: str, value: str) -> None:
    """A bad value raises ConfigError whose message and attribute name the variable."""
    with pytest.raises(ConfigError, match=variable) as info:
        Settings.from_env({variable: value})
    assert info.value.variable == variable


def test_bad_secret_is_never_echoed() -> None:
    """A malformed secret key is reported without its value."""
    secret = "s3cr3t-value-that-must-not-leak"
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"COINSWITCH_SECRET_KEY": secret})
    assert secret not in str(info.value)


def test_secret_never_in_repr() -> None:
    """The settings' repr hides the secret key."""
    secret = "ab" * 32
    settings = Settings.from_env({"COINSWITCH_SECRET_KEY": secret, "COINSWITCH_API_KEY": "cd" * 32})
    assert secret not in repr(settings)
    assert settings.require_credentials() == ("cd" * 32, secret)


def test_missing_credentials_named() -> None:
    """Asking for credentials that are not set names the missing variable."""
    with pytest.raises(ConfigError, match="COINSWITCH_API_KEY"):
        Settings.from_env({}).require_credentials()
