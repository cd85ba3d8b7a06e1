"""Training reads volumes with the codec's own reader, and carries no command line of its own."""

from __future__ import annotations

import ast
from pathlib import Path

import nibabel as nib
import numpy as np

REPO = Path(__file__).resolve().parents[2]


def test_training_sees_the_stored_integers_the_encoder_sees(tmp_path):
    from codec.train import load_engine_volume

    data = (np.arange(9 * 7 * 5).reshape(9, 7, 5) % 300 - 100).astype(np.int16)
    image = nib.Nifti1Image(data, np.eye(4))
    image.header.set_slope_inter(2.0, -1024.0)  # scaling must not leak into training
    path = tmp_path / "v.nii.gz"
    nib.save(image, str(path))
    zyx, vmin, vmax = load_engine_volume(path)
    assert zyx.dtype == np.int32 and zyx.shape == (5, 7, 9)
    assert np.array_equal(zyx, data.transpose(2, 1, 0)) and (vmin, vmax) == (int(data.min()), int(data.max()))


def test_codec_train_has_no_cli_and_no_loader_of_its_own():
    tree = ast.parse((REPO / "codec" / "train.py").read_text())
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert not imported & {"argparse", "nibabel"}
