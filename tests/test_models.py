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
