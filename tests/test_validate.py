"""`validate(config)`: a bad value of any config field fails with one line, before anything loads.

Each case sets one field of a valid config (the digits smoke test) to a bad value; validate must
raise ValueError with a single-line message naming the problem. The repros of issue 15 (items
6, 12, 13) are among them: keep_checkpoints=0, a negative or non-finite lr, total_steps=-5
(a duration error, not a warm-up one), eval_batch_size=0.
"""

import math

import pytest

from normlab.config import apply_overrides, load_config
from normlab.train.validate import validate

SMOKE = "configs/mnist_mlp.py:dataset=digits,norm=batch,runlocal"  # steps_per_call=5, 20 steps


def _config(overrides=(), **fields):
    """The smoke config with `--config.` style `overrides` and `fields` set directly (dotted
    paths as `a__b`, for values an override cannot spell: dicts, new keys)."""
    config = load_config(SMOKE)
    apply_overrides(config, list(overrides))
    for path, value in fields.items():
        *parents, last = path.split("__")
        node = config
        for part in parents:
            node = node[part]
        with node.unlocked():
            node[last] = value
    return config


def _fails(config, pattern):
    with pytest.raises(ValueError, match=pattern) as info:
        validate(config)
    message = str(info.value)
    assert "\n" not in message, message
    return message


def test_the_smoke_config_and_the_shipped_configs_are_valid():
    validate(_config())
    validate(load_config("configs/mnist_mlp.py"))
    validate(load_config("configs/fmnist_resnet.py:runlocal"))
    validate(_config(["lr=-0.1", "allow_negative_lr=true"]))  # the explicit opt-in


OVERRIDE_CASES = [
    # durations come first, each with its own message
    (["total_steps=-5"], r"total_steps must be an integer >= 0"),
    (["total_steps=0"], r"exactly one of total_steps and total_epochs"),
    (["total_steps=0", "total_epochs=-2"], r"total_epochs must be a finite number >= 0"),
    (["seed=-1"], r"seed must be an integer >= 0"),
    # sizes and intervals
    (["batch_size=0"], r"batch_size must be an integer >= 1"),
    (["eval_batch_size=0"], r"eval_batch_size must be an integer >= 1"),
    (["diag_batch_size=-3"], r"diag_batch_size must be an integer >= 1"),
    (["steps_per_call=0"], r"steps_per_call must be an integer >= 1"),
    (["log_every_steps=7"], r"log_every_steps=7 must be 0 \(off\) or a positive multiple"),
    (["eval_every_steps=-5"], r"eval_every_steps=-5 must be 0 \(off\)"),
    (["keep_checkpoints=0"], r"keep_checkpoints must be an integer >= 1"),
    (["pad_to=-1"], r"pad_to must be an integer >= 0"),
    # learning rate and regularization
    (["lr=-0.1"], r"lr=-0.1 is negative .*allow_negative_lr=True"),
    (["lr=nan"], r"lr must be a finite number, got nan"),
    (["lr=inf"], r"lr must be a finite number, got inf"),
    (["weight_decay.l2=-1e-4"], r"weight_decay.l2 must be a finite number >= 0"),
    (["weight_decay.decoupled=nan"], r"weight_decay.decoupled must be a finite number >= 0"),
    (["label_smoothing=1.0"], r"label_smoothing must be a number in \[0, 1\)"),
    (["label_smoothing=-0.1"], r"label_smoothing must be a number in \[0, 1\)"),
    (["optimizer.name=sgdd"], r"unknown optimizer 'sgdd'; valid optimizer names: .*adam"),
    (["schedule.name=cosinee"], r"unknown schedule 'cosinee'; valid schedule names: .*cosine"),
    (["schedule.warmup_steps=-1"], r"schedule.warmup_steps must be an integer >= 0"),
    (["schedule.warmup_steps=30"], r"warmup_steps=30 is longer than total_steps=20"),
    (["clip.name=bogus"], r"unknown clipping 'bogus'; valid: agc, none, norm"),
    # components and data
    (["model.name=mlpp"], r"unknown model 'mlpp'; valid model names: .*mlp"),
    (["model.norm=batchh"], r"unknown norm 'batchh'; valid norm names: .*batch"),
    (["model.activation=sigmoidd"], r"unknown activation 'sigmoidd'"),
    (["model.kernel_init=normall"], r"unknown initializer 'normall'"),
    (["model.width=0"], r"model.width must be an integer >= 1"),
    (["model.depth=-1"], r"model.depth must be an integer >= 0"),
    (["dataset="], r"dataset must name a data set"),
    (["train_split="], r"train_split must name a split"),
    (["preprocess.name=zca"], r"unknown preprocessing 'zca'; valid preprocessing names"),
    # devices
    (["mesh.data=0"], r"mesh: axis 'data' must be positive or -1, got 0"),
    (["mesh.model=-1"], r"mesh: at most one axis may be -1"),
    (["parallel_mode=spmd"], r"unknown parallel_mode 'spmd'; valid: jit, pmap"),
    (["pipeline.microbatches=0"], r"pipeline.microbatches must be an integer >= 1"),
    (["bn_scope=local"], r"unknown bn_scope 'local'; valid: global, per_device, ghost, groups"),
    (["ghost_batch_size=-4"], r"ghost_batch_size must be an integer >= 0"),
    (["bn_scope=ghost"], r"bn_scope='ghost' needs ghost_batch_size >= 1"),
    (["bn_scope=groups"], r"bn_scope='groups' needs bn_groups >= 1"),
    (["init_from.freeze_backbone=true"], r"freeze_backbone=True needs init_from.workdir"),
]


