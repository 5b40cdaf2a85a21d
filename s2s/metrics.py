"""Translation metrics from sacrebleu on detokenized text, exact match and perplexity."""

from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import sacrebleu


class Score(NamedTuple):
    """A corpus score with sacrebleu's reproducibility signature."""

    name: str
    score: float
    signature: str


def bleu(hypotheses: Sequence[str], references: Sequence[str]) -> Score:
    """Corpus BLEU (sacrebleu defaults: 13a tokenization, mixed case, exp smoothing)."""
    metric = sacrebleu.BLEU()
    result = metric.corpus_score(list(hypotheses), [list(references)])
    return Score("BLEU", result.score, str(metric.get_signature()))


def chrf(hypotheses: Sequence[str], references: Sequence[str]) -> Score:
    """Corpus chrF (character n-gram F-score, β = 2)."""
    metric = sacrebleu.CHRF()
    result = metric.corpus_score(list(hypotheses), [list(references)])
    return Score("chrF", result.score, str(metric.get_signature()))


def exact_match(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """Percentage of hypotheses identical to their reference (surrounding space ignored)."""
    if not references:
        return 0.0
    same = sum(h.strip() == r.strip() for h, r in zip(hypotheses, references))
    return 100.0 * same / len(references)


def perplexity(nll_sum: float, tokens: int) -> float:
    """exp(summed negative log-likelihood / tokens), the exponent capped at 100."""
    return math.exp(min(nll_sum / max(tokens, 1), 100.0))
