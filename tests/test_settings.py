"""Settings: parsed once from the environment, bad values named."""

import pytest

from worker.errors import ConfigError
from worker.models import Bucket
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
    """With an empty environment, the README's defaults (the exchange's documented limits) apply."""
    settings = Settings.from_env({})
    assert settings.redis_url == "redis://localhost:6379/0"
    assert settings.base_url == "https://coinswitch.co"
    assert settings.rates == {
        Bucket.CANCEL: Rate(10, 60.0),
        Bucket.STATUS: Rate(20, 60.0),
        Bucket.CANCEL_ALL: Rate(10, 60.0),
        Bucket.OPEN_ORDERS: Rate(20, 60.0),
        Bucket.CLOSED_ORDERS: Rate(20, 60.0),
    }
    assert settings.accounts == {}
    assert (settings.rate_margin_ms, settings.rate_margin_max_ms) == (50, 2000)


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


@pytest.mark.parametrize(
    ("url", "bad_part"),
    [
        ("redis://localhost:notaport/0", "port 'notaport' is not a number from 1 to 65535"),
        ("redis://localhost:99999/0", "port '99999' is not a number from 1 to 65535"),
        ("redis://localhost:0/0", "port '0' is not a number from 1 to 65535"),
        ("redis://localhost:6379/abc", "database 'abc' (the path) is not a number"),
        ("rediss://localhost:6379/0?db=x", "database 'x' (db=) is not a number"),
        ("unix:///run/redis.sock?db=x", "database 'x' (db=) is not a number"),
        ("redis://localhost/0?socket_timeout=soon", "Invalid value for 'socket_timeout'"),
        ("http://localhost:6379/0", "scheme 'http' is not one of redis://, rediss://"),
        ("localhost:6379", "scheme 'localhost' is not one of"),
        ("nonsense", "it has no scheme"),
        ("redis://a:6379/0;redis://b:6379/0", "only sentinel:// URLs may"),
        ("sentinel://a:26379;sentinel://b:x/0", "'sentinel://b:x/0': port 'x'"),
        ("sentinel://a:99999/0", "port '99999' is not a number"),
        ("sentinel://a:26379/abc", "database 'abc' (the path) is not a number"),
        ("sentinel://a:26379;redis://b:6379/0", "only sentinel:// URLs may"),
    ],
)
def test_malformed_redis_url_is_named(url: str, bad_part: str) -> None:
    """A REDIS_URL redis-py would misread (a path that is not a database becomes db 0) or
    fail on later (a bad port) raises ConfigError naming REDIS_URL and the bad part."""
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"REDIS_URL": url})
    assert info.value.variable == "REDIS_URL"
    assert bad_part in str(info.value)


def test_redis_url_password_is_never_echoed() -> None:
    """A malformed REDIS_URL is quoted with its password masked."""
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"REDIS_URL": "redis://:hunter2@localhost:99999/0"})
    assert "hunter2" not in str(info.value) and ":***@" in str(info.value)


@pytest.mark.parametrize(
    "url",
    [
        "redis://localhost:6379/0",
        "redis://:p%40ss@10.0.0.1/3",
        "rediss://user:pw@[::1]:6380/0?ssl_cert_reqs=none",
        "unix:///run/redis.sock?db=2",
        "sentinel://:pw@a:26379;sentinel://b:26379;sentinel://c/1",
    ],
)
def test_wellformed_redis_urls_are_kept(url: str) -> None:
    """Every documented REDIS_URL form is accepted as given."""
    assert Settings.from_env({"REDIS_URL": url}).redis_url == url


def test_empty_variables_mean_their_defaults() -> None:
    """A variable set but empty (as `NAME=` in a .env file) takes its default: an empty
    namespace would put every key outside `cw:`."""
    settings = Settings.from_env(
        {"CANCEL_WORKER_NAMESPACE": "", "CANCEL_WORKER_RATE_MARGIN_MS": ""}
    )
    assert settings.namespace == "cw" and settings.rate_margin_ms == 50


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
    assert settings.account("default").require_keys() == ("cd" * 32, secret)


def test_missing_credentials_named() -> None:
    """A worker with no account to sign for names the variable to set."""
    with pytest.raises(ConfigError, match="COINSWITCH_API_KEY"):
        Settings.from_env({}).signing_accounts()
    with pytest.raises(ConfigError, match="COINSWITCH_SECRET_KEY"):
        Settings.from_env({"COINSWITCH_API_KEY": "cd" * 32}).signing_accounts()


