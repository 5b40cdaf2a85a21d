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
from s2s.errors import CheckpointError, ConfigError, S2SError, StorageError, file_problem
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


# -------------------------------------------------------------------------- disk and paths
def test_a_full_disk_during_a_checkpoint_write_keeps_the_old_one(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint({"model": {"w": torch.ones(3)}}, path)
    before = path.read_bytes()

    def fills_the_disk(obj, handle, *args, **kwargs):
        handle.write(b"partial")
        raise RuntimeError("[enforce fail at inline_container.cc:664] . PytorchStreamWriter "
                           "failed writing file data/0: file write failed")

    monkeypatch.setattr(torch, "save", fills_the_disk)
    with pytest.raises(StorageError) as info:
        save_checkpoint({"model": {"w": torch.zeros(1000, 1000)}}, path)
    message = one_line(info)
    assert message.startswith(f"cannot write '{path}': the disk is full (")
    assert "MB free, about 3.8 MB needed)" in message
    assert info.value.exit_code == 1
    assert path.read_bytes() == before
    assert not (tmp_path / "last.pt.tmp").exists()


def test_a_full_disk_while_logging_names_the_log_file(tmp_path, monkeypatch):
    import errno
    import logging

    from s2s.train.trainer import setup_logging
    setup_logging(tmp_path)
    handler = [h for h in logging.getLogger("s2s").handlers if hasattr(h, "baseFilename")][0]

    def full(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(handler.stream, "write", full)
    with pytest.raises(StorageError) as info:
        logging.getLogger("s2s").info("a line")
    assert one_line(info).startswith(f"cannot write '{tmp_path / 'train.log'}': the disk is full")
    logging.getLogger("s2s").handlers.clear()


def test_a_write_the_file_system_refuses_exits_1_naming_the_path(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x", encoding="utf-8")
    result = run("train.py", "--config", TOY, f"--set=training.output_dir={blocker / 'run'}")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip() == f"error: cannot write '{blocker / 'run' / 'train.log'}': " \
                                    f"Not a directory"


def test_orphaned_temporary_files_are_removed_at_the_next_start(small_run, tmp_path):
    run_dir = copy_run(small_run, tmp_path)
    (run_dir / "last.pt.tmp").write_bytes(b"torn")
    (run_dir / "step_5.pt.tmp").write_bytes(b"torn")
    Trainer(small_config(run_dir, "training.max_steps=6"), resume="auto")
    assert not list(run_dir.glob("*.tmp"))
    assert "removed" in (run_dir / "train.log").read_text(encoding="utf-8")


@pytest.mark.parametrize("output_dir, says", [("", "empty"), (".", "the current directory"),
                                              ("/", "the root directory")],
                         ids=["empty", "dot", "root"])
def test_an_output_dir_that_is_not_a_run_directory_is_refused(tmp_path, output_dir, says):
    result = run("train.py", "--config", TOY, f"--set=training.output_dir={output_dir}",
                 "--overwrite")
    assert_user_error(result, "training.output_dir", says)


def test_overwrite_deletes_nothing_in_a_directory_that_is_not_a_run(tmp_path):
    (tmp_path / "last.pt").write_bytes(b"someone else's")
    with pytest.raises(S2SError) as info:
        Trainer(small_config(tmp_path, "training.max_steps=1"), overwrite=True)
    assert "does not look like an s2s run" in one_line(info)
    assert (tmp_path / "last.pt").read_bytes() == b"someone else's"


def test_overwrite_deletes_only_the_files_the_toolkit_writes(small_run, tmp_path):
    run_dir = copy_run(small_run, tmp_path)
    keep = [run_dir / "step_final.pt", run_dir / "notes.txt"]
    for path in keep:
        path.write_text("mine", encoding="utf-8")
    Trainer(small_config(run_dir, "training.max_steps=1"), overwrite=True).train()
    assert all(path.read_text(encoding="utf-8") == "mine" for path in keep)


@pytest.mark.parametrize("kind", ["directory", "missing-parent"])
def test_evaluate_checks_its_output_before_any_work(tmp_path, kind):
    output = tmp_path if kind == "directory" else tmp_path / "nowhere" / "hyps.txt"
    result = run("evaluate.py", "--checkpoint", tmp_path / "not-yet-loaded.pt", "--output",
                 output)
    assert_user_error(result, f"--output '{output}'",
                      "is a directory" if kind == "directory" else "does not exist")


@pytest.mark.parametrize("make", ["directory", "loop"])
def test_a_data_file_that_is_a_directory_or_a_loop_says_so(tmp_path, make):
    prefix = tmp_path / "train"
    for lang in ("src", "tgt"):
        (tmp_path / f"valid.{lang}").write_text("a b\n", encoding="utf-8")
    if make == "directory":
        (tmp_path / "train.src").mkdir()
    else:
        os.symlink(tmp_path / "train.src", tmp_path / "train.src")
    (tmp_path / "train.tgt").write_text("a b\n", encoding="utf-8")
    result = run("train.py", "--config", TOY, "--set=data.corpus=files",
                 f"--set=data.train={prefix}", f"--set=data.valid={tmp_path / 'valid'}",
                 f"--set=training.output_dir={tmp_path / 'run'}")
    assert_user_error(result, str(tmp_path / "train.src"),
                      "is a directory" if make == "directory" else "symbolic link loop")


# ----------------------------------------------------------------------------- data values
def write_pairs(prefix: Path, pairs) -> Path:
    for side, lang in ((0, "src"), (1, "tgt")):
        Path(f"{prefix}.{lang}").write_text("".join(p[side] + "\n" for p in pairs), "utf-8")
    return prefix


def test_training_files_of_blank_lines_say_all_pairs_were_filtered_out(tmp_path):
    train = write_pairs(tmp_path / "train", [("", "")] * 5 + [("a b", "")])
    valid = write_pairs(tmp_path / "valid", [("a b", "b a")])
    result = run("train.py", "--config", TOY, "--set=data.corpus=files",
                 f"--set=data.train={train}", f"--set=data.valid={valid}",
                 f"--set=training.output_dir={tmp_path / 'run'}")
    assert_user_error(result, f"train split ({train}.src, {train}.tgt): all 6 pairs were "
                              f"filtered out (kept 0 pairs, dropped 6 with an empty side")


def test_a_huge_validation_pair_is_cut_counted_and_scored_whole(tmp_path):
    words = "a b c d e f g h".split()
    pairs = [(" ".join(words[:n]), " ".join(reversed(words[:n]))) for n in range(2, 9)] * 30
    train = write_pairs(tmp_path / "train", pairs)
    long_src = " ".join(words * 1250)  # 10,000 words
    valid = write_pairs(tmp_path / "valid", pairs[:5] + [(long_src, long_src)])
    config = small_config(tmp_path / "run", "data.corpus=files", f"data.train={train}",
                          f"data.valid={valid}", "training.max_steps=2",
                          "data.tokenizer.vocab_size=16", "data.max_eval_length=40")
    trainer = Trainer(config)
    split = trainer.valid_split
    assert len(split) == 6 and max(len(s) for s in split.src_ids) <= 40
    assert split.references[-1] == long_src  # scored against the whole reference
    log = (tmp_path / "run" / "train.log").read_text(encoding="utf-8")
    assert "1 longer than data.max_eval_length cut to 40 subwords" in log
    scores = trainer.validate()
    assert scores["val_loss"] > 0 and scores["bleu"] >= 0


def test_held_out_loss_batches_stay_within_the_token_budget():
    from s2s.data.batching import sentence_batches
    lengths = [3] * 10 + [400] + [5] * 10
    batches = sentence_batches(lengths, batch_size=8, max_tokens=60)
    assert sorted(i for b in batches for i in b) == list(range(21))
    assert all(len(b) * max(lengths[i] for i in b) <= 60 or len(b) == 1 for b in batches)
    assert [10] in batches  # the long one alone
    assert all(len(b) <= 8 for b in batches)
