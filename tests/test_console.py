"""Rank-aware output: under torchrun only rank 0 prints."""

from workbench.console import log


def test_only_rank_zero_prints(monkeypatch, capsys):
    monkeypatch.delenv("RANK", raising=False)
    log("alone")
    monkeypatch.setenv("RANK", "0")
    log("rank zero", err=True)
    monkeypatch.setenv("RANK", "1")
    log("rank one")
    log("rank one", err=True)
    out, err = capsys.readouterr()
    assert out == "alone\n"
    assert err == "rank zero\n"
