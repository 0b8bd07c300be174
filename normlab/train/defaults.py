"""Every field of a training config with its default; config files start from `base_config()`.

Durations: exactly one of `total_steps` / `total_epochs` is non-zero (resolved in
`validate.resolve_total_steps`). Intervals (`*_every_steps`) are 0 for "off" and must be
multiples of `steps_per_call`, the number of steps run per jitted call.

Transfer learning (`init_from`, SPEC §1.9): with `init_from.workdir` set, a new run starts from
that finished run's newest checkpoint: every param and batch statistic except the top-level
params entry `init_from.head` (freshly initialized for this run's number of classes). The new
run fits its own preprocessing on its own data. `freeze_backbone=True` trains only the head:
the optimizer's updates outside it are zero and the step runs the model in inference mode, so
the backbone's BN statistics stay as trained and dropout is off. A run that has checkpoints of
its own resumes from them; `init_from` only decides how a run starts.

Snapshot ensembles: `schedule.name = "snapshot"` (cyclic cosine, `num_snapshots` cycles) also
saves the state at the end of every cycle under workdir/snapshots/<step> (all kept).

Many seeds: `num_seeds = K > 1` trains seeds `seed, ..., seed + K - 1` in one program, each equal
to its own run, writing workdir/seeds/<i>/ and an across-seed summary (`normlab.train.seeds`);
the data set on the devices and data parallelism only (checked in `validate`).
"""

from __future__ import annotations

import ml_collections

# config.dtype: the compute dtype of the model (params, optimizer state, norm statistics and the
# loss stay float32 either way; `normlab.models`)
DTYPES = ("float32", "bfloat16")


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0
    # K > 1: seeds seed, seed + 1, ..., seed + K - 1 trained in one program (vmap over a
    # stacked state; normlab.train.seeds), each equal to its own run with that seed
    c.num_seeds = 1
    # data: `evals` maps a metric prefix to a split (metrics `<prefix>_loss`, `<prefix>_accuracy`)
    c.dataset = "mnist"
    c.data_dir = ""  # archives folder; "" = $NORMLAB_DATA_DIR
    c.tfds_dir = ""  # prepared TFDS data; "" = $NORMLAB_TFDS_DIR or ~/.cache/normlab/tfds
    c.train_split = "train"
    c.evals = ml_collections.ConfigDict({"eval": "test"})
    # "5,6,7,8,9": only those classes, relabelled 0..4 in this order, in the train and eval
    # splits alike, each split string slicing the subset ("train[:100]": its first 100);
    # "": every class (normlab.data.subset)
    c.classes = ""
    c.pad_to = 0
    c.preprocess = ml_collections.ConfigDict({"name": "none"})
    c.augment = ml_collections.ConfigDict()  # name -> kwargs, applied in order
    # how the data reaches the step (normlab.train.stream_input): "device" holds the split on
    # the devices, "stream" reads each step's rows on the host (`threads` workers, `prefetch`
    # chunks ahead), "auto" holds it when its uint8 images fit `device_budget_mb`; encoded
    # images (ImageNet, image folders) always stream, decoded and cropped to `image_size`
    c.data = ml_collections.ConfigDict(
        {"pipeline": "auto", "device_budget_mb": 2048, "threads": 4, "prefetch": 2,
         "image_size": 224}
    )
    # durations and intervals
    c.batch_size = 128
    c.eval_batch_size = 1000
    c.total_steps = 0
    c.total_epochs = 0
    c.steps_per_call = 100
    c.log_every_steps = 100
    c.eval_every_steps = 1000
    c.checkpoint_every_steps = 1000
    c.diag_every_steps = 0
    c.diag_batch_size = 256
    # layers (paths as `collect_preacts` names them, comma-separated) whose every unit's
    # percentiles the diagnostics also record, e.g. "layer_02/norm_act"; "": none
    c.diag_unit_layers = ""
    c.keep_checkpoints = 3
    # model: `name` from the model registry, every other key is a constructor argument
    c.model = ml_collections.ConfigDict({"name": "mlp"})
    c.dtype = "float32"  # compute dtype, one of DTYPES ("bfloat16": mixed precision)
    # optimization
    c.lr = 0.1
    # a negative lr is gradient ascent: refused unless asked for (a sign typo trains silently)
    c.allow_negative_lr = False
    c.optimizer = ml_collections.ConfigDict({"name": "sgd"})
    c.schedule = ml_collections.ConfigDict({"name": "constant", "warmup_steps": 0})
    c.clip = ml_collections.ConfigDict({"name": "none"})
    c.weight_decay = ml_collections.ConfigDict(
        {"l2": 0.0, "l1": 0.0, "decoupled": 0.0, "proxy": 0.0}
    )
    c.label_smoothing = 0.0
    # transfer learning: start from another run's backbone (see the module docstring)
    c.init_from = ml_collections.ConfigDict(
        {"workdir": "", "head": "head", "freeze_backbone": False}
    )
    # devices (normlab.parallel.plan): one mesh size may be -1 (the remaining devices)
    c.mesh = ml_collections.ConfigDict({"data": -1, "model": 1, "stage": 1})
    c.parallel_mode = "jit"  # or "pmap": the legacy data-parallel step, for comparison
    # logical axis -> mesh axis (None: replicated); normlab.parallel.logical
    c.sharding_rules = (("batch", "data"), ("embed", None), ("mlp", "model"), ("classes", None))
    c.pipeline = ml_collections.ConfigDict({"microbatches": 1})  # GPipe, when mesh.stage > 1
    # BatchNorm statistics over: global | per_device | ghost (ghost_batch_size) | groups
    # (bn_groups groups of data devices); normlab.parallel.bn_scope
    c.bn_scope = "global"
    c.ghost_batch_size = 0
    c.bn_groups = 0
    return c


def shrink_for_runlocal(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Turns any config into a seconds-long smoke test (big_vision's `runlocal`)."""
    c.total_steps, c.total_epochs = 20, 0
    c.steps_per_call = 5
    c.log_every_steps = 5
    c.eval_every_steps = 10
    c.checkpoint_every_steps = 10
    c.batch_size = min(c.batch_size, 32)
    c.eval_batch_size = 256
    c.diag_batch_size = 32
    if c.diag_every_steps:
        c.diag_every_steps = 10
    return c
