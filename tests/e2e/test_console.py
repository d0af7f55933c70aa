"""The operator's console in a real browser: `identify-queue console` in its own process, Debian's
chromium driven by Playwright, a real worker delivering to the local Amplitude-compatible server.

The browser tests are skipped, saying why, only where chromium is absent (scripts/bootstrap installs
it); the tests of the command line and of HTTP alone run everywhere.
"""

from __future__ import annotations

import re
import secrets
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from producers.contract.keys import Keys
from producers.contract.settings import QueueConfig
from producers.producer import IdentifyProducer
from tests.support import SENTINEL_API_KEY, StartWorker, drained, make_wait, status, users_in_shard, wait_until
from worker.devtools.local_ingest import IngestProcess
from worker.devtools.local_stack import COMMAND, LocalAmplitudeProcess

TOKEN = "console-" + secrets.token_urlsafe(18)
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
#: What a record may hold that a careless page would run: each must show as text, none may run.
XSS_SCRIPT = "<script>window.__xss = 'script'</script>"
XSS_ATTRIBUTE = '"><img src=x onerror="window.__xss = \'img\'">'
XSS_USER = "user-<img src=x onerror=window.__xss=1>"

try:
    from playwright.sync_api import Browser, Page, expect, sync_playwright
except ImportError:  # pragma: no cover - the dev extra installs it
    sync_playwright = None  # type: ignore[assignment]

StartConsole = Callable[..., IngestProcess]


def console_env(config: QueueConfig, **extra: str) -> dict[str, str]:
    # The API key is in the console's environment on purpose: no page may show it.
    env = {"REDIS_URL": config.redis_url, "IDENTIFY_NAMESPACE": config.namespace, "IDENTIFY_SHARDS": str(config.shards),
           "IDENTIFY_CONSOLE_TOKEN": TOKEN, "IDENTIFY_CONSOLE_REFRESH_S": "1",
           "AMPLITUDE_API_KEY": SENTINEL_API_KEY}  # fmt: skip
    env.update(extra)
    return env


