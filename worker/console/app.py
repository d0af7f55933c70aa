"""The console's Flask application: the pages, the dead-letter actions, and what guards them.

Guards, in the order a request meets them:

- authentication: the operator signs in once with ``IDENTIFY_CONSOLE_TOKEN`` (compared as SHA-256
  digests in constant time); the session is a signed cookie (HttpOnly, SameSite=Lax) whose key is
  drawn at start, so a restart signs everyone out.  Scripts may send ``Authorization: Bearer`` to
  read, never to act.
- CSRF: every POST carries the session's random token in a form field, compared in constant time,
  and a POST whose Origin is another site's is refused before that.
- read-only (``--read-only``): every action is refused, and no page offers one.
- output: Jinja2 escapes everything a record holds; the Content-Security-Policy allows scripts and
  styles from the console's own files only, so even a value that escaped escaping could not run.

The API key is never read: the console needs the queue's settings only.
"""

from __future__ import annotations

import hmac
import logging
import secrets
from http import HTTPStatus
from itertools import islice
from typing import Any
from urllib.parse import urlencode, urlsplit

import orjson
import redis
from flask import Flask, Response, abort, flash, jsonify, redirect, render_template, request, session, url_for
from werkzeug.exceptions import HTTPException

from producers.contract.connection import connect
from producers.contract.errors import QueueFull, QueueMismatch, StoreError
from producers.contract.keys import Keys
from producers.ingest.settings import token_digest
from worker.console import data
from worker.console.settings import ConsoleSettings
from worker.deadletter import REASONS, DeadLetterQueue, Selection

log = logging.getLogger("identify_queue.console")

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
#: Reachable without signing in: the sign-in page and what it is drawn with.
PUBLIC = {"login", "static", "healthz"}
#: Read by scripts and by the overview's own refresh: without a session they answer 401 (which the
#: page's script turns into a reload, hence the sign-in page) instead of redirecting to a form.
NOT_PAGES = {"overview_live", "overview_json"}
#: How many ids a confirmation page lists before it says "and N more".
SHOWN_IDS = 50


def create_app(settings: ConsoleSettings, client: redis.Redis | None = None) -> Flask:
    app = Flask(__name__)
    app.secret_key = secrets.token_bytes(32)
    app.config.update(
        SESSION_COOKIE_NAME="identify_console",
        SESSION_COOKIE_HTTPONLY=True,
        # Lax, not Strict: a link to the console from a runbook or an alert arrives signed in, while a
        # POST from another site still comes without the cookie.
        SESSION_COOKIE_SAMESITE="Lax",
        MAX_CONTENT_LENGTH=1_000_000,
        # A list of 5,000 selected ids is one form; werkzeug's default of 1,000 fields would refuse it
        # (a setting since Flask 3.1).
        MAX_FORM_PARTS=20_000,
    )
    app.add_template_filter(_pretty_json, "tojson_pretty")
    console = Console(settings, client or connect(settings.queue.redis_url))
    app.context_processor(console.common)
    app.before_request(console.guard)
    app.after_request(_headers)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(StoreError, _store_error)
    app.register_error_handler(Exception, _internal)
    for rule, endpoint, methods in (
        ("/login", "login", ["GET", "POST"]),
        ("/logout", "logout", ["POST"]),
        ("/healthz", "healthz", ["GET"]),
        ("/", "overview", ["GET"]),
        ("/overview/live", "overview_live", ["GET"]),
        ("/api/overview", "overview_json", ["GET"]),
        ("/waiting", "waiting", ["GET"]),
        ("/dead-letters", "dead_letters", ["GET"]),
        ("/dead-letters/confirm", "confirm", ["POST"]),
        ("/dead-letters/apply", "apply", ["POST"]),
    ):
        app.add_url_rule(rule, endpoint, getattr(console, endpoint), methods=methods)
    return app


