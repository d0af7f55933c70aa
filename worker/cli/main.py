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

import click

from worker.cli import console, dev, operate, produce, run, serve
from worker.cli.common import ENVIRONMENT_HELP


@click.group(
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100}, epilog=ENVIRONMENT_HELP
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