@pytest.fixture
def start_console(queue_config: QueueConfig, tmp_path: Path) -> Iterator[StartConsole]:
    started: list[IngestProcess] = []

    def start(*args: str, **env: str) -> IngestProcess:
        process = IngestProcess(console_env(queue_config, **env), args=args, command=(*COMMAND, "console"),
                                log_path=tmp_path / f"console-{len(started)}.log")  # fmt: skip
        started.append(process)
        return process.start()

    yield start
    for process in started:
        process.stop()
        assert SENTINEL_API_KEY not in process.output() and TOKEN not in process.output()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if sync_playwright is None:
        pytest.skip("the playwright package is not installed (pip install -e '.[dev]')")
    if CHROMIUM is None:
        pytest.skip("no chromium on this machine: scripts/bootstrap installs Debian's `chromium`")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM)
        yield b
        b.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A fresh browser profile; any Content-Security-Policy violation on its pages fails the test."""
    context = browser.new_context()
    p = context.new_page()
    violations: list[str] = []
    p.on("console", lambda m: violations.append(m.text) if "Content Security Policy" in m.text else None)
    p.set_default_timeout(15_000)
    yield p
    context.close()
    assert not violations, violations


def sign_in(page: Page, console: IngestProcess, path: str = "/") -> None:
    page.goto(console.url + path)
    assert "/login" in page.url
    page.fill("input[name=token]", TOKEN)
    page.click("button[type=submit]")
    page.wait_for_url(re.compile(re.escape(console.url + path.split("?", maxsplit=1)[0])))


def csrf_of(page: Page) -> str:
    return str(page.get_attribute("form.logout input[name=csrf]", "value"))


@pytest.fixture
def dead_letters(producer: IdentifyProducer, queue_config: QueueConfig, amplitude: LocalAmplitudeProcess,
                 start_worker: StartWorker) -> StartWorker:  # fmt: skip
    """Four invalid records (one full of markup) and two expired ones, from a real worker, which
    keeps running (the local Amplitude accepts everything once this returns)."""
    bad = ["user-bad-1", "user-bad-2", "user-bad-3", XSS_USER]
    amplitude.control(reject_users=bad)
    producer.identify_many([{"user_id": u, "user_properties": {"$set": {"n": i}}} for i, u in enumerate(bad[:3])])
    producer.identify(user_id=XSS_USER, user_properties={"$set": {"a": XSS_SCRIPT, "b": XSS_ATTRIBUTE}})
    producer.identify_many([{"user_id": f"user-ok-{i}", "user_properties": {"$set": {"n": i}}} for i in (1, 2)])
    start_worker(IDENTIFY_RETRY_MAX_ATTEMPTS="1")
    wait_until(lambda: status(queue_config)["dead_letter"] == 4 and drained(queue_config), 30, "invalid records")
    amplitude.control(statuses=[503] * 50)
    producer.identify_many([{"user_id": f"user-old-{i}", "user_properties": {"$set": {"n": i}}} for i in (1, 2)])
    wait_until(lambda: status(queue_config)["dead_letter"] == 6 and drained(queue_config), 30, "expired records")
    amplitude.control()
    return start_worker


# -- the command ---------------------------------------------------------------------------------------
def test_refuses_to_start_without_a_token_or_with_a_short_one(queue_config: QueueConfig) -> None:
    base = console_env(queue_config)
    del base["IDENTIFY_CONSOLE_TOKEN"]
    for env, args, message in (
        (base, [], "IDENTIFY_CONSOLE_TOKEN is not set"),
        ({**base, "IDENTIFY_CONSOLE_TOKEN": "short"}, [], "IDENTIFY_CONSOLE_TOKEN is 5 characters"),
        ({**base, "IDENTIFY_CONSOLE_TOKEN": TOKEN}, ["--insecure-no-auth"], "choose one"),
        ({**base, "IDENTIFY_CONSOLE_PORT": "http"}, ["--insecure-no-auth"], "IDENTIFY_CONSOLE_PORT must be an integer"),
    ):
        done = subprocess.run([*COMMAND, "console", *args], env=env, capture_output=True, text=True, timeout=30,
                              check=False)  # fmt: skip
        assert done.returncode == 2, done.stderr
        assert message in done.stderr and "Traceback" not in done.stderr
        assert len(done.stderr.strip().splitlines()) == 1 and TOKEN not in done.stderr


def test_http_answers_without_a_browser(start_console: StartConsole) -> None:
    console = start_console()
    page = requests.get(console.url + "/dead-letters", allow_redirects=False, timeout=10)
    assert page.status_code == 302 and page.headers["Location"].startswith("/login")
    assert requests.get(console.url + "/api/overview", timeout=10).status_code == 401
    wrong = requests.get(console.url + "/api/overview", headers={"Authorization": "Bearer nope"}, timeout=10)
    assert wrong.status_code == 401
    ok = requests.get(console.url + "/api/overview", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
    assert ok.status_code == 200 and ok.json()["queued"] == 0 and len(ok.json()["history"]) == 60
    assert ok.headers["Content-Security-Policy"].startswith("default-src 'none'; script-src 'self'")
    # a bearer token reads; it never acts
    acted = requests.post(console.url + "/dead-letters/apply", headers={"Authorization": f"Bearer {TOKEN}"},
                          data={"action": "purge", "scope": "filter", "confirmed": "yes"}, timeout=10)  # fmt: skip
    assert acted.status_code == 403
    assert requests.get(console.url + "/healthz", timeout=10).text == "ok\n"
    # Redis unreachable: one line saying so, never a traceback (each call costs redis-py's retries, ~4 s)
    down = start_console(REDIS_URL="redis://127.0.0.1:1/0")
    answer = requests.get(down.url + "/api/overview", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
    assert answer.status_code == 503 and "Redis is unreachable" in answer.json()["error"]
    assert "Traceback" not in down.output()
    # without authentication, asked for: pages open at once, and actions still need the CSRF token
    open_console = start_console("--insecure-no-auth", IDENTIFY_CONSOLE_TOKEN="")
    with requests.Session() as browser_like:
        assert browser_like.get(open_console.url + "/", timeout=10).status_code == 200
        refused = browser_like.post(open_console.url + "/dead-letters/apply", timeout=10,
                                    data={"action": "purge", "scope": "filter", "confirmed": "yes"})  # fmt: skip
        assert refused.status_code == 403 and "CSRF" in refused.text


# -- in the browser ----------------------------------------------------------------------------------------
def test_overview_follows_a_live_worker_without_a_reload(
    page: Page, start_console: StartConsole, producer: IdentifyProducer, queue_config: QueueConfig,
    start_worker: StartWorker,
) -> None:  # fmt: skip
    producer.identify_many([{"user_id": f"user-{i:05d}", "user_properties": {"$set": {"n": i}}} for i in range(300)])
    console = start_console()
    sign_in(page, console)
    assert page.inner_text("#queued") == "300" and page.inner_text("#delivered") == "0"
    assert page.locator("#shards tr").count() == 1 + queue_config.shards
    page.evaluate("window.__same_page = true")
    worker = start_worker()
    # Playwright's expectations poll without eval, which the page's CSP forbids even to a test
    expect(page.locator("#delivered")).to_have_text("300", timeout=30_000)
    expect(page.locator("#workers")).to_contain_text(worker.name)
    assert page.evaluate("window.__same_page") is True  # refreshed in place, not reloaded
    assert page.inner_text("#queued") == "0" and page.inner_text("#enqueued") == "300"
    assert "not blocked" in page.inner_text("#blocked")
    by_status = dict(r.split("\t") for r in page.inner_text("#requests-by-status").splitlines()[1:])
    assert set(by_status) == {"200"} and by_status["200"] == page.inner_text("#requests")
    # the chart has the deliveries (in the last minute or, across a minute's turn, the one before)
    points = str(page.get_attribute("#chart polyline.delivered", "points")).split()
    assert len(points) == 60 and min(float(p.split(",")[1]) for p in points[-2:]) < 180
    assert SENTINEL_API_KEY not in page.content()


def test_waiting_users_shows_who_waits_until_when(
    page: Page, start_console: StartConsole, queue_config: QueueConfig, redis_client: Any, keys: Keys
) -> None:
    shard = 3
    held, deferred = users_in_shard(shard, queue_config.shards, 2)
    k = keys.shard(shard)
    now_ms = int(redis_client.time()[0]) * 1000
    make_wait(redis_client, k, f"u:{held}", [1, 2, 3], now_ms + 60_000, "held")
    make_wait(redis_client, k, f"u:{deferred}", [4], now_ms + 3_600_000, "deferred")
    make_wait(redis_client, keys.shard(0), f"u:{XSS_USER}", [5], now_ms + 120_000, "held")
    console = start_console()
    sign_in(page, console, "/waiting")
    rows = [r.split("\t") for r in page.inner_text("#waiting").splitlines()[1:]]
    assert [(r[0], r[1], r[3]) for r in rows] == [(f"u:{held}", "held", "3"), (f"u:{XSS_USER}", "held", "1"),
                                                  (f"u:{deferred}", "deferred", "1")]  # fmt: skip
    left = re.search(r"\(in (\d+) s\)", rows[0][2])
    assert left and 30 < int(left.group(1)) <= 60, rows[0][2]
    assert page.locator("#waiting img").count() == 0 and page.evaluate("window.__xss") is None
    # sending blocked, as the block script leaves it (worker/lua/block.lua), with markup in the detail
    redis_client.hset(keys.blocked, mapping={"since_ms": now_ms, "probes": 2, "reason": "config_error", "status": 401,
                                             "detail": XSS_SCRIPT, "next_probe_ms": now_ms + 30_000})  # fmt: skip
    page.goto(console.url + "/")
    shown = page.inner_text("#blocked")
    assert "BLOCKED" in shown and "config_error (HTTP 401)" in shown and XSS_SCRIPT in shown and "2 probe(s)" in shown
    assert page.evaluate("window.__xss") is None
    # the overview's refresh, once signed out, answers 401 rather than a sign-in form
    assert requests.get(console.url + "/overview/live", allow_redirects=False, timeout=10).status_code == 401


def test_dead_letters_filter_and_replay_a_selection_that_is_delivered(
    page: Page, start_console: StartConsole, dead_letters: StartWorker, queue_config: QueueConfig,
    amplitude: LocalAmplitudeProcess,
) -> None:  # fmt: skip
    console = start_console()
    sign_in(page, console, "/dead-letters")
    assert "6 of 6 dead letter(s) match" in page.inner_text("#count")

    def listed() -> list[str]:
        return sorted(page.locator("#dead-letters tr.entry td.user").all_inner_texts())

    page.select_option("select[name=reason]", "invalid")
    page.click("#filter button[type=submit]")
    assert listed() == sorted(["user-bad-1", "user-bad-2", "user-bad-3", XSS_USER])
    row = page.locator("#dead-letters tr.entry").first
    assert row.locator("td").nth(4).inner_text() == "400" and row.locator("td").nth(5).inner_text() == "0"
    page.goto(console.url + "/dead-letters?user=user-old")
    assert listed() == ["user-old-1", "user-old-2"]
    page.goto(console.url + "/dead-letters?since=1h&until=2000-01-01T00:00:00Z")
    assert listed() == [] and "0 of 6" in page.inner_text("#count")
    page.goto(console.url + "/dead-letters?since=yesterday-ish")
    assert "since: an ISO 8601 time" in page.inner_text("p.error")

    # replay a selection: the two expired ones, ticked one by one, confirmed, then delivered
    page.goto(console.url + "/dead-letters?reason=expired")
    for box in page.locator("#dead-letters input[name=id]").all():
        box.check()
    page.click("#replay-selected")
    assert "Replay 2 dead letter(s)?" in page.inner_text("h1")
    assert status(queue_config)["dead_letter"] == 6  # nothing happens before the confirmation
    page.click("#confirm-button")
    assert "replayed 2 dead letter(s)" in page.inner_text("p.flash")
    wait_until(lambda: {"user-old-1", "user-old-2"} <= {r["user_id"] for r in amplitude.accepted()}, 30, "replayed")
    assert status(queue_config)["dead_letter_by_reason"] == {"invalid": 4}

    # purge one entry from its row, and the filter's result (user prefix), each after confirming
    page.goto(console.url + "/dead-letters?reason=invalid&user=user-bad-3")
    page.click("#dead-letters tr.entry button[value^=purge]")
    page.click("#confirm-button")
    assert "purged 1 dead letter(s)" in page.inner_text("p.flash")
    page.goto(console.url + "/dead-letters?user=user-bad")
    page.click("#filter-actions button[value=purge]")
    assert "Purge 2 dead letter(s)?" in page.inner_text("h1")
    page.click("#confirm-button")
    assert "purged 2 dead letter(s)" in page.inner_text("p.flash")
    assert status(queue_config)["dead_letter_by_reason"] == {"invalid": 1}
    select_all_then_cancel(page, console)


def select_all_then_cancel(page: Page, console: IngestProcess) -> None:
    page.goto(console.url + "/dead-letters")
    page.check("#select-all")
    assert all(box.is_checked() for box in page.locator("#dead-letters input[name=id]").all())
    page.click("#purge-selected")
    page.click("text=Cancel")
    assert "1 of 1 dead letter(s) match" in page.inner_text("#count")


def test_markup_in_a_record_shows_as_text_and_never_runs(
    page: Page, start_console: StartConsole, dead_letters: StartWorker
) -> None:
    console = start_console()
    sign_in(page, console, "/dead-letters")
    page.goto(console.url + "/dead-letters?reason=invalid&user=user-%3C")
    row = page.locator("#dead-letters tr.entry")
    assert row.count() == 1
    row.locator("summary").click()
    shown = row.inner_text()
    assert XSS_USER in shown
    assert "<script>window.__xss = 'script'</script>" in shown
    assert '\\"><img src=x onerror=\\"window.__xss = \'img\'\\">' in shown  # JSON-escaped, as text
    assert page.locator("#dead-letters img, #dead-letters script").count() == 0
    assert page.locator("script").count() == 1  # the console's own, from its own file
    assert page.evaluate("window.__xss") is None
    # a value typed in the filter comes back as text too
    page.goto(console.url + "/dead-letters?user=" + requests.utils.quote(XSS_ATTRIBUTE))
    assert page.get_attribute("input[name=user]", "value") == XSS_ATTRIBUTE
    assert page.locator("img").count() == 0 and page.evaluate("window.__xss") is None
    assert SENTINEL_API_KEY not in page.content()


def test_read_only_refuses_every_action(
    page: Page, start_console: StartConsole, dead_letters: StartWorker, queue_config: QueueConfig
) -> None:
    console = start_console("--read-only")
    sign_in(page, console, "/dead-letters")
    assert page.inner_text("#read-only") == "read-only"
    assert page.locator("#dead-letters tr.entry").count() == 6
    assert page.locator("button[value=replay], button[value=purge], input[name=id]").count() == 0
    form = {"csrf": csrf_of(page), "action": "purge", "scope": "filter", "reason": "invalid", "confirmed": "yes"}
    refused = page.request.post(console.url + "/dead-letters/apply", form=form)
    assert refused.status == 403 and "read-only" in refused.text()
    assert status(queue_config)["dead_letter"] == 6


def test_sign_in_refuses_a_wrong_or_missing_token(page: Page, start_console: StartConsole) -> None:
    console = start_console()
    page.goto(console.url + "/waiting")
    assert "/login" in page.url and page.locator("#waiting").count() == 0
    page.fill("input[name=token]", TOKEN + "x")
    page.click("button[type=submit]")
    assert "not the console's" in page.inner_text("p.error")
    page.goto(console.url + "/waiting")
    assert "/login" in page.url
    # an empty token is refused by the browser before it is sent, and by the server after
    answer = page.request.post(console.url + "/login", form={"csrf": "", "token": ""}, max_redirects=0)
    assert answer.status == 403
    sign_in(page, console, "/waiting")
    cookie = next(c for c in page.context.cookies() if c["name"] == "identify_console")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Lax"
    page.click("form.logout button")
    page.goto(console.url + "/waiting")
    assert "/login" in page.url


def test_every_action_needs_the_csrf_token_and_the_same_origin(
    page: Page, start_console: StartConsole, dead_letters: StartWorker, queue_config: QueueConfig
) -> None:
    console = start_console()
    sign_in(page, console, "/dead-letters")
    form = {"action": "purge", "scope": "filter", "reason": "invalid", "confirmed": "yes"}
    for extra, headers in (
        ({}, {}),
        ({"csrf": "forged"}, {}),
        ({"csrf": csrf_of(page)}, {"Origin": "http://evil.example"}),
    ):
        answer = page.request.post(console.url + "/dead-letters/apply", form={**form, **extra}, headers=headers)
        assert answer.status == 403, answer.text()
    assert status(queue_config)["dead_letter"] == 6
    # another site's page posting a form to the console: the browser sends no cookie (SameSite),
    # the console refuses it anyway, and the refusal leaves the operator signed in
    page.goto("about:blank")
    page.set_content(f"""<form method="post" action="{console.url}/dead-letters/apply">
        <input name="action" value="purge"><input name="scope" value="filter"><input name="confirmed" value="yes">
        <input name="reason" value="invalid"></form>""")  # fmt: skip
    with page.expect_navigation():
        page.evaluate("document.forms[0].submit()")
    assert "403" in page.inner_text("h1")
    # the console's own token works
    done = page.request.post(console.url + "/dead-letters/apply", form={**form, "csrf": csrf_of_fresh(page, console)})
    assert done.ok and status(queue_config)["dead_letter"] == 2


def csrf_of_fresh(page: Page, console: IngestProcess) -> str:
    page.goto(console.url + "/dead-letters")
    return csrf_of(page)
