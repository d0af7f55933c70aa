"""Settings: read once from the environment; a bad value fails at start and names the variable."""

from __future__ import annotations

import pytest

from producers.contract.errors import ConfigError
from producers.contract.settings import QueueConfig
from worker.settings import EU_IDENTIFY_URL, US_IDENTIFY_URL, Settings


def test_defaults() -> None:
    s = Settings.from_env({})
    assert s.identify_url == US_IDENTIFY_URL
    assert (s.batch_size, s.batch_max_bytes, s.linger_ms) == (1000, 950_000, 200)
    assert s.queue == QueueConfig()
    assert s.api_key is None


def test_region_and_url() -> None:
    assert Settings.from_env({"AMPLITUDE_REGION": "eu"}).identify_url == EU_IDENTIFY_URL
    url = "http://127.0.0.1:9/identify"
    assert Settings.from_env({"AMPLITUDE_REGION": "eu", "AMPLITUDE_IDENTIFY_URL": url}).identify_url == url


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"IDENTIFY_BATCH_SIZE": "2001"}, "IDENTIFY_BATCH_SIZE"),
        ({"IDENTIFY_BATCH_SIZE": "ten"}, "IDENTIFY_BATCH_SIZE"),
        ({"IDENTIFY_BATCH_MAX_BYTES": "2000000"}, "IDENTIFY_BATCH_MAX_BYTES"),
        ({"IDENTIFY_BATCH_LINGER_MS": "-1"}, "IDENTIFY_BATCH_LINGER_MS"),
        ({"IDENTIFY_SHARDS": "0"}, "IDENTIFY_SHARDS"),
        ({"IDENTIFY_NAMESPACE": "has space"}, "IDENTIFY_NAMESPACE"),
        ({"REDIS_URL": "localhost:6379"}, "REDIS_URL"),
        ({"AMPLITUDE_REGION": "asia"}, "AMPLITUDE_REGION"),
        ({"AMPLITUDE_IDENTIFY_URL": "ftp://x"}, "AMPLITUDE_IDENTIFY_URL"),
        ({"IDENTIFY_LEASE_TTL_S": "nan"}, "IDENTIFY_LEASE_TTL_S"),
        ({"IDENTIFY_LEASE_TTL_S": "5"}, "IDENTIFY_LEASE_TTL_S"),  # shorter than a request may take
        ({"IDENTIFY_MAX_RECORD_BYTES": "100000", "IDENTIFY_BATCH_MAX_BYTES": "50000"}, "IDENTIFY_MAX_RECORD_BYTES"),
        ({"IDENTIFY_LOG_FORMAT": "xml"}, "IDENTIFY_LOG_FORMAT"),
    ],
)
def test_a_bad_value_names_its_variable(env: dict[str, str], variable: str) -> None:
    with pytest.raises(ConfigError, match=variable):
        Settings.from_env(env)


def test_the_api_key_is_never_printed() -> None:
    s = Settings.from_env({"AMPLITUDE_API_KEY": "very-secret-key"})
    assert s.require_api_key().reveal() == "very-secret-key"
    assert "very-secret-key" not in repr(s) and "very-secret-key" not in str(s)


def test_the_worker_requires_an_api_key() -> None:
    with pytest.raises(ConfigError, match="AMPLITUDE_API_KEY"):
        Settings.from_env({}).require_api_key()
