"""minidet.study.stats: the Student-t quantile against printed tables and scipy, the paired
interval against a hand computation, the verdict rules, and a paper claim judged on its own pair."""

import math

import pytest

from minidet.study.stats import (
    Interval,
    direction_agreement,
    mean_interval,
    student_t_cdf,
    t_quantile,
    verdict,
)

# two-sided 95% critical values t_{0.975, df} as printed in standard tables (6 decimals)
TABLE_975 = {1: 12.706205, 2: 4.302653, 3: 3.182446, 4: 2.776445, 5: 2.570582, 9: 2.262157, 29: 2.045230,
             120: 1.979930}


@pytest.mark.parametrize("df, value", sorted(TABLE_975.items()))
def test_t_quantile_matches_the_printed_table(df, value):
    assert t_quantile(0.975, df) == pytest.approx(value, abs=5e-7)
    assert t_quantile(0.025, df) == pytest.approx(-value, abs=5e-7)


def test_t_distribution_against_scipy():
    stats = pytest.importorskip("scipy.stats")
    for df in (1, 2, 3, 4, 7, 10, 30, 100, 1000):
        for p in (0.5, 0.6, 0.9, 0.95, 0.975, 0.995, 0.9995):
            assert t_quantile(p, df) == pytest.approx(float(stats.t.ppf(p, df)), rel=1e-9, abs=1e-12)
        for t in (-40.0, -3.0, -0.3, 0.0, 1.0, 2.5, 12.0):
            assert student_t_cdf(t, df) == pytest.approx(float(stats.t.cdf(t, df)), rel=1e-9, abs=1e-14)


def test_paired_interval_by_hand():
    # diffs 0.01, 0.03, 0.02: mean 0.02, sample std 0.01, se 0.01 / sqrt(3), t_{0.975,2} = 4.302653
    iv = mean_interval([0.01, 0.03, 0.02])
    half = 4.302653 * 0.01 / math.sqrt(3)
    assert (iv.n, iv.mean, iv.std) == (3, pytest.approx(0.02), pytest.approx(0.01))
    assert iv.low == pytest.approx(0.02 - half, abs=1e-8) and iv.high == pytest.approx(0.02 + half, abs=1e-8)
    assert verdict(iv) == "no detectable difference"  # [-0.0048, +0.0448] holds 0
    tight = mean_interval([0.021, 0.019, 0.020, 0.020])
    assert tight.low > 0 and verdict(tight) == "better"
    assert verdict(mean_interval([-0.021, -0.019, -0.020])) == "worse"


def test_too_few_values_give_no_interval_and_no_verdict():
    assert math.isnan(mean_interval([]).mean)
    one = mean_interval([0.5, float("nan"), None])
    assert one.n == 1 and one.mean == 0.5 and math.isnan(one.low)
    assert verdict(one) == "no detectable difference"


def test_agreement_with_the_paper():
    better, worse = Interval(3, 0.02, 0.001, 0.01, 0.03), Interval(3, -0.02, 0.001, -0.03, -0.01)
    unclear = Interval(3, 0.0, 0.01, -0.02, 0.02)
    assert direction_agreement(better, 1) == "agrees" and direction_agreement(better, -1) == "disagrees"
    assert direction_agreement(worse, -1) == "agrees" and direction_agreement(worse, 1) == "disagrees"
    assert direction_agreement(unclear, 1) == "no detectable difference"
    assert direction_agreement(unclear, 0) == "agrees" and direction_agreement(better, 0) == "disagrees"
    assert direction_agreement(better, None) == ""


def test_a_paper_claim_against_another_cell_is_judged_on_that_pair():
    """The claim 'SB adds to aLRP without SB' is judged on SB minus no SB (same seeds), not on
    the row's ΔAP to the study's reference (focal), which here is clearly negative."""
    from minidet.study.grids import Cell, PaperRow
    from minidet.study.report import aggregate, markdown

    cells = [Cell("focal", (), ref="focal"), Cell("no SB", (), ref="focal"),
             Cell("SB", (), ref="focal", paper=PaperRow(1, "SB adds", versus="no SB"))]
    ap = {"focal": (0.75, 0.76, 0.74), "no SB": (0.60, 0.62, 0.61), "SB": (0.62, 0.64, 0.63)}
    metrics = ("AP", "AP50", "AP75", "AP90", "oLRP")
    records = {(c, s): {"metrics": dict.fromkeys(metrics, v[s]), "minutes": 1.0, "late": {}}
               for c, v in ap.items() for s in range(3)}
    rows = {r["cell"]: r for r in aggregate("ranking", cells, records)}
    sb = rows["SB"]
    assert sb["verdict"] == "worse" and sb["dAP_mean"] == pytest.approx(-0.12)  # against focal
    # against no SB: +0.02 in every pair, std 0 -> an interval of zero width above 0
    assert sb["paper_versus"] == "no SB" and sb["paper_dAP_mean"] == pytest.approx(0.02)
    assert sb["vs_paper"] == "agrees"
    assert rows["no SB"]["vs_paper"] == "" and rows["no SB"]["paper_versus"] == ""
    table = markdown("ranking", "t", list(rows.values()), [])
    assert "| SB adds | agrees (vs no SB: +0.020 [+0.020, +0.020]) |" in table
