"""ImageNet layouts, transforms, Parquet shards (local and S3) and the two read paths,
on real JPEGs generated here (a few classes, ImageNet-like sizes)."""

import io
import json
import logging
import math
import os
import shutil

import numpy as np
import pytest
import torch
from imagegen import synthetic_wnids, write_image, write_imagenet_folder

from sqz import storage
from sqz.config import DataConfig
from sqz.data import (
    CAFFE_MEAN_BGR,
    FolderImages,
    ImageTransform,
    ParquetImages,
    check_data_url,
    load_split,
    make_loader,
    normalize_batch,
    num_classes_of,
    read_manifest,
    scan_split,
)
from sqz.data.prepare import prepare
from sqz.data.transforms import CorruptImageError, decode_image_bytes, decode_resized_crop

WNIDS = synthetic_wnids(3)
SIZE = 64  # crop size: small keeps the tests fast; decode still sees ~320x240 JPEGs


@pytest.fixture(scope="module")
def imagenet_src(tmp_path_factory):
    """train/ and val/ in class folders, with one truncated JPEG, one text file and a
    hidden file among them."""
    root = str(tmp_path_factory.mktemp("imagenet"))
    write_imagenet_folder(root, classes=WNIDS, per_class={"train": 4, "val": 2}, size=(320, 240))
    good = open(os.path.join(root, "train", WNIDS[1], f"{WNIDS[1]}_train_0.JPEG"), "rb").read()
    with open(os.path.join(root, "train", WNIDS[1], "truncated.JPEG"), "wb") as f:
        f.write(good[: len(good) // 3])
    with open(os.path.join(root, "train", WNIDS[2], "notes.txt"), "w") as f:
        f.write("not an image")
    with open(os.path.join(root, "train", WNIDS[0], ".DS_Store"), "wb") as f:
        f.write(b"\0" * 8)
    return root


@pytest.fixture(scope="module")
def prepared_local(imagenet_src, tmp_path_factory):
    dest = str(tmp_path_factory.mktemp("prepared") / "imagenet-pq")
    # A tiny shard size, so even this small set spans several shards.
    manifest = prepare(imagenet_src, dest, shard_mb=0.05, row_group_rows=3, progress=False)
    return dest, manifest


def _folder_rows(root, split):
    index = scan_split(root, split)
    return dict(zip(index.files, index.labels))


def _parquet_rows(url, split):
    import pyarrow.parquet as pq

    rows = {}
    for shard in read_manifest(url)["splits"][split]["shards"]:
        fs, path = storage.resolve(storage.join(url, shard["path"]))
        with fs.open_input_file(path) as f:
            table = pq.read_table(f, columns=["path", "label"])
        rows.update(zip(table.column("path").to_pylist(), table.column("label").to_pylist()))
    return rows


def _labels_through_loader(config, split):
    loader = make_loader(load_split(config, split), batch_size=5)
    labels = [y for _, targets in loader for y in targets.tolist()]
    return sorted(labels), loader.skipped


# ---------------------------------------------------------------- folder layouts


def test_class_order_is_sorted_wnids_and_odd_files_are_counted(imagenet_src):
    index = scan_split(imagenet_src, "train")
    assert index.classes == tuple(WNIDS)
    assert index.non_images == (f"{WNIDS[2]}/notes.txt",)  # .DS_Store is hidden, not a sample
    assert len(index) == 13  # 12 images + the truncated one, found by extension
    assert all(label == WNIDS.index(path.split("/")[0]) for path, label in zip(index.files, index.labels))


def test_corrupt_file_is_skipped_and_counted_not_fatal(imagenet_src):
    labels, skipped = _labels_through_loader(DataConfig(url=imagenet_src, image_size=SIZE), "train")
    assert labels == [0] * 4 + [1] * 4 + [2] * 4
    assert [s.path for s in skipped] == [f"{WNIDS[1]}/truncated.JPEG"]
    assert "truncated" in skipped[0].reason


def test_empty_class_folder_and_missing_split_are_clear_errors(tmp_path):
    write_imagenet_folder(str(tmp_path), classes=WNIDS[:2], per_class=1, size=(40, 30), splits=("train",))
    with pytest.raises(ValueError, match=r"^--data: .* has no val/ folder"):
        check_data_url(str(tmp_path))
    with pytest.raises(ValueError, match="has no val/ folder"):
        scan_split(str(tmp_path), "val")
    os.makedirs(tmp_path / "train" / "n99999999")
    with pytest.raises(ValueError, match=r"^--data: .*train/n99999999/ has no image files"):
        check_data_url(str(tmp_path), splits=("train",))
    with pytest.raises(ValueError, match="n99999999/ has no image files"):
        scan_split(str(tmp_path), "train")


def _flat_val(root, wnid_per_image):
    """val/ILSVRC2012_val_0000000N.JPEG for each wnid given, plus train/ class folders."""
    write_imagenet_folder(root, classes=WNIDS, per_class=1, size=(48, 36), splits=("train",))
    rng = np.random.default_rng(1)
    for number, wnid in enumerate(wnid_per_image, 1):
        write_image(os.path.join(root, "val", f"ILSVRC2012_val_{number:08d}.JPEG"), rng, WNIDS.index(wnid), (48, 36))


def _write_devkit(root, id_to_wnid, truth_ids, extra_synsets=()):
    from scipy.io import savemat

    fields = ["ILSVRC2012_ID", "WNID", "words", "gloss", "num_children", "children", "wordnet_height", "num_train_images"]
    synsets = np.zeros((len(id_to_wnid) + len(extra_synsets), 1), dtype=[(f, "O") for f in fields])
    for row, (ilsvrc_id, wnid) in enumerate(id_to_wnid.items()):
        synsets[row, 0] = (ilsvrc_id, wnid, "words", "gloss", 0, np.zeros(0), 0, 1300)
    for row, (ilsvrc_id, wnid) in enumerate(extra_synsets, len(id_to_wnid)):
        synsets[row, 0] = (ilsvrc_id, wnid, "ancestor", "gloss", 2, np.array([1, 2]), 1, 0)  # not a class
    data = os.path.join(root, "ILSVRC2012_devkit_t12", "data")
    os.makedirs(data)
    savemat(os.path.join(data, "meta.mat"), {"synsets": synsets})
    with open(os.path.join(data, "ILSVRC2012_validation_ground_truth.txt"), "w") as f:
        f.write("".join(f"{i}\n" for i in truth_ids))


@pytest.mark.parametrize("form", ["devkit", "val_labels.txt", "LOC_val_solution.csv"])
def test_flat_val_with_ground_truth(tmp_path, form):
    truth = [WNIDS[2], WNIDS[0], WNIDS[1], WNIDS[2]]
    root = str(tmp_path)
    _flat_val(root, truth)
    if form == "devkit":
        # The devkit numbers classes in its own order, not by sorted wnid: id 1 is the
        # last wnid here, so using the ids as labels would be wrong.
        id_of = {WNIDS[2]: 1, WNIDS[0]: 2, WNIDS[1]: 3}
        _write_devkit(root, {i: w for w, i in id_of.items()}, [id_of[w] for w in truth], extra_synsets=[(4, "n09999999")])
    elif form == "val_labels.txt":
        with open(os.path.join(root, form), "w") as f:
            f.write("# file wnid\n" + "".join(f"ILSVRC2012_val_{i:08d}.JPEG {w}\n" for i, w in enumerate(truth, 1)))
    else:
        with open(os.path.join(root, form), "w") as f:
            f.write("ImageId,PredictionString\n")
            f.write("".join(f"ILSVRC2012_val_{i:08d},{w} 1 2 30 40 {w} 5 6 7 8\n" for i, w in enumerate(truth, 1)))
    check_data_url(root)
    index = scan_split(root, "val")
    assert index.labels == tuple(WNIDS.index(w) for w in truth)
    val = load_split(DataConfig(url=root, image_size=32), "val")
    assert isinstance(val, FolderImages) and [val[i][1] for i in range(4)] == [2, 0, 1, 2]


def test_flat_val_without_ground_truth_or_with_gaps_is_a_clear_error(tmp_path):
    root = str(tmp_path)
    _flat_val(root, [WNIDS[0], WNIDS[1]])
    with pytest.raises(ValueError, match=r"^--data: .*no ground truth.*val_labels.txt"):
        check_data_url(root)
    with open(os.path.join(root, "val_labels.txt"), "w") as f:
        f.write(f"ILSVRC2012_val_00000001.JPEG {WNIDS[0]}\n")
    with pytest.raises(ValueError, match="no label for 1 file"):
        scan_split(root, "val")
    os.remove(os.path.join(root, "val_labels.txt"))
    _write_devkit(root, {1: WNIDS[0], 2: WNIDS[1]}, [1])  # one line for two images
    with pytest.raises(ValueError, match="image 2, but the ground truth has 1 lines"):
        scan_split(root, "val")


# ---------------------------------------------------------------- transforms


def test_caffe_convention_is_bgr_minus_mean_in_0_255():
    red = torch.zeros(1, 3, 4, 4, dtype=torch.uint8)
    red[:, 0] = 255  # RGB red
    caffe = normalize_batch(red, "caffe")
    assert caffe[0, :, 0, 0].tolist() == [-CAFFE_MEAN_BGR[0], -CAFFE_MEAN_BGR[1], 255 - CAFFE_MEAN_BGR[2]]
    tv = normalize_batch(red, "torchvision")
    assert tv[0, :, 0, 0].tolist() == pytest.approx([(1 - 0.485) / 0.229, -0.456 / 0.224, -0.406 / 0.225])


def test_eval_crops_follow_each_convention():
    # A 400x300 image whose right quarter is bright.
    image = torch.zeros(3, 300, 400, dtype=torch.uint8)
    image[:, :, 300:] = 200
    tv = ImageTransform(train=False, image_size=224).crop(image)
    caffe = ImageTransform(train=False, image_size=227, normalization="caffe").crop(image)
    assert tv.shape == (3, 224, 224) and caffe.shape == (3, 227, 227)
    # torchvision keeps the aspect (300 -> 256 high, 341 wide, centre 224 from column 58):
    # the quarter starts at 256 - 58, 26 columns from the right. Caffe warps to 256x256
    # (centre 227 from column 14): it starts at 192 - 14, 49 columns from the right.
    assert int((tv[0, 112] > 100).sum()) == 26 and int((caffe[0, 113] > 100).sum()) == 49
    train = ImageTransform(train=True, image_size=64)
    assert train.crop(image).shape == (3, 64, 64) and train.crop(image).dtype == torch.uint8


# ---------------------------------------------------------------- reduced-size decode

# How far a crop decoded at 1/2, 1/4 or 1/8 scale may be from the same box of the full
# decode, resized the same way (0..255 levels). Measured on these images and on two real
# photos (scikit-learn's samples): mean absolute difference per crop <= 1.4 levels at
# 1/8 on average, 3.0 at worst; PSNR >= 34 dB.
MAX_MEAN_ABS_DIFF, MIN_PSNR_DB = 3.5, 32.0


def _jpeg_bytes(tmp_path, size, label=0, seed=0):
    path = str(tmp_path / f"big-{label}-{seed}.JPEG")
    write_image(path, np.random.default_rng(seed), label, size)
    return open(path, "rb").read()


def test_reduced_decode_crops_agree_with_the_full_decode(tmp_path):
    from torchvision.transforms.v2 import functional as F

    generator = torch.Generator().manual_seed(0)
    by_scale = {}
    for label in range(3):
        data = _jpeg_bytes(tmp_path, (1000, 750), label)
        full = decode_image_bytes(data)  # the reference path: full decode, torchvision's resize
        for _ in range(40):
            side = int(torch.randint(SIZE, 750, (1,), generator=generator))
            width = min(1000, round(side * (0.75 + 0.58 * float(torch.rand(1, generator=generator)))))
            top = int(torch.randint(0, 750 - side + 1, (1,), generator=generator))
            left = int(torch.randint(0, 1000 - width + 1, (1,), generator=generator))
            reference = F.resized_crop(full, top, left, side, width, [SIZE, SIZE], antialias=True).float()
            crop = decode_resized_crop(data, (top, left, side, width), SIZE)
            assert crop.shape == (3, SIZE, SIZE) and crop.dtype == torch.uint8
            scale = next(s for s in (8, 4, 2, 1) if min(side, width) >= s * SIZE)
            diff = (crop.float() - reference).abs().mean().item()
            psnr = 10 * math.log10(255**2 / max(((crop.float() - reference) ** 2).mean().item(), 1e-12))
            by_scale.setdefault(scale, []).append((diff, psnr))
    assert set(by_scale) == {1, 2, 4, 8}  # every DCT scale exercised
    assert all(diff == 0 for diff, _ in by_scale[1])  # full size: the reference path itself
    for scale in (2, 4, 8):
        assert max(d for d, _ in by_scale[scale]) <= MAX_MEAN_ABS_DIFF, (scale, by_scale[scale])
        assert min(p for _, p in by_scale[scale]) >= MIN_PSNR_DB, (scale, by_scale[scale])


def test_reduced_and_full_decode_refuse_the_same_corrupt_bytes(tmp_path):
    good = _jpeg_bytes(tmp_path, (640, 480))
    damaged = {"empty": b"", "not an image": b"plain text, no image", "truncated": good[: len(good) // 3],
               "header only": good[:600]}  # fmt: skip
    for reduced in (True, False):
        # 16 px crops: every crop and the eval resize take the 1/8 path where they can.
        for transform in (ImageTransform(train=True, image_size=16, reduced_decode=reduced),
                          ImageTransform(train=False, image_size=16, reduced_decode=reduced)):  # fmt: skip
            assert transform(good).shape == (3, 16, 16)
            for name, data in damaged.items():
                with pytest.raises(CorruptImageError):
                    transform(data)


def test_eval_reduced_decode_matches_the_full_decode(tmp_path):
    data = _jpeg_bytes(tmp_path, (1000, 750), label=2)
    for normalization, size in (("torchvision", 64), ("caffe", 57)):
        reduced = ImageTransform(train=False, image_size=size, normalization=normalization)(data).float()
        full = ImageTransform(train=False, image_size=size, normalization=normalization, reduced_decode=False)(data)
        assert (reduced - full.float()).abs().mean().item() <= MAX_MEAN_ABS_DIFF


def test_normalize_on_any_device_dtype_and_layout():
    images = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    plain = normalize_batch(images, "torchvision")
    fast = normalize_batch(images, "torchvision", dtype=torch.bfloat16, channels_last=True)
    assert fast.dtype == torch.bfloat16 and fast.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(fast.float(), plain, atol=0.02)


# ---------------------------------------------------------------- Parquet shards


def test_prepare_local_reads_back_identical_labels_and_pixels(imagenet_src, prepared_local):
    dest, manifest = prepared_local
    assert manifest["classes"] == WNIDS
    train = manifest["splits"]["train"]
    assert train["images"] == 12 and len(train["shards"]) > 1
    assert [c["path"] for c in train["skipped_corrupt"]] == [f"{WNIDS[1]}/truncated.JPEG"]
    assert train["skipped_non_image"] == [f"{WNIDS[2]}/notes.txt"]
    assert all(os.path.getsize(os.path.join(dest, s["path"])) == s["bytes"] for s in train["shards"])
    for split in ("train", "val"):
        folder = _folder_rows(imagenet_src, split)
        folder.pop(f"{WNIDS[1]}/truncated.JPEG", None)
        assert _parquet_rows(dest, split) == folder  # same files, same labels
    # The stored bytes are the files' bytes: decoded eval crops match pixel for pixel.
    config = DataConfig(url=dest, image_size=SIZE)
    from_parquet = {}
    for shard_url, group, _ in load_split(config, "val").units:
        import pyarrow.parquet as pq

        fs, path = storage.resolve(shard_url)
        with fs.open_input_file(path) as f:
            table = pq.ParquetFile(f).read_row_group(group)
        from_parquet.update(zip(table.column("path").to_pylist(), table.column("image").to_pylist()))
    transform = ImageTransform(train=False, image_size=SIZE)
    folder_val = load_split(DataConfig(url=imagenet_src, image_size=SIZE), "val")
    for i, name in enumerate(folder_val.index.files):
        assert torch.equal(folder_val[i][0], transform(from_parquet[name]))
    # Both loaders give the same labels; the Parquet one has nothing left to skip.
    for split in ("train", "val"):
        folder_labels, _ = _labels_through_loader(DataConfig(url=imagenet_src, image_size=SIZE), split)
        parquet_labels, skipped = _labels_through_loader(config, split)
        assert parquet_labels == folder_labels and skipped == []
    assert num_classes_of(config) == 3 and num_classes_of(DataConfig(url=imagenet_src)) == 3


def test_parquet_reader_shards_ranks_disjointly_and_reshuffles(prepared_local):
    dest, _ = prepared_local
    transform = ImageTransform(train=False, image_size=16)
    whole = ParquetImages(dest, "train", transform)
    shares = [ParquetImages(dest, "train", transform, shuffle=True, rank=r, world_size=2) for r in range(2)]
    assert len(shares[0]) + len(shares[1]) == len(whole) == 12
    paths = [{u for u in share._my_units()} for share in shares]
    assert not paths[0] & paths[1]
    orders = []
    for epoch in (0, 1):
        shares[0].set_epoch(epoch)
        orders.append(shares[0]._my_units())
    assert orders[0] != orders[1] or len(orders[0]) < 2


def test_prepare_resumes_after_a_crash_and_is_idempotent(imagenet_src, tmp_path, caplog):
    dest = str(tmp_path / "pq")
    first = prepare(imagenet_src, dest, shard_mb=0.05, progress=False)
    shard = os.path.join(dest, first["splits"]["train"]["shards"][1]["path"])
    before = open(shard, "rb").read()
    # A crash after some shards: one shard and dataset.json never made it.
    os.remove(shard)
    os.remove(os.path.join(dest, "dataset.json"))
    assert not os.path.exists(os.path.join(dest, "dataset.json"))
    with pytest.raises(ValueError, match="not a prepared dataset"):
        check_data_url(dest)
    caplog.set_level(logging.INFO, logger="sqz")
    caplog.clear()
    second = prepare(imagenet_src, dest, shard_mb=0.05, progress=False)
    total = len(first["splits"]["train"]["shards"]) + len(first["splits"]["val"]["shards"])
    assert f"1 shard(s) written, {total - 1} already there" in caplog.text
    assert second == first and open(shard, "rb").read() == before  # deterministic, same bytes
    caplog.clear()
    prepare(imagenet_src, dest, shard_mb=0.05, progress=False)
    assert "nothing to do" in caplog.text
    with pytest.raises(ValueError, match="different plan"):
        prepare(imagenet_src, dest, shard_mb=1.0, progress=False)
    assert not [n for n in os.listdir(os.path.join(dest, "train")) if n.startswith(".")]  # no temporaries left


def _stored_images(url, split):
    import pyarrow.parquet as pq

    stored = {}
    for shard in read_manifest(url)["splits"][split]["shards"]:
        table = pq.read_table(os.path.join(url, shard["path"]), columns=["path", "image"])
        stored.update(zip(table.column("path").to_pylist(), table.column("image").to_pylist()))
    return stored


def test_prepare_with_max_side_round_trips_and_is_idempotent(imagenet_src, tmp_path, caplog):
    from PIL import Image

    small = os.path.join(imagenet_src, "val", WNIDS[0], f"{WNIDS[0]}_val_0.JPEG")
    dest = str(tmp_path / "pq-small")
    first = prepare(imagenet_src, dest, shard_mb=0.05, progress=False, max_side=200, jpeg_quality=80)
    assert first["max_side"] == 200 and first["jpeg_quality"] == 80
    assert first["splits"]["train"]["images"] == 12  # the truncated file is still left out
    assert [c["path"] for c in first["splits"]["train"]["skipped_corrupt"]] == [f"{WNIDS[1]}/truncated.JPEG"]
    for split in ("train", "val"):
        stored = _stored_images(dest, split)
        for name, data in stored.items():
            with Image.open(io.BytesIO(data)) as image:
                original = Image.open(os.path.join(imagenet_src, split, name)).size
                assert max(image.size) <= 200 and image.format == "JPEG"
                assert abs(image.size[0] / image.size[1] - original[0] / original[1]) < 0.02  # aspect kept
    # Images that already fit are stored as they are.
    assert _stored_images(dest, "val")[f"{WNIDS[0]}/{os.path.basename(small)}"] != open(small, "rb").read()
    kept = prepare(imagenet_src, str(tmp_path / "pq-fits"), splits=["val"], progress=False, max_side=1000)
    assert _stored_images(str(tmp_path / "pq-fits"), "val")[f"{WNIDS[0]}/{os.path.basename(small)}"] == open(small, "rb").read()
    assert kept["max_side"] == 1000 and kept["jpeg_quality"] == 90
    # Both readers read the re-encoded shards.
    labels, skipped = _labels_through_loader(DataConfig(url=dest, image_size=SIZE), "train")
    assert labels == [0] * 4 + [1] * 4 + [2] * 4 and skipped == []
    # Idempotent and resumable: the same bytes again, a lost shard rewritten alike.
    shard = os.path.join(dest, first["splits"]["train"]["shards"][0]["path"])
    before = open(shard, "rb").read()
    os.remove(shard)
    os.remove(os.path.join(dest, "dataset.json"))
    assert prepare(imagenet_src, dest, shard_mb=0.05, progress=False, max_side=200, jpeg_quality=80) == first
    assert open(shard, "rb").read() == before
    caplog.set_level(logging.INFO, logger="sqz")
    caplog.clear()
    prepare(imagenet_src, dest, shard_mb=0.05, progress=False, max_side=200, jpeg_quality=80)
    assert "nothing to do" in caplog.text
    for other in ({"max_side": 201, "jpeg_quality": 80}, {"max_side": 200, "jpeg_quality": 81}, {}):
        with pytest.raises(ValueError, match="different plan"):
            prepare(imagenet_src, dest, shard_mb=0.05, progress=False, **other)


@pytest.mark.parametrize("options, match", [
    ({"max_side": 0}, "--max-side"), ({"max_side": -5}, "--max-side"), ({"jpeg_quality": 0, "max_side": 9}, "--jpeg-quality"),
    ({"jpeg_quality": 101, "max_side": 9}, "--jpeg-quality"), ({"jpeg_quality": 90}, "--jpeg-quality"),
])  # fmt: skip
def test_prepare_refuses_bad_sizes_and_qualities_before_writing(imagenet_src, tmp_path, options, match):
    with pytest.raises(ValueError, match=match):
        prepare(imagenet_src, str(tmp_path / "out"), progress=False, **options)
    assert not os.path.exists(tmp_path / "out")


@pytest.mark.parametrize("args, option", [
    (["--max-side", "0"], "--max-side"), (["--max-side", "-1"], "--max-side"), (["--max-side", "big"], "--max-side"),
    (["--jpeg-quality", "0"], "--jpeg-quality"), (["--jpeg-quality", "101"], "--jpeg-quality"),
    (["--max-side", "none", "--jpeg-quality", "80"], "--jpeg-quality"),
])  # fmt: skip
def test_cli_prepare_refuses_bad_sizes_and_qualities_in_one_line(imagenet_src, tmp_path, args, option,
                                                                 refused_in_process):  # fmt: skip
    code, err = refused_in_process(["data", "prepare", imagenet_src, str(tmp_path / "out"), *args])
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("sqz data") and option in lines[0], err
    assert not os.path.exists(tmp_path / "out")


def test_prepare_refuses_bad_input_before_writing(tmp_path):
    with pytest.raises(ValueError, match="SRC: no such dataset folder"):
        prepare(str(tmp_path / "missing"), str(tmp_path / "out"))
    with pytest.raises(ValueError, match="DEST_URL: unsupported scheme"):
        prepare(str(tmp_path), "gs://bucket/x")
    os.makedirs(tmp_path / "src" / "train" / WNIDS[0])
    with pytest.raises(ValueError, match="has no image files"):
        prepare(str(tmp_path / "src"), str(tmp_path / "out"))
    assert not os.path.exists(tmp_path / "out")


@pytest.mark.slow
@pytest.mark.integration
def test_prepare_into_s3_reads_back_through_both_paths(imagenet_src, prepared_local, s3_bucket, ray_local):
    from sqz.cli import main

    url = f"{s3_bucket}/imagenet"
    assert main(["data", "prepare", imagenet_src, url, "--shard-mb", "0.05", "--no-progress"]) == 0
    assert read_manifest(url)["splits"] == read_manifest(prepared_local[0])["splits"]  # same plan, same shards
    check_data_url(url)
    for split in ("train", "val"):
        expected = _folder_rows(imagenet_src, split)
        expected.pop(f"{WNIDS[1]}/truncated.JPEG", None)
        assert _parquet_rows(url, split) == expected
        # Path 1: pyarrow straight from S3 (DataLoader).
        labels, skipped = _labels_through_loader(DataConfig(url=url, image_size=SIZE), split)
        assert labels == sorted(expected.values()) and skipped == []
        # Path 2: Ray Data tasks read the shards from S3 and decode them in parallel.
        import ray.data

        from sqz.distributed.stream import DecodeCrop, StreamedBatches, image_dataset

        config = DataConfig(url=url, image_size=SIZE)
        batches = StreamedBatches(image_dataset(config, split), batch_size=4, normalization="torchvision")
        streamed = [y for x, targets in batches for y in targets.tolist()]
        assert sorted(streamed) == sorted(expected.values()) and batches.skipped == 0
        # Row by row, with the path carried along: same label and, for val, same pixels.
        fs, base = storage.resolve(url)
        shards = [f"{base}/{s['path']}" for s in read_manifest(url)["splits"][split]["shards"]]
        transform = ImageTransform(train=False, image_size=SIZE)
        rows = ray.data.read_parquet(shards, filesystem=fs).map_batches(DecodeCrop(transform), batch_format="numpy")
        folder = load_split(DataConfig(url=imagenet_src, image_size=SIZE), split)
        position = {name: i for i, name in enumerate(folder.index.files)}
        for row in rows.iter_rows():
            assert row["ok"] and expected[row["path"]] == row["label"]
            if split == "val":
                assert np.array_equal(row["image"], folder[position[row["path"]]][0].numpy())


@pytest.mark.slow
def test_corrupt_row_in_a_shard_is_skipped_by_both_readers(imagenet_src, tmp_path, ray_local):
    """Bytes that passed prepare but rot later (or were written by another tool) still
    never crash an epoch: both readers drop and count them."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    dest = str(tmp_path / "pq")
    prepare(imagenet_src, dest, splits=["val"], shard_mb=100, progress=False)
    manifest = read_manifest(dest)
    shard = os.path.join(dest, manifest["splits"]["val"]["shards"][0]["path"])
    table = pq.read_table(shard)
    images = table.column("image").to_pylist()
    images[0] = images[0][:200]
    pq.write_table(table.set_column(0, "image", pa.array(images, pa.binary())), shard)
    labels, skipped = _labels_through_loader(DataConfig(url=dest, image_size=SIZE), "val")
    assert len(labels) == 5 and len(skipped) == 1

    from sqz.distributed.stream import StreamedBatches, image_dataset

    batches = StreamedBatches(image_dataset(DataConfig(url=dest, image_size=SIZE), "val"), batch_size=4,
                              normalization="caffe")  # fmt: skip
    assert sum(len(t) for _, t in batches) == 5 and batches.skipped == 1


@pytest.mark.slow
@pytest.mark.integration
def test_ray_train_streams_parquet_shards_from_s3(imagenet_src, s3_bucket, ray_local, tmp_path):
    """Training never sees the folder: Ray Train workers get their stream from Ray Data."""
    from sqz import metrics
    from sqz.config import TrainConfig
    from sqz.distributed.train import train
    from sqz.runs import RunLayout

    url = f"{s3_bucket}/imagenet"
    prepare(imagenet_src, url, shard_mb=0.05, progress=False)
    shutil_target = tmp_path / "moved-away"
    shutil.move(imagenet_src, shutil_target)  # the source is gone while training runs
    try:
        layout = RunLayout(str(tmp_path / "run-stream"))
        result = train(layout, TrainConfig(model="squeezenet_small", num_classes=3, epochs=2, workers=1, lr=1e-3),
                       DataConfig(url=url, image_size=32, batch_size=4))  # fmt: skip
    finally:
        shutil.move(str(shutil_target), imagenet_src)
    rows = metrics.read_table(layout.run_url, "train_epochs").to_pylist()
    assert sorted(r["epoch"] for r in rows) == [0, 1] and result.epochs == 2
    assert all(r["images_per_s"] > 0 and 0 <= r["data_wait_s"] < r["wall_s"] for r in rows)
    assert os.path.exists(layout.baseline_url) and 0 <= result.top1 <= result.top5 <= 100


def test_manifest_is_plain_json(prepared_local):
    dest, manifest = prepared_local
    on_disk = json.load(open(os.path.join(dest, "dataset.json")))
    assert on_disk == manifest and on_disk["format"] == "sqz.parquet-images"
