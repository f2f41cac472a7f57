"""The shipped pretrained weights: `pretrained:NAME` loads them and checks their sha256."""

import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

import models

README = Path(models.PRETRAINED_DIR) / "README.md"


@pytest.mark.parametrize("name", sorted(models.PRETRAINED))
def test_shipped_file_matches_its_checksum_in_code_and_readme(name):
    path = models.pretrained_path(f"pretrained:{name}", "resnet20")
    assert os.path.getsize(path) < 5 * 2**20  # the size the repository can carry
    digest = models.file_sha256(path)
    assert digest == models.PRETRAINED_SHA256[name]
    # The README's table for NAME states the same sha256.
    section = README.read_text().split(f"## {name}\n", 1)[1].split("\n## ", 1)[0]
    stated = re.search(r"\| sha256 \| `([0-9a-f]{64})` \|", section)
    assert stated and stated.group(1) == digest


@pytest.mark.parametrize("name", sorted(models.PRETRAINED))
def test_pretrained_name_loads_the_backbone_and_a_fresh_head(name):
    import h5py

    path = models.pretrained_path(f"pretrained:{name}")
    model = models.build("resnet20", 3, weights=f"pretrained:{name}")
    with h5py.File(path, "r") as f:
        stem = f["layers/conv2d/vars/0"][()]
    np.testing.assert_array_equal(model.get_layer("stem_conv").kernel.numpy(), stem)
    assert model.get_layer("head_logits").kernel.shape == (64, 3)


def test_two_shipped_models_differ():
    a, b = (
        models.file_sha256(models.pretrained_path(f"pretrained:{n}")) for n in models.PRETRAINED
    )
    assert a != b


def test_damaged_file_is_one_clear_error(tmp_path, monkeypatch):
    name = "resnet20_fashion_mnist"
    copy = tmp_path / f"{name}.weights.h5"
    shutil.copy(models.pretrained_path(f"pretrained:{name}"), copy)
    data = bytearray(copy.read_bytes())
    data[len(data) // 2] ^= 0x01  # one flipped bit
    copy.write_bytes(bytes(data))
    monkeypatch.setattr(models, "PRETRAINED_DIR", str(tmp_path))
    with pytest.raises(
        ValueError, match=rf"--weights=pretrained:{name}: .* has sha256 [0-9a-f]{{64}}"
    ):
        models.build("resnet20", 10, weights=f"pretrained:{name}")
    copy.unlink()
    with pytest.raises(ValueError, match="is missing from this installation"):
        models.pretrained_path(f"pretrained:{name}")
