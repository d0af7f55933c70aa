"""The ingest benchmark's baseline: the HTTP floor of ``identify-queue serve``.

The same server stack as the real endpoint (``producers.ingest.server.serve``: waitress, the same
threads, limits and timeouts, the same routing, logging and answer encoding) with an application
that reads the body, parses the envelope, checks the token and parses the identification JSON,
then answers 200 without validating a record or touching Redis.  The real endpoint's rate over
this one's is what validation and the durable enqueue cost.

    python -m bench.ingest_floor --host 127.0.0.1 --port 0     (settings from the environment)
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from producers.contract.entry import now_ms
from producers.contract.errors import RequestRefused
from producers.ingest.decide import (
    Answer,
    answer_accepted,
    answer_refused,
    authenticate,
    bearer,
    check_size,
    identifications,
)
from producers.ingest.envelope import read_envelope
from producers.ingest.server import IngestApp, serve
from producers.ingest.settings import IngestSettings


class FloorApp(IngestApp):
    def _identify(self, environ: dict[str, Any]) -> Answer:
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
            check_size(length, self.settings.max_body_bytes)
            body: bytes = environ["wsgi.input"].read(length) if length > 0 else b""
            envelope = read_envelope(environ.get("CONTENT_TYPE", ""), environ.get("HTTP_CONTENT_ENCODING", ""), body)
            token = bearer(environ.get("HTTP_AUTHORIZATION", ""))
            authenticate(envelope.api_key if token is None else token, self.settings.token_digests)
            items = identifications(envelope.identification, self.settings.max_records)
        except RequestRefused as refused:
            return answer_refused(refused)
        return answer_accepted(len(items), len(body), now_ms())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    settings = IngestSettings.from_env(host=args.host, port=args.port, threads=args.threads)
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    def ready(urls: list[str]) -> None:
        print(f"listening on {urls[0]}", flush=True)

    serve(settings, ready, app_type=FloorApp)
    return 0


if __name__ == "__main__":
    sys.exit(main())
