"""The experiment file is validated up front; stages are skipped when complete and unchanged."""

from __future__ import annotations

from pathlib import Path

import pytest

from agebias.errors import UserError
from agebias.pipeline.runner import run_experiment
from agebias.pipeline.schema import load_experiment

MINIMAL = """
[experiment]
name = "t"
[generate]
method = "cardioid"
sources = "package-photos"
ages = [5, 30]
[finetune]
backbone = "iresnet:1,1,1,1@8,8,16,16"
init = "random"
epochs = 1
[evaluate]
models = ["finetuned"]
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "exp.toml"
    path.write_text(text)
    return path


def test_defaults_filled_and_types_kept(tmp_path):
    exp = load_experiment(write(tmp_path, MINIMAL))
    assert exp.section("finetune")["frozen_layers"] == "1,2,3"
    assert exp.section("generate")["ages"] == [5, 30]
    assert exp.section("evaluate")["target_fmr"] == pytest.approx(1e-3)


@pytest.mark.parametrize("edit, words", [
    (("[finetune]\n", "[finetune]\nlearning_rate = 0.1\n"), "unknown key 'learning_rate' in [finetune]"),
    (("epochs = 1", 'epochs = "ten"'), "[finetune]: finetune setting 'epochs': must be a whole number"),
    (("[experiment]", "[experiments]"), "unknown table [experiments]"),
    (('init = "random"', 'init = "pretrained"\n'), "does not exist"),
    (("ages = [5, 30]", "ages = [5, 30]\ncheckpoint = 'nowhere.pkl'"), "checkpoint = 'nowhere.pkl' does not exist"),
    (("epochs = 1", "epochs = true"), "[finetune]: finetune setting 'epochs': must be a whole number"),
    # [evaluate] models are checked before any stage runs, not after hours of generation and training
    (('models = ["finetuned"]', 'models = ["sface", "finetune"]'), "[evaluate] models: unknown model 'finetune'"),
    (('models = ["finetuned"]', 'models = ["nothere.pth"]'), "[evaluate] models: model file nothere.pth not found"),
    (('models = ["finetuned"]', 'models = ["baseline"]'), "lists 'baseline' but [finetune] init = 'random'"),
    (('models = ["finetuned"]', 'models = ["iresnet50"]'), "'iresnet50' names an architecture"),
])
def test_bad_files_give_one_clear_line(tmp_path, edit, words):
    text = MINIMAL.replace(*edit)
    if "pretrained" in edit[1]:
        text = text.replace('backbone = "iresnet:1,1,1,1@8,8,16,16"', 'backbone = "missing/backbone.pth"')
    with pytest.raises(UserError) as err:
        load_experiment(write(tmp_path, text))
    assert words in str(err.value)
    assert "\n" not in str(err.value)


def _recording_stages(calls: list[str], fail_at: str | None = None):
    def make(name):
        def fn(exp, out_dir, summaries):
            calls.append(name)
            if name == fail_at:
                raise KeyboardInterrupt
            return {"ran": name, "upstream": sorted(summaries)}
        return fn
    return {name: make(name) for name in ("generate", "finetune", "evaluate", "report")}


def test_stages_skip_when_complete_and_rerun_after_change(tmp_path):
    exp_path = write(tmp_path, MINIMAL)
    calls: list[str] = []
    out = tmp_path / "run"
    run_experiment(load_experiment(exp_path), out=out, stage_fns=_recording_stages(calls))
    assert calls == ["generate", "finetune", "evaluate", "report"]
    calls.clear()
    run_experiment(load_experiment(exp_path), out=out, stage_fns=_recording_stages(calls))
    assert calls == []
    # a finetune setting changed: finetune and everything downstream re-run, generate does not
    (out / "finetune" / "marker.txt").write_text("made with epochs = 1")
    write(tmp_path, MINIMAL.replace("epochs = 1", "epochs = 2"))
    run_experiment(load_experiment(exp_path), out=out, stage_fns=_recording_stages(calls))
    assert calls == ["finetune", "evaluate", "report"]
    # the outputs made with the old settings are kept beside the new ones, never overwritten or mixed
    kept = [p for p in out.iterdir() if p.name.startswith("finetune-")]
    assert len(kept) == 1 and (kept[0] / "marker.txt").read_text() == "made with epochs = 1"
    assert not (out / "finetune" / "marker.txt").exists()


def test_interrupted_stage_resumes(tmp_path):
    exp = load_experiment(write(tmp_path, MINIMAL))
    calls: list[str] = []
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        run_experiment(exp, out=out, stage_fns=_recording_stages(calls, fail_at="finetune"))
    assert calls == ["generate", "finetune"]
    calls.clear()
    run_experiment(exp, out=out, stage_fns=_recording_stages(calls))
    assert calls == ["finetune", "evaluate", "report"]


def test_from_and_only(tmp_path):
    exp = load_experiment(write(tmp_path, MINIMAL))
    out = tmp_path / "run"
    calls: list[str] = []
    with pytest.raises(UserError, match="has not completed"):
        run_experiment(exp, out=out, only="evaluate", stage_fns=_recording_stages(calls))
    run_experiment(exp, out=out, stage_fns=_recording_stages(calls))
    calls.clear()
    run_experiment(exp, out=out, from_stage="evaluate", stage_fns=_recording_stages(calls))
    assert calls == ["evaluate", "report"]
    calls.clear()
    run_experiment(exp, out=out, only="finetune", stage_fns=_recording_stages(calls))
    assert calls == ["finetune"]
    with pytest.raises(UserError, match="--from must be one of"):
        run_experiment(exp, out=out, from_stage="train", stage_fns=_recording_stages(calls))
