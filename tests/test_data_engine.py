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
