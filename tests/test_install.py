"""An installed toolkit outside the repository: a wheel of s2s in a fresh virtual environment
has its commands and its configs, and runs the toy demo end to end."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def test_a_wheel_installs_commands_and_configs_that_run_the_demo(tmp_path):
    dist = tmp_path / "dist"
    build = [sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "-q", "-w", str(dist)]
    # with this interpreter's setuptools when it can build the wheel, else an isolated one
    if subprocess.run(build + ["--no-build-isolation"], capture_output=True,
                      timeout=600).returncode:
        subprocess.run(build, check=True, capture_output=True, timeout=600)
    [wheel] = dist.glob("s2s-*.whl")
    venv = tmp_path / "venv"
    # torch and the other dependencies come from this interpreter's site-packages
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)],
                   check=True, timeout=300)
    bin_dir = venv / "bin"
    subprocess.run([str(bin_dir / "pip"), "install", "-q", "--no-deps", "--no-index",
                    str(wheel)], check=True, capture_output=True, timeout=300)
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    env.pop("PYTHONPATH", None)

    def command(*args: str, stdin: str = "") -> subprocess.CompletedProcess:
        result = subprocess.run(list(args), cwd=work, env=env, input=stdin,
                                capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-2000:]
        return result

    where = command(str(bin_dir / "python"), "-c", "import s2s; print(s2s.__file__)")
    assert where.stdout.strip().startswith(str(venv))  # the wheel's s2s, not the repository's
    command("s2s-train", "--config", "toy", "--set", "training.max_steps=30",
            "--set", "data.toy_train_size=500", "--set", "training.validate_every=15",
            "--set", "training.output_dir=run", "--set", "training.progress_bar=false")
    assert (work / "run" / "best.pt").is_file()
    translated = command("s2s-translate", "--checkpoint", "run/best.pt", stdin="a b c\n")
    assert len(translated.stdout.splitlines()) == 1
    scored = command(str(bin_dir / "python"), "-m", "s2s", "evaluate", "--checkpoint",
                     "run/best.pt", "--split", "test", "--beam", "1", "--json")
    assert '"bleu"' in scored.stdout
    for name in ("s2s-evaluate", "s2s-average", "s2s-export", "s2s-plot"):
        assert (bin_dir / name).is_file()
