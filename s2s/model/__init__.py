"""The model in plain PyTorch: attention (the registry and one class per score), encoder,
decoder and the whole encoder-decoder with its loss. It imports no backend, trainer or search;
a backend may fill its seams (``Encoder.run_lstm``, ``Decoder.run_steps``,
``Seq2Seq.output_loss``) with faster equivalents (docs/architecture.md)."""

from s2s.model.attention import ATTENTIONS, Attention, build_attention, register
from s2s.model.decoder import Decoder, DecoderState, Memory
from s2s.model.encoder import Encoder, EncoderOutput
from s2s.model.seq2seq import LossOutput, Seq2Seq, build_model, count_parameters

__all__ = ["ATTENTIONS", "Attention", "Decoder", "DecoderState", "Encoder", "EncoderOutput",
           "LossOutput", "Memory", "Seq2Seq", "build_attention", "build_model",
           "count_parameters", "register"]
