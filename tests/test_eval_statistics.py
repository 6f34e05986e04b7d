"""McNemar's test: the paper's figures, both branches against their definitions, and the CLI's errors."""

from __future__ import annotations

import json
import math

import pytest
from scipy.stats import chi2

from perception_r1.cli import main
from perception_r1.eval.statistics import load_outcomes, mcnemar_test, paired_table


@pytest.mark.parametrize(("b", "c", "p"), [(1, 5, 0.22), (2, 4, 0.69), (2, 10, 0.04)])
def test_reproduces_the_paper(b, c, p):
    result = mcnemar_test(b, c)
    assert result.method == "exact_binomial"
    assert round(result.p_value, 2) == p
    assert mcnemar_test(c, b).p_value == pytest.approx(result.p_value)  # two-sided: symmetric


def _exact_two_sided(b: int, c: int) -> float:
    n, k = b + c, min(b, c)
    return min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2**n)


def test_exact_branch_equals_the_binomial_sum_and_chi_square_branch_its_formula():
    for b in range(0, 13):
        for c in range(0, 25 - b):
            if b + c == 0:
                continue
            assert mcnemar_test(b, c).p_value == pytest.approx(_exact_two_sided(b, c), rel=1e-9)
    result = mcnemar_test(10, 25)
    assert result.method == "chi2_continuity"
    assert result.statistic == pytest.approx((15 - 1) ** 2 / 35)
    assert result.p_value == pytest.approx(chi2.sf((15 - 1) ** 2 / 35, df=1))
    assert 0.01 < result.p_value < 0.03  # close to the exact value (0.017), as it should be at this size
    assert mcnemar_test(0, 0).p_value == 1.0
    with pytest.raises(ValueError, match="b:"):
        mcnemar_test(-1, 3)


def test_paired_table_requires_the_same_items():
    table = paired_table({1: True, 2: True, 3: False, 4: False}, {1: True, 2: False, 3: True, 4: False})
    assert (table.a, table.b, table.c, table.d, table.n) == (1, 1, 1, 1, 4)
    with pytest.raises(ValueError, match=r"1 id\(s\) only in before .*\[3\].*1 id\(s\) only in after .*\[9\]"):
        paired_table({1: True, 3: True}, {1: True, 9: False})


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_cli_json_reproduces_paper_figure(tmp_path, capsys):
    # 1 item right->wrong, 5 wrong->right, 10 agreeing: p ≈ 0.22
    before = [{"id": f"q{i}", "correct": i < 1 or 6 <= i < 11} for i in range(16)]
    after = [{"id": f"q{i}", "correct": 1 <= i < 11} for i in reversed(range(16))]  # order does not matter
    a, b = _write(tmp_path / "a.jsonl", before), _write(tmp_path / "b.jsonl", after)
    assert main(["eval", "mcnemar", "--before", a, "--after", b, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["b"], out["c"], out["method"]) == (1, 5, "exact_binomial")
    assert out["p_value"] == pytest.approx(0.21875)
    assert main(["eval", "mcnemar", "--before", a, "--after", b]) == 0
    assert "p = 0.2188 (exact_binomial)" in capsys.readouterr().out


def test_cli_custom_key_and_clear_errors(tmp_path, capsys):
    a = _write(tmp_path / "a.jsonl", [{"id": 1, "ok": 1}, {"id": 2, "ok": 0}])
    b = _write(tmp_path / "b.jsonl", [{"id": 1, "ok": 0}, {"id": 2, "ok": True}])
    assert main(["eval", "mcnemar", "--before", a, "--after", b, "--key", "ok", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["p_value"] == 1.0

    assert main(["eval", "mcnemar", "--before", a, "--after", b]) == 2
    assert "a.jsonl:1: missing field 'correct'" in capsys.readouterr().err
    unpaired = _write(tmp_path / "u.jsonl", [{"id": 1, "ok": True}, {"id": 3, "ok": True}])
    assert main(["eval", "mcnemar", "--before", a, "--after", unpaired, "--key", "ok"]) == 2
    assert "unpaired items" in capsys.readouterr().err
    bad = _write(tmp_path / "bad.jsonl", [{"id": 1, "ok": "yes"}])
    with pytest.raises(ValueError, match=r"bad.jsonl:1: field 'ok' must be true/false"):
        load_outcomes(bad, "ok")
    dup = _write(tmp_path / "dup.jsonl", [{"id": 1, "ok": True}, {"id": 1, "ok": False}])
    with pytest.raises(ValueError, match=r"dup.jsonl:2: duplicate id 1"):
        load_outcomes(dup, "ok")
    noid = _write(tmp_path / "noid.jsonl", [{"ok": True}])
    with pytest.raises(ValueError, match=r"noid.jsonl:1: missing field 'id'"):
        load_outcomes(noid, "ok")
    assert main(["eval", "mcnemar", "--before", str(tmp_path / "nope.jsonl"), "--after", b]) == 2
    assert "cannot read" in capsys.readouterr().err
