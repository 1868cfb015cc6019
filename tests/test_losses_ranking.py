"""AP Loss and aLRP Loss against a direct, loop-per-positive reference written here from the
papers' definitions (not the authors' released code), the aLRP paper's Figure 1 example, and
Theorem 2."""

import pytest
import torch

from minidet.losses import alrp_loss, ap_loss


def _step(x, delta):
    return torch.clamp(x / (2 * delta) + 0.5, 0, 1)


def _reference_ranking(logits, targets, delta):
    """Per positive (flat-index order): rank_pos, N_FP and the H rows, in plain loops."""
    s, t = logits.reshape(-1).double(), targets.reshape(-1)
    pos = torch.nonzero(t == 1).squeeze(1).tolist()
    thr = min(s[i].item() for i in pos) - delta
    neg = [j for j in range(len(s)) if t[j] == 0 and s[j] >= thr]
    rows = []
    for i in pos:
        h_pos = {k: _step(s[k] - s[i], delta).item() for k in pos if k != i}
        h_neg = {j: _step(s[j] - s[i], delta).item() for j in neg}
        rank_pos = 1 + sum(h_pos.values())
        n_fp = sum(h_neg.values())
        rows.append((i, h_pos, h_neg, rank_pos, n_fp))
    return s, pos, neg, rows


def reference_alrp(logits, targets, loc, delta=1.0, eps=1e-5):
    s, pos, neg, rows = _reference_ranking(logits, targets, delta)
    loc_of = dict(zip(pos, loc.double().tolist(), strict=True))
    grad = torch.zeros_like(s)
    precs, ranks = [], {}
    for i, h_pos, h_neg, rank_pos, n_fp in rows:
        rank = rank_pos + n_fp
        ranks[i] = rank
        precs.append(rank_pos / rank)
        if n_fp > eps:
            g = -(n_fp + sum(h * loc_of[k] for k, h in h_pos.items())) / rank
            grad[i] = g
            for j, h in h_neg.items():
                grad[j] += abs(g) * h / n_fp
    grad /= len(pos)
    cls = 1 - sum(precs) / len(precs)
    by_score = sorted(pos, key=lambda k: -s[k].item())  # stable: ties keep index order
    cum, loc_terms = 0.0, []
    for k in by_score:
        cum += loc_of[k]
        loc_terms.append(cum / ranks[k])
    return cls, sum(loc_terms) / len(loc_terms), grad.view_as(logits)


def reference_ap(logits, targets, delta=1.0):
    s, pos, neg, rows = _reference_ranking(logits, targets, delta)
    grad = torch.zeros_like(s)
    rows = sorted(rows, key=lambda r: s[r[0]].item())  # lowest logit first
    running, interps = 0.0, []
    for i, _h_pos, h_neg, rank_pos, n_fp in rows:
        rank = rank_pos + n_fp
        prec = rank_pos / rank
        if running <= prec:
            running = prec
            w = 1.0
        else:
            w = (1 - running) / (1 - prec)
        for j, h in h_neg.items():
            grad[j] += h / rank * w
        grad[i] = -(1 - running)
        interps.append(running)
    grad /= len(pos)
    return 1 - sum(interps) / len(interps), grad.view_as(logits)


