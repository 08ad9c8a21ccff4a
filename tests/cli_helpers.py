"""Run the ``xaiscope`` command in-process and capture what a user sees."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass

import pytest

from xaiscope.cli import main


@dataclass
class Result:
    code: int
    out: str
    err: str


def run_cli(capsys, *args: str) -> Result:
    """Run ``xaiscope ARGS`` in this process; return exit code, stdout and stderr."""
    capsys.readouterr()
    code = 0
    try:
        main([str(a) for a in args])
    except SystemExit as e:
        code = int(e.code or 0)
    captured = capsys.readouterr()
    return Result(code, captured.out, captured.err)


def exit_code(args: list[str]) -> int:
    """Run ``xaiscope ARGS`` in this process and return its exit code (output not captured)."""
    try:
        main([str(a) for a in args])
    except SystemExit as e:
        return int(e.code or 0)
    return 0


def run_cli_subprocess(*args: str, timeout: int = 300) -> Result:
    """Run ``xaiscope ARGS`` as a separate process (what a user's shell does)."""
    proc = subprocess.run(
        [sys.executable, "-m", "xaiscope.cli", *map(str, args)], capture_output=True, text=True, timeout=timeout
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


def assert_user_error(result: Result, pattern: str) -> None:
    """Exit 2, one sentence matching ``pattern`` on stderr, no traceback."""
    import re

    assert result.code == 2, (result.code, result.out, result.err)
    assert "Traceback" not in result.err and "Traceback" not in result.out
    assert re.search(pattern, " ".join(result.err.split())), result.err


__all__ = ["Result", "assert_user_error", "exit_code", "pytest", "run_cli", "run_cli_subprocess"]
