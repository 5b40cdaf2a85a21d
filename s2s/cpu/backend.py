"""The CPU backend: the model's seams filled with the CPU speed paths, and the process settings
they want. Every path computes what the plain model computes (to float rounding; the tests
hold each to it) and hands back to the plain code where it does not apply."""

from __future__ import annotations

from s2s.cpu.allocator import configure_decoding_process, configure_training_process
from s2s.cpu.bahdanau import run_decoder_steps
from s2s.cpu.decoding import CpuDecoding, prepare_decoding
from s2s.cpu.dropout import swap_dropout
from s2s.cpu.int8 import quantize_int8
from s2s.cpu.loss import fused_cross_entropy
from s2s.cpu.lstm import run_encoder_lstm
from s2s.model.seq2seq import Seq2Seq


class CpuBackend:
    """For models on the CPU (``--backend auto`` there)."""

    name = "cpu"

    def configure_process(self, purpose: str) -> None:
        """Process-wide settings, before anything runs: ``purpose`` is "training" or
        "decoding" (:mod:`s2s.cpu.allocator`)."""
        if purpose == "training":
            configure_training_process()
        else:
            configure_decoding_process()

    def prepare_training(self, model: Seq2Seq) -> Seq2Seq:
        """``model`` with its seams filled, in place: the encoder's LSTM on oneDNN's fused RNN
        (or by hand), the teacher-forced decoder with the Bahdanau recurrence by hand, the
        output layer fused with the loss, dropout masks from uniform samples. The parameters
        and their names stay as they are."""
        model.encoder.run_lstm = run_encoder_lstm
        model.decoder.run_steps = run_decoder_steps
        model.output_loss = fused_cross_entropy
        swap_dropout(model)
        return model

    def prepare_decoding(self, model: Seq2Seq) -> CpuDecoding:
        """What search runs for ``model``, which from now on only decodes
        (:func:`s2s.cpu.decoding.prepare_decoding`)."""
        return prepare_decoding(model)

    def quantize_int8(self, model: Seq2Seq) -> Seq2Seq:
        """An int8 copy of ``model`` for decoding (:func:`s2s.cpu.int8.quantize_int8`)."""
        return quantize_int8(model)
