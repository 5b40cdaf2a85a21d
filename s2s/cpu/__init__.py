"""The CPU backend: every CPU speed path, beneath the plain model.

It plugs into the model's seams (``Encoder.run_lstm``, ``Decoder.run_steps``,
``Seq2Seq.output_loss``), swaps in equivalent modules where a model only decodes, and makes the
process settings those paths want; ``--backend plain`` leaves all of it out. How each path
works and which test holds it equal to the plain model: docs/performance.md.
"""

from s2s.cpu.backend import CpuBackend

__all__ = ["CpuBackend"]
