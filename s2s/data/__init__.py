"""The data side: corpora (files, Multi30k, the toy task), SentencePiece tokenizers, encoded
splits and token-budget batches. Nothing here knows the model."""
