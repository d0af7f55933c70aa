"""``identify-queue console``: the console's application on waitress, as ``serve`` runs the ingest endpoint."""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable

from producers.contract import logs
from producers.contract.connection import describe
from producers.contract.errors import ConfigError
from worker.console.settings import ConsoleSettings

log = logging.getLogger("identify_queue.console")


def run(
    *,
    host: str | None,
    port: int | None,
    read_only: bool,
    insecure_no_auth: bool,
    ready: Callable[[str], None] | None = None,
) -> None:
    """Settings from the environment (the options win), logs on stderr; serve until SIGTERM or SIGINT."""
    from waitress.server import create_server

    from worker.console.app import create_app

    settings = ConsoleSettings.from_env(insecure_no_auth=insecure_no_auth, read_only=read_only, host=host, port=port)
    logs.configure(settings.log_level, settings.log_format)
    app = create_app(settings)
    try:
        server = create_server(app, host=settings.host, port=settings.port, threads=settings.threads,
                               ident="identify-queue-console", clear_untrusted_proxy_headers=True)  # fmt: skip
    except OSError as exc:
        raise ConfigError(
            f"cannot listen on {settings.host}:{settings.port} (IDENTIFY_CONSOLE_HOST/PORT, --host/--port): "
            f"{exc.strerror or exc}"
        ) from None
    host_, port_ = str(server.effective_host), int(server.effective_port)
    url = f"http://[{host_}]:{port_}" if ":" in host_ else f"http://{host_}:{port_}"
    log.info("console on %s, queue %s namespace %s, %s%s", url, describe(settings.queue.redis_url),
             settings.queue.namespace, "authentication OFF (--insecure-no-auth)" if settings.token_digest is None
             else "sign-in by token", ", read-only" if settings.read_only else "")  # fmt: skip
    # waitress's loop stops cleanly on SystemExit; the default SIGTERM would kill mid-request.
    signal.signal(signal.SIGTERM, _exit)
    if ready is not None:
        ready(url)
    try:
        server.run()
    finally:
        log.info("console stopped")


def _exit(signum: int, frame: object) -> None:
    raise SystemExit(0)
