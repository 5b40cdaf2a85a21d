"""The training loop: updates, validation, early stopping, checkpoints, interruption.

Per update: ``accumulate_steps`` token-budget batches → teacher-forced loss over real tokens →
backward → clip → optimizer step (skipped when the loss is not finite). Every
``validate_every`` updates: validation loss, perplexity, greedy BLEU and exact match, one JSON
line in ``metrics.jsonl``, the scheduler and early-stopping bookkeeping, ``best.pt`` when the
chosen metric improved and ``last.pt`` always.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import random
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import torch
from torch import Tensor, nn

from s2s.backend import resolve_device, select_backend
from s2s.config import Config, config_from_dict, save_config
from s2s.data.batching import Batch, TokenBatchSampler, collate, sentence_batches
from s2s.data.splits import Dataset, EncodedSplit, Tokenizers, configured_vocab, load_dataset
from s2s.data.tokenizer import SPECIAL
from s2s.errors import CheckpointError, S2SError, storage_error, writing
from s2s.footprint import (check_memory, check_weights, model_shapes, parameter_count,
                           training_bytes)
from s2s.metrics import bleu, chrf, exact_match, perplexity
from s2s.model.seq2seq import Seq2Seq, build_model, count_parameters
from s2s.search.runner import translate_ids
from s2s.train.checkpoint import load_checkpoint, remove_orphans, save_checkpoint
from s2s.train.resume import (RESUME_KEYS, apply_changed_settings, config_disagreement,
                              finished_by, numbered_checkpoints, run_directory, truncate_metrics)
from s2s.train.distributed import join_world
from s2s.train.precision import Precision
from s2s.train.schedule import teacher_forcing_ratio
from s2s.train.tensorboard import TensorBoardLog

log = logging.getLogger("s2s")

LOWER_IS_BETTER = {"val_loss", "ppl"}


class TrainingStopped(S2SError):
    """Training ended before its budget: an interrupt (exit status 128 + signal number) or
    repeated non-finite losses (exit status 1). last.pt holds the state to resume from."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass
class UpdateRecord:
    """What one update reports to ``Trainer(on_update=...)``: its step, summed loss and real
    target tokens, and ``time.perf_counter()`` at its end."""

    step: int
    loss: float
    tokens: int
    time: float

    @property
    def loss_per_token(self) -> float:
        return self.loss / max(self.tokens, 1)


@dataclass
class TrainState:
    step: int = 0
    epoch: int = 0
    best_score: Optional[float] = None
    best_step: int = 0
    bad_validations: int = 0
    bad_steps: int = 0
    validated_step: int = -1
    finished: bool = False
    elapsed: float = 0.0  # seconds of training so far, over every resumed part

    def to_dict(self) -> dict[str, Any]:
        return dict(vars(self))


