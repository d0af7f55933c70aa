"""`status` against a real Redis (a shard count refused, an empty namespace said so, the last
error's age), the dead-letter gauge at 0, and every alert in the docs checked against the metric
names and types the worker really exposes."""

from __future__ import annotations

import re
from typing import Any

import pytest
import redis
from click.testing import CliRunner
from prometheus_client import CollectorRegistry

from producers.contract.keys import Keys
from producers.contract.settings import QueueConfig
from producers.producer import IdentifyProducer
from tests.support import ROOT, redis_ms
from worker.cli.main import main
from worker.metrics import Metrics, QueueCollector


def run_status(config: QueueConfig, *args: str, **env: str) -> Any:
    environment = {"REDIS_URL": config.redis_url, "IDENTIFY_NAMESPACE": config.namespace,
                   "IDENTIFY_SHARDS": str(config.shards), **env}  # fmt: skip
    return CliRunner().invoke(main, ["status", *args], env=environment, catch_exceptions=False)


def test_status_refuses_another_shard_count_like_enqueue(producer: IdentifyProducer, queue_config: QueueConfig) -> None:
    producer.identify(user_id="user-00001", user_properties={"$set": {"a": 1}})
    result = run_status(queue_config, IDENTIFY_SHARDS="4")
    assert result.exit_code == 2
    assert "IDENTIFY_SHARDS is 4, but the queue in Redis was created with 8 shards" in result.output
    assert run_status(queue_config).exit_code == 0


def test_status_says_when_the_namespace_holds_no_queue(producer: IdentifyProducer, queue_config: QueueConfig) -> None:
    producer.identify(user_id="user-00001", user_properties={"$set": {"a": 1}})
    result = run_status(queue_config, IDENTIFY_NAMESPACE=queue_config.namespace + "x")
    assert result.exit_code == 0
    assert result.output.startswith(f"no queue in namespace '{queue_config.namespace}x'")
    assert '"queue_found": true' in run_status(queue_config, "--json").output


def test_status_shows_how_long_ago_the_last_error_was(
    producer: IdentifyProducer, queue_config: QueueConfig, redis_client: redis.Redis, keys: Keys
) -> None:
    producer.identify(user_id="user-00001", user_properties={"$set": {"a": 1}})
    # as settle.lua records it: the error and Redis's time, here ten minutes ago
    redis_client.hset(keys.shard(3).stats, mapping={"last_error": "HTTP 503", "last_error_ms": redis_ms(redis_client)
                                                    - 600_000})  # fmt: skip
    assert "last error    10 min ago: HTTP 503" in run_status(queue_config).output


def exposed(client: redis.Redis, keys: Keys) -> dict[str, str]:
    """Every sample name the worker's /metrics serves, with its family's type."""
    registry = CollectorRegistry()
    Metrics(registry)
    registry.register(QueueCollector(client, keys, 8))
    out: dict[str, str] = {}
    for family in registry.collect():
        for sample in family.samples:
            out[sample.name] = family.type
    return out


def test_the_dead_letter_gauge_reports_zero_when_empty(redis_client: redis.Redis, keys: Keys) -> None:
    families = {f.name: f for f in QueueCollector(redis_client, keys, 8).collect()}
    dead = families["identify_queue_dead_letter"]
    assert {s.labels["reason"]: s.value for s in dead.samples} == dict.fromkeys(
        ["invalid", "too_large", "expired", "undecodable", "poison"], 0
    )
    for name in ("queued", "in_flight", "held", "deferred", "blocked"):
        assert [s.value for s in families[f"identify_queue_{name}"].samples] == [0]


# -- the alerts of the docs -------------------------------------------------------------------------
RANGE_FUNCTIONS = {"rate", "irate", "increase", "delta", "idelta", "deriv", "predict_linear", "changes", "resets",
                   "avg_over_time", "max_over_time", "min_over_time", "sum_over_time", "count_over_time",
                   "last_over_time"}  # fmt: skip
COUNTER_FUNCTIONS = {"rate", "irate", "increase", "resets"}
GAUGE_FUNCTIONS = {"delta", "idelta", "deriv", "predict_linear"}
AGGREGATIONS = {"sum", "max", "min", "avg", "count", "topk", "bottomk", "quantile", "stddev", "stdvar", "group"}
OTHER_FUNCTIONS = {"abs", "absent", "absent_over_time", "clamp_min", "clamp_max", "histogram_quantile", "vector",
                   "scalar", "time"}  # fmt: skip
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool", "offset"}
TOKEN = re.compile(
    r"\s*(?:(?P<number>\d+(?:\.\d+)?)|(?P<range>\[\d+[smhdw](?::\d*[smhdw]?)?\])|(?P<name>[A-Za-z_:][\w:]*)"
    r"|(?P<string>\"[^\"]*\")|(?P<op>==|!=|>=|<=|=~|!~|[-+*/%^<>(){},=]))"
)


