"""Untrusted files run nothing; xaiscope opens no network connection.

Every "malicious" file here carries a pickle whose ``__reduce__`` would create a marker
file when unpickled. The tests assert the marker never appears unless the user says
``--trust-model`` (which proves the payload is live and the flag is the only gate).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from cli_helpers import assert_user_error, run_cli
from reliability_helpers import make_folder, make_npz
from xaiscope import models
from xaiscope.errors import ConfigError, ModelError
from xaiscope.run.config import load_config


class Payload:
    """Unpickling this creates ``marker`` (stands for any code an attacker wants to run)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


@pytest.fixture
def evil(tmp_path):
    marker = tmp_path / "PWNED"
    path = tmp_path / "evil.pt"
    torch.save({"weight": Payload(marker)}, path)
    data = make_folder(tmp_path / "data", n=2)
    assert not marker.exists()
    return path, marker, data


def test_payload_is_live_when_trusted(evil):
    """Control: with full unpickling the payload does run (so its absence below means something)."""
    path, marker, _ = evil
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_malicious_weights_file_runs_nothing(evil, tmp_path, capsys):
    path, marker, data = evil
    r = run_cli(
        capsys,
        "explain",
        "--model",
        "small_cnn",
        "--data",
        data,
        "--out",
        tmp_path / "o",
        "--weights",
        path,
        "--methods",
        "saliency",
    )
    assert_user_error(
        r,
        r"The weights file \S*evil\.pt is not a plain state dict that loads with weights_only=True "
        r"\(UnpicklingError\); a pickled whole model is loaded only as --model with --trust-model\.",
    )
    assert not marker.exists()
    # --trust-model never applies to --weights
    r = run_cli(
        capsys,
        "explain",
        "--model",
        "small_cnn",
        "--data",
        data,
        "--out",
        tmp_path / "o",
        "--weights",
        path,
        "--methods",
        "saliency",
        "--trust-model",
    )
    assert r.code == 2 and not marker.exists()


def test_malicious_model_file_needs_trust_model(evil, tmp_path, capsys):
    path, marker, data = evil
    for cmd in (
        ["explain", "--methods", "saliency", "--out", tmp_path / "o"],
        ["evaluate", "--methods", "saliency", "--metrics", "sparseness", "--out", tmp_path / "s.parquet"],
    ):
        r = run_cli(capsys, cmd[0], "--model", path, "--data", data, *cmd[1:])
        assert_user_error(
            r,
            r"The file \S*evil\.pt holds a pickled model, which can run arbitrary code when loaded; "
            r"pass --trust-model if you trust its author\.",
        )
        assert not marker.exists()
    # in a run config too
    cfg = tmp_path / "run.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "out": str(tmp_path / "run"),
                "data": {"path": str(data)},
                "models": [{"name": "evil", "spec": str(path)}],
                "methods": ["saliency"],
            }
        )
    )
    assert_user_error(run_cli(capsys, "run", cfg, "--no-report"), r"evil\.pt holds a pickled model.*--trust-model")
    assert not marker.exists()
    # the flag is the gate: with it the payload runs (then the file is refused: it holds no model)
    r = run_cli(
        capsys,
        "explain",
        "--model",
        path,
        "--data",
        data,
        "--methods",
        "saliency",
        "--out",
        tmp_path / "o",
        "--trust-model",
    )
    assert marker.exists() and r.code == 2


def test_malicious_file_with_a_sidecar_loads_weights_only(evil, tmp_path):
    """A ``model.pt`` with an ``xaiscope train`` sidecar is read as weights: never unpickled."""
    path, marker, _ = evil
    (tmp_path / "evil.json").write_text('{"arch": "small_cnn", "arch_kwargs": {"width": 4}}')
    with pytest.raises(ModelError, match="weights_only=True"):
        models.load(str(path), trust_model=True)
    assert not marker.exists()


