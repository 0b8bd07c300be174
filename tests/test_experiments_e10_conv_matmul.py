"""E10 tiny: im2col, Toeplitz and XLA conv agree with a float64 reference (stride 2 SAME on odd
sizes, asymmetric explicit padding with dilation, plain SAME), forward and gradients; and the
same check flags a conv that is wrong by a flipped kernel or misplaced padding."""

import jax
import numpy as np
import pytest

from normlab.reports.experiment import load_experiment


@pytest.fixture(scope="module")
def e10():
    return load_experiment("e10_conv_matmul")


def test_e10_tiny_algorithms_match_the_reference(tmp_path, e10):
    results = e10.main(["--tiny", "--out", str(tmp_path)])
    assert [c["shape_out"] for c in results["checks"]] == [[2, 5, 4, 5], [2, 6, 6, 3],
                                                          [2, 8, 8, 4]]
    # float32 with HIGHEST precision vs float64: rounding only
    assert results["worst_relative_error"] < 1e-5
    for check in results["checks"]:
        assert set(check) == {"shape_out", *e10.ALGORITHMS}
    text = (tmp_path / "report.md").read_text()
    assert "## Correctness" in text and "## Speed" in text and "| git revision |" in text
    assert (tmp_path / "speed.png").exists()


def test_reference_conv_by_hand(e10):
    # 1 image 3×3, one channel, a 2×2 kernel, VALID: four dot products written out
    x = np.arange(9.0).reshape(1, 3, 3, 1)
    k = np.array([[1.0, 2.0], [3.0, 4.0]]).reshape(2, 2, 1, 1)
    expected = [[0 + 2 + 9 + 16, 1 + 4 + 12 + 20], [3 + 8 + 18 + 28, 4 + 10 + 21 + 32]]
    np.testing.assert_array_equal(e10.reference_conv(x, k, 1, "VALID", 1)[0, :, :, 0], expected)
    # SAME on 3×3 with a 2×2 kernel pads one pixel at the end (TensorFlow/XLA convention)
    same = e10.reference_conv(x, k, 1, "SAME", 1)[0, :, :, 0]
    assert same[2, 2] == 8 * 1 and same[0, 2] == 2 * 1 + 5 * 3


def test_the_check_catches_a_wrong_conv(e10):
    xla = e10.CONV_ALGORITHMS.get("xla")

    def flipped(x, k, **kw):  # a true convolution instead of a cross-correlation
        return xla(x, k[::-1, ::-1], **kw)

    def pad_at_end(x, k, *, strides, padding, dilation, precision):
        del strides, padding, dilation  # the case's: 2, SAME = (1, 1) per side, 1
        # both rows of SAME's vertical padding after the image: the same output shape
        return jax.lax.conv_general_dilated(
            x, k, (2, 2), ((0, 2), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"),
            precision=precision)

    case = e10.CASES[2]  # 9×7 input, 3×3 kernel, stride 2, SAME
    check = e10.check_case(case, 0, {"flipped": flipped, "pad_at_end": pad_at_end, "xla": xla})
    assert check["xla"]["forward"] < 1e-5
    for wrong in ("flipped", "pad_at_end"):
        assert check[wrong]["forward"] > 0.1, wrong
