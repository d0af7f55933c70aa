"""The local Amplitude-compatible server keeps what checks need, within a bound: the last records
(by arrival index over the whole run), counts of everything, and a flat RSS over a long run."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import orjson
import requests

from worker.devtools.local_amplitude import LocalAmplitude
from worker.devtools.local_stack import LocalAmplitudeProcess


def body(first: int, count: int, user: str = "user") -> bytes:
    items = [{"user_id": f"{user}-{first + i:06d}", "user_properties": {"$set": {"n": first + i}}}
             for i in range(count)]  # fmt: skip
    return orjson.dumps({"api_key": "k", "identification": items})


def test_the_oldest_records_go_once_more_than_the_bound_are_kept() -> None:
    server = LocalAmplitude(keep_records=10)
    for n in range(5):
        assert server.identify(body(4 * n, 4), "application/json")[0] == 200
    # 20 accepted; whole requests are dropped, so at least the last 10 (here 12) are kept
    stats = server.stats()
    assert (stats["accepted"], stats["kept"], stats["requests"]) == (20, 12, 5)
    lines = [orjson.loads(x)["user_properties"]["$set"]["n"] for x in server.accepted_lines(0, 100).splitlines()]
    assert lines == list(range(8, 20))
    # arrival indices count over the whole run: since=15 is the sixteenth record ever
    assert [orjson.loads(x)["user_properties"]["$set"]["n"] for x in server.accepted_lines(15, 3).splitlines()] == [
        15, 16, 17]  # fmt: skip
    assert (server.user_state("user-000019") or {})["user_properties"] == {"n": 19}
    assert server.user_state("user-000001") is None  # dropped with its request
    assert len(server.arrivals()) == 12


def test_keep_zero_keeps_every_record() -> None:
    server = LocalAmplitude(keep_records=0)
    for n in range(5):
        server.identify(body(4 * n, 4), "application/json")
    assert len(server.accepted_lines(0, 100).splitlines()) == 20


def test_requests_waiting_for_a_thread_are_not_warned_about(tmp_path: Path) -> None:
    # more concurrent requests than its 8 threads: waitress would warn "Task queue depth is N"
    server = LocalAmplitudeProcess(log_path=tmp_path / "server.log").start()
    try:
        with ThreadPoolExecutor(32) as pool:
            codes = list(pool.map(lambda n: requests.post(server.identify_url, data=body(n * 20, 20), timeout=10,
                                                          headers={"Content-Type": "application/json"}).status_code,
                                  range(400)))  # fmt: skip
        assert codes == [200] * 400
    finally:
        server.stop()
    assert "Task queue depth" not in (tmp_path / "server.log").read_text()


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))


def test_rss_stays_flat_over_a_long_run() -> None:
    server = LocalAmplitudeProcess(keep_records=5_000).start()
    try:
        assert server.process is not None
        with requests.Session() as http:

            def send(requests_: int, start: int) -> None:
                for r in range(requests_):
                    answer = http.post(server.identify_url, data=body((start + r) * 250, 250),
                                       headers={"Content-Type": "application/json"}, timeout=10)  # fmt: skip
                    assert answer.status_code == 200

            send(150, 0)  # warm up: the kept records, the allocator's arenas
            before = rss_kb(server.process.pid)
            send(600, 150)  # 150,000 more records: about 15 MB if they were all kept
            after = rss_kb(server.process.pid)
        assert server.stats()["accepted"] == 750 * 250
        assert after - before < 4_000, f"RSS grew from {before} kB to {after} kB"
    finally:
        server.stop()