def tokens(expression: str) -> list[tuple[str, str]]:
    out, at = [], 0
    while at < len(expression.rstrip()):
        match = TOKEN.match(expression, at)
        assert match and match.end() > at, f"cannot read {expression[at:]!r} in {expression!r}"
        kind = next(k for k, v in match.groupdict().items() if v is not None)
        out.append((kind, match.group(kind)))
        at = match.end()
    return out


def problems(expression: str, metrics: dict[str, str]) -> list[str]:
    """What is wrong with an alert expression for these metrics: unknown names and functions,
    unbalanced brackets, a range outside a range function, a counter function over a gauge or a
    gauge function over a counter, a counter compared by its value."""
    found: list[str] = []
    toks = tokens(expression)
    calls: list[str] = []  # the function (or label list) each open parenthesis belongs to
    braces = 0
    for i, (kind, text) in enumerate(toks):
        following = toks[i + 1] if i + 1 < len(toks) else ("", "")
        if kind == "op" and text in "{}":
            braces += 1 if text == "{" else -1
        elif braces:
            continue  # label matchers
        elif kind == "op" and text == "(":
            calls.append(_opened(toks[i - 1][1] if i else ""))
        elif kind == "op" and text == ")":
            if not calls:
                found.append("a ')' closes nothing")
            else:
                calls.pop()
        elif kind == "range" and (not calls or calls[-1] not in RANGE_FUNCTIONS):
            found.append(f"the range {text} is not the argument of a range function")
        elif kind == "name":
            found += _name_problems(text, following, calls[-1] if calls else "", metrics)
    if calls:
        found.append("a '(' is never closed")
    return found


def _opened(before: str) -> str:
    if before in ("by", "without", "on", "ignoring", "group_left", "group_right"):
        return "labels"
    return before if before in RANGE_FUNCTIONS | AGGREGATIONS | OTHER_FUNCTIONS else ""


def _name_problems(text: str, following: tuple[str, str], function: str, metrics: dict[str, str]) -> list[str]:
    if text.startswith("identify_queue_"):
        if text not in metrics:
            return [f"{text} is not a metric the worker exposes"]
        kind = metrics[text]
        if function in COUNTER_FUNCTIONS and kind not in ("counter", "histogram"):
            return [f"{function}() over {text}, a {kind}: {function}() takes a counter"]
        if function in GAUGE_FUNCTIONS and kind != "gauge":
            return [f"{function}() over {text}, a {kind}: {function}() takes a gauge"]
        if kind in ("counter", "histogram") and function not in COUNTER_FUNCTIONS and following[0] != "range":
            return [f"{text} is a {kind}: compare its rate() or increase(), not its value"]
        return []
    if function == "labels" or text in KEYWORDS:
        return []
    if text in AGGREGATIONS and following[1] in ("(", "by", "without"):
        return []
    if following[1] == "(" and text in RANGE_FUNCTIONS | OTHER_FUNCTIONS:
        return []
    return [f"{text!r} is neither a metric, a function nor a keyword"]


def alert_expressions() -> list[str]:
    """Every line of every ```promql block in the README and docs/."""
    out = []
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for block in re.findall(r"```promql\n(.*?)```", path.read_text(), flags=re.S):
            out += [line.strip() for line in block.splitlines() if line.strip()]
    return out


@pytest.mark.parametrize(
    ("expression", "wrong"),
    [
        ("increase(identify_queue_dead_letter[1h]) > 0", "takes a counter"),  # the README's old alert
        ("identify_queue_records_delivered_total > 0", "compare its rate()"),
        ("deriv(identify_queue_records_delivered_total[5m]) > 0", "takes a gauge"),
        ("identify_queue_dead_letter[1h] > 0", "not the argument of a range function"),
        ("identify_queue_nothing > 0", "not a metric"),
        ("rate(identify_queue_records_delivered_total[5m] > 0", "never closed"),
        ("max(identify_queue_queued) > 0", None),
    ],
)
def test_the_checker_finds_what_is_wrong(
    expression: str, wrong: str | None, redis_client: redis.Redis, keys: Keys
) -> None:
    found = problems(expression, exposed(redis_client, keys))
    assert any(wrong in p for p in found) if wrong else not found, found


def test_every_alert_in_the_docs_is_right_for_the_metric_types(redis_client: redis.Redis, keys: Keys) -> None:
    expressions = alert_expressions()
    assert len(expressions) >= 3
    metrics = exposed(redis_client, keys)
    for expression in expressions:
        assert problems(expression, metrics) == [], expression