def test_npz_with_pickled_object_array_runs_nothing(tmp_path, capsys):
    marker = tmp_path / "PWNED"
    obj = np.empty(2, dtype=object)
    obj[0] = Payload(marker)
    np.savez(tmp_path / "evil.npz", x=np.zeros((2, 1, 4, 4), np.float32), y=np.array([0, 1]), ids=obj)
    r = run_cli(
        capsys,
        "explain",
        "--model",
        "small_cnn",
        "--data",
        tmp_path / "evil.npz",
        "--out",
        tmp_path / "o",
        "--methods",
        "saliency",
    )
    assert_user_error(r, r"The data file \S*evil\.npz is not a readable NPZ file \(ValueError\)\.")
    assert not marker.exists()


def test_yaml_python_tags_are_refused(tmp_path, capsys):
    marker = tmp_path / "PWNED"
    cfg = tmp_path / "config.yaml"
    cfg.write_text(
        f"out: !!python/object/apply:os.system ['touch {marker}']\ndata: {{path: x}}\n"
        "models: [small_cnn]\nmethods: [saliency]\n"
    )
    with pytest.raises(ConfigError, match=r"config\.yaml is not valid YAML at line 1"):
        load_config(cfg)
    assert_user_error(
        run_cli(capsys, "run", cfg), r"The config file \S*config\.yaml is not valid YAML at line 1, column 6\."
    )
    data = make_folder(tmp_path / "data", n=2)
    r = run_cli(
        capsys,
        "explain",
        "--model",
        "small_cnn",
        "--data",
        data,
        "--out",
        tmp_path / "o",
        "--methods",
        "saliency",
        "-p",
        f"saliency.abs=!!python/object/apply:os.system ['touch {marker}']",
    )
    assert_user_error(r, r"The value in [\"']saliency\.abs=!!python/object/apply:os\.system .*[\"'] cannot be parsed\.")
    assert not marker.exists()


SITECUSTOMIZE = """
import os, socket

_LOG = os.environ["XAISCOPE_NET_LOG"]


def _refuse(*args, **kwargs):
    with open(_LOG, "a") as f:
        f.write(repr(args[:2]) + "\\n")
    raise OSError("network access is forbidden in this test")


socket.socket.connect = _refuse
socket.socket.connect_ex = _refuse
socket.create_connection = _refuse
socket.getaddrinfo = _refuse
"""

DRIVER = """
import sys
from xaiscope.cli import main

codes = []
try:
    main(["explain", "--model", "fixture_models:seeded_cnn", "--data", sys.argv[1], "--out", sys.argv[2],
          "--methods", "saliency,gradcam,integrated_gradients", "--overlays", "2"])
except SystemExit as e:
    codes.append(e.code or 0)
else:
    codes.append(0)
try:
    main(["run", sys.argv[3]])
except SystemExit as e:
    codes.append(e.code or 0)
else:
    codes.append(0)
print("codes", codes)
sys.exit(max(codes))
"""


def test_no_network_connection_in_explain_and_run(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    log = tmp_path / "net.log"
    data = make_npz(tmp_path / "d.npz", n=6)
    cfg = tmp_path / "run.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "out": str(tmp_path / "run"),
                "unit_images": 3,
                "data": {"path": str(data)},
                "models": [{"name": "cnn", "spec": "fixture_models:seeded_cnn"}],
                "methods": ["saliency", "gradcam"],
                "metrics": ["sparseness", "pointing_game", {"name": "deletion", "hparams": {"steps": 4}}],
                "analyses": {"ranking": {"draws": 100}, "sensitivity": None},
                "report": {"examples": 2},
            }
        )
    )
    tests_dir = str(Path(__file__).parent)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(site), tests_dir]),
        "XAISCOPE_NET_LOG": str(log),
        "OMP_NUM_THREADS": "1",
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(DRIVER), str(data), str(tmp_path / "ex"), str(cfg)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "codes [0, 0]" in proc.stdout
    assert not log.exists(), log.read_text()  # nothing even tried to connect
    assert (tmp_path / "ex" / "gradcam.npz").exists()
    assert (tmp_path / "run" / "results.parquet").exists() and (tmp_path / "run" / "report.html").exists()
    # the sitecustomize really was active in that process
    probe = subprocess.run(
        [sys.executable, "-c", "import socket; socket.create_connection(('127.0.0.1', 9))"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert probe.returncode != 0 and "network access is forbidden" in probe.stderr
