"""SSHCluster against a real OpenSSH server that each test starts on 127.0.0.1, with
a host key and a client key made in the test; the remote servers are real processes
started by sshd, connecting back over TCP."""

from __future__ import annotations

import os
import pathlib
import shutil
import socket
import subprocess
import sys
import time

import pytest
from conftest import children, poll

import distributary
from distributary import Client, SSHCluster

asyncssh = pytest.importorskip("asyncssh", reason="SSHCluster needs asyncssh")

SSHD = shutil.which("sshd") or next(
    (p for p in ("/usr/sbin/sshd", "/usr/local/sbin/sshd") if os.path.exists(p)), None
)
pytestmark = pytest.mark.skipif(
    SSHD is None, reason="no OpenSSH server (sshd) on this machine: apt-get install openssh-server"
)
SOURCE = str(pathlib.Path(distributary.__file__).parent.parent)  # this checkout
PYTHON = sys.executable


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def sshd(tmp_path):
    """An sshd on 127.0.0.1 for the current user, and the connect_options to reach it."""
    host_key = asyncssh.generate_private_key("ssh-ed25519")
    client_key = asyncssh.generate_private_key("ssh-ed25519")
    host_key.write_private_key(str(tmp_path / "host_key"))
    client_key.write_private_key(str(tmp_path / "client_key"))
    (tmp_path / "authorized_keys").write_bytes(client_key.export_public_key())
    port = free_port()
    (tmp_path / "known_hosts").write_bytes(
        f"[127.0.0.1]:{port} ".encode() + host_key.export_public_key()
    )
    for path in ("host_key", "client_key", "authorized_keys"):
        os.chmod(tmp_path / path, 0o600)
    config = tmp_path / "sshd_config"
    config.write_text(
        "\n".join(
            [
                "ListenAddress 127.0.0.1",
                f"HostKey {tmp_path / 'host_key'}",
                f"AuthorizedKeysFile {tmp_path / 'authorized_keys'}",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "PermitRootLogin prohibit-password",
                "StrictModes no",
                "UsePAM no",
                "PidFile none",
                "AcceptEnv PYTHONPATH DASK_*",
                "LogLevel ERROR",
            ]
        )
        + "\n"
    )
    try:
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # (its privilege separation dir)
    except PermissionError:
        pass  # (not root: sshd runs without it, for this user only)
    log = tmp_path / "sshd.log"
    proc = subprocess.Popen([SSHD, "-D", "-e", "-p", str(port), "-f", str(config), "-E", str(log)])
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"sshd did not start: {log.read_text() if log.exists() else ''}")
                time.sleep(0.02)
        yield {
            "port": port,
            "username": os.environ.get("USER") or __import__("getpass").getuser(),
            "client_keys": [str(tmp_path / "client_key")],
            "known_hosts": str(tmp_path / "known_hosts"),
            "env": {"PYTHONPATH": SOURCE},
        }
    finally:
        proc.terminate()
        proc.wait(10)


# (lambdas, as the remote workers cannot import this module: they travel by value)
square = lambda x: x * x  # noqa: E731
where = lambda x: __import__("distributary").get_worker().address  # noqa: E731


def test_ssh_cluster_runs_a_scheduler_and_workers_over_ssh(sshd):
    with SSHCluster(
        ["127.0.0.1", "127.0.0.1", "127.0.0.1"],
        connect_options=sshd,
        worker_options={"nthreads": 2, "memory_limit": "1GiB"},
        scheduler_options={"idle_timeout": "1 minute"},
        remote_python=PYTHON,
    ) as cluster:
        assert cluster.scheduler_address.startswith("tcp://127.0.0.1:")
        assert sorted(cluster.workers) == [0, 1]
        with Client(cluster) as client:
            client.wait_for_workers(2, timeout=30)
            info = client.scheduler_info()["workers"]
            assert sorted(w["name"] for w in info.values()) == [0, 1]
            assert {w["nthreads"] for w in info.values()} == {2}
            assert all(w["nanny"] for w in info.values())  # (Nannies by default)
            assert sum(client.gather(client.map(square, range(20)))) == sum(
                x * x for x in range(20)
            )
            assert len(set(client.gather(client.map(where, range(20), pure=False)))) >= 1
        poll(lambda: len(cluster.scheduler_info["workers"]) == 2)
        assert cluster.dashboard_link == ""  # (the scheduler serves none)
        text = repr(cluster)
        assert text.startswith("SSHCluster(") and "workers=2, threads=4" in text
        logs = cluster.get_logs()
        assert "Scheduler at:" in logs["Scheduler"]
        pids = {p.pid for p in children()}
        assert pids  # sshd's sessions, the remote servers and their worker processes
    assert cluster.status == "closed"
    poll(lambda: [p.pid for p in children()] == [p.pid for p in children() if p.name() == "sshd"])


def test_ssh_worker_that_ends_leaves_the_cluster(sshd):
    with (
        SSHCluster(
            ["127.0.0.1", "127.0.0.1", "127.0.0.1"],
            connect_options=sshd,
            worker_class="distributary.Worker",
            worker_options={"nthreads": 1},
            remote_python=PYTHON,
        ) as cluster,
        Client(cluster) as client,
    ):
        client.wait_for_workers(2, timeout=30)
        address = cluster.workers[1].address
        client.retire_workers([address], close_workers=True)
        poll(lambda: sorted(cluster.workers) == [0], timeout=20)
        poll(lambda: len(cluster.scheduler_info["workers"]) == 1)
        assert client.submit(square, 3).result() == 9


def test_ssh_cluster_bad_input_is_a_clear_error(sshd, tmp_path):
    with pytest.raises(ValueError, match="at least two hosts"):
        SSHCluster(["127.0.0.1"], connect_options=sshd)
    with pytest.raises(ValueError, match="connect_options has 1 entries for 2 hosts"):
        SSHCluster(["127.0.0.1", "127.0.0.1"], connect_options=[sshd])
    with pytest.raises(OSError, match="Could not connect to 127.0.0.1 over SSH"):
        SSHCluster(
            ["127.0.0.1", "127.0.0.1"],
            connect_options={**sshd, "client_keys": [], "agent_path": None},
            remote_python=PYTHON,
        )
    with pytest.raises(RuntimeError, match="exited .* before it started"):
        SSHCluster(
            ["127.0.0.1", "127.0.0.1"],
            connect_options=sshd,
            remote_python=str(tmp_path / "no-such-python"),
        )
    # a worker that cannot start: its own error, and nothing left running
    with pytest.raises(RuntimeError, match="nthreadz"):
        SSHCluster(
            ["127.0.0.1", "127.0.0.1"],
            connect_options=sshd,
            worker_options={"nthreadz": 1},
            remote_python=PYTHON,
        )
    poll(lambda: all(p.name() == "sshd" for p in children()))