KEYS = {
    "COINSWITCH_API_KEY": "a1" * 32,
    "COINSWITCH_SECRET_KEY": "a2" * 32,
    "COINSWITCH_ACCOUNTS": "alpha, Beta",
    "COINSWITCH_ALPHA_API_KEY": "b1" * 32,
    "COINSWITCH_ALPHA_SECRET_KEY": "b2" * 32,
    "COINSWITCH_BETA_API_KEY": "c1" * 32,
    "COINSWITCH_BETA_SECRET_KEY": "c2" * 32,
}


def test_accounts_with_their_own_budgets() -> None:
    """COINSWITCH_ACCOUNTS adds named accounts; each takes the global budgets unless its
    own variables override them."""
    settings = Settings.from_env(
        {
            **KEYS,
            "COINSWITCH_STATUS_RATE_LIMIT": "30/60s",
            "COINSWITCH_ALPHA_CANCEL_RATE_LIMIT": "5/60s",
        }
    )
    assert list(settings.signing_accounts()) == ["default", "alpha", "beta"]
    alpha, beta = settings.account("alpha"), settings.account("beta")
    assert alpha.rates[Bucket.CANCEL] == Rate(5, 60.0)
    assert alpha.rates[Bucket.STATUS] == Rate(30, 60.0)
    assert beta.rates[Bucket.CANCEL] == Rate(10, 60.0)
    assert alpha.api_key == "b1" * 32 and beta.secret_key == "c2" * 32


def test_owner_shares_per_account_or_for_all() -> None:
    """COINSWITCH_OWNER_SHARES weighs owners on every account; an account's own variable
    replaces it there; no variable means equal shares."""
    assert Settings.from_env(KEYS).account("alpha").shares == {}
    settings = Settings.from_env(
        {
            **KEYS,
            "COINSWITCH_OWNER_SHARES": "strat-a:3, strat-b:1",
            "COINSWITCH_BETA_OWNER_SHARES": "strat-c:2",
        }
    )
    assert settings.account("default").shares == {"strat-a": 3, "strat-b": 1}
    assert settings.account("alpha").shares == {"strat-a": 3, "strat-b": 1}
    assert settings.account("beta").shares == {"strat-c": 2}


@pytest.mark.parametrize(
    ("changes", "variable"),
    [
        ({"COINSWITCH_ACCOUNTS": "alpha,al-pha"}, "COINSWITCH_ACCOUNTS"),
        ({"COINSWITCH_ACCOUNTS": "alpha,default"}, "COINSWITCH_ACCOUNTS"),
        ({"COINSWITCH_ACCOUNTS": "alpha,alpha"}, "COINSWITCH_ACCOUNTS"),
        ({"COINSWITCH_ACCOUNTS": "alpha,gamma"}, "COINSWITCH_GAMMA_API_KEY"),
        ({"COINSWITCH_ALPHA_API_KEY": "zz"}, "COINSWITCH_ALPHA_API_KEY"),
        ({"COINSWITCH_BETA_STATUS_RATE_LIMIT": "often"}, "COINSWITCH_BETA_STATUS_RATE_LIMIT"),
        ({"CANCEL_WORKER_RATE_MARGIN_MAX_MS": "10"}, "CANCEL_WORKER_RATE_MARGIN_MAX_MS"),
        ({"COINSWITCH_OWNER_SHARES": "strat-a=3"}, "COINSWITCH_OWNER_SHARES"),
        ({"COINSWITCH_ALPHA_OWNER_SHARES": "Strat:1"}, "COINSWITCH_ALPHA_OWNER_SHARES"),
        ({"COINSWITCH_BETA_OWNER_SHARES": "strat-b:0"}, "COINSWITCH_BETA_OWNER_SHARES"),
    ],
)
def test_bad_account_variable_is_named(changes: dict[str, str], variable: str) -> None:
    """A malformed account list, key or budget stops start-up naming the variable."""
    with pytest.raises(ConfigError, match=variable) as info:
        Settings.from_env({**KEYS, **changes})
    assert info.value.variable == variable


def test_named_account_without_secret_is_named_when_signing() -> None:
    """An account may be known without its secret (read-only tools), but a worker refuses."""
    env = {key: value for key, value in KEYS.items() if key != "COINSWITCH_BETA_SECRET_KEY"}
    settings = Settings.from_env(env)
    assert settings.account("beta").secret_key is None
    with pytest.raises(ConfigError, match="COINSWITCH_BETA_SECRET_KEY"):
        settings.signing_accounts()
