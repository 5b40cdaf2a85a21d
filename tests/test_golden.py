"""Golden outputs: the committed toy checkpoints of tests/fixtures/pre_move translate (greedy
and beam 5) and score their references exactly as tests/fixtures/golden/expected.json says, on
either backend — so a change that moves the CPU backend and the plain model together is still
caught. The expected file is regenerated only on purpose (make_golden.py there says how)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from s2s.data.toy import reverse
from s2s.inference import load_translator

FIXTURES = Path(__file__).resolve().parent / "fixtures"
EXPECTED = json.loads((FIXTURES / "golden" / "expected.json").read_text(encoding="utf-8"))


@pytest.mark.parametrize("backend", ["auto", "plain"])
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_the_committed_checkpoints_give_their_golden_outputs(name, backend):
    translator = load_translator(FIXTURES / "pre_move" / f"{name}.pt", "cpu", backend=backend)
    expected = EXPECTED[name]
    sources = expected["sources"]
    for beam in (1, 5):
        nbest = translator.translate_nbest(sources, beam, 1)
        assert [found[0][0] for found in nbest] == expected[f"beam{beam}"]
        assert [found[0][1].score for found in nbest] == pytest.approx(
            expected[f"beam{beam}_scores"], abs=1e-4)
    scores = translator.score(sources, [reverse(source) for source in sources])
    assert [s.log_prob for s in scores] == pytest.approx(expected["reference_log_probs"],
                                                         abs=1e-4)
    # the outputs are not trivially right: a change in the model would show
    assert 0 < sum(h == reverse(s) for h, s in zip(expected["beam5"], sources)) < len(sources)
