"""Bad input to any `normlab` subcommand ends with one `error:` line and status 1, never a
traceback; an error in a config file names the file and line of the config's own code;
`--debug` (or NORMLAB_DEBUG=1) re-raises instead; Ctrl-C is status 130.

The repros of issue 15 (items 12, 13) and issue 14 (item 8). Everything runs in-process through
`normlab.cli.main` (nothing here compiles or trains), except one subprocess that checks JAX's
"Unable to initialize backend" line is not shown.
"""

import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from normlab import cli
from normlab.errors import ConfigError
from normlab.sweep.expand import Sweep, Trial

REPO = Path(__file__).resolve().parents[1]
SMOKE = "configs/mnist_mlp.py:dataset=digits,norm=batch,runlocal"


def _config_file(tmp_path: Path, text: str, name: str = "user_config.py") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def _error_line(capsys, argv: list[str]) -> str:
    """Runs `normlab argv`; asserts status 1 and a single `error:` line on stderr; returns it."""
    status = cli.main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert status == 1, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]


def _train(config: str | Path, workdir: Path, *overrides: str) -> list[str]:
    return ["train", "--config", str(config), "--workdir", str(workdir), *overrides]


# --------------------------------------------------------------------- config files


def test_a_syntax_error_names_the_file_and_line(tmp_path, capsys):
    path = _config_file(tmp_path, """
        from normlab.train.defaults import base_config


        def get_config(arg=None)
            return base_config()
        """)
    line = _error_line(capsys, _train(path, tmp_path / "w"))
    assert line.startswith(f"error: {path}:4: SyntaxError: ")


def test_get_config_raising_names_the_line_and_function(tmp_path, capsys):
    path = _config_file(tmp_path, """
        from normlab.train.defaults import base_config


        def get_config(arg=None):
            c = base_config()
            options = {}
            c.lr = options["foo"]
            return c
        """)
    line = _error_line(capsys, _train(path, tmp_path / "w"))
    assert line == f"error: in {path}:7 (get_config): KeyError: 'foo'"


def test_an_error_in_a_helper_of_the_config_names_the_helper(tmp_path, capsys):
    path = _config_file(tmp_path, """
        from normlab.train.defaults import base_config


        def _width(arg):
            return 100 // int(arg)


        def get_config(arg=None):
            c = base_config()
            c.model.width = _width(arg)
            return c
        """)
    line = _error_line(capsys, _train(f"{path}:0", tmp_path / "w"))
    expected = "ZeroDivisionError: integer division or modulo by zero"
    assert line == f"error: in {path}:5 (_width): {expected}"


def test_a_failing_import_in_a_config_names_the_import_line(tmp_path, capsys):
    path = _config_file(tmp_path, """
        import math
        from normlab_no_such_module import helper
        """)
    line = _error_line(capsys, _train(path, tmp_path / "w"))
    expected = f"error: {path}:2: ModuleNotFoundError: No module named 'normlab_no_such_module'"
    assert line == expected


def test_a_config_that_is_not_a_python_file(tmp_path, capsys):
    path = tmp_path / "config.json"
    path.write_text("{}")
    line = _error_line(capsys, _train(path, tmp_path / "w"))
    assert "is not a Python file" in line and str(path) in line


def test_normlab_own_messages_from_get_config_stay_as_they_are(capsys, tmp_path):
    line = _error_line(capsys, _train("configs/mnist_mlp.py:nrom=batch", tmp_path / "w"))
    assert line.startswith("error: unknown config argument 'nrom'; valid arguments: ")


def test_sweep_raising_names_the_line(tmp_path, capsys):
    path = _config_file(tmp_path, """
        from normlab.train.defaults import base_config


        def get_config(arg=None):
            return base_config()


        def sweep(add, arg=None):
            for lr in (0.1, 0.2):
                add(lr=lr / 0)
        """)
    argv = ["sweep", "--config", str(path), "--workdir", str(tmp_path / "s"), "--dry-run"]
    line = _error_line(capsys, argv)
    assert line == f"error: in {path}:10 (sweep): ZeroDivisionError: float division by zero"


def test_paths_inside_the_working_directory_are_shown_relative(tmp_path, capsys, monkeypatch):
    _config_file(tmp_path, "x = 1 +\n")
    monkeypatch.chdir(tmp_path)
    line = _error_line(capsys, _train("user_config.py", tmp_path / "w"))
    assert line.startswith("error: user_config.py:1: SyntaxError: ")


# --------------------------------------------------------------------- validation via the CLI


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("--config.eval_batch_size=0", "error: eval_batch_size must be an integer >= 1, got 0"),
        ("--config.lr=nan", "error: lr must be a finite number, got nan"),
        ("--config.keep_checkpoints=0", "error: keep_checkpoints must be an integer >= 1"),
        ("--config.total_steps=-5", "error: total_steps must be an integer >= 0"),
    ],
)
def test_bad_values_fail_before_anything_compiles(tmp_path, capsys, override, message):
    workdir = tmp_path / "w"
    line = _error_line(capsys, _train(SMOKE, workdir, override))
    assert line.startswith(message)
    assert not (workdir / "checkpoints").exists() and not (workdir / "metrics.jsonl").exists()


def test_a_workdir_that_is_a_file(tmp_path, capsys):
    workdir = tmp_path / "w"
    workdir.write_text("not a directory")
    line = _error_line(capsys, _train(SMOKE, workdir))
    assert str(workdir) in line


def test_a_workdir_that_cannot_be_created(capsys):
    workdir = "/proc/normlab_test/w"  # /proc takes no new folders, not even from root
    line = _error_line(capsys, _train(SMOKE, Path(workdir)))
    assert workdir in line


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_workdir(tmp_path, capsys):
    workdir = tmp_path / "w"
    workdir.mkdir()
    workdir.chmod(0o500)
    try:
        line = _error_line(capsys, _train(SMOKE, workdir))
    finally:
        workdir.chmod(0o700)
    assert str(workdir) in line


