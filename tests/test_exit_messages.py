"""Every non-zero exit says why on the terminal: Ctrl-C (130) names what was saved and the exact command that
resumes; exit 1 of generate, finetune, run and datasets check gives the count, the first files with their reasons
and where the full list is. Also: a finetune run is the same run whether its data path is spelled relative or
absolute."""

from __future__ import annotations

import json
import os
import shlex
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from agebias.cli import main
from agebias.data.records import Problem
from test_finetune_trainer import TINY, make_generated_set


@pytest.fixture(autouse=True)
def _quiet(monkeypatch, tmp_path):
    monkeypatch.setenv("AGEBIAS_QUIET", "1")
    monkeypatch.setenv("AGEBIAS_CACHE", str(tmp_path / "cache"))


def _interrupt(*_args, **_kwargs):
    raise KeyboardInterrupt


def _last_line(err: str) -> str:
    return err.strip().splitlines()[-1]


# ------------------------------------------------------------------------------------------------ Ctrl-C
def test_ctrl_c_names_what_was_saved_and_the_command_that_resumes(tmp_path, capsys, monkeypatch):
    import agebias.api
    import agebias.data.summary
    import agebias.evaluate.runner
    import agebias.pipeline

    monkeypatch.setattr(agebias.api, "finetune", _interrupt)
    monkeypatch.setattr(agebias.api, "generate", _interrupt)
    monkeypatch.setattr(agebias.evaluate.runner, "evaluate_source", _interrupt)
    monkeypatch.setattr(agebias.pipeline, "run_experiment", _interrupt)
    monkeypatch.setattr(agebias.data.summary, "summarize", _interrupt)
    data, run = make_generated_set(tmp_path / "data", n_ids=2, per_id=2), tmp_path / "run"
    cases = [
        (["finetune", "--data", str(data), "--backbone", TINY, "--init", "random", "--out", str(run)],
         f"interrupted: completed epochs are checkpointed in {run / 'checkpoints'}; to resume, run: agebias ",
         ["--resume"]),
        (["generate", "--method", "cardioid", "--sources", str(data), "--ages", "5,10", "--out", str(tmp_path / "g")],
         f"interrupted: the images finished so far are kept in {tmp_path / 'g'} (listed in its manifest.csv); to "
         f"resume, run: agebias ", []),
        (["evaluate", "dataset", str(data), "--model", "sface", "--out", str(tmp_path / "e")],
         f"interrupted: the embeddings of the models finished so far are cached in {tmp_path / 'e' / 'embeddings'}",
         []),
        (["run", "experiments/demo.toml", "--out", str(tmp_path / "r")],
         f"cached embeddings are kept in {tmp_path / 'r'}; to resume, run: agebias ", []),
        (["datasets", "check", "folder", "--root", str(data)],
         "interrupted: nothing was saved; run the same command again to start over", None),
    ]
    for args, saved, added in cases:
        assert main(args) == 130, args
        line = _last_line(capsys.readouterr().err)
        assert line.startswith(saved) or saved in line, line
        if added is not None:  # the exact command, with what resuming needs added once
            assert line.endswith("run: agebias " + shlex.join(args + added)), line
    assert main([*cases[0][0], "--resume"]) == 130  # --resume already given: not repeated
    assert _last_line(capsys.readouterr().err).endswith(shlex.join([*cases[0][0], "--resume"]))


