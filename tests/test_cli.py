import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from avtool.cli import app, main

runner = CliRunner()


def test_every_command_has_help():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("env", "sample", "chunk", "bench"):
        assert command in result.output


def test_chunk_help_explains_every_option_with_its_unit():
    result = runner.invoke(app, ["chunk", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    for option, unit in [
        ("--chunk-len", "seconds"), ("--crf", "0-51"), ("--fps", "frames/s"), ("--short-side", "pixels"),
        ("--gop", "seconds"), ("--batch-size", "clips per training step"), ("--step-time", "seconds"),
        ("--read-speed", "MB/s"), ("--safety", "Fraction"), ("--encoders", "parallel"), ("--shard", "i/n"),
        ("--plan", "write nothing"),
    ]:  # fmt: skip
        assert option in text and unit in text, option


def test_env_json_reports_versions_and_hardware():
    result = subprocess.run([sys.executable, "-m", "avtool.cli", "env", "--json"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["cpu_count"] >= 1 and info["ffmpeg_version"].startswith("ffmpeg version")
    assert set(info["sdpa_backends"]) == {"math", "flash", "efficient", "cudnn"}
    assert info["av"] and info["decord"] and info["open_clip"]
    # Run from this checkout, a result names the commit that measured it (a wheel install gives None).
    head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True,
                          cwd=Path(__file__).parent)  # fmt: skip
    if head.returncode == 0:
        assert info["avtool_commit"].removesuffix("+dirty") == head.stdout.strip()


def test_bad_option_value_is_one_line_error(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "avtool.cli", "chunk", str(tmp_path), str(tmp_path / "o"), "--shard", "five"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "--shard" in result.stderr


def test_an_installed_copy_inside_another_repository_names_no_commit(tmp_path):
    import shutil

    import avtool

    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / ".gitignore").write_text("site/\n")
    shutil.copytree(Path(avtool.__file__).parent, tmp_path / "site" / "avtool")
    code = "import avtool.env as e; print(e.__file__); print(e._source_revision())"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                            env={**os.environ, "PYTHONPATH": str(tmp_path / "site")})  # fmt: skip
    path, revision = result.stdout.split()
    assert path.startswith(str(tmp_path)) and revision == "None"


def test_error_lines_print_brackets_literally(monkeypatch, capsys):
    # Rich would read "[flash]" in "pip install 'avtool[flash]'" as markup and drop it.
    monkeypatch.setattr(sys, "argv", ["avtool", "bench", "model", "--tiny", "--device", "cpu", "--attn", "flash-attn"])
    monkeypatch.setattr(importlib.import_module("avtool.models.attention"), "flash_attn_func", None)
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    assert "pip install 'avtool[flash]'" in capsys.readouterr().err
