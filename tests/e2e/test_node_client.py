"""A real Amplitude client, unchanged, against `identify-queue serve`: the npm `amplitude` package.

Its identify() sends what its README shows (``event_properties`` beside ``user_properties``),
``session_id`` from its ``sessionId`` option, and camelCase keys it renames itself; serve must
accept all of it, drop the event fields, and the worker must deliver exactly the identifications
to the local Amplitude-compatible server.  The package is installed by npm into a folder of the
test's own; the test is skipped (saying why) where node or npm is absent or npm cannot install it.
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
from pathlib import Path
from typing import Any

import orjson
import pytest

from producers.contract.settings import QueueConfig
from tests.support import StartWorker, wait_until
from worker.devtools.local_ingest import IngestProcess
from worker.devtools.local_stack import LocalAmplitudeProcess

#: The version tested; its identify() is in node_modules/amplitude/dist/amplitude.js.
CLIENT = "amplitude@6.0.0"
TOKEN = "ingest-" + secrets.token_urlsafe(18)

SCRIPT = r"""
const Amplitude = require('amplitude');
const [url, token] = process.argv.slice(2);
const client = new Amplitude(token, {tokenEndpoint: url, sessionId: 1492789357923});
(async () => {
  const answers = [];
  // The README's identify example: event_properties beside user_properties.
  answers.push(await client.identify({
    user_id: 'node-user-1', event_properties: {screen: 'home'},
    user_properties: {$set: {plan: 'pro'}, $add: {logins: 1}},
  }));
  // An array, camelCase keys (the client renames the ones it knows), a location.
  answers.push(await client.identify([
    {userId: 'node-user-2', userProperties: {$set: {plan: 'free'}}, osName: 'iOS', locationLat: 52.5,
     locationLng: 13.4},
    {deviceId: 'node-device-3', eventProperties: {a: 1}, userProperties: {$setOnce: {first: 'web'}}},
  ]));
  try {
    await client.identify({user_id: 'node-user-4', emial: 'x@example.com'});
    answers.push('accepted');
  } catch (err) {
    answers.push({status: err.status, body: err.data});
  }
  console.log(JSON.stringify(answers));
})().catch((err) => { console.error(String(err)); process.exit(1); });
"""


@pytest.fixture(scope="module")
def node_client(tmp_path_factory: pytest.TempPathFactory) -> Path:
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("node and npm are needed to run the npm amplitude client; neither is on PATH")
    folder = tmp_path_factory.mktemp("node-client")
    try:
        done = subprocess.run([npm, "install", "--no-audit", "--no-fund", "--prefix", str(folder), CLIENT],
                              check=False, capture_output=True, text=True, timeout=120)  # fmt: skip
    except subprocess.TimeoutExpired:
        pytest.skip(f"npm could not install {CLIENT} within 120 s (is the npm registry reachable?)")
    if done.returncode != 0:
        pytest.skip(f"npm could not install {CLIENT}: {done.stderr.strip()[-300:]}")
    script = folder / "identify.js"
    script.write_text(SCRIPT)
    return script


def run_client(script: Path, url: str) -> list[Any]:
    done = subprocess.run(["node", str(script), url, TOKEN], check=False, capture_output=True, text=True,
                          timeout=30, cwd=script.parent)  # fmt: skip
    assert done.returncode == 0, done.stderr
    answers: list[Any] = orjson.loads(done.stdout)
    return answers


def test_the_npm_amplitude_client_works_unchanged_against_serve(
    node_client: Path, queue_config: QueueConfig, amplitude: LocalAmplitudeProcess, start_worker: StartWorker,
    tmp_path: Path,
) -> None:  # fmt: skip
    env = {"REDIS_URL": queue_config.redis_url, "IDENTIFY_NAMESPACE": queue_config.namespace,
           "IDENTIFY_SHARDS": str(queue_config.shards), "IDENTIFY_INGEST_TOKEN": TOKEN}  # fmt: skip
    with IngestProcess(env, log_path=tmp_path / "serve.log") as server:
        first, second, refused = run_client(node_client, server.url)
    assert first["code"] == 200 and first["events_ingested"] == 1
    assert first["ignored_fields"] == {"event_properties": 1, "session_id": 1}
    assert second["events_ingested"] == 2
    assert second["ignored_fields"] == {"session_id": 2, "location_lat": 1, "location_lng": 1, "event_properties": 1}
    # A field that is neither an identification's nor an event's is still refused, with its index.
    assert refused["status"] == 400
    assert refused["body"]["invalid_identifications"][0]["index"] == 0
    assert refused["body"]["invalid_identifications"][0]["field"] == "emial"

    start_worker(concurrency=1)
    arrived = wait_until(lambda: len(amplitude.accepted()) >= 3 and amplitude.accepted(), timeout=30,
                         what="the three identifications at the local Amplitude")  # fmt: skip
    by_id = {r.get("user_id") or r["device_id"]: r for r in arrived}
    assert by_id == {
        "node-user-1": {"user_id": "node-user-1", "user_properties": {"$set": {"plan": "pro"}, "$add": {"logins": 1}}},
        "node-user-2": {"user_id": "node-user-2", "user_properties": {"$set": {"plan": "free"}}, "os_name": "iOS"},
        "node-device-3": {"device_id": "node-device-3", "user_properties": {"$setOnce": {"first": "web"}}},
    }
