"""IPython kernels in worker processes and in the scheduler's process, and magics that
run code in them.  Each case runs in a fresh interpreter (a kernel or an IPython session
is for the life of its process), on a LocalCluster of worker processes over TCP."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.timeout(120)

_CONNECT = """
    from jupyter_client import BlockingKernelClient

    def ask(info, code):
        kc = BlockingKernelClient()
        kc.load_connection_info(info)
        kc.start_channels()
        try:
            kc.wait_for_ready(timeout=30)
            said = []
            kc.execute_interactive(code, timeout=30, output_hook=lambda m: said.append(m))
            return [m["content"]["data"]["text/plain"] for m in said
                    if m["msg_type"] == "execute_result"]
        finally:
            kc.stop_channels()
"""


def run_python(code: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_CONNECT) + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=100,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_a_kernel_in_each_worker_process_sees_its_worker():
    out = run_python(
        """
        import sys
        from distributary import Client, LocalCluster
        if __name__ == "__main__":
            with LocalCluster(n_workers=2, threads_per_worker=1) as cluster, Client(cluster) as c:
                info = c.start_ipython_workers()
                assert sorted(info) == sorted(cluster.scheduler.workers)
                for address, connection in info.items():
                    assert ask(connection, "worker.address") == [repr(address)]
                assert c.start_ipython_workers() == info  # (one kernel per worker)
                first = sorted(info)[0]
                assert list(c.start_ipython_workers(workers=[first])) == [first]
                assert c.submit(sum, [1, 2]).result() == 3  # (the workers work on)
                print("ok")
        """
    )
    assert out.split()[-1] == "ok"


def test_a_kernel_in_the_scheduler_process_and_magics_in_an_ipython_session():
    out = run_python(
        """
        from IPython.core.interactiveshell import InteractiveShell
        from distributary import Client, LocalCluster
        if __name__ == "__main__":
            with LocalCluster(n_workers=2, threads_per_worker=1) as cluster, Client(cluster) as c:
                shell = InteractiveShell.instance()  # (this process is an IPython session)
                c.start_ipython_workers(magic_names="w_*")
                shell.run_line_magic("w_0", "worker.nthreads")
                shell.run_cell_magic("w_1", "", "x = 40\\nx + 2")
                try:
                    c.start_ipython_workers(magic_names="just-one")
                except ValueError as exc:
                    print("refused:", exc)
        """
    )
    assert "refused: 1 magic name(s) for 2 worker(s)" in out
    assert out.splitlines()[:2] == ["1", "42"]


def test_a_kernel_in_the_scheduler_process():
    out = run_python(
        """
        from distributary import Client, LocalCluster
        if __name__ == "__main__":
            with LocalCluster(n_workers=1, processes=False) as cluster, Client(cluster) as c:
                info = c.start_ipython_scheduler()  # (not an IPython session: no magic)
                assert ask(info, "scheduler.address") == [repr(cluster.scheduler.address)]
                assert c.start_ipython_scheduler() == info
                try:
                    c.start_ipython_workers(qtconsole=True)
                except NotImplementedError as exc:
                    print("refused:", exc)
                print("ok")
        """
    )
    assert "refused: qtconsole= is not supported" in out
    assert out.split()[-1] == "ok"