# ------------------------------------------------------------------------------------------------ exit 1
def test_generate_exit_1_lists_the_first_skipped_sources(tmp_path, capsys, monkeypatch):
    import agebias.api
    from generators.writer import GenerateResult

    out = tmp_path / "g"
    skipped = [Problem(str(tmp_path / f"photo{k}.jpg"), "no face found") for k in range(7)]
    monkeypatch.setattr(agebias.api, "generate",
                        lambda settings: GenerateResult(out=out, manifest=out / "manifest.csv", written=4,
                                                        skipped=skipped))
    assert main(["generate", "--sources", str(tmp_path), "--ages", "5", "--out", str(out)]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[-7] == f"warning: 7 input(s) skipped; the full list is in {out / 'generation.json'} (skipped)"
    assert err[-6] == f"warning:   {tmp_path / 'photo0.jpg'}: no face found"
    assert err[-1] == "warning:   ... and 2 more"


def test_run_exit_1_lists_what_each_stage_left_out(tmp_path, capsys, monkeypatch):
    import agebias.pipeline
    from agebias.pipeline.state import mark_complete

    out = tmp_path / "r"
    run_dir = out / "finetune" / "run-1"
    run_dir.mkdir(parents=True)
    (run_dir / "skipped.csv").write_text("path,reason\nx/a.png,image is 100x100; --aligned needs 112x112\n")
    summaries = {"generate": {"skipped": [{"path": "photos/b.jpg", "reason": "no face found"}]},
                 "finetune": {"run_dir": str(run_dir)}, "evaluate": {"skipped": []}}
    for stage, summary in summaries.items():
        (out / stage).mkdir(parents=True, exist_ok=True)
        mark_complete(out / stage, stage, "h", {}, summary, time.time())
    monkeypatch.setattr(agebias.pipeline, "run_experiment", lambda exp, **kw: out)
    assert main(["run", "experiments/demo.toml", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert f"warning: 1 input(s) skipped; the full list is in {out / 'generate' / 'stage.json'} (summary.skipped)" \
        in err and "warning:   photos/b.jpg: no face found" in err
    assert f"the full list is in {run_dir / 'skipped.csv'}" in err and "x/a.png: image is 100x100" in err


@pytest.mark.slow
def test_finetune_exit_1_and_the_same_run_by_relative_or_absolute_path(tmp_path, capsys, monkeypatch):
    """The same finetune with an absolute instead of a relative --data path was refused as different data."""
    make_generated_set(tmp_path / "synth", n_ids=6, per_id=3)
    Image.fromarray(np.zeros((100, 100, 3), np.uint8)).save(tmp_path / "synth" / "id000" / "id000_77.png")
    monkeypatch.chdir(tmp_path)
    args = ["--backbone", TINY, "--init", "random", "--out", "run", "--aligned", "--epochs", "1", "--batch-size", "8",
            "--frozen-layers", "none"]
    assert main(["finetune", "--data", "synth", *args]) == 1
    err = capsys.readouterr().err
    assert f"warning: 1 input(s) skipped; the full list is in {Path('run') / 'skipped.csv'}" in err
    assert "id000_77.png" in err
    record = json.loads((tmp_path / "run" / "config.json").read_text())
    assert record["config"]["data"] == [str(tmp_path / "synth")]
    for spelling in (str(tmp_path / "synth"), "./synth/"):
        assert main(["finetune", "--data", spelling, *args]) == 1, capsys.readouterr().err  # the finished run
        assert "another run" not in capsys.readouterr().err
    assert main(["finetune", "--data", str(tmp_path / "synth") + ":0.5", *args]) == 2  # other data: refused
    assert "holds another run (different data)" in capsys.readouterr().err


def test_data_paths_are_absolute_with_their_weights():
    from agebias.finetune.config import FinetuneConfig

    a = FinetuneConfig(data=["synth:0.5", "other"], backbone=TINY, out="o")
    b = FinetuneConfig(data=[str(Path("synth").resolve()) + ":0.5", str(Path("other").resolve())], backbone=TINY,
                       out="o")
    assert a.data == b.data == [str(Path.cwd() / "synth") + ":0.5", str(Path.cwd() / "other")]
    assert a.config_hash() == b.config_hash() and a.replace(epochs=2).data == a.data


# ----------------------------------------------------------------------------------------- datasets check
def _generated(root: Path, n_ids: int = 3, ages=(5, 10)) -> Path:
    """A set written by the real writer (manifest.csv with an id column, generation.json)."""
    from generators.base import Generator, Sample
    from generators.writer import generate_to
    from generators.base import Identity

    class Noise(Generator):
        name, needs = "noise", "seeds"

        def output_aligned(self):
            return True

        def generate_one(self, identity, age):
            rng = np.random.default_rng(identity.seed * 100 + age)
            return Sample(identity, age, rng.integers(0, 256, (112, 112, 3), dtype=np.uint8), {})

    generate_to(root, Noise(), [Identity(id=f"seed{i:04d}", seed=i) for i in range(n_ids)], list(ages))
    return root


def test_datasets_check_decodes_images_and_reads_our_own_manifest(tmp_path, capsys):
    """A corrupt PNG gave 'problems: 0', and a generated set's manifest.csv (id, not subject) was refused."""
    root = _generated(tmp_path / "gen")
    bad = root / "seed0001" / "seed0001_10.png"
    bad.write_bytes(bad.read_bytes()[:200])
    for kind, source in (("manifest", root / "manifest.csv"), ("generated", root), ("auto", root)):
        assert main(["datasets", "check", kind, "--root", str(source), "--json"]) == 1, kind
        summary = json.loads(capsys.readouterr().out)
        assert summary["subjects"] == 3 and summary["images"] == 6 and summary["decoded"] == 6
        assert [p["path"] for p in summary["problems"]] == [str(bad)]
        assert "truncated or corrupt" in summary["problems"][0]["reason"]
    assert main(["datasets", "check", "manifest", "--root", str(root / "manifest.csv")]) == 1
    out = capsys.readouterr().out
    assert "problems: 1" in out and "seed0001/seed0001_10.png: truncated or corrupt" in out


def test_decode_sample_spreads_and_deep_reads_all(tmp_path):
    from agebias.data.sources import open_dataset
    from agebias.data.summary import decode_sample, summarize

    assert decode_sample(5, 200) == [0, 1, 2, 3, 4] and decode_sample(5, None) == [0, 1, 2, 3, 4]
    picked = decode_sample(1000, 200)
    assert len(picked) == 200 and picked[0] == 0 and picked[-1] == 999
    root = _generated(tmp_path / "gen", n_ids=5, ages=(5,))
    (root / "seed0002" / "seed0002_5.png").write_bytes(b"\x89PNG not really")
    scan = open_dataset(root)
    assert summarize(scan, sample=2).problems == [] and summarize(scan, sample=2).decoded == 2  # 0 and 4 only
    deep = summarize(scan, sample=None)
    assert deep.decoded == 5 and [Path(p["path"]).name for p in deep.problems] == ["seed0002_5.png"]


# ------------------------------------------------------------------------------ generated sets, --aligned
def test_generated_set_gives_the_same_numbers_without_aligned(tmp_path, capsys):
    """Without --aligned the generated 112x112 crops were re-detected and re-aligned (FNMR 0.13 instead of 0)."""
    from agebias.models.checkpoints import save_backbone
    from agebias.models.registry import create_backbone

    root = _generated(tmp_path / "gen", n_ids=6, ages=(5, 15, 30))
    model = save_backbone(create_backbone(TINY), tmp_path / "tiny.pth")
    results = {}
    for name, extra in (("given", []), ("flag", ["--aligned"])):
        out = tmp_path / name
        assert main(["evaluate", "dataset", str(root), "--model", str(model), "--out", str(out), "--bootstrap", "0",
                     "--no-plots", *extra]) == 0, capsys.readouterr().err
        assert "warning" not in capsys.readouterr().err
        results[name] = json.loads((out / "results.json").read_text())
        assert "- Faces: 18 used as given (112x112 aligned crops)" in (out / "report.md").read_text()  # first lines
    for res in results.values():
        assert res["dataset"]["n_records"] == 18 and res["dataset"]["skipped"] == []
        assert res["dataset"]["preparation"]["used_as_given"] is True
    given, flag = (results[k]["models"]["tiny"] for k in ("given", "flag"))
    assert given["overall"] == flag["overall"] and given["groups"] == flag["groups"]
    assert given["fairness"] == flag["fairness"]


def test_search_exit_1_names_the_failed_trials_of_this_call(tmp_path, capsys, monkeypatch):
    import agebias.search.study
    from agebias.search.study import SearchSummary

    out = tmp_path / "s"
    old = out / "trials" / "0" / "error.txt"
    old.parent.mkdir(parents=True)
    old.write_text("ValueError: an earlier call's failure\n\ntraceback")
    os.utime(old, (1, 1))  # long before this call

    def fake(exp, **kw):
        (out / "trials" / "3").mkdir(parents=True)
        (out / "trials" / "3" / "error.txt").write_text("RuntimeError: out of memory\n\ntraceback")
        stamp = time.time_ns() - 5_000_000  # a file's time can read a few ms before time.time() taken earlier
        os.utime(out / "trials" / "3" / "error.txt", ns=(stamp, stamp))
        return SearchSummary("s", "sqlite://", out, 2, 1, out / "pareto.json", out / "pareto.png")

    monkeypatch.setattr(agebias.search.study, "run_search", fake)
    make_generated_set(tmp_path / "data", n_ids=2, per_id=2)
    spec = tmp_path / "search.toml"
    spec.write_text(Path("experiments/search_demo.toml").read_text().replace('"../runs/demo/generate/data"', '"data"'))
    assert main(["search", str(spec), "--out", str(out)]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[-2] == f"1 of 2 trial(s) failed; reasons in {out}/trials/<n>/error.txt"
    assert err[-1] == "  trial 3: RuntimeError: out of memory"
