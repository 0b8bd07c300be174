"""Config files, `key=value` arguments, `--config.a.b=v` overrides and validation errors."""

from pathlib import Path

import pytest
from ml_collections.config_dict import placeholder

from normlab.cli import _split_overrides
from normlab.config import apply_overrides, load_config, parse_arg
from normlab.train.defaults import base_config
from normlab.train.validate import resolve_total_steps, validate

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_parse_arg_types_and_flags():
    a = parse_arg(
        "norm=group,batch=8,lr=0.5,runlocal", norm="batch", batch=128, lr=0.1, runlocal=False
    )
    assert (a.norm, a.batch, a.lr, a.runlocal) == ("group", 8, 0.5, True)
    assert isinstance(a.batch, int) and isinstance(a.lr, float)


def test_parse_arg_errors():
    with pytest.raises(ValueError, match="unknown config argument 'nrom'; valid arguments: norm"):
        parse_arg("nrom=group", norm="batch")
    with pytest.raises(ValueError, match="expected a int"):
        parse_arg("batch=eight", batch=128)
    with pytest.raises(ValueError, match="needs a value"):
        parse_arg("batch", batch=128)


def test_overrides_are_parsed_against_field_types():
    c = base_config()
    c.opt_level = placeholder(float)
    apply_overrides(
        c,
        [
            "lr=0.5",
            "batch_size=64",
            "model.name=resnet20",
            "mesh.data=4",
            "opt_level=2.5",
            "weight_decay.l2=1e-4",
        ],
    )
    assert (c.lr, c.batch_size, c.model.name, c.mesh.data) == (0.5, 64, "resnet20", 4)
    assert c.opt_level == 2.5 and c.weight_decay.l2 == 1e-4


def test_override_errors_name_the_field():
    c = base_config()
    with pytest.raises(ValueError, match="unknown config field 'optimizer.lrr'.*fields name"):
        apply_overrides(c, ["optimizer.lrr=1"])
    with pytest.raises(ValueError, match=r"--config.lr: expected a float, got 'fast'"):
        apply_overrides(c, ["lr=fast"])
    with pytest.raises(ValueError, match="is a group"):
        apply_overrides(c, ["model=mlp"])


def test_cli_override_syntax():
    assert _split_overrides(["--config.lr=0.5", "--config.model.norm", "group"]) == [
        "lr=0.5",
        "model.norm=group",
    ]
    with pytest.raises(ValueError, match="unrecognized argument"):
        _split_overrides(["--lr=0.5"])


@pytest.mark.parametrize("name", ["mnist_mlp", "fmnist_resnet", "cifar10_resnet"])
def test_config_files_validate_and_shrink(name):
    full = load_config(f"{CONFIGS / name}.py")
    validate(full)
    small = load_config(f"{CONFIGS / name}.py:runlocal")
    validate(small)
    assert small.total_steps <= 20 and small.total_epochs == 0
    assert "Expected" in (CONFIGS / f"{name}.py").read_text()  # docstring states the result


@pytest.mark.parametrize("spec", ["cifar10_resnet", "fmnist_resnet", "e6_norms", "e3_residual_init",
                                  "e7_regularization:net=resnet", "e12_conv_transfer",
                                  "imagenet_resnet", "cifar10_speedrun"])
def test_conv_configs_take_one_step_per_call(spec):
    # XLA:CPU runs convolutions inside a scanned chunk ~11x slower (normlab.train.step.
    # _scan_steps): a conv config that scans its steps makes every CPU run pay that
    name, _, arg = spec.partition(":")
    config = load_config(f"{CONFIGS / name}.py" + (f":{arg}" if arg else ""))
    assert config.steps_per_call == 1


def test_config_arguments_reach_the_model():
    c = load_config(f"{CONFIGS}/fmnist_resnet.py:norm=group+proxy,groups=4,act=silu,batch=8")
    assert c.model.norm == "group+proxy" and c.model.norm_kwargs.num_groups == 4
    assert c.model.activation == "silu" and c.batch_size == 8
    assert c.dataset == "fashion_mnist" and c.pad_to == 32


def test_e7_blocks_sets_the_resnet_depth():
    # a >= 20-block ResNet for stochastic depth: 27 blocks in three stages of 9
    deep = load_config(f"{CONFIGS}/e7_regularization.py:net=resnet,blocks=27,"
                       "method=stochastic_depth")
    validate(deep)
    assert tuple(deep.model.stage_sizes) == (9, 9, 9)
    assert deep.model.stochastic_depth_rate == 0.5 and deep.total_steps == 1200
    shallow = load_config(f"{CONFIGS}/e7_regularization.py:net=resnet")
    assert tuple(shallow.model.stage_sizes) == (1, 1, 1)
    with pytest.raises(ValueError, match=r"blocks must be a positive multiple of 3 .*blocks=20"):
        load_config(f"{CONFIGS}/e7_regularization.py:net=resnet,blocks=20")
    with pytest.raises(ValueError, match="blocks=6 needs net='resnet'"):
        load_config(f"{CONFIGS}/e7_regularization.py:blocks=6")


def test_validation_lists_valid_names():
    c = load_config(f"{CONFIGS}/mnist_mlp.py:norm=btach")
    with pytest.raises(ValueError, match="unknown norm 'btach'; valid norm names: .*batch"):
        validate(c)
    c = load_config(f"{CONFIGS}/mnist_mlp.py")
    apply_overrides(c, ["optimizer.name=adamm"])
    with pytest.raises(ValueError, match="valid optimizer names"):
        validate(c)
    c = load_config(f"{CONFIGS}/mnist_mlp.py")
    apply_overrides(c, ["model.name=resnet21"])
    with pytest.raises(ValueError, match="valid model names: .*resnet20"):
        validate(c)


def test_durations_and_intervals():
    c = load_config(f"{CONFIGS}/mnist_mlp.py")
    c.total_epochs = 2
    with pytest.raises(ValueError, match="exactly one of total_steps and total_epochs"):
        validate(c)
    c.total_steps = 0
    validate(c)
    assert resolve_total_steps(c, 60_000) == 2 * 1000
    c.log_every_steps = 7
    with pytest.raises(ValueError, match="log_every_steps=7 must be 0 .* multiple of steps_per"):
        validate(c)


def test_missing_config_file():
    with pytest.raises(ValueError, match="does not exist"):
        load_config("configs/nope.py:runlocal")


def test_holdout_splits_keep_the_last_images_for_validation(monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "configs"))
    from common import holdout_splits  # configs/common.py, as the config files import it

    from normlab.train.defaults import base_config

    c = base_config()
    c.dataset = "fashion_mnist"
    holdout_splits(c, held_out=10_000)
    assert c.train_split == "train[:50000]"
    assert dict(c.evals) == {"val": "train[50000:]", "test": "test"}
    c.dataset = "digits"
    holdout_splits(c)
    assert c.train_split == "train" and dict(c.evals) == {"val": "test", "test": "test"}
