"""Client.upload_file: a file saved on the scheduler and on every worker (processes under
nannies, and workers in this process), importable by tasks; errors come back as
themselves and the workers stay up."""

from __future__ import annotations

import importlib
import os
import sys
import uuid
import zipfile

import pytest
from conftest import poll

from distributary import Client, LocalCluster, UploadFile


@pytest.fixture
def module():
    """A module name of its own; forgotten in this process afterwards (a LocalCluster's
    scheduler, and workers in this process, import what is uploaded here)."""
    name = f"uploaded_{uuid.uuid4().hex[:10]}"
    yield name
    sys.modules.pop(name, None)


@pytest.fixture
def processes():
    with (
        LocalCluster(n_workers=1, threads_per_worker=1, processes=True) as cluster,
        Client(cluster) as client,
    ):
        yield cluster, client


def write(path, text: str) -> str:
    path.write_text(text)
    return str(path)


def call_get(name: str):
    return importlib.import_module(name).get()


def imported(name: str) -> bool:
    return name in sys.modules


def saved(filename: str, dask_worker) -> bool:
    return os.path.isfile(os.path.join(dask_worker.local_directory, filename))


def saved_on_scheduler(filename: str, dask_scheduler) -> bool:
    return os.path.isfile(os.path.join(dask_scheduler.local_directory, filename))


def local_directory(dask_worker) -> str:
    return dask_worker.local_directory


def pid() -> int:
    return os.getpid()


@pytest.mark.timeout(60)
def test_a_py_file_reaches_the_scheduler_and_every_worker_process_now_and_later(
    processes, tmp_path, module
):
    cluster, c = processes
    path = write(tmp_path / f"{module}.py", "VALUE = 1\n\ndef get():\n    return VALUE\n")
    (worker,) = cluster.scheduler.workers
    assert c.upload_file(path) == {worker: {"status": "OK"}}
    assert c.submit(call_get, module).result() == 1
    assert c.run(saved, f"{module}.py") == {worker: True}  # in the worker's directory
    assert c.run_on_scheduler(saved_on_scheduler, f"{module}.py")
    assert imported(module)  # (by the scheduler, which is in this process)
    # Uploaded again, changed: imported again.
    write(tmp_path / f"{module}.py", "VALUE = 2\n\ndef get():\n    return VALUE\n")
    c.upload_file(path)
    assert c.submit(call_get, module, pure=False).result() == 2
    # A worker process that starts later has it too (the latest).
    cluster.scale(2)
    c.wait_for_workers(2)
    assert list(c.run(call_get, module).values()) == [2, 2]


@pytest.mark.timeout(60)
def test_load_false_saves_it_on_sys_path_without_importing_it(processes, tmp_path, module):
    cluster, c = processes
    path = write(tmp_path / f"{module}.py", "def get():\n    return 'imported later'\n")
    c.upload_file(path, load=False)
    assert list(c.run(imported, module).values()) == [False]
    assert not imported(module)
    assert c.submit(call_get, module).result() == "imported later"
    assert list(c.run(imported, module).values()) == [True]


@pytest.mark.timeout(60)
def test_zip_and_egg_archives_are_put_on_sys_path(processes, tmp_path, module):
    cluster, c = processes
    for ext, value in ((".zip", "zipped"), (".egg", "egged")):
        package = f"{module}{ext[1:]}"
        archive = tmp_path / f"{package}{ext}"
        with zipfile.ZipFile(archive, "w") as z:
            z.writestr(f"{package}/__init__.py", f"def get():\n    return {value!r}\n")
        c.upload_file(str(archive))
        assert c.submit(call_get, package).result() == value
        sys.modules.pop(package, None)


@pytest.mark.timeout(60)
def test_a_syntax_error_is_raised_as_itself_and_the_workers_stay_up(processes, tmp_path, module):
    cluster, c = processes
    path = write(tmp_path / f"{module}.py", "def broken(:\n    pass\n")
    before = c.run(pid)
    with pytest.raises(SyntaxError, match="line 1") as info:
        c.upload_file(path)  # (the scheduler loads it first)
    assert info.value.filename.endswith(f"{module}.py")
    # Sent as a worker plugin: the worker processes raise it.
    with pytest.raises(SyntaxError, match="line 1"):
        c.register_plugin(UploadFile(path))
    assert c.run(pid) == before  # the same processes, still up
    assert c.submit(pid).result() == next(iter(before.values()))
    with pytest.raises(FileNotFoundError, match="no-such-file.py"):
        c.upload_file(str(tmp_path / "no-such-file.py"))
    with pytest.raises(TypeError, match="unexpected keyword argument 'bogus'"):
        c.upload_file(path, bogus=True)


@pytest.mark.timeout(60)
def test_workers_in_this_process_and_sys_path_afterwards(tmp_path, module):
    path = write(tmp_path / f"{module}.py", "def get():\n    return 'here'\n")
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=False) as cluster,
        Client(cluster) as c,
    ):
        c.upload_file(path)
        assert c.gather(c.map(call_get, [module] * 4, pure=False)) == ["here"] * 4
        directories = [*c.run(local_directory).values(), cluster.scheduler.local_directory]
        assert all(d in sys.path for d in directories)
    # The directories are gone, and off sys.path.
    poll(lambda: not any(os.path.exists(d) for d in directories))
    assert not set(directories) & set(sys.path)
