"""The model in plain PyTorch: ``attention`` (the registry and one class per score),
``encoder``, ``decoder`` and ``seq2seq`` (the whole model, its loss, building it). It imports no
backend, trainer or search; a backend may fill its seams (``Encoder.run_lstm``,
``Decoder.run_steps``, ``Seq2Seq.output_loss``) with faster equivalents
(docs/architecture.md)."""
