"""The ``identify-queue`` command: one group, its commands in a module each.

    run.py       worker
    produce.py   enqueue, import
    operate.py   status, dlq
    serve.py     serve
    console.py   console
    dev.py       local-amplitude, demo
    common.py    errors to one line and an exit code

Exit codes, stable for scripts:
    0  success
    1  some input was rejected (each rejection is reported on stderr)
    2  usage or configuration error (the message names the flag or variable)
    3  the queue is full (IDENTIFY_MAX_QUEUED)
    4  Redis is unreachable or refused a command
"""

from __future__ import annotations

import sys
from typing import Any

import click

from worker.cli import console, dev, operate, produce, run, serve
from worker.cli.common import ENVIRONMENT_HELP, EXIT_INTERRUPTED, one_line


class OneLineErrors(click.Group):
    """click's own errors (a bad flag, a declined confirmation) on one line, as the commands' are.

    click would print a usage block of four lines; a script reading stderr, or a person scanning
    it, gets one line naming the flag and where to find help instead.
    """

    def main(self, *args: Any, **kwargs: Any) -> Any:
        kwargs["standalone_mode"] = False
        try:
            code = super().main(*args, **kwargs)
        except click.ClickException as exc:
            where = _command_path(getattr(exc, "ctx", None))
            hint = f" (see {where} --help)" if isinstance(exc, click.UsageError) else ""
            click.echo(f"{where}: {one_line(exc.format_message(), 2000)}{hint}", err=True)
            sys.exit(exc.exit_code)
        except click.Abort as exc:
            if isinstance(exc.__cause__, KeyboardInterrupt):
                click.echo("identify-queue: interrupted", err=True)
                sys.exit(EXIT_INTERRUPTED)
            click.echo("identify-queue: aborted", err=True)
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)


def _command_path(ctx: click.Context | None) -> str:
    """``identify-queue dlq list``, whatever the program was started as (``python -m ...``)."""
    names: list[str] = []
    while ctx is not None and ctx.parent is not None:
        names.insert(0, ctx.info_name or "")
        ctx = ctx.parent
    return " ".join(["identify-queue", *names])


@click.group(
    cls=OneLineErrors,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    epilog=ENVIRONMENT_HELP,
)
@click.version_option(package_name="identify-queue")
def main() -> None:
    """Deliver user-property updates to Amplitude's Identify API: durable, ordered per user,
    within Amplitude's limits.

    Producers validate and enqueue identifications into Redis (`enqueue`, `import`, the Python
    API); workers (`worker`) drain them in batches to POST /identify; `status` shows where
    everything is.
    """


for command in (run.worker, produce.enqueue, produce.import_, operate.status, operate.dlq, operate.acl, serve.serve,
                console.console, dev.local_amplitude, dev.demo):  # fmt: skip
    main.add_command(command)


if __name__ == "__main__":
    main()
