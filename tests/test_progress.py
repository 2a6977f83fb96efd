"""Progress bars: drawn on a terminal (tqdm decides), off when quiet, never a bar that can only sit at 0/1."""

import pytest

from agebias import progress


@pytest.fixture
def made(monkeypatch):
    """The arguments each bar is made with."""
    monkeypatch.delenv("AGEBIAS_QUIET", raising=False)
    monkeypatch.setattr(progress, "_quiet", False)
    calls: list[dict] = []

    def fake_tqdm(**kwargs):
        calls.append(kwargs)
        return kwargs

    monkeypatch.setattr(progress, "tqdm", fake_tqdm)
    return calls


def test_multi_step_work_leaves_the_terminal_check_to_tqdm(made):
    progress.bar(4, "scoring pairs")
    assert made[-1]["disable"] is None and made[-1]["total"] == 4 and made[-1]["desc"] == "scoring pairs"


@pytest.mark.parametrize("total", [0, 1])
def test_single_step_work_draws_no_bar(made, total):
    progress.bar(total, "scoring pairs")
    assert made[-1]["disable"] is True


def test_unknown_total_still_draws(made):
    progress.bar(None, "embedding")
    assert made[-1]["disable"] is None


def test_quiet_silences_every_bar(made, monkeypatch):
    monkeypatch.setattr(progress, "_quiet", True)
    progress.bar(4, "scoring pairs")
    assert made[-1]["disable"] is True
