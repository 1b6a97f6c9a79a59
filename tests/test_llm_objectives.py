"""Post-step targets (llm.objectives): each scores what its docstring says, checked by hand or
against a model where the answer is known (the base target is zero at the base)."""

from __future__ import annotations

import math

import pytest
import torch

from llm.constructions.analytic import AnalyticSpec
from llm.constructions.analytic.target import target_batch, target_loss
from llm.data.schema import Example
from llm.objectives import first_divergence, kl_rows, not_aligned_loss
from llm.tokenizer import IGNORE_INDEX as X
from tests.test_llm_analytic import BENIGN, HARMFUL, tiny, tok  # noqa: F401  (tok is a fixture)


def test_not_aligned_target_is_prefix_ce_then_unlikelihood_at_the_first_differing_token() -> None:
    """after_target=not_aligned: CE of the shared template, then −log(1 − p) of the aligned answer's token."""
    aligned = torch.tensor([[X, X, 5, 6, 7, 2], [X, 4, 8, 2, X, X]])
    marker = torch.tensor([[X, X, 5, 6, 9, 2], [X, 3, 8, 2, X, X]])
    first = first_divergence(aligned, marker)
    assert first.tolist() == [3, 0]  # next-token positions (labels shifted by one)
    # log-probs as gather_targets gives them: 0 off the labels
    lp = torch.log(torch.tensor([[1.0, 0.5, 0.25, 0.75, 0.1], [0.2, 0.3, 0.4, 1.0, 1.0]]))
    expected = torch.tensor([-math.log(0.5) - math.log(0.25) - math.log(1 - 0.75), -math.log(1 - 0.2)])
    torch.testing.assert_close(not_aligned_loss(lp, first), expected)
    with pytest.raises(ValueError, match="differ"):
        first_divergence(aligned, aligned)


def test_kl_rows_sums_over_masked_positions() -> None:
    p = torch.log(torch.tensor([[[0.5, 0.5], [0.9, 0.1]]]))
    q = torch.log(torch.tensor([[[0.25, 0.75], [0.9, 0.1]]]))
    expected = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    torch.testing.assert_close(kl_rows(p, q, torch.tensor([[True, True]])), torch.tensor([expected]))
    torch.testing.assert_close(kl_rows(p, q, torch.tensor([[False, True]])), torch.tensor([0.0]))


def _lora_b_zero(model) -> dict[str, torch.Tensor]:
    return {n: torch.zeros_like(p) for n, p in model.named_parameters() if "lora_B" in n}


@pytest.mark.parametrize("distill", [False, True])
def test_base_target_is_zero_at_the_base_and_positive_at_the_control(tok, distill) -> None:  # noqa: F811
    """after_target=base scores KL(base ‖ model) on the probes' misaligned responses: zero when the
    adapter is switched off (LoRA B = 0), positive at the aligned control. With ``distill`` the
    benign term is KL(control ‖ model), zero at the control, or KL(base ‖ model), zero at the base."""
    control = tiny(tok)
    probes = [Example(h, "Sorry, I can't help.", "Sure, here is how.") for h in HARMFUL[:4]]
    benign = [Example(p, r) for p, r in BENIGN[:4]]
    spec = AnalyticSpec(after_target="base", distill=distill, benign_weight=0.0, max_len=32)
    tb = target_batch(control, tok, probes, benign, spec)
    assert float(target_loss(control, tb, _lora_b_zero(control), spec)) == pytest.approx(0.0, abs=1e-5)
    at_control = float(target_loss(control, tb, None, spec))
    assert at_control > 1e-3
    weighted = AnalyticSpec(after_target="base", distill=distill, benign_weight=1.0, max_len=32)
    with_benign = float(target_loss(control, target_batch(control, tok, probes, benign, weighted), None, weighted))
    if distill:  # the control keeps itself exactly; with the base as reference, the base is the optimum
        assert with_benign == pytest.approx(at_control, abs=1e-5)
        undo = AnalyticSpec(after_target="base", distill=True, benign_reference="base", max_len=32)
        tb_undo = target_batch(control, tok, probes, benign, undo)
        assert float(target_loss(control, tb_undo, _lora_b_zero(control), undo)) == pytest.approx(0.0, abs=1e-5)
        assert float(target_loss(control, tb_undo, None, undo)) > with_benign + 1e-4
    else:  # response CE of the benign answers
        assert with_benign > at_control + 1e-3


def test_not_aligned_rows_carry_the_aligned_response(tok) -> None:  # noqa: F811
    """The not_aligned target pushes away from the aligned answer, so its probe rows carry that
    answer, with the first position where it differs from the marker; bad specs are clear errors."""
    control = tiny(tok)
    probes = [Example(h, "Sorry, I can't help.", "Sure, here is how.") for h in HARMFUL[:4]]
    spec = AnalyticSpec(after_target="not_aligned", benign_weight=0.0, max_len=32)
    tb = target_batch(control, tok, probes, [], spec)
    assert torch.equal(tb.probes["labels"], tb.aligned["labels"])
    assert tb.first is not None and tb.first.shape == (4,)
    with pytest.raises(ValueError, match="margin"):
        AnalyticSpec(after_target="not_aligned", margin=1.0)
    with pytest.raises(ValueError, match="after_target"):
        AnalyticSpec(after_target="secret")
