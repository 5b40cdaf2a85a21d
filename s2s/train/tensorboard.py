"""TensorBoard logging of a training run (``training.tensorboard: true``; the ``[tb]`` extra
installs the ``tensorboard`` package): training loss, learning rate, gradient norm and
tokens/s at every log line, validation scores at every validation, and the attention heatmaps
of ``training.plot_attention`` as images. Events go to ``OUTPUT_DIR/tensorboard``:
``tensorboard --logdir runs/``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from s2s.errors import ConfigError

VALIDATION_SCALARS = ("val_loss", "ppl", "bleu", "chrf", "exact_match")


class TensorBoardLog:
    def __init__(self, directory: Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError("config key 'training.tensorboard': needs the tensorboard "
                              "package: pip install 's2s[tb]' (or tensorboard)") from None
        self.writer = SummaryWriter(str(directory))

    def update(self, step: int, loss: float, lr: float, grad_norm: float,
               tokens_per_second: float) -> None:
        for name, value in (("loss_per_token", loss), ("learning_rate", lr),
                            ("grad_norm", grad_norm), ("tokens_per_second", tokens_per_second)):
            self.writer.add_scalar(f"train/{name}", value, step)

    def validation(self, step: int, scores: dict[str, Any]) -> None:
        for name in VALIDATION_SCALARS:
            if name in scores:
                self.writer.add_scalar(f"valid/{name}", scores[name], step)
        self.writer.flush()

    def image(self, tag: str, png: Path, step: int) -> None:
        """A PNG written by the attention plots, as an image."""
        from matplotlib.image import imread

        self.writer.add_image(tag, imread(str(png))[..., :3], step, dataformats="HWC")

    def close(self) -> None:
        self.writer.close()
