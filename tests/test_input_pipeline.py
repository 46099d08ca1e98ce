"""The input pipeline as an operator meets it: the data-wait share on each epoch's
console line, and the GPU decode path (its logic on the CPU here; on CUDA with the
`gpu` marker)."""

from __future__ import annotations

import logging

from sqz import metrics
from sqz.distributed.train import EpochWatcher


def test_each_epoch_line_shows_the_share_of_time_spent_waiting_for_data(tmp_path, caplog):
    run_url = str(tmp_path / "run")
    row = {"run_id": "r", "epoch": 0, "lr": 1e-3, "loss": 1.0, "top1": 50.0, "top5": 90.0, "images_per_s": 400.0,
           "data_wait_s": 3.0, "wall_s": 25.0}  # fmt: skip
    watcher = EpochWatcher(run_url, epochs=2)
    caplog.set_level(logging.INFO, logger="sqz")
    metrics.write_rows(run_url, "train_epochs", [row], writer_id="epoch-0000")
    watcher.poll()
    lines = [r.getMessage() for r in caplog.records if r.name == "sqz.train"]
    assert len(lines) == 1 and "400 img/s, data wait 12%, 25.0 s" in lines[0], lines


# ---------------------------------------------------------------- GPU decode path

import dataclasses  # noqa: E402
import os  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from imagegen import synthetic_wnids, write_imagenet_folder  # noqa: E402

from sqz.config import DataConfig  # noqa: E402
from sqz.data import load_split, make_loader  # noqa: E402

WNIDS = synthetic_wnids(2)
SIZE = 48


@pytest.fixture(scope="module")
def mixed_folder(tmp_path_factory):
    """JPEGs, one PNG, and the damaged files both paths must skip alike."""
    from PIL import Image

    root = str(tmp_path_factory.mktemp("mixed"))
    write_imagenet_folder(root, classes=WNIDS, per_class=3, size=(320, 240))
    good = open(os.path.join(root, "train", WNIDS[0], f"{WNIDS[0]}_train_0.JPEG"), "rb").read()
    damaged = {"truncated.JPEG": good[: len(good) // 2], "empty.JPEG": b"", "garbage.JPEG": b"not a jpeg at all"}
    for split in ("train", "val"):
        for name, data in damaged.items():
            with open(os.path.join(root, split, WNIDS[1], name), "wb") as f:
                f.write(data)
        Image.new("RGB", (300, 200), (10, 200, 30)).save(os.path.join(root, split, WNIDS[0], "green.png"))
    return root


def _pass(loader):
    labels = [y for _, targets in loader for y in targets.tolist()]
    return sorted(labels), sorted(s.path for s in loader.skipped)


def _gpu_path_matches_the_cpu_path(root, device):
    config = DataConfig(url=root, image_size=SIZE, batch_size=4)
    for split in ("train", "val"):
        cpu = make_loader(load_split(config, split), batch_size=4)
        gpu = make_loader(load_split(config, split, decode="gpu"), batch_size=4, device=device)
        cpu_labels, cpu_skipped = _pass(cpu)
        gpu_labels, gpu_skipped = _pass(gpu)
        assert gpu_labels == cpu_labels and len(cpu_labels) == 7  # 6 JPEGs + the PNG
        assert gpu_skipped == cpu_skipped == [f"{WNIDS[1]}/{n}" for n in ("empty.JPEG", "garbage.JPEG", "truncated.JPEG")]
    # Evaluation crops are deterministic: the GPU path's agree with the CPU path's full
    # decode (the GPU path resizes float pixels, the CPU path rounds to uint8 first).
    full_decode = load_split(config, "val")
    full_decode.transform = dataclasses.replace(full_decode.transform, reduced_decode=False)
    cpu = torch.cat([x for x, _ in make_loader(full_decode, batch_size=4)])
    gpu = torch.cat([x.cpu() for x, _ in make_loader(load_split(config, "val", decode="gpu"), batch_size=4, device=device)])
    assert gpu.shape == cpu.shape == (7, 3, SIZE, SIZE)
    assert (gpu - cpu).abs().mean().item() * 0.226 * 255 < 1.0  # in 0..255 levels (std ~0.226)


def test_gpu_decode_path_logic_on_the_cpu(mixed_folder):
    _gpu_path_matches_the_cpu_path(mixed_folder, "cpu")


def test_gpu_decode_is_refused_without_cuda(monkeypatch):
    from sqz.data.gpu import check_gpu_decode

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="^--decode gpu: CUDA is not available"):
        check_gpu_decode()


@pytest.mark.gpu
def test_gpu_decode_path_on_cuda(mixed_folder):
    _gpu_path_matches_the_cpu_path(mixed_folder, "cuda")
    config = DataConfig(url=mixed_folder, image_size=SIZE, batch_size=4)
    for decode in ("cpu", "gpu"):  # both feed the GPU bf16, channels_last batches
        loader = make_loader(load_split(config, "train", decode=decode), batch_size=4, device="cuda",
                             dtype=torch.bfloat16, channels_last=True, num_workers=2)  # fmt: skip
        inputs, targets = next(iter(loader))
        assert inputs.is_cuda and targets.is_cuda and inputs.dtype == torch.bfloat16
        assert inputs.is_contiguous(memory_format=torch.channels_last)
