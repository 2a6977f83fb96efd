"""The command line as a user meets it: every command listed, user errors in one line with exit code 2."""

from __future__ import annotations

import subprocess
import sys

from agebias.cli import main

COMMANDS = ("generate", "finetune", "evaluate", "embed", "align", "datasets", "search", "run", "doctor")


def _agebias(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "agebias", *args], capture_output=True, text=True, timeout=120)


def test_help_lists_every_command():
    proc = _agebias("--help")
    assert proc.returncode == 0
    for command in COMMANDS:
        assert command in proc.stdout
    assert "not built yet" not in proc.stdout


def test_the_program_exits_with_mains_code_after_freezing_the_gc(monkeypatch):
    """``agebias`` (console script and ``python -m agebias``) is :func:`run`: main's code, with what is left frozen
    out of the final garbage collections; ``python -m agebias`` gives exit code 2 on a user error."""
    import gc

    import agebias.cli as cli

    frozen = []
    monkeypatch.setattr(gc, "freeze", lambda: frozen.append(True))  # the test process itself stays collectable
    monkeypatch.setattr(cli, "main", lambda: 2)
    try:
        cli.run()
    except SystemExit as done:
        assert done.code == 2 and frozen == [True]
    else:
        raise AssertionError("run() did not exit")
    proc = _agebias("run", "missing.toml")
    assert proc.returncode == 2 and proc.stderr.startswith("error: ")


def test_user_errors_are_one_line_exit_2(tmp_path, capsys):
    cases = [
        ["embed", str(tmp_path / "x.png")],  # missing --model
        ["nosuchcommand"],
        ["run", str(tmp_path / "missing.toml")],
        ["finetune", "--data", str(tmp_path), "--backbone", "x.pth", "--out", str(tmp_path / "o"), "--epochs", "x"],
    ]
    for argv in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, (argv, err)


def test_bad_experiment_file_reports_the_key(tmp_path, capsys):
    exp = tmp_path / "exp.toml"
    exp.write_text("[finetune]\nlearning_rate = 0.1\n")
    assert main(["run", str(exp)]) == 2
    assert "unknown key 'learning_rate' in [finetune]" in capsys.readouterr().err


def test_module_entry_point_exit_code(tmp_path):
    proc = _agebias("run", str(tmp_path / "missing.toml"))
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "not found" in proc.stderr
