"""The ``xaiscope evaluate`` command: tidy Parquet table, clear errors, exit code 2."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from xaiscope.cli import main


@pytest.fixture
def npz(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.random((6, 1, 16, 16)).astype(np.float32)
    y = np.array([0, 1, 0, 1, 0, 1])
    masks = np.zeros((6, 16, 16), bool)
    masks[:, 4:10, 5:11] = True
    with_masks = tmp_path / "m.npz"
    np.savez(with_masks, x=x, y=y, masks=masks)
    without = tmp_path / "n.npz"
    np.savez(without, x=x, y=y)
    return with_masks, without


def test_evaluate_writes_tidy_table(npz, tmp_path):
    out = tmp_path / "res.parquet"
    main(
        [
            "evaluate",
            "--model",
            "small_cnn",
            "--data",
            str(npz[0]),
            "--methods",
            "saliency,sobel",
            "--metrics",
            "pointing_game,deletion,sparseness",
            "--out",
            str(out),
            "--batch-size",
            "32",
            "--param",
            "deletion.steps=5",
        ]
    )
    df = pd.read_parquet(out)
    assert len(df) == 6 * 2 * 3
    assert {"image_id", "label", "target", "method", "metric", "value", "settings"} <= set(df.columns)
    row = df[(df.metric == "deletion")].iloc[0]
    assert json.loads(row.settings)["metric"]["steps"] == 5
    assert set(df.method) == {"saliency", "sobel"}


@pytest.mark.parametrize(
    "args,msg",
    [
        (["--metrics", "pointing_gme"], "Unknown metric 'pointing_gme'"),
        (["--metrics", "pointing_game", "--nomask"], "needs masks"),
        (["--metrics", "deletion", "--param", "deletion.stepz=3"], "has no setting 'stepz'"),
    ],
)
def test_evaluate_errors_exit_2(npz, tmp_path, capsys, args, msg):
    data = npz[1] if "--nomask" in args else npz[0]
    args = [a for a in args if a != "--nomask"]
    out = tmp_path / "bad.parquet"
    with pytest.raises(SystemExit) as e:
        main(
            ["evaluate", "--model", "small_cnn", "--data", str(data), "--methods", "saliency", "--out", str(out), *args]
        )
    assert e.value.code == 2
    assert msg in capsys.readouterr().err.replace("\n", " ")
    assert not out.exists()
