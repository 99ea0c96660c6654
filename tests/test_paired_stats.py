"""The benchmark's paired statistics: intervals that include the truth and a rule that adopts only real wins."""

from __future__ import annotations

from bench.paired import accuracy_interval, adoption, paired


def test_accuracy_interval_brackets_the_share() -> None:
    low, high = accuracy_interval([True] * 150 + [False] * 50)
    assert low < 0.75 < high and high - low < 0.15


def test_paired_difference_counts_discordant_items_and_settles_a_clear_win() -> None:
    first = [True] * 60 + [False] * 140
    second = [False] * 60 + [False] * 140
    result = paired([first], [second])
    assert (result.only_first, result.only_second) == (60, 0)
    assert result.difference == 0.3 and result.low > 0.2 and result.settled == "better"
    assert result.p_value < 1e-10


def test_a_tie_in_discordance_is_not_a_difference() -> None:
    first = [True] * 10 + [False] * 10 + [True] * 180
    second = [False] * 10 + [True] * 10 + [True] * 180
    result = paired([first], [second])
    assert result.difference == 0 and result.low < 0 < result.high and result.p_value == 1.0


def test_adoption_needs_a_pooled_win_and_no_set_lost() -> None:
    win = paired([[True] * 30 + [False] * 170], [[False] * 200])
    loss = paired([[False] * 200], [[True] * 30 + [False] * 170])
    tie = paired([[True] * 100 + [False] * 100], [[True] * 100 + [False] * 100])
    assert adoption({"a": win, "b": tie}, win).startswith("adopt")
    assert adoption({"a": win, "b": loss}, tie).startswith("reject: loses on b")
    assert adoption({"a": tie}, tie).startswith("not shown")
