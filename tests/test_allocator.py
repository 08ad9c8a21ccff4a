"""glibc's allocator settings: set once per process by the CLI, opt-out by environment."""

from __future__ import annotations

import subprocess
import sys

import pytest

CODE = "from xaiscope.allocator import keep_heap; print(keep_heap(), keep_heap())"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_keep_heap_sets_the_thresholds_once_and_can_be_switched_off():
    import os

    env = {k: v for k, v in os.environ.items() if k != "XAISCOPE_MALLOC"}
    on = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, env=env, check=True)
    assert on.stdout.split() == ["True", "True"]
    off = subprocess.run(
        [sys.executable, "-c", CODE],
        capture_output=True,
        text=True,
        env={**env, "XAISCOPE_MALLOC": "system"},
        check=True,
    )
    assert off.stdout.split() == ["False", "False"]
