"""`sqz eval`: a real ImageNet model (the released Deep Compression SqueezeNet) on a real
photo, through the flat-val + devkit layout; dense safetensors and run defaults."""

import os
import shutil

import numpy as np
import pytest
import torch
from imagegen import synthetic_wnids
from safetensors.torch import save_file

from sqz import metrics
from sqz.cli import main

def _released_model() -> str:
    """The released file: in shared/ beside the checkout (or inside it), or under
    $SQZ_SHARED (a git worktree sits elsewhere)."""
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    roots = [os.path.join(repo, "..", "shared"), os.path.join(repo, "shared"), os.environ.get("SQZ_SHARED", "")]
    paths = [os.path.join(r, "models", "squeezenet-deep-compression", "compressed_SqueezeNet.net") for r in roots if r]
    return next((p for p in paths if os.path.exists(p)), paths[0])


RELEASED = _released_model()
needs_release = pytest.mark.skipif(not os.path.exists(RELEASED),
                                   reason="shared/models/squeezenet-deep-compression is absent")  # fmt: skip


@pytest.fixture(scope="module")
def released_sqz(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("released") / "squeezenet-dc.sqz")
    assert main(["import-dc", RELEASED, path]) == 0
    return path


@pytest.fixture(scope="module")
def temple_val(tmp_path_factory):
    """A flat val/ holding scikit-learn's china.jpg (a real photo of a temple) as image 1,
    labelled "bell cote" through an ILSVRC2012-style devkit whose 1,000 class ids are in
    another order than the sorted wnids, as in the real devkit."""
    from scipy.io import savemat
    from sklearn.datasets import load_sample_images
    from torchvision.models._meta import _IMAGENET_CATEGORIES

    root = tmp_path_factory.mktemp("imagenet-val")
    china = next(f for f in load_sample_images().filenames if f.endswith("china.jpg"))
    os.makedirs(root / "val")
    shutil.copy(china, root / "val" / "ILSVRC2012_val_00000001.JPEG")
    # Synthetic wnids sort in index order, so sorted-wnid index i is torchvision's class i.
    wnids = synthetic_wnids(1000)
    ilsvrc_id = {i: (i * 7) % 1000 + 1 for i in range(1000)}  # a permutation of 1..1000
    fields = ["ILSVRC2012_ID", "WNID", "words", "gloss", "num_children", "children", "wordnet_height", "num_train_images"]
    synsets = np.zeros((1000, 1), dtype=[(f, "O") for f in fields])
    for row, i in enumerate(sorted(range(1000), key=ilsvrc_id.get)):  # meta.mat lists them by id
        synsets[row, 0] = (ilsvrc_id[i], wnids[i], _IMAGENET_CATEGORIES[i], "", 0, np.zeros(0), 0, 1300)
    devkit = root / "ILSVRC2012_devkit_t12" / "data"
    os.makedirs(devkit)
    savemat(devkit / "meta.mat", {"synsets": synsets})
    bell_cote = _IMAGENET_CATEGORIES.index("bell cote")
    (devkit / "ILSVRC2012_validation_ground_truth.txt").write_text(f"{ilsvrc_id[bell_cote]}\n")
    return str(root)


@needs_release
@pytest.mark.slow
def test_released_model_with_caffe_convention_gets_the_photo_right(released_sqz, temple_val, tmp_path, capsys):
    run = str(tmp_path / "evals")
    # No --normalize: the .sqz records the Caffe convention (227, BGR, mean) at import.
    assert main(["eval", released_sqz, "--data", temple_val, "--run", run]) == 0
    out = capsys.readouterr().out
    assert "227px, caffe" in out and "top-1 100.00  top-5 100.00  over 1 images" in out
    rows = metrics.read_table(run, "evaluations").to_pylist()
    assert len(rows) == 1 and rows[0]["top1"] == 100.0 and rows[0]["split"] == "val" and rows[0]["images"] == 1
    assert rows[0]["run_id"] == "evals" and rows[0]["model"] == os.path.abspath(released_sqz)
    # The same evaluation again replaces its row; another input convention adds one.
    assert main(["eval", released_sqz, "--data", temple_val, "--run", run]) == 0
    assert len(metrics.read_table(run, "evaluations")) == 1
    assert main(["eval", released_sqz, "--data", temple_val, "--run", run, "--normalize", "torchvision"]) == 0
    assert "top-1 0.00  top-5 0.00" in capsys.readouterr().out  # wrong convention: lost
    assert sorted(r["top1"] for r in metrics.read_table(run, "evaluations").to_pylist()) == [0.0, 100.0]


@needs_release
def test_dense_safetensors_evaluate_like_the_sqz(released_sqz, temple_val, tmp_path, capsys):
    from sqz.compress import codec

    dense = str(tmp_path / "dense.safetensors")
    save_file(codec.load(released_sqz).state_dict(), dense)
    args = ["eval", dense, "--data", temple_val, "--run", str(tmp_path / "evals")]
    assert main(args) == 2
    assert "--arch" in capsys.readouterr().err  # safetensors do not name their architecture
    assert main([*args, "--arch", "squeezenet1_0", "--normalize", "caffe"]) == 0
    assert "227px, caffe): top-1 100.00  top-5 100.00" in capsys.readouterr().out
    assert main([*args, "--arch", "squeezenet1_1", "--normalize", "caffe"]) == 2
    assert "does not fit squeezenet1_1" in capsys.readouterr().err


def test_eval_of_a_runs_model_uses_the_run(tmp_path, capsys):
    """Weights under <run>/models/ take their architecture from the run's manifest and
    their evaluation row lands in that run."""
    import json

    from sqz.models import build_model

    run = tmp_path / "run-abc"
    os.makedirs(run / "models")
    (run / "manifest.json").write_text(json.dumps({"config": {"train": {"model": "squeezenet_small"}}}))
    torch.manual_seed(0)
    save_file(build_model("squeezenet_small", num_classes=10).state_dict(), str(run / "models" / "baseline.safetensors"))
    assert main(["eval", str(run / "models" / "baseline.safetensors"), "--data", "digits"]) == 0
    assert "32px, torchvision" in capsys.readouterr().out
    rows = metrics.read_table(str(run), "evaluations").to_pylist()
    assert len(rows) == 1 and rows[0]["run_id"] == "run-abc" and rows[0]["images"] == 360
    assert rows[0]["dataset"] == "digits" and 0 <= rows[0]["top1"] <= rows[0]["top5"] <= 100


@pytest.mark.parametrize(
    "args, message",
    [
        (["--data", "/no/such/folder"], "--data: no such dataset folder"),
        (["--data", "gs://bucket/x"], "--data: unsupported scheme"),
        (["--data", "digits"], "has 10 classes but the model predicts 1000"),
        (["--data", "digits", "--image-size", "0"], "--image-size"),
        (["--data", "digits", "--normalize", "bgr"], "--normalize"),
    ],
)
def test_eval_bad_input_is_one_line_and_writes_nothing(tmp_path, monkeypatch, capsys, args, message):
    from sqz.compress import codec
    from sqz.models import build_model

    monkeypatch.chdir(tmp_path)  # where the default ./sqz-runs/evaluations would go
    codec.save(build_model("squeezenet1_0"), "m.sqz")
    try:
        code = main(["eval", "m.sqz", *args])
    except SystemExit as exit_info:  # argparse's own errors
        code = exit_info.code
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not os.path.exists("sqz-runs")
