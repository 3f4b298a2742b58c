"""mean ± 95% CI and macro precision / recall / F1: known answers worked out by hand."""

import math
import statistics

import pytest
import torch

from quickstudy.training import confusion_matrix, macro_prf, macro_prf_from_confusion, mean_ci95


def test_mean_ci95_known_answer():
    mean, ci = mean_ci95([1.0, 2.0, 3.0, 4.0])
    # sample variance (ddof=1) = (2.25 + 0.25 + 0.25 + 2.25) / 3 = 5/3
    assert mean == pytest.approx(2.5)
    assert ci == pytest.approx(1.96 * math.sqrt(5 / 3) / math.sqrt(4))


def test_mean_ci95_matches_statistics_and_accepts_tensors():
    values = torch.rand(50, generator=torch.Generator().manual_seed(0))
    mean, ci = mean_ci95(values)
    data = values.double().tolist()
    assert mean == pytest.approx(statistics.fmean(data), rel=1e-12)
    assert ci == pytest.approx(1.96 * statistics.stdev(data) / math.sqrt(50), rel=1e-12)


def test_mean_ci95_edge_cases():
    mean, ci = mean_ci95([0.7])
    assert mean == 0.7 and math.isnan(ci)
    assert mean_ci95([0.5, 0.5, 0.5]) == (0.5, 0.0)
    with pytest.raises(ValueError, match="at least one"):
        mean_ci95([])
    with pytest.raises(ValueError, match="value 1 is nan"):
        mean_ci95([1.0, float("nan")])


def test_confusion_matrix_known_answer():
    target = torch.tensor([0, 0, 0, 1, 1, 2])
    pred = torch.tensor([0, 0, 1, 1, 2, 2])
    expected = torch.tensor([[2, 1, 0], [0, 1, 1], [0, 0, 1]])
    assert torch.equal(confusion_matrix(pred, target, 3), expected)


def test_macro_prf_known_answer():
    # confusion (rows true, cols predicted): [[2,1,0],[0,1,1],[0,0,1]]
    # precision per class 2/2, 1/2, 1/2       -> macro 2/3
    # recall per class    2/3, 1/2, 1/1       -> macro 13/18
    # f1 per class        4/5, 1/2, 2/3       -> macro 59/90 (mean of per-class F1, as scikit-learn)
    precision, recall, f1 = macro_prf([0, 0, 1, 1, 2, 2], [0, 0, 0, 1, 1, 2], num_classes=3)
    assert precision == pytest.approx(2 / 3)
    assert recall == pytest.approx(13 / 18)
    assert f1 == pytest.approx(59 / 90)


def test_macro_prf_class_never_predicted_and_absent_class():
    # class 1 is never predicted: its precision counts as 0 (zero_division=0); class 3 occurs nowhere
    # and is left out of the average.
    # precision 1/2, 0, 1 -> 1/2 ; recall 1, 0, 1 -> 2/3 ; f1 2/3, 0, 1 -> 5/9
    precision, recall, f1 = macro_prf([0, 0, 2, 2], [0, 1, 2, 2], num_classes=4)
    assert precision == pytest.approx(1 / 2)
    assert recall == pytest.approx(2 / 3)
    assert f1 == pytest.approx(5 / 9)


def test_perfect_and_batched_agree_with_single():
    gen = torch.Generator().manual_seed(1)
    target = torch.randint(0, 5, (7, 30), generator=gen)
    pred = torch.where(torch.rand(7, 30, generator=gen) < 0.6, target, torch.randint(0, 5, (7, 30), generator=gen))
    p, r, f = macro_prf_from_confusion(confusion_matrix(pred, target, 5))
    assert p.shape == (7,)
    for b in range(7):
        assert (float(p[b]), float(r[b]), float(f[b])) == pytest.approx(macro_prf(pred[b], target[b], 5))
    assert macro_prf(target[0], target[0], 5) == (1.0, 1.0, 1.0)


def test_bad_inputs_fail_with_a_message():
    with pytest.raises(ValueError, match="expected 0..2"):
        macro_prf([0, 3], [0, 1], num_classes=3)
    with pytest.raises(ValueError, match="must match"):
        macro_prf([0, 1, 1], [0, 1], num_classes=3)
    with pytest.raises(ValueError, match="num_classes"):
        macro_prf([0], [0], num_classes=0)
    with pytest.raises(ValueError, match="integer class indices"):
        confusion_matrix(torch.tensor([0.0]), torch.tensor([0]), 2)
