"""s2s: LSTM encoder-decoder translation models with pluggable attention."""

__version__ = "0.1.0"
