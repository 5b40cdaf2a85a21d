"""The metrics: lowercased tokenized BLEU by hand, the dataset's own preprocessing, identities."""

from __future__ import annotations

import math

import pytest

from s2s.metrics import bleu, bleu_lc_tok, chrf, exact_match, multi30k_preprocessor, perplexity


def test_lowercased_tokenized_bleu_by_hand():
    """'THE dog runs in the park.' against 'The dog runs in a park.': both become 7 tokens,
    'the dog runs in the park .' and 'the dog runs in a park .'. Clipped n-gram matches:
    6/7 unigrams (the second 'the' has no partner), 4/6 bigrams, 2/5 trigrams, 1/4 4-grams;
    equal lengths, so no brevity penalty: BLEU = (6/7 · 4/6 · 2/5 · 1/4)^(1/4)."""
    score = bleu_lc_tok(["THE dog runs in the park."], ["The dog runs in a park."], "en")
    expected = 100 * math.prod([6 / 7, 4 / 6, 2 / 5, 1 / 4]) ** 0.25
    assert score.score == pytest.approx(expected, abs=1e-9)  # 48.89
    assert "tok:none" in score.signature and "case:lc" in score.signature
    assert "moses-tok.en" in score.signature
    # cased sacreBLEU sees "THE" ≠ "The": the lowercasing is what lifts it
    assert bleu(["THE dog runs in the park."], ["The dog runs in a park."]).score < 40


def test_the_dataset_s_preprocessing():
    """Lowercase, Moses punctuation normalisation, the Moses tokenizer with XML escaping and no
    aggressive hyphen splitting: lines as the Multi30k ``*.lc.norm.tok.*`` files have them."""
    english, german = multi30k_preprocessor("en"), multi30k_preprocessor("de")
    assert english('A man in a "blue" T-shirt, who\'s smiling.') == \
        "a man in a &quot; blue &quot; t-shirt , who &apos;s smiling ."
    assert german("Ein Mann („Mitte“) läuft…") == "ein mann ( &quot; mitte &quot; ) läuft ..."


@pytest.mark.parametrize("lang", ["en", "de"])
def test_references_scored_against_themselves_are_perfect(lang):
    references = ['Two young, White males are outside near many bushes.',
                  'A man in an orange hat starring at something.',
                  'Ein Mann sagt: "Das ist es!" – und geht.', 'A "quoted" & odd <line>']
    assert bleu_lc_tok(references, references, lang).score == pytest.approx(100.0)
    assert bleu(references, references).score == pytest.approx(100.0)
    assert chrf(references, references).score == pytest.approx(100.0)


def test_lowercased_tokenized_bleu_warns_of_nothing(capsys, caplog):
    """Tokenized text is what this BLEU scores, so sacrebleu's warning about "tokenized periods"
    (printed once 100 lines end in " .") must not reach the user's terminal."""
    lines = [f"A man number {i} walks." for i in range(120)]
    assert bleu_lc_tok(lines, lines, "en").score == pytest.approx(100.0)
    captured = capsys.readouterr()
    assert captured.out == captured.err == ""
    assert not caplog.records


def test_exact_match_and_perplexity():
    assert exact_match(["a b", "c "], ["a b", "d"]) == 50.0
    assert perplexity(2 * math.log(3.0), 2) == pytest.approx(3.0)
    assert perplexity(1e9, 1) == pytest.approx(math.exp(100.0))
