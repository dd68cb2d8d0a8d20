"""The registry: parameter counts, layer structure, defaults, bad input, resnet18 weights."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ml.config import ConfigError
from ml.models import (
    MODELS, PRESET_CNNS, CNN, PretrainedWeightsMissing, build_model, cnn_config, count_parameters,
    get_spec, resnet18_weights_path,
)

EXPECTED_PARAMETERS = {"task1": 390_410, "net1": 419_690, "net2": 817_834, "resnet18": 11_181_642}


def _build(name: str) -> nn.Module:
    return build_model(name, {"upsample": 1} if name == "resnet18" else None, pretrained=False)


def _layer_counts(model: nn.Module) -> list[tuple[str, int]]:
    return [(type(m).__name__, sum(p.numel() for p in m.parameters(recurse=False)))
            for m in model.modules() if any(True for _ in m.parameters(recurse=False))]


@pytest.mark.parametrize("name", list(EXPECTED_PARAMETERS))
def test_model_parameter_count_matches_study(name):
    assert count_parameters(_build(name)) == EXPECTED_PARAMETERS[name]


@pytest.mark.parametrize("name", list(MODELS))
def test_model_output_shape_is_batch_by_10(name):
    out = _build(name).eval()(torch.zeros(2, 3, 32, 32))
    assert out.shape == (2, 10)


def test_task1_layers_match_study_arithmetic():
    model = _build("task1")
    assert _layer_counts(model) == [("Conv2d", 2432), ("Conv2d", 51264), ("Conv2d", 204928),
                                    ("Linear", 131136), ("Linear", 650)]
    kinds = [type(m).__name__ for m in model]
    assert kinds == ["Conv2d", "ReLU", "MaxPool2d"] * 3 + ["Flatten", "Linear", "ReLU", "Linear"]
    assert all(m.kernel_size == (5, 5) and m.padding == (2, 2) for m in model if isinstance(m, nn.Conv2d))


def test_net1_layout_is_conv_relu_bn_with_dropout_and_leaky_fc():
    kinds = [type(m).__name__ for m in _build("net1")]
    block = ["Conv2d", "ReLU", "BatchNorm2d"] * 2 + ["MaxPool2d", "Dropout"]
    assert kinds == block * 3 + ["Flatten", "Linear", "LeakyReLU", "Linear"]
    assert [m.p for m in _build("net1") if isinstance(m, nn.Dropout)] == [0.5, 0.5, 0.5]


def test_net2_layout_is_k5_elu_decreasing_dropout_no_hidden_fc():
    model = _build("net2")
    kinds = [type(m).__name__ for m in model]
    block = ["Conv2d", "ELU", "BatchNorm2d"] * 2 + ["MaxPool2d", "Dropout"]
    assert kinds == block * 3 + ["Flatten", "Linear"]
    assert [m.p for m in model if isinstance(m, nn.Dropout)] == [0.5, 0.4, 0.3]
    assert [m.kernel_size for m in model if isinstance(m, nn.Conv2d)] == [(5, 5)] * 6
    assert model[-1].in_features == 2048


@pytest.mark.parametrize("name", ["task1", "net1", "net2"])
def test_preset_equals_custom_builder_config(name):
    """Each study CNN is expressible as a `custom` config with identical layers and counts."""
    preset = _build(name)
    custom = build_model("custom", PRESET_CNNS[name])
    assert count_parameters(custom) == count_parameters(preset)
    assert [p.shape for p in custom.parameters()] == [p.shape for p in preset.parameters()]
    custom.load_state_dict(preset.state_dict())  # same structure, same names


def test_net_init_is_xavier_on_linear_only():
    """The study's `type(a) == (nn.Linear or nn.Conv2d)` only matches Linear: convs keep PyTorch's init."""
    model = _build("net1")
    linear_biases = [m.bias for m in model if isinstance(m, nn.Linear)]
    conv_biases = [m.bias for m in model if isinstance(m, nn.Conv2d)]
    assert all(torch.all(b == 0.01) for b in linear_biases)
    assert not any(torch.all(b == 0.01) for b in conv_biases)


def test_custom_init_all_sets_conv_biases():
    model = build_model("custom", {"init": "all"})
    assert all(torch.all(m.bias == 0.01) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))


def test_custom_builder_options_change_structure():
    model = build_model("custom", {"filters": [16, 32], "convs_per_block": 1, "kernel_size": 5,
                                   "batch_norm": False, "dropout": [0.3, 0.2], "downsample": "stride",
                                   "activation": "leaky_relu", "hidden": [128, 32], "order": "conv_bn_act"})
    kinds = [type(m).__name__ for m in model]
    assert "MaxPool2d" not in kinds and "BatchNorm2d" not in kinds
    assert [m.stride for m in model if isinstance(m, nn.Conv2d)] == [(2, 2), (2, 2)]
    assert [m.out_features for m in model if isinstance(m, nn.Linear)] == [128, 32, 10]
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 10)


def test_custom_order_conv_bn_act_puts_norm_first():
    kinds = [type(m).__name__ for m in build_model("custom", {"order": "conv_bn_act", "activation": "elu"})]
    assert kinds[:3] == ["Conv2d", "BatchNorm2d", "ELU"]


def test_unknown_model_name_lists_valid_choices():
    with pytest.raises(ConfigError) as err:
        get_spec("vgg16")
    assert "task1" in str(err.value) and "resnet18" in str(err.value) and "model" in err.value.errors


@pytest.mark.parametrize("options, field", [
    ({"kernel_size": 7}, "kernel_size"),
    ({"activation": "gelu"}, "activation"),
    ({"dropout": [0.5, 0.4]}, "dropout"),
    ({"dropout": 1.5}, "dropout"),
    ({"downsample": "avgpool"}, "downsample"),
    ({"init": "kaiming"}, "init"),
    ({"order": "bn_conv"}, "order"),
    ({"filters": []}, "filters"),
    ({"filters": [8] * 6}, "filters"),
    ({"widths": [1]}, "widths"),
    ({"dropout": "x"}, "dropout"),
    ({"filters": "32,64"}, "filters"),
    ({"batch_norm": "yes"}, "batch_norm"),
    ({"hidden": [64.5]}, "hidden"),
])
def test_invalid_custom_config_names_field_and_choices(options, field):
    with pytest.raises(ConfigError) as err:
        cnn_config(options)
    assert field in err.value.errors
    assert err.value.errors[field]


def test_invalid_activation_message_lists_choices():
    with pytest.raises(ConfigError) as err:
        cnn_config({"activation": "gelu"})
    assert "relu, elu, leaky_relu" in err.value.errors["activation"]


def test_presets_carry_study_hyperparameters():
    assert {k: get_spec("task1").defaults[k] for k in ("lr", "batch_size", "epochs", "scheduler")} == \
        {"lr": 0.05, "batch_size": 64, "epochs": 100, "scheduler": "none"}
    assert {k: get_spec("net1").defaults[k] for k in ("lr", "scheduler", "gamma", "epochs")} == \
        {"lr": 0.1, "scheduler": "exponential", "gamma": 0.95, "epochs": 10}
    assert {k: get_spec("net2").defaults[k] for k in ("lr", "scheduler", "milestones", "gamma")} == \
        {"lr": 0.1, "scheduler": "multistep", "milestones": [4, 8], "gamma": 0.5}
    assert {k: get_spec("resnet18").defaults[k] for k in ("optimizer", "lr", "batch_size", "epochs")} == \
        {"optimizer": "adam", "lr": 5e-4, "batch_size": 32, "epochs": 10}


def test_resnet18_freezes_all_but_layer4_and_fc():
    model = _build("resnet18")
    trainable = {n.split(".")[1] for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"layer4", "fc"}
    assert model.net.fc.out_features == 10


def test_resnet18_upsamples_input_by_8_inside_forward():
    model = build_model("resnet18", pretrained=False).eval()
    seen = {}
    model.net.conv1.register_forward_hook(lambda m, i, o: seen.setdefault("shape", tuple(i[0].shape)) and None)
    with torch.no_grad():
        model(torch.zeros(1, 3, 32, 32))
    assert seen["shape"] == (1, 3, 256, 256)


def test_resnet18_offline_without_weights_names_file_and_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(PretrainedWeightsMissing) as err:
        build_model("resnet18")
    message = str(err.value)
    assert "resnet18-f37072fd.pth" in message
    assert str(tmp_path / "hub" / "checkpoints") in message
    assert "pretrained=false" in message


def test_resnet18_loads_cached_weights_from_torch_home(tmp_path, monkeypatch):
    """The weights API finds a state dict placed in TORCH_HOME, with no network."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    from torchvision.models import resnet18

    reference = resnet18(weights=None)
    with torch.no_grad():
        reference.conv1.weight.fill_(0.123)
    path = resnet18_weights_path()
    path.parent.mkdir(parents=True)
    torch.save(reference.state_dict(), path)
    model = build_model("resnet18")
    assert torch.all(model.net.conv1.weight == 0.123)
    assert torch.equal(model.net.layer4[0].conv1.weight, reference.layer4[0].conv1.weight)


def test_resnet18_without_pretrained_needs_no_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    model = build_model("resnet18", pretrained=False)
    assert isinstance(model.net.fc, nn.Linear)


def test_resnet18_unknown_option_is_rejected():
    with pytest.raises(ConfigError) as err:
        build_model("resnet18", {"depth": 50}, pretrained=False)
    assert "upsample" in err.value.errors["depth"]


def test_cnn_is_plain_sequential():
    assert isinstance(_build("task1"), CNN) and isinstance(_build("task1"), nn.Sequential)
    assert cnn_config(None).filters == [32, 64, 128]
