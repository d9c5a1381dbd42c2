from __future__ import annotations

import pytest

from prunetune.search import Budget, BudgetError, check_feasible, parse_budget

BASE = {"flops": 600e6, "macs": 300e6, "params": 3.5e6, "latency": 20.0}
SMALL = {"flops": 30e6, "macs": 15e6, "params": 0.5e6, "latency": 3.0}


@pytest.mark.parametrize("text,metric,value,relative", [
    ("300M-FLOPs", "flops", 300e6, False),
    ("300m-flops", "flops", 300e6, False),
    ("150M-MACs", "macs", 150e6, False),
    ("2.5M-params", "params", 2.5e6, False),
    ("12ms-latency", "latency", 12.0, False),
    ("50%-FLOPs", "flops", 0.5, True),
    ("1.2G-FLOPs", "flops", 1.2e9, False),
    ("800K-params", "params", 800e3, False),
    ("40%-latency", "latency", 0.4, True),
])
def test_accepted_forms(text, metric, value, relative):
    b = parse_budget(text)
    assert (b.metric, b.relative) == (metric, relative)
    assert b.value == pytest.approx(value)


@pytest.mark.parametrize("text", ["300M", "FLOPs", "300X-FLOPs", "-5M-FLOPs", "0M-FLOPs",
                                  "12-latency", "12ms-FLOPs", "150%-FLOPs", "", "3e8-FLOPs",
                                  "300M-watts"])
def test_rejected_forms_list_the_accepted_ones(text):
    with pytest.raises(BudgetError, match="300M-FLOPs") as e:
        parse_budget(text)
    assert "\n" not in str(e.value)


def test_relative_limit_and_feasibility():
    assert parse_budget("50%-FLOPs").limit(BASE) == 300e6
    check_feasible([parse_budget("300M-FLOPs"), parse_budget("12ms-latency")], BASE, SMALL)
    with pytest.raises(BudgetError, match=r"below the smallest.*30.00M FLOPs"):
        check_feasible([parse_budget("10M-FLOPs")], BASE, SMALL)
    with pytest.raises(BudgetError, match=r"already met by the base model.*600.00M FLOPs"):
        check_feasible([parse_budget("700M-FLOPs")], BASE, SMALL)
    assert isinstance(parse_budget("1M-MACs"), Budget)