class Console:
    """The views, over one Redis client shared by waitress's threads (redis-py's pool is thread-safe)."""

    def __init__(self, settings: ConsoleSettings, store: redis.Redis) -> None:
        self.settings = settings
        self.store = store
        self.keys = Keys(settings.queue.namespace)
        self.queue = DeadLetterQueue(settings.queue, client=store)
        self.shards = settings.queue.shards

    def common(self) -> dict[str, Any]:
        # csrf_token is called by the forms that need it: a page without a form (an error shown to a
        # request without the cookie) then sets no cookie, so it cannot sign anyone out.
        return {"read_only": self.settings.read_only, "csrf_token": _csrf_token, "clock": data.clock,
                "signed_in": self.settings.token_digest is not None and session.get("auth") is True,
                "namespace": self.settings.queue.namespace}  # fmt: skip

    def guard(self) -> Any:
        if request.method == "POST":
            _check_origin()
        if request.endpoint in PUBLIC:
            if request.method == "POST":
                _check_csrf()
            return None
        how = _authenticated(self.settings.token_digest)
        if how is None:
            if request.method == "GET" and request.endpoint not in NOT_PAGES:
                return redirect(url_for("login", next=request.full_path.rstrip("?")))
            abort(HTTPStatus.UNAUTHORIZED, "sign in with the console's token (IDENTIFY_CONSOLE_TOKEN)")
        if request.method == "POST":
            if how == "bearer":
                abort(HTTPStatus.FORBIDDEN, "actions need a signed-in session; a bearer token may only read")
            _check_csrf()
            if self.settings.read_only and request.endpoint != "logout":
                abort(HTTPStatus.FORBIDDEN, "this console is read-only (--read-only): replay and purge are refused")
        return None

    # -- signing in ----------------------------------------------------------------------------------
    def login(self) -> Any:
        target = _safe_next(request.values.get("next", ""))
        if self.settings.token_digest is None:
            return redirect(target)
        if request.method == "GET":
            return render_template("login.html", next=target, error=None)
        given = request.form.get("token", "")
        if not hmac.compare_digest(token_digest(given), self.settings.token_digest):
            log.warning("sign-in refused from %s: wrong token", request.remote_addr)
            return render_template("login.html", next=target, error="That token is not the console's."), 401
        # A fresh session on sign-in: a CSRF token planted before it (session fixation) is worth nothing.
        session.clear()
        session["auth"] = True
        session["csrf"] = secrets.token_urlsafe(32)
        return redirect(target, code=303)

    def logout(self) -> Any:
        session.clear()
        return redirect(url_for("login"), code=303)

    def healthz(self) -> tuple[str, int]:
        try:
            self.store.ping()
        except redis.RedisError:
            return "redis unreachable\n", 503
        return "ok\n", 200

    # -- the pages ------------------------------------------------------------------------------------
    def overview(self) -> str:
        status = data.overview(self.store, self.keys, self.shards)
        return render_template("overview.html", s=status, chart=data.chart(status["history"]),
                               refresh_s=self.settings.refresh_s)  # fmt: skip

    def overview_live(self) -> str:
        status = data.overview(self.store, self.keys, self.shards)
        return render_template("overview_live.html", s=status, chart=data.chart(status["history"]))

    def overview_json(self) -> Response:
        return jsonify(data.overview(self.store, self.keys, self.shards))

    def waiting(self) -> str:
        users, total = data.waiting_users(self.store, self.keys, self.shards, self.settings.page_size)
        return render_template("waiting.html", users=users, total=total, now_ms=data.redis_ms(self.store))

    def dead_letters(self) -> Any:
        args = request.args.to_dict()
        try:
            wanted = data.Filter.parse(args, data.redis_ms(self.store))
        except data.BadFilter as exc:
            fields = {name: args.get(name, "") for name in ("reason", "user", "since", "until")}
            return render_template("dead_letters.html", f=fields, error=str(exc), docs=[], matching=0,
                                   total=self.queue.count(), reasons=REASONS, user_of=data.user_of), 400  # fmt: skip
        docs: list[dict[str, Any]] = []
        matching = 0
        if wanted.by_reason_only:
            # The counts say how many match: only the listed page is read, however long the queue.
            counts = data.dead_letters_by_reason(self.store, self.keys, self.shards)
            matching = counts.get(wanted.reason, 0) if wanted.reason else sum(counts.values())
            docs = list(islice(wanted.entries(self.queue), self.settings.page_size))
        else:
            for doc in wanted.entries(self.queue):
                matching += 1
                if len(docs) < self.settings.page_size:
                    docs.append(doc)
        return render_template("dead_letters.html", f=wanted.fields(), error=None, docs=docs, matching=matching,
                               total=self.queue.count(), reasons=REASONS, user_of=data.user_of)  # fmt: skip

    # -- the actions: a confirmation first, then the action itself -------------------------------------
    def confirm(self) -> Any:
        action, ids, wanted = _action(data.redis_ms(self.store))
        if ids is not None:
            found = [doc["id"] for doc in self.queue.entries(Selection(ids=tuple(ids)))]
        else:
            found = [doc["id"] for doc in wanted.entries(self.queue)]
        if not found:
            flash(f"nothing to {action}: none of those dead letters is there any more")
            return redirect(_dead_letters_url(wanted), code=303)
        return render_template("confirm.html", action=action, ids=ids, found=found[:SHOWN_IDS], count=len(found),
                               f=wanted.fields())  # fmt: skip

    def apply(self) -> Any:
        """Replay or purge with ``DeadLetterQueue``'s own operations: the same atomic steps and
        per-user order as ``dlq replay`` and ``dlq purge``."""
        action, ids, wanted = _action(data.redis_ms(self.store))
        back = redirect(_dead_letters_url(wanted), code=303)
        if request.form.get("confirmed") != "yes":
            abort(HTTPStatus.BAD_REQUEST, "an action must be confirmed")
        if ids is not None:
            selection = Selection(ids=tuple(ids))
        elif wanted.narrower_than_selection:
            selection = Selection(ids=tuple(doc["id"] for doc in wanted.entries(self.queue)))
            if not selection.ids:
                flash(f"nothing to {action}: no dead letter matches the filter")
                return back
        else:
            selection = wanted.selection
        try:
            done = self.queue.replay(selection) if action == "replay" else self.queue.purge(selection)
        except QueueFull as exc:
            flash(f"replay stopped: {exc}; what was replayed before stays replayed, run it again later")
        except QueueMismatch as exc:
            flash(f"replay refused: {exc}")
        else:
            log.info("%s of %d dead letter(s) from %s", action, done, request.remote_addr)
            flash(f"{'replayed' if action == 'replay' else 'purged'} {done} dead letter(s)")
        return back


