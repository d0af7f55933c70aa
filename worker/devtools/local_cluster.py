"""Start a private Redis Cluster (3 masters, 3 replicas) on free loopback ports: for the tests and
the benchmarks of the queue on a cluster.

Each node is a LocalRedis with cluster mode on, its bus on a port of its own (``--cluster-port``,
so nothing lands on port+10000) and a short node timeout, so that a replica takes over a dead
master in about three seconds.  ``redis-cli --cluster create`` joins them; ``start`` returns once
every node sees the cluster as ok and every replica is in sync.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from typing import Any

import redis
from redis.cluster import ClusterNode

from producers.contract.errors import ConfigError, StoreError
from worker.devtools.local_redis import LocalRedis, free_port

#: A master that stops answering for this long is failed over (the election adds about a second).
NODE_TIMEOUT_MS = 1500


class LocalCluster:
    def __init__(self, masters: int = 3, replicas_per_master: int = 1, *, appendonly: bool = True) -> None:
        if shutil.which("redis-cli") is None:
            raise ConfigError("redis-cli is not installed (it creates the cluster): install redis-tools")
        self.replicas_per_master = replicas_per_master
        self.nodes: list[LocalRedis] = []
        for _ in range(masters * (1 + replicas_per_master)):
            port = free_port(stable=True)
            bus = free_port(stable=True)
            self.nodes.append(LocalRedis(port=port, appendonly=appendonly, extra=[
                "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", "--cluster-port", str(bus),
                "--cluster-node-timeout", str(NODE_TIMEOUT_MS), "--repl-diskless-sync-delay", "0",
                "--appendfsync", "everysec",
            ]))  # fmt: skip

    @property
    def url(self) -> str:
        """A URL naming every node: any one that answers lets the clients find the others."""
        return "redis://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes) + "/0"

    def start(self, timeout_s: float = 30.0) -> LocalCluster:
        try:
            for node in self.nodes:
                node.start()
        except BaseException:
            self.cleanup()  # the nodes that did start must not outlive a failed start
            raise
        addresses = [f"127.0.0.1:{n.port}" for n in self.nodes]
        created = subprocess.run(
            ["redis-cli", "--cluster", "create", *addresses, "--cluster-replicas", str(self.replicas_per_master),
             "--cluster-yes"],
            capture_output=True, text=True, timeout=timeout_s, check=False,
        )  # fmt: skip
        if created.returncode != 0:
            self.cleanup()
            raise StoreError(f"redis-cli --cluster create failed: {created.stdout[-500:]}{created.stderr[-500:]}")
        self.wait_healthy(timeout_s)
        return self

    def wait_healthy(self, timeout_s: float = 30.0) -> None:
        """Until every running node says cluster_state:ok and every replica's link to its master is up."""
        deadline = time.monotonic() + timeout_s
        while True:
            if all(self._healthy(n) for n in self.nodes if n.process is not None):
                return
            if time.monotonic() > deadline:
                raise StoreError(f"the cluster was not healthy within {timeout_s} s")
            time.sleep(0.05)

    @staticmethod
    def _healthy(node: LocalRedis) -> bool:
        client = node.admin(socket_connect_timeout=0.5, socket_timeout=1)
        try:
            if b"cluster_state:ok" not in client.execute_command("CLUSTER", "INFO"):  # type: ignore[no-untyped-call]
                return False
            info = client.info("replication")
            return bool(info.get("role") == "master" or info.get("master_link_status") == "up")
        except redis.RedisError:
            return False
        finally:
            client.close()

    def client(self, **options: Any) -> redis.RedisCluster:
        """A cluster client of the default user, starting from every node that runs."""
        nodes = [ClusterNode("127.0.0.1", n.port) for n in self.nodes if n.process is not None]  # type: ignore[no-untyped-call]
        return redis.RedisCluster(startup_nodes=nodes, **options)

    def master_of(self, key: str) -> LocalRedis:
        """The node that serves ``key``'s slot now."""
        client = self.client()
        try:
            port = client.get_node_from_key(key).port  # type: ignore[no-untyped-call]
        finally:
            client.close()
        return next(n for n in self.nodes if n.port == port)

    def node_ids(self) -> dict[int, str]:
        """Port -> cluster node id, of the masters."""
        client = next(n for n in self.nodes if n.process is not None).admin()
        try:
            lines = client.execute_command("CLUSTER", "NODES").decode().splitlines()  # type: ignore[no-untyped-call]
        finally:
            client.close()
        out: dict[int, str] = {}
        for line in lines:
            node_id, address, flags = line.split()[:3]
            if "master" in flags and "fail" not in flags:
                out[int(address.split(":")[1].split("@")[0])] = node_id
        return out

    def migrate_slot(self, slot: int, to: LocalRedis, *, keys_per_step: int = 1, pause_s: float = 0.0) -> int:
        """Move one slot to another master as ``redis-cli --cluster reshard`` does (IMPORTING and
        MIGRATING, MIGRATE of its keys, SETSLOT NODE), a few keys a step so that clients meet the slot
        half moved (ASK, TRYAGAIN) for a while.  Returns how many keys moved."""
        ids = self.node_ids()
        source = next(n for n in self.nodes if ids.get(n.port) and self._owns(n, slot))
        src, dst = source.admin(), to.admin()
        moved = 0
        try:
            dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", ids[source.port])  # type: ignore[no-untyped-call]
            src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", ids[to.port])  # type: ignore[no-untyped-call]
            while True:
                keys = src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, keys_per_step)  # type: ignore[no-untyped-call]
                if not keys:
                    break
                src.execute_command("MIGRATE", "127.0.0.1", to.port, "", 0, 5000, "KEYS", *keys)  # type: ignore[no-untyped-call]
                moved += len(keys)
                if pause_s:
                    time.sleep(pause_s)
            for node in self.nodes:
                if node.process is not None and node.port in ids:
                    client = node.admin()
                    try:
                        client.execute_command("CLUSTER", "SETSLOT", slot, "NODE", ids[to.port])  # type: ignore[no-untyped-call]
                    finally:
                        client.close()
        finally:
            src.close()
            dst.close()
        return moved

    @staticmethod
    def _owns(node: LocalRedis, slot: int) -> bool:
        client = node.admin()
        try:
            line = next(
                line
                for line in client.execute_command("CLUSTER", "NODES").decode().splitlines()  # type: ignore[no-untyped-call]
                if "myself" in line
            )
        finally:
            client.close()
        for part in line.split()[8:]:
            if part.startswith("["):
                continue
            low, _, high = part.partition("-")
            if int(low) <= slot <= int(high or low):
                return True
        return False

    def cleanup(self) -> None:
        for node in self.nodes:
            node.cleanup()

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.cleanup()
