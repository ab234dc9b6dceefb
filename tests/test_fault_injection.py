"""Fault injection (issue 28 item 8): the failures a careful user or an attacker provokes, kept from
coming back. Each case plants the fault (a stale lock, a crafted file...) and checks the outcome:
no hang, no code run, an error naming the file and the fix. Fast enough for CI (seconds each).

The training / checkpoint / study cases (kill at checkpoint moments, disk full, symlinked outputs)
join this module once those parts move (see issue 28).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from helpers import require_backend

REPO = Path(__file__).resolve().parents[1]


def _python(code: str, env: dict, timeout: float, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, timeout=timeout,
                          capture_output=True, text=True, **kwargs)


# -- item 6: an interrupted extension build ------------------------------------------------------

@pytest.fixture
def built_copy(tmp_path):
    """$TORCH_EXTENSIONS_DIR holding a copy of this environment's built cpu extension (so loading it
    is a no-op build of seconds), and the environment that points there."""
    require_backend("cpu", torch.device("cpu"))
    from magnn.backends import cpu

    source = cpu.build_directory()
    root = tmp_path / "extensions"
    shutil.copytree(source, root / source.name, ignore=shutil.ignore_patterns("lock", "magnn-build.lock"))
    env = {**os.environ, "TORCH_EXTENSIONS_DIR": str(root), "PYTHONPATH": f"{REPO}{os.pathsep}"
           + os.environ.get("PYTHONPATH", "")}
    return root / source.name, env


BUILD = """
    import warnings
    warnings.simplefilter("always")
    from magnn.backends import cpu
    print(cpu.build())
"""


def test_planted_stale_build_lock_is_cleared_within_seconds(built_copy):
    # what kill -9 during `magnn build-ext` leaves: torch's FileBaton "lock" with no build behind it
    directory, env = built_copy
    lock = directory / "lock"
    lock.touch()
    old = time.time() - 3600
    os.utime(lock, (old, old))
    try:
        result = _python(BUILD, env, timeout=60)  # a no-op build loads in seconds
    except subprocess.TimeoutExpired:
        pytest.fail(f"the build hung on the stale lock {lock}")
    assert result.returncode == 0, result.stderr
    assert not lock.exists()
    assert f"removed the stale C++ extension build lock {lock}" in result.stderr


def test_build_killed_holding_the_locks_does_not_block_the_next(built_copy):
    # a build killed (SIGKILL) while it held both magnn's lock and torch's: the kernel drops the first,
    # the second stays on disk; the next build must clear it, not wait forever
    directory, env = built_copy
    killed = _python(f"""
        import os, signal
        from pathlib import Path
        from magnn.backends import cpu
        directory = Path({str(directory)!r})
        with cpu.build_guard(directory):
            (directory / "lock").touch()  # as cpp_extension.load does first
            os.kill(os.getpid(), signal.SIGKILL)
    """, env, timeout=60)
    assert killed.returncode == -9
    assert (directory / "lock").exists()
    result = _python(BUILD, env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert not (directory / "lock").exists()
    assert "removed the stale C++ extension build lock" in result.stderr


def test_a_live_build_is_waited_for_and_named(built_copy):
    # a build that is really running keeps its lock; the waiter says whose build it waits for
    from magnn.backends.cpu import BuildLockWarning, build_guard

    directory, env = built_copy
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import time
        from pathlib import Path
        from magnn.backends import cpu
        directory = Path({str(directory)!r})
        with cpu.build_guard(directory):
            (directory / "lock").touch()
            print("building", flush=True)
            time.sleep(2.0)
            (directory / "lock").unlink()
    """)], env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "building"
        started = time.monotonic()
        with pytest.warns(BuildLockWarning, match=rf"waiting for the C\+\+ extension build of process {holder.pid}\b"):
            with build_guard(directory, report_after=0.2):
                waited = time.monotonic() - started
                assert not (directory / "lock").exists()  # the live build's lock was left to it
        assert waited > 0.5
    finally:
        holder.wait(timeout=60)
