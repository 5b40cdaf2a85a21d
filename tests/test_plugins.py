"""A user's own attention type, registered in a module outside s2s and named by
``model.plugins``, trains, evaluates and translates end to end."""

from __future__ import annotations

import inspect
import subprocess
import sys
from pathlib import Path

from tests.test_attention import CosineAttention
from tests.test_cli import assert_user_error

ROOT = Path(__file__).resolve().parents[1]

# the module a user writes: docs/architecture.md's cosine attention (tests/test_attention.py
# holds the class to the attention contract) under a registry line of its own
PLUGIN = "\n".join([
    "import torch",
    "import torch.nn.functional as F",
    "from torch import nn",
    "from s2s.model.attention import WEIGHTED_VALUES, Attention, register",
    "",
    inspect.getsource(CosineAttention),
    "register('cosine_plugin')(CosineAttention)",
])


def run(cwd: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=cwd, input=stdin, capture_output=True,
                          text=True, timeout=300)


def test_a_plugin_attention_trains_evaluates_and_translates(tmp_path):
    (tmp_path / "my_attention.py").write_text(PLUGIN, encoding="utf-8")
    result = run(tmp_path, str(ROOT / "train.py"), "--config", str(ROOT / "configs/toy.yaml"),
                 "--set=model.plugins=[my_attention]", "--set=model.attention=cosine_plugin",
                 "--set=training.max_steps=4", "--set=training.validate_every=4",
                 "--set=data.toy_train_size=300", "--set=training.progress_bar=false",
                 "--set=training.output_dir=run")
    assert result.returncode == 0, result.stderr
    assert "cosine_plugin attention" in result.stderr
    checkpoint = str(tmp_path / "run" / "best.pt")
    result = run(tmp_path, str(ROOT / "evaluate.py"), "--checkpoint", checkpoint, "--split",
                 "test", "--beam", "2")
    assert result.returncode == 0, result.stderr
    result = run(tmp_path, str(ROOT / "scripts" / "translate.py"), "--checkpoint", checkpoint,
                 stdin="a b c\n")
    assert result.returncode == 0 and len(result.stdout.splitlines()) == 1, result.stderr


def test_a_plugin_that_cannot_be_imported_is_one_line(tmp_path):
    (tmp_path / "broken.py").write_text("raise ValueError('oops')\n", encoding="utf-8")
    for name, reason in (("missing_module", "ModuleNotFoundError"), ("broken", "ValueError: oops")):
        result = run(tmp_path, str(ROOT / "train.py"), "--config",
                     str(ROOT / "configs/toy.yaml"), f"--set=model.plugins=[{name}]",
                     "--set=training.output_dir=run")
        assert_user_error(result, "model.plugins", f"cannot import '{name}'", reason)
