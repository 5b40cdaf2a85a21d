"""Hostile but realistic input (issue 22): every case is one clear error line, nothing already
written is lost, and no bad value makes the toolkit allocate memory it cannot have."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from s2s.config import MAX_YAML_NODES, config_from_dict, load_config, short_repr
from s2s.errors import CheckpointError, ConfigError, file_problem
from s2s.footprint import check_memory, model_shapes, parameter_count, training_bytes
from s2s.train.checkpoint import load_checkpoint, save_checkpoint
from s2s.train.trainer import Trainer
from tests.test_cli import assert_user_error
from tests.test_training import SMALL, TOY, small_config

ROOT = Path(__file__).resolve().parents[1]


def run(script: str, *args, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / script), *map(str, args)], cwd=ROOT,
                          input=stdin, capture_output=True, text=True, timeout=300)

BOMB = """\
a: &a [x, x, x, x, x, x, x, x, x, x]
b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]
c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]
d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]
e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]
f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e, *e]
g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f, *f]
h: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g, *g]
i: &i [*h, *h, *h, *h, *h, *h, *h, *h, *h, *h]
data: {corpus: toy}
training: {betas: *i}
"""


def one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message and len(message) < 400, message
    return message


# ------------------------------------------------------------------------ YAML and values
def test_an_alias_bomb_is_refused_before_it_expands(tmp_path):
    path = tmp_path / "bomb.yaml"
    path.write_text(BOMB, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert one_line(info) == (f"{path}: its anchors and aliases expand to more than "
                              f"{MAX_YAML_NODES:,} values; a config needs a few hundred")


def test_an_alias_bomb_in_an_override_is_refused(tmp_path):
    small = tmp_path / "ok.yaml"
    small.write_text("data: {corpus: toy}\n", encoding="utf-8")
    levels = ["&a0 [x, x, x, x, x, x, x, x, x, x]"]
    for level in range(1, 7):  # each level repeats the one before ten times: 10^7 values
        levels.append(f"&a{level} [" + ", ".join([f"*a{level - 1}"] * 10) + "]")
    flow = "[" + ", ".join(levels) + "]"
    with pytest.raises(ConfigError) as info:
        load_config(small, [f"training.betas={flow}"])
    assert "expand to more than" in one_line(info)


def test_shared_aliases_of_a_sane_size_are_read(tmp_path):
    path = tmp_path / "ok.yaml"
    path.write_text("defaults: &d {dropout: 0.3}\ndata: {corpus: toy}\n"
                    "model: {encoder: *d, decoder: *d}\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="unknown config key 'defaults'"):
        load_config(path)  # the alias was expanded; only the helper key is unknown


def test_a_recursive_alias_is_refused(tmp_path):
    path = tmp_path / "loop.yaml"
    path.write_text("data: {corpus: toy}\ntraining: {betas: &a [0.9, *a]}\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "recursive" in one_line(info)


@pytest.mark.parametrize("value", [
    list(range(1_000_000)),
    "x" * 1_000_000,
    [[[[[["deep"] * 100] * 100] * 100] * 100] * 100],
], ids=["long-list", "long-string", "nested"])
def test_error_messages_show_a_bounded_value(value):
    with pytest.raises(ConfigError) as info:
        config_from_dict({"data": {"corpus": "toy"}, "model": {"attention": value}})
    assert "model.attention" in one_line(info)
    with pytest.raises(ConfigError) as info:
        config_from_dict({"data": {"corpus": "toy"}, "training": {"optimizer": value}})
    assert "training.optimizer" in one_line(info)


def test_short_repr_does_not_walk_the_value():
    shared = ["x"] * 10
    for _ in range(30):  # 10^30 leaves when expanded
        shared = [shared] * 10
    assert len(short_repr(shared)) < 100


# ---------------------------------------------------------------------------------- paths
def test_file_problem_names_what_the_path_is(tmp_path):
    regular = tmp_path / "a.txt"
    regular.write_text("x\n", encoding="utf-8")
    loop = tmp_path / "loop"
    os.symlink(loop, loop)
    dangling = tmp_path / "dangling"
    os.symlink(tmp_path / "nowhere", dangling)
    assert file_problem(regular) == ""
    assert file_problem(tmp_path) == "is a directory, not a file"
    assert file_problem(loop) == "is a symbolic link loop"
    assert file_problem(dangling) == (f"is a symbolic link to '{tmp_path / 'nowhere'}', which "
                                      f"does not exist")
    assert file_problem(tmp_path / "none") == "does not exist"
    assert file_problem(regular / "child").startswith("does not exist")
    if Path("/dev/null").exists():
        assert file_problem("/dev/null").startswith("is not a regular file")


# ---------------------------------------------------------------- memory: refuse first
def test_a_model_too_big_for_the_machine_is_refused_before_it_is_built(tmp_path):
    result = run("train.py", "--config", TOY, *[f"--set={o}" for o in SMALL],
                 f"--set=training.output_dir={tmp_path}", "--set=model.encoder.hidden_size=65536",
                 "--set=model.decoder.hidden_size=65536")
    line = assert_user_error(result, "training this model needs about", "GiB", "parameters",
                             "this machine has", "model.*.hidden_size")
    needed = float(line.split("about ")[1].split(" GiB")[0].replace(",", ""))
    assert needed > 1000  # ~ 2 · 4 · 65536² · 4 B · 4 (weights, gradients, Adam): over 1 TiB
    assert not list(tmp_path.glob("*.pt"))


def test_the_estimate_counts_weights_gradients_adam_and_activations(tmp_path):
    config = small_config(tmp_path)
    shapes = model_shapes(config.model, 40, 50, config.data.max_length + 1)
    parameters = parameter_count(shapes)
    needed = training_bytes(config, parameters, 50)
    assert needed > 16 * parameters  # float32 weights, gradients and two Adam moments
    bigger = small_config(tmp_path, "data.batch_tokens=3000")
    assert training_bytes(bigger, parameters, 50) > needed  # activations grow with the batch


def test_check_memory_compares_with_the_machine(monkeypatch):
    import s2s.footprint as footprint
    monkeypatch.setattr(footprint, "machine_memory", lambda device: 2**30)
    check_memory(2**30, 10, torch.device("cpu"), "training")
    with pytest.raises(ConfigError) as info:
        check_memory(2**30 + 1, 10, torch.device("cpu"), "training")
    assert "more than the 1.0 GiB this machine has" in one_line(info)


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("small")
    Trainer(small_config(out, "training.max_steps=3")).train()
    return out


def test_a_checkpoint_whose_config_claims_a_bigger_model_is_refused(small_run, tmp_path):
    state = load_checkpoint(small_run / "best.pt")
    state["config"]["model"]["decoder"]["hidden_size"] = 20000
    forged = tmp_path / "forged.pt"
    save_checkpoint(state, forged)
    result = run("scripts/translate.py", "--checkpoint", forged, stdin="a b c\n")
    assert_user_error(result, str(forged), "weight 'decoder.", "but the model its config "
                      "describes needs")


@pytest.mark.parametrize("change", ["shape", "missing", "extra"])
def test_resuming_from_weights_of_other_shapes_names_the_tensor(small_run, tmp_path, change):
    run_dir = tmp_path / "run"
    shutil.copytree(small_run, run_dir)
    state = load_checkpoint(run_dir / "last.pt")
    name = "decoder.output.weight" if "decoder.output.weight" in state["model"] else \
        sorted(state["model"])[-1]
    if change == "shape":
        state["model"][name] = torch.zeros(3, 3)
    elif change == "missing":
        del state["model"][name]
    else:
        state["model"]["decoder.extra"] = torch.zeros(1)
    save_checkpoint(state, run_dir / "last.pt")
    with pytest.raises(CheckpointError) as info:
        Trainer(small_config(run_dir, "training.max_steps=6"), resume="auto")
    message = one_line(info)
    assert str(run_dir / "last.pt") in message
    assert ("'decoder.extra'" if change == "extra" else f"'{name}'") in message


# ------------------------------------------------------------------------------- resume
def copy_run(small_run: Path, tmp_path: Path) -> Path:
    run_dir = tmp_path / "run"
    shutil.copytree(small_run, run_dir)
    return run_dir


def test_a_checkpoint_with_unknown_trainer_fields_is_refused_in_one_line(small_run, tmp_path):
    run_dir = copy_run(small_run, tmp_path)
    state = load_checkpoint(run_dir / "last.pt")
    state["trainer"]["from_the_future"] = 1
    save_checkpoint(state, run_dir / "last.pt")
    with pytest.raises(CheckpointError) as info:
        Trainer(small_config(run_dir, "training.max_steps=6"), resume="auto")
    assert "from_the_future" in one_line(info) and "newer s2s" in one_line(info)


def test_a_checkpoint_of_a_newer_format_names_the_version(small_run, tmp_path):
    state = load_checkpoint(small_run / "last.pt")
    path = tmp_path / "new.pt"
    torch.save({**state, "format_version": 99}, path)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert one_line(info) == (f"{path}: checkpoint format version 99; this s2s reads version 1")


def test_settings_changed_on_resume_are_applied_or_said_not_to_be(small_run, tmp_path):
    run_dir = copy_run(small_run, tmp_path)
    trainer = Trainer(small_config(run_dir, "training.max_steps=6", "training.learning_rate=0.0005",
                                   "training.weight_decay=0.01", "training.seed=7"),
                      resume="auto")
    groups = trainer.optimizer.param_groups
    assert all(g["lr"] == 0.0005 and g["weight_decay"] == 0.01 for g in groups)
    log = (run_dir / "train.log").read_text(encoding="utf-8")
    assert "resume: training.learning_rate is now 0.0005 (was 0.002): applied" in log
    assert "resume: training.weight_decay is now 0.01 (was 0.0): applied" in log
    assert "resume: training.seed is now 7 (was 42): not applied" in log


def test_an_unchanged_resume_keeps_the_restored_optimizer_state(small_run, tmp_path):
    run_dir = copy_run(small_run, tmp_path)
    state = load_checkpoint(run_dir / "last.pt")
    trainer = Trainer(small_config(run_dir, "training.max_steps=6"), resume="auto")
    assert trainer.optimizer.state_dict()["param_groups"][0]["lr"] == \
        state["optimizer"]["param_groups"][0]["lr"]
    assert "resume: training." not in (run_dir / "train.log").read_text(encoding="utf-8")


def test_changing_the_early_stopping_metric_on_resume_is_refused(small_run, tmp_path):
    run_dir = copy_run(small_run, tmp_path)
    with pytest.raises(CheckpointError) as info:
        Trainer(small_config(run_dir, "training.early_stopping.metric=bleu"), resume="auto")
    assert "training.early_stopping.metric" in one_line(info)


def test_resume_drops_metrics_records_past_the_checkpoint(small_run, tmp_path):
    run_dir = copy_run(small_run, tmp_path)
    metrics = run_dir / "metrics.jsonl"
    before = metrics.read_text(encoding="utf-8")
    step = load_checkpoint(run_dir / "last.pt")["step"]
    with open(metrics, "a", encoding="utf-8") as handle:
        handle.write(f'{{"step": {step + 5}, "bleu": 1.0}}\n{{"step": {step + 10}, "bl')
    Trainer(small_config(run_dir, "training.max_steps=6"), resume="auto")
    assert metrics.read_text(encoding="utf-8") == before
    assert "dropped 2 metrics.jsonl records" in (run_dir / "train.log").read_text("utf-8")
