"""Checkpoint checksums: the digest against a NumPy reference, corruption caught on restore,
the error when no checkpoint can be restored, pruning of moved-aside checkpoints, and the
end-to-end repro (flip 64 bytes of a saved checkpoint, rerun, fall back, same result)."""

import logging
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from normlab.config import apply_overrides, load_config
from normlab.errors import NormlabError
from normlab.parallel.mesh import build_mesh
from normlab.train import checkpoint as checkpoint_module
from normlab.train.checkpoint import Checkpointer, abstract_like
from normlab.train.checksum import tree_digests
from normlab.train.loop import train
from normlab.train.metrics import read_metrics

REPO = Path(__file__).resolve().parents[1]
DIGITS = f"{REPO}/configs/mnist_mlp.py:dataset=digits,norm=batch,runlocal"
M32 = 0xFFFFFFFF


def _mix_ref(h: int) -> int:
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & M32
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & M32
    return h ^ (h >> 16)


def _digest_ref(x: np.ndarray) -> str:
    """The documented formula, word by word in Python integers."""
    if x.dtype.itemsize == 8:
        words = x.view(np.uint32).ravel()  # little-endian: low word first, as documented
    elif x.dtype.itemsize == 4:
        words = x.view(np.uint32).ravel()
    else:
        words = x.view({1: np.uint8, 2: np.uint16}[x.dtype.itemsize]).ravel()
    lanes = []
    for seed in (0x9E3779B9, 0x7F4A7C15):
        total = 0
        for i, w in enumerate(int(v) for v in words):
            total += _mix_ref(w ^ _mix_ref((i + seed) & M32))
        lanes.append(total & M32)
    return "".join(f"{v:08x}" for v in lanes)


def _tree():
    rng = np.random.default_rng(0)
    return {
        "w": jnp.asarray(rng.normal(size=(8, 6)).astype(np.float32)),
        "h": jnp.asarray(rng.normal(size=(5,)).astype(np.float16)),
        "k": jnp.asarray(rng.integers(0, 2**31, size=(2, 3), dtype=np.int32)),
        "b": jnp.asarray(rng.integers(0, 2, size=(4,)).astype(bool)),
    }


def test_digest_matches_reference_and_is_sharding_independent():
    tree = _tree()
    digests = tree_digests(tree)
    for name, leaf in tree.items():
        record = digests[f"['{name}']"]
        assert record["digest"] == _digest_ref(np.asarray(leaf)), name
        assert record["shape"] == list(leaf.shape) and record["dtype"] == str(leaf.dtype)
    mesh = build_mesh({"data": -1})
    sharded = jax.device_put(tree["w"], NamedSharding(mesh, PartitionSpec("data", None)))
    assert tree_digests({"w": sharded})["['w']"] == digests["['w']"]
    flipped = np.asarray(tree["w"]).copy()
    flipped.view(np.uint32)[3, 2] ^= 1 << 7
    assert tree_digests({"w": flipped})["['w']"]["digest"] != digests["['w']"]["digest"]


def _largest_state_file(step_dir: Path) -> Path:
    files = [f for f in (step_dir / "state").rglob("*") if f.is_file()]
    return max(files, key=lambda f: f.stat().st_size)


def _flip(path: Path, n: int = 64) -> None:
    data = bytearray(path.read_bytes())
    start = len(data) // 2 - n // 2
    for i in range(start, start + n):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.fixture
def saved(tmp_path):
    """A Checkpointer with two checkpoints (steps 1 and 2) of a small state."""
    ckpt = Checkpointer(tmp_path)
    # w big enough that orbax stores it in a data file of its own (small values sit in
    # index nodes that tensorstore checks itself)
    big = np.random.default_rng(1).normal(size=(64, 64)).astype(np.float32)
    states = {s: {**_tree(), "w": jnp.asarray(big + s)} for s in (1, 2)}
    for step, state in states.items():
        ckpt.save(step, {"params": state}, {"mean": np.full(3, float(step))}, {"note": step})
    ckpt.wait()
    yield ckpt, states
    ckpt.close()


def _target(template):
    return lambda pre, meta: abstract_like({"params": template})


