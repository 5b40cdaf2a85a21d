"""Search over a model's ``encode``/``step`` interface: ``greedy`` (batched or streamed),
``beam``, what they share (``common``), and the ``runner`` that decodes many sentences with
worker threads."""
