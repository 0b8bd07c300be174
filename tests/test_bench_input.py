"""`normlab bench --input`: the fake JPEGs it times, its JSON rows and table, its errors."""

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest

from normlab.bench import command
from normlab.bench.feeds import rss_bytes
from normlab.bench.input import SHAPES, fake_jpegs
from normlab.data.transforms import decode


def test_fake_jpegs_are_imagenet_like():
    blobs = fake_jpegs(8)
    assert [decode(b).shape for b in blobs] == [(*s, 3) for s in SHAPES] * 2
    assert all(b[:2] == b"\xff\xd8" for b in blobs)
    assert 40_000 < np.mean([len(b) for b in blobs]) < 200_000  # ImageNet's average is ~110 KB
    assert fake_jpegs(2, seed=1) != fake_jpegs(2, seed=2)


@pytest.fixture(scope="module")
def input_run(tmp_path_factory):
    path = tmp_path_factory.mktemp("input") / "input.json"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert command.main(["--input", "--quick", "--input-threads", "1,2",
                             "--json", str(path)]) == 0
    return json.loads(path.read_text()), out.getvalue()


def test_input_rows_and_table(input_run):
    result, printed = input_run
    rows = result["input"]["transforms"]
    assert {(r["what"], r["threads"]) for r in rows} >= {
        ("decode", 1), ("train", 1), ("train", 2), ("eval", 1), ("eval", 2)}
    assert {r["decoder"] for r in rows if r["what"] == "decode"} >= {"pillow"}
    images = result["input"]["images"]
    for r in rows:
        assert r["images_per_s"] == pytest.approx(images / (r["median_ms"] / 1e3))
        assert r["images_per_s_per_thread"] == pytest.approx(r["images_per_s"] / r["threads"])
    streams = result["input"]["streams"]
    assert {(s["pipeline"], s["threads"]) for s in streams} == {
        (p, t) for p in ("StreamSource", "grain") for t in (1, 2)}
    assert "models" not in result and "norm_ops" not in result
    assert printed.count("| train |") == 2 and printed.count("| StreamSource |") == 2
    assert "→ 64 px" in printed


def test_training_feeds_rows_and_tables(input_run):
    result, printed = input_run
    feeds = result["input"]["feeds"]
    feed, rss, model = feeds["feed"], feeds["rss"], feeds["model"]
    assert (feed["model"], feed["batch"], feed["train_images"]) == ("mlp", 8, 40)
    assert {"device_step_ms", "stream_step_ms", "stream_ratio"} <= feed.keys()
    assert [step for step, _ in rss["samples"]] == [4, 8, 12]  # every 4 of 12 streamed steps
    sizes = [size for _, size in rss["samples"]]
    assert (rss["start_bytes"], rss["half_bytes"], rss["end_bytes"], rss["max_bytes"]) == (
        sizes[0], sizes[1], sizes[-1], max(sizes))
    assert rss["half_step"] == 8
    assert rss["flat"] == (abs(sizes[-1] - sizes[1]) <= 0.01 * sizes[1])
    assert model["images_per_s"] == pytest.approx(model["batch"] / (model["step_ms"] / 1e3))
    one_thread = next(r["images_per_s"] for r in result["input"]["transforms"]
                      if r["what"] == "train" and r["threads"] == 1)
    assert f"| {model['images_per_s'] / one_thread:.3g} |" in printed  # decode threads needed
    assert printed.count("| device |") == printed.count("| stream |") == 1


def test_rss_is_the_kernels_resident_size():
    status = Path("/proc/self/status")
    if not status.exists():
        pytest.skip("no /proc on this system")
    line = next(x for x in status.read_text().splitlines() if x.startswith("VmRSS:"))
    assert abs(rss_bytes() - int(line.split()[1]) * 1024) < 16 * 2**20


@pytest.mark.parametrize("argv,match", [
    (["--input", "--input-threads", "0"], "--input-threads must be > 0"),
    (["--input", "--input-threads", ""], "--input-threads must list at least one value"),
    (["--input", "--input-size", "-1"], "--input-size must be > 0"),
])
def test_bad_input_arguments(argv, match, capsys):
    assert command.main(argv) == 1
    assert match in capsys.readouterr().err