def test_restore_verifies_and_falls_back_past_a_checksum_mismatch(saved, caplog):
    ckpt, states = saved
    state, pre, meta = ckpt.restore(2, _target(states[2]))
    assert meta == {"note": 2, "step": 2}  # checksums are the checkpointer's own business
    np.testing.assert_array_equal(pre["mean"], np.full(3, 2.0))
    # Flip bytes of one array's stored value: orbax reads it back without complaint.
    _flip(_largest_state_file(ckpt.directory / "2"))
    with pytest.raises(checkpoint_module.CheckpointCorruptError, match="checksum"):
        ckpt.restore(2, _target(states[2]))
    with caplog.at_level(logging.WARNING):
        state, _, meta = ckpt.restore_latest(_target(states[2]))
    assert meta["step"] == 1
    np.testing.assert_array_equal(np.asarray(state["params"]["w"]), np.asarray(states[1]["w"]))
    assert "step 2 is unreadable" in caplog.text and "checksum" in caplog.text
    assert ckpt.steps() == [1]
    assert [p.name.split("_")[0] for p in (ckpt.directory.parent / "unreadable_checkpoints")
            .iterdir()] == ["2"]


def test_old_checkpoint_without_checksums_restores(tmp_path):
    ckpt = Checkpointer(tmp_path)
    state = {"params": _tree()}
    # what save() wrote before checksums existed
    ckpt._manager.save(
        5,
        args=ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            preprocess=ocp.args.StandardSave({"empty": np.zeros(())}),
            meta=ocp.args.JsonSave({"step": 5}),
        ),
    )
    ckpt.wait()
    restored, pre, meta = ckpt.restore_latest(lambda p, m: abstract_like(state))
    assert meta == {"step": 5} and pre == {}
    jax.tree.map(np.testing.assert_array_equal, restored, state)
    ckpt.close()


def test_no_restorable_checkpoint_says_mismatch_or_corrupt(saved):
    ckpt, states = saved
    other = {**states[2], "w": jnp.zeros((64, 7))}
    with pytest.raises(NormlabError, match=r"\[1, 2\] do not fit this config.*\['w'\].*new "
                       r"--workdir; nothing was overwritten") as err:
        ckpt.restore_latest(_target(other))
    assert "corrupt" not in str(err.value) and "\n" not in str(err.value)
    for step in (1, 2):
        _flip(_largest_state_file(ckpt.directory / str(step)))
    with pytest.raises(NormlabError, match=r"\[1, 2\] are corrupt or unreadable.*checksum.*move "
                       rf"{ckpt.directory} away") as err:
        ckpt.restore_latest(_target(states[2]))
    assert "do not fit" not in str(err.value)
    assert ckpt.steps() == [1, 2]  # nothing moved


def test_moved_aside_checkpoints_are_pruned(tmp_path):
    ckpt = Checkpointer(tmp_path)
    ckpt.save(1, {"params": _tree()}, {}, {})
    ckpt.wait()
    aside = tmp_path / "unreadable_checkpoints"
    for name in ("9_100", "7_200", "8_300"):  # moved aside earlier: step_unixtime
        (aside / name).mkdir(parents=True)
    moved = ckpt.move_aside(1)
    kept = sorted(p.name for p in aside.iterdir())
    assert checkpoint_module.KEEP_UNREADABLE == 3
    assert kept == sorted(["7_200", "8_300", moved.name])  # the oldest move went, not step 9
    assert ckpt.steps() == []
    ckpt.close()


def _config(*overrides):
    c = load_config(DIGITS)
    apply_overrides(c, ["total_steps=30", "checkpoint_every_steps=10", *overrides])
    return c


@pytest.mark.slow
def test_bit_flipped_checkpoint_repro(tmp_path, caplog):
    """The issue's repro: flip 64 bytes in the largest state file of the newest checkpoint."""
    reference = train(_config(), tmp_path / "ref", progress=False)
    run = tmp_path / "run"
    train(_config("total_steps=20"), run, progress=False)  # checkpoints 10 and 20
    _flip(_largest_state_file(run / "checkpoints" / "20"))
    with caplog.at_level(logging.WARNING):
        resumed = train(_config(), run, progress=False)
    assert "step 20 is unreadable" in caplog.text and "checksum" in caplog.text
    assert resumed["step"] == 30
    assert [r["step"] for r in read_metrics(run)][-5:] == [10, 15, 20, 25, 30]
    assert resumed["final"]["eval_loss"] == reference["final"]["eval_loss"]

    def params(workdir):
        return ocp.StandardCheckpointer().restore(workdir / "checkpoints/30/state")["params"]

    jax.tree.map(np.testing.assert_array_equal, params(run), params(tmp_path / "ref"))