def _random_case(seed, n=300, n_pos=12, delta=1.0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, generator=g, dtype=torch.float64) * 2
    if seed % 2:  # quantised logits: many exact ties, and differences exactly at +-delta
        logits = (logits * 2).round() / 2
    targets = torch.zeros(n, dtype=torch.long)
    perm = torch.randperm(n, generator=g)
    targets[perm[:n_pos]] = 1
    targets[perm[n_pos : n_pos + 30]] = -1
    loc = torch.rand(n_pos, generator=g, dtype=torch.float64) * 2
    return logits.view(n // 3, 3), targets.view(n // 3, 3), loc


FIGURE1_IOUS = [((0.95, 0.80, 0.65, 0.50), 0.53), ((0.80, 0.65, 0.50, 0.95), 0.69),
                ((0.50, 0.65, 0.80, 0.95), 0.89)]


@pytest.mark.parametrize("ious, expected", FIGURE1_IOUS)
def test_alrp_paper_figure1(ious, expected):
    scores = torch.linspace(1.0, 0.1, 10, dtype=torch.float64)
    targets = torch.zeros(10, dtype=torch.long)
    targets[[0, 2, 5, 9]] = 1
    loc = (1 - torch.tensor(ious, dtype=torch.float64)) / (1 - 0.5)
    cls, loc_loss = alrp_loss(scores, targets, loc, delta=0.01)  # no pair inside the ramp
    assert (cls + loc_loss).item() == pytest.approx(expected, abs=0.005)
    # by hand: precisions 1, 2/3, 1/2, 2/5
    assert cls.item() == pytest.approx(1 - (1 + 2 / 3 + 1 / 2 + 2 / 5) / 4, abs=1e-12)
    assert ap_loss(scores, targets, delta=0.01).item() == pytest.approx(0.36, abs=0.005)


@pytest.mark.parametrize("seed", range(8))
def test_alrp_matches_reference(seed):
    logits, targets, loc = _random_case(seed)
    logits.requires_grad_()
    cls, loc_loss = alrp_loss(logits, targets, loc)
    ref_cls, ref_loc, ref_grad = reference_alrp(logits.detach(), targets, loc)
    assert cls.item() == pytest.approx(ref_cls, abs=1e-12)
    assert loc_loss.item() == pytest.approx(ref_loc, abs=1e-12)
    cls.backward()
    torch.testing.assert_close(logits.grad, ref_grad, rtol=0, atol=1e-12)


@pytest.mark.parametrize("seed", range(8))
def test_ap_loss_matches_reference(seed):
    logits, targets, _ = _random_case(seed + 100, n_pos=15)
    logits.requires_grad_()
    value = ap_loss(logits, targets)
    ref_value, ref_grad = reference_ap(logits.detach(), targets)
    assert value.item() == pytest.approx(ref_value, abs=1e-12)
    value.backward()
    torch.testing.assert_close(logits.grad, ref_grad, rtol=0, atol=1e-12)


@pytest.mark.parametrize("seed", range(5))
def test_alrp_theorem2_balance(seed):
    logits, targets, loc = _random_case(seed + 200, n=3000, n_pos=40)
    logits.requires_grad_()
    alrp_loss(logits, targets, loc)[0].backward()
    g = logits.grad
    pos_sum = g[targets == 1].abs().sum()
    neg_sum = g[targets == 0].abs().sum()
    assert pos_sum > 0
    torch.testing.assert_close(pos_sum, neg_sum, rtol=1e-12, atol=0)
    assert (g[targets == -1] == 0).all()  # ignored entries take no part


def test_irrelevant_negatives_get_zero_gradient():
    logits = torch.tensor([2.0, 1.5, -0.9, -1.1, -5.0], dtype=torch.float64, requires_grad=True)
    targets = torch.tensor([1, 0, 1, 0, 0])
    ap_loss(logits, targets).backward()
    # min positive logit -0.9: relevant negatives have logit >= -1.9
    assert logits.grad[4] == 0 and logits.grad[3] != 0 and logits.grad[1] != 0


def test_localisation_gradient_goes_only_to_loc_errors():
    logits, targets, loc = _random_case(7)
    logits.requires_grad_()
    loc.requires_grad_()
    _, loc_loss = alrp_loss(logits, targets, loc)
    loc_loss.backward()
    assert logits.grad is None or (logits.grad == 0).all()
    # d/d loc_k of mean_m (cumsum_m / rank_m) = (1/P) sum over m at or after k of 1 / rank_m
    _, pos, _, rows = _reference_ranking(logits.detach(), targets, 1.0)
    rank = {i: rp + nfp for i, _, _, rp, nfp in rows}
    s = logits.detach().reshape(-1)
    by_score = sorted(pos, key=lambda k: -s[k].item())
    expected = torch.zeros(len(pos), dtype=torch.float64)
    for m, k in enumerate(by_score):
        expected[pos.index(k)] = sum(1 / rank[q] for q in by_score[m:]) / len(pos)
    torch.testing.assert_close(loc.grad, expected, rtol=1e-12, atol=1e-14)


def test_no_positives_gives_zero_connected_losses():
    logits = torch.randn(4, 50, requires_grad=True)
    targets = torch.zeros(4, 50, dtype=torch.long)
    cls, loc = alrp_loss(logits, targets, torch.zeros(0))
    ap = ap_loss(logits, targets)
    assert cls.item() == loc.item() == ap.item() == 0.0
    (cls + loc + ap).backward()
    assert torch.isfinite(logits.grad).all() and (logits.grad == 0).all()


def test_huge_logits_and_half_precision_stay_finite():
    logits, targets, loc = _random_case(3)
    big = (logits * 1e4).float().requires_grad_()
    cls, loc_loss = alrp_loss(big, targets, loc.float())
    ap = ap_loss(big, targets)
    (cls + loc_loss + ap).backward()
    assert torch.isfinite(big.grad).all() and torch.isfinite(cls) and torch.isfinite(ap)
    half = logits.half().requires_grad_()
    cls, loc_loss = alrp_loss(half, targets, loc.half())
    assert cls.dtype == torch.float32 and torch.isfinite(cls + loc_loss)
    cls.backward()
    assert half.grad.dtype == torch.float16 and torch.isfinite(half.grad).all()
    ref_cls, _, _ = reference_alrp(logits.half().double(), targets, loc.half().double())
    assert cls.item() == pytest.approx(ref_cls, abs=1e-6)


def test_input_validation():
    with pytest.raises(ValueError, match="same shape"):
        ap_loss(torch.zeros(3, 4), torch.zeros(3, 5))
    with pytest.raises(ValueError, match="one per positive"):
        alrp_loss(torch.zeros(6), torch.tensor([1, 0, 1, 0, 0, 0]), torch.zeros(3))