@pytest.mark.parametrize(("overrides", "pattern"), OVERRIDE_CASES, ids=lambda v: str(v))
def test_a_bad_field_fails_with_one_line(overrides, pattern):
    _fails(_config(overrides), pattern)


FIELD_CASES = [
    (dict(optimizer={"name": "sgd", "momentum": 0.9}), r"optimizer 'sgd': .*accepted arguments"),
    (dict(schedule={"name": "cosine", "alfa": 0.1}), r"schedule 'cosine': .*accepted arguments"),
    (dict(schedule={"name": "cosine", "alpha": 2.0}), r"alpha must be in \[0, 1\]"),
    (dict(clip={"name": "norm", "max_norm": 0.0}), r"clip.max_norm must be a number > 0"),
    (dict(clip={"name": "norm", "clipping": 1.0}), r"clip.clipping: not an option of .*'norm'"),
    (dict(model__widht=50), r"model 'mlp': .*widht.*accepted arguments"),
    (dict(model__dropout_rate=1.5), r"model.dropout_rate must be a number in \[0, 1\)"),
    (
        dict(model__norm="group", model__norm_kwargs={"num_grups": 2}),
        r"model.norm_kwargs: unknown option\(s\) num_grups; accepted: .*num_groups",
    ),
    (
        dict(eval_batchsize=100),
        r"unknown field\(s\) eval_batchsize in config; valid: allow_negative_lr, augment, .*, "
        r"eval_batch_size, .*, weight_decay$",
    ),
    (dict(weight_decay__l3=0.1), r"unknown field\(s\) l3 in weight_decay; valid: decoupled, l1, "),
    (dict(mesh__pipe=2), r"unknown field\(s\) pipe in mesh; valid: data, model, stage"),
    (dict(diag_unit_layers=None), r"diag_unit_layers must be a string of comma-separated"),
    (dict(evals={}), r"config.evals must name at least one split"),
    (dict(evals={"val/x": "test"}), r"metric prefix 'val/x' must be a name"),
    (dict(evals={"val": ""}), r"evals.val must name a split"),
    (dict(preprocess={"name": "pca", "componentz": 3}), r"preprocessing 'pca': .*componentz"),
    (dict(augment={"flipp": {}}), r"unknown augmentation 'flipp'; valid augmentation names"),
    (dict(augment={"flip": {"q": 0.5}}), r"augment.flip: unknown option\(s\) q; accepted: .*p"),
    (dict(mesh={"data": "4", "model": 1}), r"mesh.data must be an integer \(or -1\), got '4'"),
    (dict(keep_checkpoints=True), r"keep_checkpoints must be an integer >= 1 .*, got True"),
]


@pytest.mark.parametrize(("fields", "pattern"), FIELD_CASES, ids=lambda v: str(v))
def test_a_bad_field_set_in_a_config_file_fails_with_one_line(fields, pattern):
    _fails(_config(**fields), pattern)


def test_the_duration_is_checked_before_the_schedule():
    # total_steps=-5 with a warm-up used to surface as "warmup_steps must be in [0, total_steps]"
    message = _fails(_config(["total_steps=-5", "schedule.warmup_steps=2"]), "total_steps")
    assert "warmup" not in message


def test_nan_and_inf_parse_as_floats_so_that_validation_names_them():
    config = _config(["lr=nan"])
    assert math.isnan(config.lr)
    assert _config(["lr=-inf"]).lr == -math.inf
    with pytest.raises(ValueError, match=r"--config.batch_size: expected a int, got 'nan'"):
        _config(["batch_size=nan"])
