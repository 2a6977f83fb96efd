"""One default margin per head on every route: Python, the experiment file and the command line all leave the
margin unset, and the head then uses its own default (cosface 0.35, arcface 0.5)."""

from __future__ import annotations

import pytest

from agebias.cli import main
from agebias.errors import UserError
from agebias.finetune.config import FinetuneConfig
from agebias.models.heads import create_head
from agebias.pipeline.schema import load_experiment

DEFAULTS = {"cosface": 0.35, "arcface": 0.5}


def _margin(cfg: FinetuneConfig) -> float:
    return create_head(cfg.head, 8, 3, **cfg.head_kwargs()).margin


def _from_cli(monkeypatch, head: str) -> FinetuneConfig:
    seen: list[FinetuneConfig] = []

    def capture(config):
        seen.append(config)
        raise UserError("stop after building the settings")

    monkeypatch.setattr("agebias.api.finetune", capture)
    assert main(["finetune", "--data", "d", "--backbone", "iresnet18", "--init", "random", "--out", "o",
                 "--head", head]) == 2
    return seen[0]


def _from_file(tmp_path, head: str) -> FinetuneConfig:
    (tmp_path / "photos").mkdir(exist_ok=True)
    path = tmp_path / f"{head}.toml"
    path.write_text(f'[generate]\nsources = "photos"\nages = [5]\n[finetune]\nbackbone = "iresnet18"\n'
                    f'init = "random"\nhead = "{head}"\n[evaluate]\nmodels = ["finetuned"]\n', encoding="utf-8")
    return load_experiment(path).settings("finetune", FinetuneConfig, data=["d"], out="o", seed=0, device="auto",
                                          resume=False)


@pytest.mark.parametrize("head", list(DEFAULTS))
def test_every_route_reaches_the_heads_own_default_margin(tmp_path, monkeypatch, head):
    routes = {"python": FinetuneConfig(data=["d"], backbone="iresnet18", init="random", out="o", head=head),
              "file": _from_file(tmp_path, head), "cli": _from_cli(monkeypatch, head)}
    for route, cfg in routes.items():
        assert cfg.margin is None, route
        assert _margin(cfg) == pytest.approx(DEFAULTS[head]), route
