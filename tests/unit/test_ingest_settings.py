"""The ingest endpoint's settings: read once, a bad value names its variable, the token never shows."""

from __future__ import annotations

import pytest

from producers.contract.errors import ConfigError
from producers.ingest.settings import IngestSettings, token_digest

TOKEN = "settings-token-0123456789"  # noqa: S105 (a test's token)


def test_defaults_with_a_token() -> None:
    settings = IngestSettings.from_env({"IDENTIFY_INGEST_TOKEN": TOKEN})
    assert settings.token_digests == (token_digest(TOKEN),)
    assert (settings.host, settings.port, settings.threads) == ("127.0.0.1", 8090, 4)
    assert (settings.max_body_bytes, settings.max_records, settings.retry_after_s) == (1_000_000, 2000, 10)
    assert settings.server_body_limit > settings.max_body_bytes


def test_every_variable_is_read_and_options_win() -> None:
    env = {
        "IDENTIFY_INGEST_TOKEN": f" {TOKEN},{TOKEN[::-1]} ", "IDENTIFY_INGEST_HOST": "0.0.0.0",
        "IDENTIFY_INGEST_PORT": "9000", "IDENTIFY_INGEST_THREADS": "6", "IDENTIFY_INGEST_MAX_BODY_BYTES": "2_000",
        "IDENTIFY_INGEST_MAX_RECORDS": "50", "IDENTIFY_INGEST_IDLE_TIMEOUT_S": "5",
        "IDENTIFY_INGEST_CONNECTION_LIMIT": "20", "IDENTIFY_INGEST_RETRY_AFTER_S": "3", "IDENTIFY_LOG_LEVEL": "debug",
        "IDENTIFY_MAX_QUEUED": "77",
    }  # fmt: skip
    settings = IngestSettings.from_env(env)
    assert settings.token_digests == (token_digest(TOKEN), token_digest(TOKEN[::-1]))
    assert (settings.host, settings.port, settings.threads, settings.max_body_bytes, settings.max_records,
            settings.idle_timeout_s, settings.connection_limit, settings.retry_after_s, settings.log_level,
            settings.queue.max_queued) == ("0.0.0.0", 9000, 6, 2000, 50, 5, 20, 3, "DEBUG", 77)  # fmt: skip
    overridden = IngestSettings.from_env(env, host="127.0.0.2", port=0, threads=1)
    assert (overridden.host, overridden.port, overridden.threads) == ("127.0.0.2", 0, 1)


BAD = [
    ({}, "IDENTIFY_INGEST_TOKEN is not set: set it to a secret of at least 16 characters"),
    ({"IDENTIFY_INGEST_TOKEN": "short"}, "IDENTIFY_INGEST_TOKEN: token 1 of 1 is 5 characters; at least 16 are needed"),
    ({"IDENTIFY_INGEST_TOKEN": f"{TOKEN},"}, "IDENTIFY_INGEST_TOKEN: token 2 of 2 is 0 characters"),
    ({"IDENTIFY_INGEST_TOKEN": f"{TOKEN} {TOKEN}"}, "IDENTIFY_INGEST_TOKEN: token 1 of 1 contains whitespace"),
    ({"IDENTIFY_INGEST_TOKEN": TOKEN, "IDENTIFY_INGEST_PORT": "http"},
     "IDENTIFY_INGEST_PORT must be an integer between 0 and 65535, got 'http'"),
    ({"IDENTIFY_INGEST_TOKEN": TOKEN, "IDENTIFY_INGEST_THREADS": "0"},
     "IDENTIFY_INGEST_THREADS must be an integer between 1 and 256, got 0"),
    ({"IDENTIFY_INGEST_TOKEN": TOKEN, "IDENTIFY_INGEST_MAX_BODY_BYTES": "10"},
     "IDENTIFY_INGEST_MAX_BODY_BYTES must be an integer between 1024 and 100000000, got 10"),
    ({"IDENTIFY_INGEST_TOKEN": TOKEN, "IDENTIFY_INGEST_MAX_RECORDS": "-1"},
     "IDENTIFY_INGEST_MAX_RECORDS must be an integer between 1 and 100000, got -1"),
    ({"IDENTIFY_INGEST_TOKEN": TOKEN, "IDENTIFY_INGEST_RETRY_AFTER_S": "1.5"},
     "IDENTIFY_INGEST_RETRY_AFTER_S must be an integer between 1 and 3600, got '1.5'"),
    ({"IDENTIFY_INGEST_TOKEN": TOKEN, "IDENTIFY_LOG_LEVEL": "loud"},
     "IDENTIFY_LOG_LEVEL must be one of debug, info, warning, error, got 'loud'"),
]  # fmt: skip


@pytest.mark.parametrize(("env", "message"), BAD, ids=[m.split(" ")[0] + str(i) for i, (_, m) in enumerate(BAD)])
def test_bad_values_fail_naming_the_variable_never_the_token(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        IngestSettings.from_env(env)
    assert str(raised.value).startswith(message)
    assert TOKEN not in str(raised.value)


def test_insecure_no_auth_needs_no_token_and_refuses_one() -> None:
    assert IngestSettings.from_env({}, insecure_no_auth=True).token_digests is None
    with pytest.raises(ConfigError, match="--insecure-no-auth and IDENTIFY_INGEST_TOKEN are both given"):
        IngestSettings.from_env({"IDENTIFY_INGEST_TOKEN": TOKEN}, insecure_no_auth=True)


def test_the_token_is_not_in_the_settings_repr() -> None:
    settings = IngestSettings.from_env({"IDENTIFY_INGEST_TOKEN": TOKEN})
    assert TOKEN not in repr(settings)
    assert "token_digests" not in repr(settings)
