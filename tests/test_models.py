import pytest
import torch
import torchvision

from sqz.models import MODEL_FACTS, build_model, count_parameters, list_models


@pytest.mark.parametrize("name", ["squeezenet1_0", "squeezenet1_1"])
def test_torchvision_state_dict_interchangeable(name):
    torch.manual_seed(0)
    theirs = getattr(torchvision.models, name)(weights=None).eval()
    ours = build_model(name).eval()
    ours.load_state_dict(theirs.state_dict())  # strict: same keys, same shapes
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert torch.allclose(ours(x), theirs(x), atol=1e-6)


@pytest.mark.parametrize("name", list_models())
def test_parameter_counts_match_the_facts(name):
    facts = MODEL_FACTS[name]
    if facts.num_params_1000 is not None:
        assert count_parameters(build_model(name, num_classes=1000)) == facts.num_params_1000


@pytest.mark.parametrize("name", list_models())
def test_forward_shape(name):
    model = build_model(name, num_classes=7).eval()
    size = MODEL_FACTS[name].input_size
    with torch.no_grad():
        assert model(torch.randn(1, 3, size, size)).shape == (1, 7)


def test_complex_bypass_adds_conv_only_where_channels_differ():
    simple = count_parameters(build_model("squeezenet1_0_simple_bypass"))
    complex_ = count_parameters(build_model("squeezenet1_0_complex_bypass"))
    assert simple == 1_248_424 and complex_ > simple


def test_bad_model_requests_are_clear_errors():
    with pytest.raises(ValueError, match="unknown model"):
        build_model("alexnet")
    with pytest.raises(ValueError, match="num_classes"):
        build_model("squeezenet1_0", num_classes=10**9)
    with pytest.raises(ValueError, match="unknown options"):
        build_model("squeezenet1_0", width=2)


@pytest.mark.parametrize("name", ["squeezenet1_0", "squeezenet1_1"])
def test_ours_load_into_torchvision_too(name):
    torch.manual_seed(1)
    ours = build_model(name).eval()
    theirs = getattr(torchvision.models, name)(weights=None).eval()
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(1, 3, 227, 227)
    with torch.no_grad():
        assert torch.equal(ours(x), theirs(x))


@pytest.mark.parametrize("name", ["squeezenet1_0", "squeezenet1_1"])
def test_counts_match_torchvisions_own_weight_metadata(name):
    from torchvision.models import get_model_weights

    published = get_model_weights(name).IMAGENET1K_V1.meta["num_params"]
    assert count_parameters(build_model(name)) == published == MODEL_FACTS[name].num_params_1000


def test_num_classes_and_dropout_are_options():
    model = build_model("squeezenet1_1", num_classes=37, dropout=0.2)
    assert model.classifier[0].p == 0.2 and model.classifier[1].out_channels == 37
    assert model.arch_spec == {"name": "squeezenet1_1", "kwargs": {"num_classes": 37, "dropout": 0.2}}


def test_bypasses_sit_where_the_paper_puts_them():
    from sqz.models import Fire

    def modes(name):
        return [f.bypass_mode for f in build_model(name).features if isinstance(f, Fire)]

    # fire2..fire9: simple bypass around fire3/5/7/9; complex adds 1x1 convs around 2/4/6/8.
    assert modes("squeezenet1_0") == ["none"] * 8
    assert modes("squeezenet1_0_simple_bypass") == ["none", "identity"] * 4
    assert modes("squeezenet1_0_complex_bypass") == ["conv", "identity"] * 4
    # Each conv bypass adds in x out weights + out biases and nothing else.
    extra = sum(i * o + o for i, o in ((96, 128), (128, 256), (256, 384), (384, 512)))
    assert count_parameters(build_model("squeezenet1_0_complex_bypass")) - 1_248_424 == extra


def test_small_variant_reaches_4x4_on_32x32():
    model = build_model("squeezenet_small", num_classes=10)
    assert model.features(torch.randn(1, 3, 32, 32)).shape == (1, 512, 4, 4)


@pytest.mark.parametrize(
    "name, torchvision_name",
    [("alexnet", "alexnet"), ("googlenet", "googlenet"), ("resnet152", "resnet152"), ("inception_v3", "inception_v3")],
)
def test_reference_cnns_are_counted_from_torchvisions_architectures(name, torchvision_name):
    """Counted on the meta device (no memory, no download); torchvision's own metadata
    is the independent check. Its Inception-v3 weights keep the auxiliary classifier."""
    from torchvision.models import get_model_weights

    from sqz.models import build_reference

    published = get_model_weights(torchvision_name).IMAGENET1K_V1.meta["num_params"]
    with_aux = name == "inception_v3"
    assert count_parameters(build_reference(name, with_aux=with_aux)) == published
    assert next(build_reference(name).parameters()).is_meta


def test_reference_alexnet_count_holds_on_a_real_device():
    from sqz.models import build_reference

    assert count_parameters(build_reference("alexnet", device="cpu")) == 61_100_840