def _headers(response: Response) -> Response:
    response.headers["Content-Security-Policy"] = CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["X-Frame-Options"] = "DENY"
    # Not no-referrer: under it a browser sends ``Origin: null`` with the console's own forms.
    response.headers["Referrer-Policy"] = "same-origin"
    if request.endpoint != "static":
        response.headers["Cache-Control"] = "no-store"
    return response


def _http_error(exc: HTTPException) -> Any:
    return _error(exc.code or 500, HTTPStatus(exc.code or 500).phrase, exc.description or "")


def _store_error(exc: StoreError) -> Any:
    log.warning("%s %s: %s", request.method, request.path, exc)
    return _error(503, "Redis unreachable", str(exc))


def _internal(exc: Exception) -> Any:
    log.exception("%s %s: unexpected error", request.method, request.path)
    return _error(500, "Internal error", "the console's log has the details")


def _error(code: int, title: str, message: str) -> Any:
    """An error as one line: JSON for the API, a page for people; never a traceback."""
    if request.path.startswith("/api/"):
        return jsonify({"error": message or title}), code
    return render_template("error.html", code=code, title=title, message=message), code


def _dead_letters_url(wanted: data.Filter) -> str:
    fields = {k: v for k, v in wanted.fields().items() if v}
    return url_for("dead_letters") + ("?" + urlencode(fields) if fields else "")


def _action(now_ms: int) -> tuple[str, list[str] | None, data.Filter]:
    """What a POST asks: the action, the ids it names (None: the filter's result), and the filter.

    A button of a row sends ``single=<action> <id>``; the buttons under the list send ``action``
    with the ticked ``id`` boxes, or ``scope=filter`` for everything the filter matches.
    """
    form = request.form
    single = form.get("single", "")
    if single:
        action, _, one = single.partition(" ")
        ids: list[str] | None = [one]
    else:
        action = form.get("action", "")
        ids = None if form.get("scope") == "filter" else form.getlist("id")
    if action not in ("replay", "purge"):
        abort(HTTPStatus.BAD_REQUEST, "the action must be replay or purge")
    if ids is not None and not ids:
        abort(HTTPStatus.BAD_REQUEST, f"nothing selected to {action}: tick the entries first")
    try:
        wanted = data.Filter.parse(form.to_dict(), now_ms)
    except data.BadFilter as exc:
        abort(HTTPStatus.BAD_REQUEST, str(exc))
    return action, ids, wanted


def _pretty_json(value: Any) -> str:
    # A plain string: autoescaping then turns a property such as "<script>" into text.
    return orjson.dumps(value, option=orjson.OPT_INDENT_2).decode()


def _authenticated(digest: bytes | None) -> str | None:
    """How the request is signed in: ``session`` (a browser), ``bearer`` (a script), or None."""
    if digest is None or session.get("auth") is True:
        return "session"
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and hmac.compare_digest(token_digest(given.strip()), digest):
        return "bearer"
    return None


def _csrf_token() -> str:
    if "csrf" not in session:
        session["csrf"] = secrets.token_urlsafe(32)
    return str(session["csrf"])


def _check_csrf() -> None:
    expected = session.get("csrf")
    given = request.form.get("csrf", "")
    if not expected or not hmac.compare_digest(given.encode(), str(expected).encode()):
        abort(HTTPStatus.FORBIDDEN, "the form's CSRF token is missing or wrong: reload the page and try again")


def _check_origin() -> None:
    """A browser names the page a POST comes from; one from another site is refused outright, and so
    is ``null`` (a sandboxed frame or a local file), which the console's own pages never send."""
    origin = request.headers.get("Origin")
    if origin is not None and urlsplit(origin).netloc != request.host:
        abort(HTTPStatus.FORBIDDEN, "a form from another site cannot act on this console")


def _safe_next(target: str) -> str:
    """Where to go after signing in: a path of this console only, never another site."""
    if not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target
