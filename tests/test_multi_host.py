"""Several hosts: the scheduler, two workers and a client each in a Linux network
namespace of its own, with its own address on a bridge that the test makes; one
worker host is cut off by a firewall rule in the middle of a graph.  The result is
still right, and the cut-off worker is removed once its heartbeats stop for
worker-ttl.  Everything runs as ``ip netns exec NS python -m distributary.cli ...``;
namespaces and processes are removed even when the test fails."""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import psutil
import pytest
from conftest import poll

import distributary

SOURCE = str(pathlib.Path(distributary.__file__).parent.parent)
TTL = 3  # seconds: the scheduler's worker-ttl
PORT = 8786


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=30)


def check(*args: str) -> None:
    result = run(*args)
    if result.returncode:
        raise RuntimeError(f"{' '.join(args)}: {result.stderr.strip()}")


class Network:
    """Namespaces on one bridge (in a namespace of its own): one per host, each with an
    address of ``10.R.0.0/24`` (``R`` from this process's id)."""

    def __init__(self, tag: str):
        self.tag = tag
        self.subnet = f"10.{200 + os.getpid() % 50}.{os.getpid() % 250}"
        self.bridge = f"{tag}-br"
        self.hosts: dict[str, str] = {}  # namespace -> address
        self.processes: list[subprocess.Popen] = []
        self.namespaces = [self.bridge]
        check("ip", "netns", "add", self.bridge)
        check("ip", "-n", self.bridge, "link", "add", "br0", "type", "bridge")
        check("ip", "-n", self.bridge, "link", "set", "br0", "up")

    def add_host(self, name: str) -> tuple[str, str]:
        """A new host's namespace and address."""
        namespace, address = f"{self.tag}-{name}", f"{self.subnet}.{len(self.hosts) + 1}"
        check("ip", "netns", "add", namespace)
        self.namespaces.append(namespace)
        port = f"p{len(self.hosts)}"
        check(
            *("ip", "-n", self.bridge, "link", "add", port, "type", "veth"),
            *("peer", "name", "eth0", "netns", namespace),
        )
        check("ip", "-n", self.bridge, "link", "set", port, "master", "br0", "up")
        check("ip", "-n", namespace, "addr", "add", f"{address}/24", "dev", "eth0")
        check("ip", "-n", namespace, "link", "set", "eth0", "up")
        check("ip", "-n", namespace, "link", "set", "lo", "up")
        self.hosts[namespace] = address
        return namespace, address

    def start(self, namespace: str, *args: str, log: pathlib.Path) -> subprocess.Popen:
        """``python args...`` in the host's namespace, its output in ``log``."""
        env = {**os.environ, "PYTHONPATH": SOURCE}
        with open(log, "w") as f:
            proc = subprocess.Popen(
                ["ip", "netns", "exec", namespace, sys.executable, *args],
                stdout=f,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        self.processes.append(proc)
        return proc

    def cut_off(self, namespace: str) -> None:
        """Drop every packet that enters or leaves the host (its own loopback aside)."""
        rules = textwrap.dedent(
            """
            table inet cut {
              chain in {
                type filter hook input priority -300; policy accept; iifname "eth0" drop;
              }
              chain out {
                type filter hook output priority -300; policy accept; oifname "eth0" drop;
              }
            }
            """
        )
        result = subprocess.run(
            ["ip", "netns", "exec", namespace, "nft", "-f", "-"],
            input=rules,
            capture_output=True,
            text=True,
            timeout=10,
        )
        if result.returncode:
            raise RuntimeError(f"nft: {result.stderr.strip()}")

    def close(self) -> None:
        for proc in self.processes:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for proc in self.processes:
            proc.wait(10)
        for namespace in reversed(self.namespaces):
            for pid in run("ip", "netns", "pids", namespace).stdout.split():
                try:
                    psutil.Process(int(pid)).kill()
                except psutil.Error:
                    pass
            run("ip", "netns", "del", namespace)


@pytest.fixture
def network():
    if shutil.which("ip") is None or shutil.which("nft") is None:
        pytest.skip("needs iproute2 (ip) and nftables (nft): apt-get install iproute2 nftables")
    tag = f"dt{os.getpid() % 100000}"
    try:
        net = Network(tag)
    except (RuntimeError, OSError) as exc:
        run("ip", "netns", "del", f"{tag}-br")
        pytest.skip(f"this machine does not allow network namespaces here: {exc}")
    probe = run("ip", "netns", "exec", net.bridge, "nft", "add", "table", "inet", "probe")
    if probe.returncode:
        net.close()
        pytest.skip(f"nftables does not work in a network namespace here: {probe.stderr}")
    try:
        yield net
    finally:
        net.close()


CLIENT = """
import json, sys, time
from distributary import Client

scheduler, cut_file, victim = sys.argv[1:4]

def slow_inc(x):
    time.sleep(0.2)
    return x + 1

def say(**what):
    print(json.dumps(what), flush=True)

with Client(scheduler, timeout=20) as client:
    client.wait_for_workers(2, timeout=20)
    names = {w["name"]: a for a, w in client.scheduler_info()["workers"].items()}
    futures = client.map(slow_inc, range(30))
    total = client.submit(sum, futures)
    deadline = time.time() + 20
    while not (client.has_what().get(names[victim]) and client.processing().get(names[victim])):
        if time.time() > deadline:
            raise RuntimeError("the victim never ran anything")
        time.sleep(0.01)
    say(event="cut-me", holding=len(client.has_what()[names[victim]]))
    result = total.result(timeout=60)
    result_at = time.time()
    while names[victim] in client.scheduler_info()["workers"]:
        time.sleep(0.05)
    say(event="done", result=result, result_at=result_at, removed_at=time.time(),
        workers=sorted(w["name"] for w in client.scheduler_info()["workers"].values()),
        cut_at=float(open(cut_file).read()))
"""


def events(log: pathlib.Path) -> list[dict]:
    found = []
    for line in log.read_text().splitlines():
        if line.startswith("{"):
            found.append(json.loads(line))
    return found


def test_a_worker_host_cut_off_mid_graph(network, tmp_path):
    scheduler_ns, scheduler_ip = network.add_host("sched")
    workers = [network.add_host(name) for name in ("w1", "w2")]
    client_ns, _ = network.add_host("client")
    address = f"tcp://{scheduler_ip}:{PORT}"
    scheduler = network.start(
        scheduler_ns,
        *("-m", "distributary.cli", "scheduler", "--host", scheduler_ip, "--port", str(PORT)),
        *("--worker-ttl", f"{TTL}s", "--no-dashboard"),
        log=tmp_path / "scheduler.log",
    )
    for (namespace, ip), name in zip(workers, ("w1", "w2")):
        network.start(
            namespace,
            *("-m", "distributary.cli", "worker", address, "--host", ip, "--name", name),
            *("--nthreads", "1", "--no-nanny", "--death-timeout", "20s"),
            log=tmp_path / f"{name}.log",
        )
    (tmp_path / "client.py").write_text(CLIENT)
    cut_file = tmp_path / "cut-at"
    log = tmp_path / "client.log"
    client = network.start(
        client_ns, str(tmp_path / "client.py"), address, str(cut_file), "w2", log=log
    )

    def said(event: str) -> bool:
        if client.poll() is not None and not any(e["event"] == event for e in events(log)):
            pytest.fail(f"the client exited:\n{log.read_text()}\n{scheduler_log()}")
        return any(e["event"] == event for e in events(log))

    def scheduler_log() -> str:
        return (tmp_path / "scheduler.log").read_text()

    poll(lambda: said("cut-me"), timeout=30, interval=0.02)
    network.cut_off(workers[1][0])
    cut_file.write_text(repr(time.time()))
    poll(lambda: said("done"), timeout=30, interval=0.05)
    (done,) = [e for e in events(log) if e["event"] == "done"]
    assert done["result"] == sum(range(1, 31))
    assert done["result_at"] > done["cut_at"]  # (the graph was not over at the cut)
    assert done["workers"] == ["w1"]
    silent = done["removed_at"] - done["cut_at"]
    assert TTL - 1 < silent < TTL + 6, silent  # removed for its silence, after worker-ttl
    assert "sent no heartbeat" in scheduler_log()
    assert client.wait(20) == 0, log.read_text()
    assert scheduler.poll() is None  # (the scheduler goes on)
