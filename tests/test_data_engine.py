import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from sqz import engine
from sqz.config import DataConfig
from sqz.data import check_data_url, load_split
from sqz.models import build_model


def test_digits_split_is_stratified_disjoint_and_rgb(digits_data):
    train, val = load_split(digits_data, "train"), load_split(digits_data, "val")
    assert len(train) + len(val) == 1797
    x, y = train[0]
    assert x.shape == (3, 32, 32) and 0 <= int(y) < 10
    assert set(val.tensors[1].tolist()) == set(range(10))


def test_same_config_same_split(digits_data):
    a, b = load_split(digits_data, "val"), load_split(digits_data, "val")
    assert torch.equal(a.tensors[0], b.tensors[0])


def test_digits_and_split_are_sklearns_and_later_processes_read_them_without_sklearn(tmp_path, monkeypatch):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    from sqz.data import builtin

    monkeypatch.setenv("SQZ_CACHE_DIR", str(tmp_path))
    images, target = builtin.digits_arrays()  # computed and written
    reference = load_digits()
    assert np.array_equal(images, reference.images) and np.array_equal(target, reference.target)
    train_idx, val_idx = builtin._stratified_split(target, 0.2, 0)
    expected_train, expected_val = train_test_split(np.arange(len(target)), test_size=0.2, random_state=0, stratify=target)
    assert np.array_equal(train_idx, np.sort(expected_train)) and np.array_equal(val_idx, np.sort(expected_val))
    assert sorted(name.split("-")[0] for name in os.listdir(tmp_path)) == ["digits", "split"]

    # A new process (a Ray worker, say) reads both from the cache and never imports sklearn.
    val = load_split(DataConfig(url="digits", val_fraction=0.2, seed=0), "val")
    probe = (
        "import sys; from sqz.config import DataConfig; from sqz.data import load_split; "
        "val = load_split(DataConfig(url='digits', val_fraction=0.2, seed=0), 'val'); "
        "print('sklearn' in sys.modules, float(val.tensors[0].sum()), val.tensors[1].tolist())"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, env=os.environ).stdout.split(" ", 2)
    assert out[0] == "False"
    assert float(out[1]) == float(val.tensors[0].sum()) and out[2].strip() == str(val.tensors[1].tolist())


def test_a_damaged_or_unwritable_digits_cache_is_rebuilt_or_skipped(tmp_path, monkeypatch):
    from sqz.data import builtin

    monkeypatch.setenv("SQZ_CACHE_DIR", str(tmp_path / "cache"))
    images, target = builtin.digits_arrays()
    (cached,) = (tmp_path / "cache").iterdir()
    cached.write_bytes(cached.read_bytes()[:100])  # truncated, as by a crash mid-write elsewhere
    again_images, again_target = builtin.digits_arrays()
    assert np.array_equal(again_images, images) and np.array_equal(again_target, target)
    assert np.load(cached, allow_pickle=False)["images"].shape == (1797, 8, 8)  # rewritten whole

    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("SQZ_CACHE_DIR", str(blocker / "cache"))  # cannot be created
    unwritable_images, _ = builtin.digits_arrays()
    assert np.array_equal(unwritable_images, images) and blocker.read_text() == "not a folder"


def test_bad_data_urls_fail_before_work(tmp_path):
    with pytest.raises(ValueError, match="--data: no such dataset folder"):
        check_data_url(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="no train/ folder"):
        check_data_url(str(tmp_path))
    with pytest.raises(ValueError, match="unsupported scheme"):
        check_data_url("gs://bucket/imagenet")


def test_image_folder_layout(tmp_path):
    from PIL import Image

    for split in ("train", "val"):
        for cls in ("n01", "n02"):
            folder = tmp_path / split / cls
            folder.mkdir(parents=True)
            for i in range(2):
                Image.new("RGB", (40, 40), color=(i * 90, 10, 200)).save(folder / f"{i}.JPEG")
    val = load_split(DataConfig(url=str(tmp_path), image_size=32), "val")
    assert len(val) == 4 and val.classes == ["n01", "n02"] and val[0][0].shape == (3, 32, 32)


@pytest.mark.slow
def test_training_lowers_loss_and_evaluate_counts(digits_data):
    torch.manual_seed(0)
    model = build_model("squeezenet_small", num_classes=10)
    loader = DataLoader(load_split(digits_data, "val"), batch_size=32, shuffle=True)
    optimizer = engine.make_optimizer(model.parameters(), "adamw", lr=1e-3)
    first = engine.train_one_epoch(model, loader, optimizer)
    for _ in range(3):
        last = engine.train_one_epoch(model, loader, optimizer)
    assert last.loss < first.loss and last.images == 360
    result = engine.evaluate(model, DataLoader(load_split(digits_data, "val"), batch_size=100))
    assert result.images == 360 and 0 <= result.top1 <= result.top5 <= 100


def test_poly_lr_decays_to_zero():
    assert engine.poly_lr(0.04, 0, 100) == 0.04
    assert engine.poly_lr(0.04, 50, 100) == pytest.approx(0.02)
    assert engine.poly_lr(0.04, 100, 100) == 0.0