def setup_logging(output_dir: Optional[Path] = None, fresh: bool = False,
                  quiet: bool = False) -> None:
    """Console logging through tqdm (so bars stay intact) and a ``train.log`` file; ``quiet``
    (the other processes of a distributed run): warnings only, no file."""
    logger = logging.getLogger("s2s")
    logger.setLevel(logging.WARNING if quiet else logging.INFO)
    logger.handlers.clear()
    logger.propagate = False

    class TqdmHandler(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            from tqdm import tqdm
            tqdm.write(self.format(record), file=sys.stderr)

    class RunLogHandler(logging.FileHandler):
        def handleError(self, record: logging.LogRecord) -> None:
            err = sys.exc_info()[1]
            if isinstance(err, OSError):  # a full disk: one line naming the file, not a trace
                raise storage_error(self.baseFilename, err) from None
            super().handleError(record)

    console = TqdmHandler()
    console.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(console)
    if output_dir is not None:
        path = output_dir / "train.log"
        with writing(path):
            output_dir.mkdir(parents=True, exist_ok=True)
            handler = RunLogHandler(path, mode="w" if fresh else "a", encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        logger.addHandler(handler)


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


EXAMPLES = 2          # validation translations shown in the log beside their references
PACE_UPDATES = 20     # updates timed before the log says how long the budget will take


class Trainer:
    """Owns the model, optimizer, scheduler and data order of one training run.

    ``device`` and ``backend`` override the config's ``training.device``/``training.backend``;
    ``on_update`` is called after every update with its :class:`UpdateRecord`.
    """

    def __init__(self, config: Config, resume: Optional[str] = None, overwrite: bool = False,
                 device: Optional[str] = None, backend: Optional[str] = None,
                 on_update: Optional[Callable[[UpdateRecord], None]] = None) -> None:
        self.config = config
        self.cfg = config.training
        self.output_dir = run_directory(self.cfg.output_dir)
        self.world, self.device = join_world(resolve_device(device or self.cfg.device))
        main = self.world.is_main
        checkpoint = self._checkpoint_to_resume(resume, overwrite)
        self._overwrite = overwrite and checkpoint is None
        setup_logging(self.output_dir if main else None, fresh=self._overwrite, quiet=not main)
        for orphan in remove_orphans(self.output_dir) if main else []:
            log.info("removed %s, left by an interrupted write", orphan)
        self.precision = Precision(self.cfg.precision, self.device)
        self.backend = self._choose_backend(backend)
        self.on_update = on_update
        if self.cfg.num_threads:
            torch.set_num_threads(self.cfg.num_threads)
        random.seed(self.cfg.seed)
        torch.manual_seed(self.cfg.seed)
        self.data: Dataset = self._load_data(checkpoint)
        self.train_split = self.data.splits["train"]
        self.valid_split = self.data.splits.get("valid")
        self._check_footprint(checkpoint)
        model = build_model(config.model, len(self.data.tokenizers.src),
                            len(self.data.tokenizers.tgt), SPECIAL, config.data.max_length + 1)
        self.model: Seq2Seq = self.backend.prepare_training(model.to(self.device))
        self.trained = self.world.wrap(self.model, self.device)  # what the updates run
        self.optimizer = self._make_optimizer()
        self.scheduler = self._make_scheduler()
        self.sampler = TokenBatchSampler([len(s) for s in self.train_split.src_ids],
                                         [len(t) for t in self.train_split.tgt_ids],
                                         config.data.batch_tokens, seed=self.cfg.seed)
        self.state = TrainState()
        self._interrupted: Optional[signal.Signals] = None
        self._plots_work = True
        self._examples: list[tuple[str, str, str]] = []
        self._grad_norm: Any = 0.0
        self.board = (TensorBoardLog(self.output_dir / "tensorboard")
                      if self.cfg.tensorboard and main else None)
        if checkpoint:
            self._restore(checkpoint)
        # on CUDA an update reads nothing back on the host (see _step_on_device): the GPU never
        # waits for the Python side; on the CPU reading is free and the log names each skip
        self.sync_free = self.device.type == "cuda"
        self._bad_run = torch.tensor(self.state.bad_steps, device=self.device)
        self._worst_run = self._bad_run.clone()
        self._skipped = torch.zeros_like(self._bad_run)
        if self.world.rank:  # dropout masks of their own in the other processes
            torch.manual_seed(self.cfg.seed + 1_000_003 * self.world.rank + self.state.step)
        if main:
            with writing(self.output_dir / "config.yaml"):
                save_config(config, self.output_dir / "config.yaml")
        if self.world.active:
            log.info("%d processes: each takes its share of every update's %d × %d batches of "
                     "data.batch_tokens %d, so an update is %d× a single process's",
                     self.world.size, self.world.size, self.cfg.accumulate_steps,
                     config.data.batch_tokens, self.world.size)

    # ------------------------------------------------------------------------------- setup
    def _checkpoint_to_resume(self, resume: Optional[str],
                              overwrite: bool) -> Optional[dict[str, Any]]:
        if resume is None:
            holds_run = (self.output_dir / "last.pt").exists()
            if holds_run and not overwrite:
                raise S2SError(f"output directory '{self.output_dir}' already holds a run "
                               f"(last.pt); continue it with --resume auto, or pass --overwrite "
                               f"to start afresh")
            if holds_run and not (self.output_dir / "config.yaml").is_file():
                raise S2SError(f"output directory '{self.output_dir}' holds a last.pt but does "
                               f"not look like an s2s run (no config.yaml); --overwrite deletes "
                               f"nothing there: choose another training.output_dir")
            return None
        path = self.output_dir / "last.pt" if resume == "auto" else Path(resume)
        if resume == "auto" and not path.exists():
            raise CheckpointError(f"--resume auto: no last.pt in '{self.output_dir}' to resume")
        checkpoint = load_checkpoint(path)
        self._resume_source = str(path)
        missing = sorted(RESUME_KEYS - set(checkpoint))
        if missing:
            raise CheckpointError(f"{path}: cannot resume from it, it lacks "
                                  f"{', '.join(missing)}")
        saved = config_from_dict(checkpoint["config"], f"{path} config")
        diff = config_disagreement(saved, self.config)
        if diff:
            raise CheckpointError(f"{path}: the config disagrees with the checkpoint at {diff}; "
                                  f"a resumed run must keep the data, the model, the optimizer, "
                                  f"the scheduler type and the early stopping metric")
        return checkpoint

    def _choose_backend(self, name: Optional[str]) -> Any:
        """The backend asked for; half precision runs the plain model (the CPU backend's
        kernels are float32)."""
        backend = select_backend(name or self.cfg.backend, self.device)
        if self.cfg.precision != "fp32" and backend.name != "plain":
            log.info("%s training runs the plain model (the CPU backend's kernels are float32)",
                     self.cfg.precision)
            backend = select_backend("plain", self.device)
        return backend

    def _load_data(self, checkpoint: Optional[dict[str, Any]]) -> Dataset:
        """The training and validation splits, with the checkpoint's tokenizers when resuming
        (a model too big for the machine is refused first, when the config bounds the
        vocabulary); in a distributed run rank 0 trains and caches the tokenizer first."""
        configured = configured_vocab(self.config.data.tokenizer)
        if configured and not checkpoint:
            self._check_footprint(None, configured)
        tokenizers = (Tokenizers.from_checkpoint(checkpoint["tokenizers"])
                      if checkpoint else None)
        if not self.world.is_main:
            self.world.decided(True)  # wait for rank 0's tokenizer
        data = load_dataset(self.config.data, self.output_dir / "tokenizer", tokenizers,
                            ("train", "valid"))
        if self.world.is_main:
            self.world.decided(True)
        return data

    def _check_footprint(self, checkpoint: Optional[dict[str, Any]],
                         vocab: Optional[tuple[int, int]] = None) -> None:
        """Refuse a model the machine cannot train, and weights to resume that do not fit the
        model, before anything is allocated; ``vocab``: (source, target) sizes, by default
        the tokenizers'."""
        src_vocab, tgt_vocab = vocab or (len(self.data.tokenizers.src),
                                         len(self.data.tokenizers.tgt))
        shapes = model_shapes(self.config.model, src_vocab, tgt_vocab,
                              self.config.data.max_length + 1)
        parameters = parameter_count(shapes)
        check_memory(training_bytes(self.config, parameters, tgt_vocab), parameters,
                     self.device, "training")
        if checkpoint is not None:
            check_weights(checkpoint["model"], shapes, self._resume_source)

    def _make_optimizer(self) -> torch.optim.Optimizer:
        cls = torch.optim.AdamW if self.cfg.optimizer == "adamw" else torch.optim.Adam
        # fused: one kernel per parameter tensor for the whole update (CPU and CUDA)
        return cls(self.model.parameters(), lr=self.cfg.learning_rate,
                   betas=tuple(self.cfg.betas), weight_decay=self.cfg.weight_decay, fused=True)

    def _make_scheduler(self) -> Any:
        sched = self.cfg.scheduler
        if sched.type == "plateau":
            mode = "min" if self.cfg.early_stopping.metric in LOWER_IS_BETTER else "max"
            return torch.optim.lr_scheduler.ReduceLROnPlateau(
                self.optimizer, mode=mode, factor=sched.factor, patience=sched.patience,
                min_lr=sched.min_lr)
        if sched.type == "warmup_inverse_sqrt":
            warmup = sched.warmup_steps
            return torch.optim.lr_scheduler.LambdaLR(
                self.optimizer, lambda s: min((s + 1) / warmup, math.sqrt(warmup / (s + 1))))
        return None

    def _restore(self, checkpoint: dict[str, Any]) -> None:
        self.model.load_state_dict(checkpoint["model"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        if self.scheduler is not None and checkpoint.get("scheduler"):
            self.scheduler.load_state_dict(checkpoint["scheduler"])
        self.sampler.load_state_dict(checkpoint["sampler"])
        self.precision.load_state_dict(checkpoint.get("scaler") or {})
        self.state = self._trainer_state(checkpoint["trainer"])
        ended = self.state.finished and finished_by(self.cfg, self.state, self.sampler.epoch)
        if ended:
            raise S2SError(f"{self._resume_source}: the run is finished (step {self.state.step}; "
                           f"{ended[0]}); to go on, extend it, e.g. --set {ended[1]} "
                           f"--resume auto")
        self.state.finished = False  # a resumed run goes on until its (possibly new) budget
        set_rng_state(checkpoint["rng"])
        saved = config_from_dict(checkpoint["config"]).training
        for message in apply_changed_settings(self.optimizer, self.scheduler, self.cfg, saved):
            log.info("resume: %s", message)
        if self.world.is_main:
            dropped = truncate_metrics(self.output_dir / "metrics.jsonl", self.state.step)
            if dropped:
                log.info("resume: dropped %d metrics.jsonl records past step %d", dropped,
                         self.state.step)
        log.info("resumed from step %d (epoch %d)", self.state.step, self.state.epoch + 1)

    def _trainer_state(self, saved: Any) -> TrainState:
        known = {f.name for f in dataclasses.fields(TrainState)}
        unknown = sorted(set(saved) - known) if isinstance(saved, dict) else ["(not a mapping)"]
        if unknown:
            raise CheckpointError(f"{self._resume_source}: its trainer state has fields this s2s "
                                  f"does not know ({', '.join(map(str, unknown))}); it was "
                                  f"written by a newer s2s: resume it with that version")
        return TrainState(**saved)

    # ---------------------------------------------------------------------------- batches
    def _batches(self) -> Iterator[list[int]]:
        """Training batches forever (epoch after epoch), tracking the epoch counter."""
        while not (self.cfg.max_epochs and self.sampler.epoch >= self.cfg.max_epochs):
            for indices in self.sampler:
                yield indices
            self.state.epoch = self.sampler.epoch

    def _collate(self, indices: list[int], split: EncodedSplit) -> Batch:
        return collate([split.src_ids[i] for i in indices], [split.tgt_ids[i] for i in indices],
                       indices).to(self.device)

    # ------------------------------------------------------------------------------ update
    def _update(self, group: list[list[int]]) -> tuple[Any, int]:
        """One optimizer update over ``group`` (accumulated batches); returns (summed loss,
        real target tokens). Non-finite losses or gradients skip the update.

        The loss is a float, or with :attr:`sync_free` a 0-d tensor on the device: the skip is
        then decided on the device too and nothing is read back until the next log line."""
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        loss, tokens = self._accumulate_gradients(group)
        self._apply_gradients(loss)
        return (loss if self.sync_free else float(loss)), tokens

    def _apply_gradients(self, loss: Tensor) -> None:
        """Unscale (fp16), clip, and step the optimizer and the warmup schedule; skipped where
        ``loss`` or the gradient norm is not finite."""
        self.precision.unscale(self.optimizer)
        # max_norm=inf measures without clipping, to catch non-finite gradients
        norm = nn.utils.clip_grad_norm_(self.model.parameters(),
                                        self.cfg.clip_grad_norm or float("inf"))
        bad_loss, bad_gradient = ~torch.isfinite(loss), ~torch.isfinite(norm)
        if self.sync_free:
            self._step_on_device(bad_loss, bad_gradient)
        else:
            self._step_on_host(*self.world.any(bool(bad_loss), bool(bad_gradient)))
        if isinstance(self.scheduler, torch.optim.lr_scheduler.LambdaLR):
            self.scheduler.step()  # counts updates taken or skipped, like state.step
        self._grad_norm = norm  # a tensor: read (a host sync) only when logged

    def _accumulate_gradients(self, group: list[list[int]]) -> tuple[Tensor, int]:
        """Forward and backward over this process's share of ``group``: (summed loss as a
        float64 tensor on the device, real target tokens)."""
        # the summed loss of the whole group is divided once, by the group's tokens (or
        # sentences), so accumulating k batches equals one k-times-larger batch
        # (in a distributed run: the group of every process, of which this one trains its
        # share; DistributedDataParallel averages the gradients, hence the factor world.size)
        split = self.train_split
        denominator = (sum(len(split.tgt_ids[i]) + 1 for b in group for i in b)
                       if self.cfg.normalization == "tokens" else sum(len(b) for b in group))
        total_loss = torch.zeros((), dtype=torch.float64, device=self.device)
        total_tokens = 0
        teacher_forcing = teacher_forcing_ratio(self.cfg, self.state.step)
        share = self.world.share(group)
        # a process left without a batch (the last update of a run) joins the gradient
        # all-reduce with a zero-weighted one
        weight = float(self.world.size) if share else 0.0
        batches = share or group[:1]
        for number, indices in enumerate(batches, start=1):
            batch = self._collate(indices, split)
            with self.world.no_sync(self.trained, last=number == len(batches)):
                with self.precision.autocast():
                    out = self.trained(batch, teacher_forcing, self.cfg.label_smoothing)
                self.precision.backward(out.loss * (weight / denominator))
            if weight:
                total_loss += out.loss.detach()
                total_tokens += out.tokens
        return total_loss, total_tokens

    def _step_on_host(self, bad_loss: bool, bad_gradient: bool) -> None:
        """The optimizer step unless the loss or the gradient is non-finite; a skipped update
        is logged and counted (unless fp16 gradients overflowed: the scaler's business)."""
        bad = bad_loss or bad_gradient
        overflow = not bad_loss and bad_gradient and self.precision.scaler is not None
        self.precision.step(self.optimizer, not bad)
        if not bad:
            self.state.bad_steps = 0
        elif overflow:  # the fp16 scaler's own business: it lowered the scale
            log.info("step %d: fp16 gradients overflowed, update skipped, loss scale now %g",
                     self.state.step + 1, self.precision.scaler.get_scale())
        else:
            self.state.bad_steps += 1
            log.warning("step %d: non-finite loss or gradient, update skipped (%d in a row)",
                        self.state.step + 1, self.state.bad_steps)
            self._stop_if_too_many_bad(self.state.bad_steps)

    def _step_on_device(self, bad_loss: Tensor, bad_gradient: Tensor) -> None:
        """The optimizer step without reading the flags on the host: the fused optimizer takes
        them as its ``found_inf`` input (as under a gradient scaler) and leaves the weights and
        its state alone where one is set; the skipped updates are counted on the device and
        read by :meth:`_read_skipped` when the loss is logged. Under fp16 the scaler finds
        overflowing gradients itself (such a skip is not a bad update; a non-finite loss is)."""
        bad_loss = self.world.any_on_device(bad_loss)
        if self.precision.scaler is not None:
            self.precision.step(self.optimizer, True)
            bad = bad_loss
        else:
            bad = bad_loss | self.world.any_on_device(bad_gradient)
            self.optimizer.found_inf = bad.float()
            try:
                self.optimizer.step()
            finally:
                del self.optimizer.found_inf
        self._bad_run = (self._bad_run + 1) * bad
        self._worst_run = torch.maximum(self._worst_run, self._bad_run)
        self._skipped += bad

    def _read_skipped(self) -> None:
        """With :attr:`sync_free`: the skipped updates since the last call, read now (one host
        sync): logged, and the run stopped after ``max_bad_steps`` in a row."""
        if not self.sync_free:
            return
        skipped, worst, run = (int(v) for v in torch.stack(
            [self._skipped, self._worst_run, self._bad_run]).tolist())
        self._skipped.zero_()
        self._worst_run.copy_(self._bad_run)
        self.state.bad_steps = run
        if skipped:
            log.warning("step %d: skipped %d of the updates since the last log line "
                        "(non-finite loss or gradient; %d in a row at most)", self.state.step,
                        skipped, worst)
        self._stop_if_too_many_bad(worst)

    def _stop_if_too_many_bad(self, in_a_row: int) -> None:
        if in_a_row >= self.cfg.max_bad_steps:
            raise TrainingStopped(self._for_main(
                f"training stopped: {in_a_row} updates in a row had a non-finite loss; the last "
                f"good checkpoint is in '{self.output_dir}'. Lower training.learning_rate or "
                f"check the data"))

    # -------------------------------------------------------------------------- validation
    @torch.no_grad()
    def validate(self) -> dict[str, Any]:
        """Loss and perplexity (teacher forced) and greedy BLEU / exact match on ``valid``."""
        split = self.valid_split
        self.model.eval()
        nll, tokens = 0.0, 0
        data = self.config.data
        # the teacher-forced loss holds [B, T, S]-sized attention: bound a batch's tokens as
        # training does (held-out sentences are cut to data.max_eval_length)
        budget = max(data.batch_tokens, data.valid_batch_size * data.max_length)
        lengths = [max(len(s), len(t)) for s, t in zip(split.src_ids, split.tgt_ids)]
        for indices in sentence_batches(lengths, data.valid_batch_size, budget):
            with self.precision.autocast():
                out = self.model(self._collate(indices, split))
            nll += float(out.nll)
            tokens += out.tokens
        ev = self.config.evaluation
        hyp_ids = translate_ids(self.model, split.src_ids, self.config.data.valid_batch_size,
                                ev.max_output_length, ev.max_output_ratio, self.device,
                                workers=ev.workers)
        hyps = [self.data.tokenizers.tgt.decode(ids) for ids in hyp_ids]
        self._examples = list(zip(split.sources, hyps, split.references))[:EXAMPLES]
        refs = split.references
        self.model.train()
        return {"step": self.state.step, "epoch": self.state.epoch + 1,
                "val_loss": nll / max(tokens, 1), "ppl": perplexity(nll, tokens),
                "bleu": bleu(hyps, refs).score, "chrf": chrf(hyps, refs).score,
                "exact_match": exact_match(hyps, refs),
                "lr": self.optimizer.param_groups[0]["lr"],
                "teacher_forcing": teacher_forcing_ratio(self.cfg, self.state.step),
                "elapsed": self.state.elapsed,
                "example": hyps[0] if hyps else ""}

    def _after_validation(self, scores: dict[str, Any], record_only: bool = False) -> bool:
        """Record scores, save checkpoints, step the scheduler; True to stop early.

        ``record_only`` (the closing validation of a budget that is not a multiple of
        ``validate_every``) logs and saves ``last.pt`` (and ``best.pt`` if the run has none)
        but leaves the best score, the patience count and the scheduler alone, so extending
        the budget and resuming continues exactly as a longer run would have."""
        self.state.validated_step = self.state.step
        es = self.cfg.early_stopping
        value = scores[es.metric]
        sign = -1.0 if es.metric in LOWER_IS_BETTER else 1.0
        improved = not record_only and (self.state.best_score is None
                                        or sign * (value - self.state.best_score) > es.min_delta)
        if improved:
            self.state.best_score, self.state.best_step = value, self.state.step
            self.state.bad_validations = 0
        elif not record_only:
            self.state.bad_validations += 1
        if isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau) \
                and not record_only:
            self.scheduler.step(value)
        scores = {**scores, "best_" + es.metric: self.state.best_score}
        if record_only:
            scores["final"] = True
        metrics = self.output_dir / "metrics.jsonl"
        with writing(metrics), open(metrics, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(scores) + "\n")
        if self.board is not None:
            self.board.validation(self.state.step, scores)
        for source, hypothesis, reference in self._examples:
            log.info("  source     %s\n  output     %s\n  reference  %s", source, hypothesis,
                     reference)
        log.info("validation step %d: loss %.3f  ppl %.2f  bleu %.2f  exact %.1f%%  lr %.2e%s",
                 scores["step"], scores["val_loss"], scores["ppl"], scores["bleu"],
                 scores["exact_match"], scores["lr"], "  *best*" if improved else "")
        stop = not record_only and self.state.bad_validations >= es.patience
        if stop:
            self.state.finished = True
        # a run that ends before its first counted validation still leaves a best.pt (its only
        # validation), without a best score that would change how a longer run goes on
        first_of_run = record_only and self.state.best_score is None
        if improved or first_of_run:  # best first: a kill between the writes never leaves it stale
            self.save("best.pt", scores)
        self.save("last.pt", scores)
        if not record_only:
            self._save_numbered(scores)
        self._plot_attention()
        if stop:
            log.info("early stopping: %s did not improve for %d validations (best %.3f at "
                     "step %d)", es.metric, es.patience, self.state.best_score,
                     self.state.best_step)
        return stop

    def _plot_attention(self) -> None:
        """Heatmaps of the first ``plot_attention`` validation sentences, to watch the
        alignment sharpen (needs matplotlib; skipped with a warning when it is missing)."""
        count = min(self.cfg.plot_attention, len(self.valid_split or []))
        if not count or not self._plots_work:
            return
        from s2s.inference import Translator
        from s2s.plotting import plot_translation

        translator = Translator(self.model, self.data.tokenizers, self.config, self.device)
        try:
            for i, sentence in enumerate(self.valid_split.sources[:count]):
                png = self.output_dir / "attention" / f"step{self.state.step:07d}_sent{i}.png"
                plot_translation(translator, sentence, png)
                if self.board is not None:
                    self.board.image(f"attention/sentence{i}", png, self.state.step)
        except Exception as err:  # a plot must never end a training run
            log.warning("attention plots skipped: %s", str(err).splitlines()[0] if str(err)
                        else type(err).__name__)
            self._plots_work = False
        finally:
            self.model.train()

    # ---------------------------------------------------------------------------- saving
    def checkpoint_state(self, scores: Optional[dict[str, Any]] = None) -> dict[str, Any]:
        return {
            "config": self.config.to_dict(), "model": self.model.state_dict(),
            "tokenizers": self.data.tokenizers.to_checkpoint(),
            "step": self.state.step, "epoch": self.state.epoch, "scores": scores or {},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else {},
            "sampler": self.sampler.state_dict(), "rng": rng_state(),
            "trainer": self.state.to_dict(), "scaler": self.precision.state_dict(),
        }

    def save(self, name: str, scores: Optional[dict[str, Any]] = None) -> Path:
        """Write checkpoint ``name`` (rank 0 only: the other processes hold the same)."""
        path = self.output_dir / name
        if self.world.is_main:
            save_checkpoint(self.checkpoint_state(scores), path)
        return path

    def _for_main(self, message: str) -> str:
        """A message printed once, by rank 0."""
        return message if self.world.is_main else ""

    def _save_numbered(self, scores: dict[str, Any]) -> None:
        keep = self.cfg.keep_checkpoints
        if keep <= 0:
            return
        self.save(f"step_{self.state.step}.pt", scores)
        for old in numbered_checkpoints(self.output_dir)[:-keep]:
            old.unlink()

    # ------------------------------------------------------------------------------- loop
    def _on_signal(self, signum: int, _frame: Any) -> None:
        if self._interrupted:  # a second Ctrl-C while saving is ignored, not fatal
            return
        self._interrupted = signal.Signals(signum)
        log.info("%s received: finishing the current step, then saving last.pt",
                 self._interrupted.name)

    def _done(self) -> bool:
        """Whether a step or time budget is spent (an epoch budget ends the batches)."""
        over_steps = bool(self.cfg.max_steps) and self.state.step >= self.cfg.max_steps
        minutes = self.cfg.max_minutes
        return over_steps or (bool(minutes) and self.state.elapsed >= 60.0 * minutes)

    def train(self) -> dict[str, Any]:
        """Run until the step/epoch budget, early stopping or an interrupt."""
        log.info("model: %s attention, %s parameters, device %s, %s backend; %d training "
                 "pairs, %d batches per epoch", self.config.model.attention,
                 f"{count_parameters(self.model):,}", self.device, self.backend.name,
                 len(self.train_split), len(self.sampler))
        if self._overwrite and self.world.is_main:  # now that config, device and data are checked
            for old in [*numbered_checkpoints(self.output_dir), *(
                    self.output_dir / name for name in ("last.pt", "best.pt", "metrics.jsonl"))]:
                old.unlink(missing_ok=True)
            self._overwrite = False
        previous = {sig: signal.signal(sig, self._on_signal)
                    for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            return self._loop()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self.world.close()
            if self.board is not None:
                self.board.close()

    def _budget_updates(self) -> Optional[int]:
        """The step or epoch budget in updates (the smaller), or None without one."""
        per_epoch = math.ceil(len(self.sampler) / (self.cfg.accumulate_steps * self.world.size))
        budgets = [b for b in (self.cfg.max_steps, self.cfg.max_epochs * per_epoch) if b]
        return min(budgets) if budgets else None

    def _log_pace(self, budget: Optional[int], seconds: float) -> None:
        """Once, early: how long the budget will take at the pace measured so far."""
        per_update = seconds / PACE_UPDATES
        limits = []
        if budget:
            limits.append((budget - self.state.step) * per_update)
        if self.cfg.max_minutes:
            limits.append(60.0 * self.cfg.max_minutes - self.state.elapsed)
        if limits:
            log.info("%.2f s an update: about %.0f minutes to the end of the budget "
                     "(validations not counted)", per_update, max(min(limits), 0.0) / 60)

    def _loop(self) -> dict[str, Any]:
        from tqdm import tqdm

        interactive = sys.stderr.isatty()
        budget = self._budget_updates()
        bar = tqdm(total=budget, initial=self.state.step, unit="step",
                   disable=not self.cfg.progress_bar, dynamic_ncols=True, file=sys.stderr,
                   mininterval=0.2 if interactive else 30.0)
        window_tokens, window_loss, window_start = 0, 0.0, time.perf_counter()
        run_tokens, run_start = 0, time.perf_counter()
        elapsed_before, first_step = self.state.elapsed, self.state.step
        last_scores: dict[str, Any] = {}
        batches = self._batches()
        per_update = self.cfg.accumulate_steps * self.world.size
        done = self._done()
        while not done and not self.state.finished:
            group = [b for _, b in zip(range(per_update), batches)]
            if not group:
                self.state.finished = True
                break
            loss, tokens = self._update(group)
            self.state.step += 1
            self.state.elapsed = elapsed_before + time.perf_counter() - run_start
            if self.on_update is not None:
                self.on_update(UpdateRecord(self.state.step, float(loss), tokens,
                                            time.perf_counter()))
            if self.state.step == first_step + PACE_UPDATES:
                self._log_pace(budget, time.perf_counter() - run_start)
            window_tokens += tokens
            run_tokens += tokens
            window_loss += loss
            elapsed = time.perf_counter() - window_start
            interrupted, done = self.world.any(self._interrupted is not None, self._done())
            validating = (self.state.step % self.cfg.validate_every == 0
                          and self.valid_split is not None)
            logging_now = self.state.step % self.cfg.log_every == 0 or done
            if logging_now or validating or interrupted:
                self._read_skipped()
            if logging_now:
                window_loss, window_tokens = self.world.sum(float(window_loss), window_tokens)
                rate = window_tokens / max(elapsed, 1e-9)
                lr = self.optimizer.param_groups[0]["lr"]
                bar.set_postfix(loss=f"{window_loss / max(window_tokens, 1):.3f}",
                                tok_s=f"{rate:,.0f}", lr=f"{lr:.2e}", refresh=False)
                if self.board is not None:
                    self.board.update(self.state.step, window_loss / max(window_tokens, 1), lr,
                                      float(self._grad_norm), rate)
                if not self.cfg.progress_bar:
                    log.info("step %d  epoch %d  loss/token %.3f  %.0f tgt tok/s  lr %.2e",
                             self.state.step, self.state.epoch + 1,
                             window_loss / max(window_tokens, 1), rate, lr)
                window_tokens, window_loss, window_start = 0, 0.0, time.perf_counter()
            bar.update(1)
            if validating:
                stop = False
                if self.world.is_main:  # the others wait for its decision
                    last_scores = self.validate()
                    stop = self._after_validation(last_scores)
                if self.world.decided(stop):
                    self.state.finished = True
                    break
            if interrupted:
                self.save("last.pt", last_scores)
                bar.close()
                cause = self._interrupted or signal.SIGTERM  # or another process's signal
                raise TrainingStopped(self._for_main(
                    f"interrupted by {cause.name} at step {self.state.step}; last.pt saved in "
                    f"'{self.output_dir}'. Continue with: python train.py --config "
                    f"{self.output_dir / 'config.yaml'} --resume auto"),
                    exit_code=128 + cause.value)
        bar.close()
        self._read_skipped()
        self.state.finished = True
        closing = self.valid_split is not None and self.state.validated_step != self.state.step
        if self.world.decided(closing):  # rank 0 validates; the others wait for it
            if self.world.is_main:
                last_scores = self.validate()
                self._after_validation(last_scores, record_only=True)
            self.world.decided(True)
        else:
            self.save("last.pt", last_scores)
        seconds = time.perf_counter() - run_start
        run_tokens = int(self.world.sum(run_tokens)[0])
        log.info("done: %d steps, %.0f target tokens/s overall; best %s %.3f at step %d; "
                 "checkpoints in %s", self.state.step, run_tokens / max(seconds, 1e-9),
                 self.cfg.early_stopping.metric, self.state.best_score or 0.0,
                 self.state.best_step, self.output_dir)
        return {"scores": last_scores, "best_score": self.state.best_score,
                "best_step": self.state.best_step, "steps": self.state.step,
                "tokens_per_second": run_tokens / max(seconds, 1e-9)}