# --------------------------------------------------------------------- JSON files, reports


def test_a_corrupt_sweep_json_names_the_file(tmp_path, capsys):
    (tmp_path / "sweep.json").write_text('{"config": "x.py", "trials": [')
    for argv in (["report", str(tmp_path)], ["sweep", "--workdir", str(tmp_path), "--status"]):
        line = _error_line(capsys, argv)
        assert line.startswith(f"error: {tmp_path / 'sweep.json'} is not valid JSON (line 1")


def test_a_sweep_json_without_its_fields_names_the_file(tmp_path, capsys):
    (tmp_path / "sweep.json").write_text('{"config": "x.py"}')
    line = _error_line(capsys, ["report", str(tmp_path)])
    assert line.startswith(f"error: {tmp_path / 'sweep.json'} is not a sweep record")


@pytest.mark.parametrize("command", ["eval", "ensemble"])
def test_a_corrupt_config_json_names_the_file(tmp_path, capsys, command):
    workdir = tmp_path / "run"
    (workdir / "checkpoints").mkdir(parents=True)
    (workdir / "config.json").write_text('{"lr": 0.1,')
    argv = ["eval", "--workdir", str(workdir)] if command == "eval" else ["ensemble", str(workdir)]
    line = _error_line(capsys, argv)
    assert str(workdir / "config.json") in line


def test_a_huge_float_is_not_written_as_a_39_digit_integer(tmp_path, capsys):
    trial_dir = tmp_path / "lr=1e+38"
    trial_dir.mkdir()
    summary = {"finished": True, "step": 20, "total_steps": 20, "final": {"eval_accuracy": 0.5},
               "best": {"eval_accuracy": 0.5}, "wall_seconds_this_session": 12345.6}  # fmt: skip
    (trial_dir / "summary.json").write_text(json.dumps(summary))
    trial = Trial("lr=1e+38", {"lr": 1e38}, ["lr=1e+38"], str(trial_dir), ["true"])
    Sweep.create(tmp_path, "configs/mnist_mlp.py", [trial]).save()
    assert cli.main(["report", str(tmp_path), "--metrics", ""]) == 0
    capsys.readouterr()
    markdown = (tmp_path / "report" / "results.md").read_text()
    row = next(line for line in markdown.splitlines() if line.startswith("| lr=1e+38"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert "1e+38" in cells and "12345.6" in cells, row
    assert "0" * 10 not in row


# --------------------------------------------------------------------- unexpected errors, --debug


def _failing_eval(monkeypatch, exc: BaseException) -> None:
    def fail(args, extra):
        raise exc

    monkeypatch.setattr(cli, "_cmd_eval", fail)


def test_an_unexpected_error_is_one_line_with_a_hint(monkeypatch, capsys):
    _failing_eval(monkeypatch, RuntimeError("XLA failed\n  and here are 40 more lines"))
    line = _error_line(capsys, ["eval", "--workdir", "w"])
    assert line == "error: RuntimeError: XLA failed (rerun with --debug for the traceback)"


@pytest.mark.parametrize(
    "argv", [["--debug", "eval", "--workdir", "w"], ["eval", "--debug", "--workdir", "w"]]
)
def test_debug_reraises(monkeypatch, argv):
    _failing_eval(monkeypatch, RuntimeError("boom"))
    with pytest.raises(RuntimeError, match="boom"):
        cli.main(argv)


def test_debug_from_the_environment_reraises_with_the_config_cause(tmp_path, monkeypatch):
    path = _config_file(tmp_path, "def get_config(arg=None):\n    return 1 / 0\n")
    monkeypatch.setenv("NORMLAB_DEBUG", "1")
    with pytest.raises(ConfigError, match=r"get_config.*ZeroDivisionError") as info:
        cli.main(_train(path, tmp_path / "w"))
    assert isinstance(info.value.__cause__, ZeroDivisionError)  # the original traceback, chained


def test_keyboard_interrupt_exits_130_quietly(monkeypatch, capsys):
    _failing_eval(monkeypatch, KeyboardInterrupt())
    assert cli.main(["eval", "--workdir", "w"]) == 130
    assert capsys.readouterr().err == ""


# --------------------------------------------------------------------- JAX's platform probing


def test_the_platform_probing_line_is_filtered_but_other_jax_warnings_are_not(caplog):
    cli.configure_logging()
    probing = logging.getLogger("jax._src.xla_bridge")
    with caplog.at_level(logging.INFO):
        probing.info("Unable to initialize backend 'tpu': INTERNAL: Failed to open libtpu.so")
        probing.info("Unable to initialize backend 'rocm': module not found")
        probing.warning("An NVIDIA GPU may be present on this machine, but a CUDA-enabled jaxlib")
    messages = [r.getMessage() for r in caplog.records if r.name == probing.name]
    assert messages == ["An NVIDIA GPU may be present on this machine, but a CUDA-enabled jaxlib"]


def test_a_real_run_shows_no_backend_probing(tmp_path):
    # JAX probes every platform when JAX_PLATFORMS is unset; the config touches the devices
    path = _config_file(tmp_path, """
        import jax


        def get_config(arg=None):
            jax.devices()
            return {}["foo"]
        """)
    env = {k: v for k, v in os.environ.items() if k not in ("JAX_PLATFORMS", "XLA_FLAGS")}
    result = subprocess.run(
        [sys.executable, "-m", "normlab", *_train(path, tmp_path / "w")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip() == f"error: in {path}:6 (get_config): KeyError: 'foo'"
