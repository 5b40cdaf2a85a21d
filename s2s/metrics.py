"""Translation metrics on detokenized text: sacreBLEU and chrF, lowercased tokenized BLEU as
Multi30k papers report it, exact match and perplexity."""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Callable, NamedTuple, Sequence

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


def bleu_lc_tok(hypotheses: Sequence[str], references: Sequence[str], lang: str) -> Score:
    """BLEU as the Multi30k papers report it: hypotheses and references lowercased,
    Moses-punctuation-normalised and Moses-tokenized for ``lang`` (the dataset's own
    preprocessing: sacremoses with its defaults reproduces the published ``*.lc.norm.tok.*``
    files), then corpus BLEU over those tokens with no further tokenization."""
    prepare = multi30k_preprocessor(lang)
    # lowercase: for the signature; force: the text is tokenized on purpose, so sacrebleu's
    # "forgot to detokenize" warning would only mislead the user
    metric = sacrebleu.BLEU(tokenize="none", lowercase=True, force=True)
    result = metric.corpus_score([prepare(h) for h in hypotheses],
                                 [[prepare(r) for r in references]])
    signature = f"{metric.get_signature()}|pre:lc+moses-norm+moses-tok.{lang}"
    return Score("BLEU lc.tok", result.score, signature)


@lru_cache(maxsize=None)
def multi30k_preprocessor(lang: str) -> Callable[[str], str]:
    """text → lowercased, punctuation-normalised, tokenized text (Moses rules for ``lang``, XML
    special characters escaped, no aggressive hyphen splitting)."""
    from sacremoses import MosesPunctNormalizer, MosesTokenizer

    normalizer, tokenizer = MosesPunctNormalizer(lang=lang), MosesTokenizer(lang=lang)
    return lambda text: tokenizer.tokenize(normalizer.normalize(text.lower()), return_str=True,
                                           escape=True)


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
