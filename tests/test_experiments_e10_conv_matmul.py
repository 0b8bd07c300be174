"""E10 tiny: im2col, Toeplitz and XLA conv agree with a float64 reference; timings are written."""

from normlab.reports.experiment import load_experiment


def test_e10_tiny(tmp_path):
    results = load_experiment("e10_conv_matmul").main(["--tiny", "--out", str(tmp_path)])
    # float32 with HIGHEST precision vs float64: rounding only
    assert results["worst_relative_error"] < 1e-5
    assert len(results["checks"]) == 3
    for grad in (False, True):
        (row,) = results["timings"][grad]
        assert all(row[f"{name}_ms"] > 0 for name in ("xla", "im2col", "toeplitz"))
    text = (tmp_path / "report.md").read_text()
    assert "Correctness" in text and "| git revision |" in text
    assert (tmp_path / "speed.png").exists()