def test_models_prints_table_2_computed(capsys):
    from sqz.cli import main

    assert main(["models"]) == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: line for line in out.splitlines() if line and not line.startswith(" ")}
    assert "61,100,840" in lines["AlexNet"] and "244.403" in lines["AlexNet"] and "1.0x" in lines["AlexNet"]
    assert "1,248,424" in lines["squeezenet1_0"] and "4.994" in lines["squeezenet1_0"] and "48.9x" in lines["squeezenet1_0"]
    assert "57.5 / 80.3" in lines["squeezenet1_0"] and "Table 2" in lines["squeezenet1_0"]
    assert "1,235,496" in lines["squeezenet1_1"]
    assert "6,624,904" in lines["GoogLeNet"] and "60,192,808" in lines["ResNet-152"] and "23,834,568" in lines["Inception-v3"]
    assert "13,004,888 parameters with" in out and "Inception-v4 is not in torchvision" in out


def _released_model() -> str:
    import os

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    roots = [os.path.join(repo, "..", "shared"), os.path.join(repo, "shared"), os.environ.get("SQZ_SHARED", "")]
    paths = [os.path.join(r, "models", "squeezenet-deep-compression", "compressed_SqueezeNet.net") for r in roots if r]
    return next((p for p in paths if os.path.exists(p)), paths[0])


def test_models_with_a_compressed_file_adds_its_real_size(tmp_path, capsys):
    import os

    from sqz.cli import main

    released = _released_model()
    if not os.path.exists(released):
        pytest.skip("shared/models/squeezenet-deep-compression is absent (set SQZ_SHARED to its shared/ folder)")
    sqz_file = str(tmp_path / "released.sqz")
    assert main(["import-dc", released, sqz_file]) == 0
    capsys.readouterr()
    assert main(["models", "--with", sqz_file]) == 0
    out = capsys.readouterr().out
    size = os.path.getsize(sqz_file)
    row = next(line for line in out.splitlines() if line.startswith("released.sqz"))
    assert f"{size / 1e6:.3f}" in row and f"{61_100_840 * 4 / size:.1f}x" in row and "57.5 / 80.3" in row
    assert "415,921 of 1,244,448 weights kept (33.4%)" in out
    assert main(["models", "--with", str(tmp_path / "missing.sqz")]) == 2
    assert "no such object" in capsys.readouterr().err


@pytest.mark.parametrize("num_classes", [2, 10, 1000])
@pytest.mark.parametrize("name", list_models())
def test_torch_free_layer_sizes_are_the_built_models(name, num_classes):
    # The CLI refuses impossible densities from sqz.architectures' counts, without torch:
    # they must be exactly what pruning sees in the built model (same keys, same order).
    from sqz.architectures import prunable_weight_counts
    from sqz.compress.prune import prunable_parameters

    built = {key: weight.numel() for key, weight in prunable_parameters(build_model(name, num_classes=num_classes)).items()}
    counts = prunable_weight_counts(name, num_classes=num_classes)
    assert list(counts.items()) == list(built.items())


@pytest.mark.parametrize("name", ["squeezenet_small", "squeezenet1_0_complex_bypass"])
def test_the_density_check_agrees_with_layer_thresholds_at_the_boundary(name):
    from sqz.architectures import check_densities, prunable_weight_counts, smallest_density
    from sqz.compress.prune import layer_thresholds
    from sqz.config import PruneConfig

    model = build_model(name, num_classes=10)
    dense, total = 10_000, sum(prunable_weight_counts(name, num_classes=10).values())
    bound = smallest_density(name, num_classes=10, dense_below=dense)
    assert 0 < bound < 1
    for density in (bound / 2, bound):
        with pytest.raises(ValueError, match="keeps fewer weights"):
            layer_thresholds(model, PruneConfig(mode="density", amount=density, dense_below=dense))
        with pytest.raises(ValueError, match=f"--thresholds: density {density:g} keeps fewer weights than {name}'s"):
            check_densities([0.5, density], model=name, num_classes=10, dense_below=dense, option="--thresholds")
    above = bound + 1 / total
    layer_thresholds(model, PruneConfig(mode="density", amount=above, dense_below=dense))  # accepted: no error
    check_densities([above], model=name, num_classes=10, dense_below=dense)
    check_densities([bound], model=name, num_classes=10, dense_below=0)  # nothing stays dense: any density works


def test_the_density_refusal_names_a_density_that_works():
    import re

    from sqz.architectures import check_densities
    from sqz.compress.prune import layer_thresholds
    from sqz.config import PruneConfig

    with pytest.raises(ValueError) as refused:
        check_densities([0.02], model="squeezenet_small", num_classes=10, dense_below=10_000, option="--thresholds",
                        dense_option="--dense-below")  # fmt: skip
    message = str(refused.value)
    assert "\n" not in message and "--dense-below" in message and "9.6%" in message, message
    suggested = float(re.search(r"density above ([0-9.]+)", message).group(1))
    model = build_model("squeezenet_small", num_classes=10)
    layer_thresholds(model, PruneConfig(mode="density", amount=suggested, dense_below=10_000))
