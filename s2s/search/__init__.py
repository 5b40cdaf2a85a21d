"""Search over a model's ``encode``/``step`` interface: greedy (batched or streamed), beam, and
the runner that decodes many sentences with worker threads."""

from s2s.search.beam import beam_search, top_extensions
from s2s.search.common import Hypothesis, SearchModel, length_penalty, max_output_lengths
from s2s.search.greedy import greedy_search, greedy_stream
from s2s.search.runner import decoding_workers, search, translate_ids

__all__ = ["Hypothesis", "SearchModel", "beam_search", "decoding_workers", "greedy_search",
           "greedy_stream", "length_penalty", "max_output_lengths", "search", "top_extensions",
           "translate_ids"]
