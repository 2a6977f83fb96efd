"""Generator protocol, ages, registry and the shared writer (layout, manifest, contact sheet, resume, atomicity)."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from agebias.errors import BadInputFile, DataError, UserError
from generators import registry
from generators.ages import AgePlan, interval_values, parse_age_intervals, parse_ages
from generators.base import Generator, Identity, Sample
from generators.writer import CONTACT_SHEET, MANIFEST, generate_to


class CountingGenerator(Generator):
    """Deterministic colour images; records every call; can fail on demand."""

    name = "counting"
    needs = "seeds"
    age_range = (0, 80)

    def __init__(self, level: int = 10, fail_after: int | None = None, bad_id: str | None = None):
        self.level = level
        self.calls: list[tuple[str, int]] = []
        self.fail_after = fail_after
        self.bad_id = bad_id

    def parameters(self):
        return {"level": self.level}

    def generate_one(self, identity, age):
        if self.fail_after is not None and len(self.calls) >= self.fail_after:
            raise KeyboardInterrupt
        if identity.id == self.bad_id:
            raise BadInputFile(identity.id, "cannot edit this one")
        self.calls.append((identity.id, age))
        img = np.full((16, 16, 3), (self.level + age + (identity.seed or 0) * 7) % 256, np.uint8)
        return Sample(identity, age, img, {"seed": identity.seed})


def _ids(n):
    return [Identity(id=f"seed{i:04d}", seed=i) for i in range(n)]


def _rows(out: Path):
    with open(out / MANIFEST, newline="") as fh:
        return list(csv.DictReader(fh))


# --- ages -------------------------------------------------------------------------------------------------
def test_parse_ages_and_bins():
    assert parse_ages("14, 3,8,8") == [3, 8, 14]
    assert parse_age_intervals("0-5,5-10,50-70") == [(0, 5), (5, 10), (50, 70)]
    assert interval_values([(0, 5), (5, 10)], 0) == [0, 1, 2, 3, 4]
    assert interval_values([(0, 5), (5, 10)], 1) == [5, 6, 7, 8, 9, 10]  # last bin includes its upper end
    for bad in ("a,b", "", "-3"):
        with pytest.raises(UserError):
            parse_ages(bad)
    for bad in ("5-0", "0-5,3-8", "x"):
        with pytest.raises(UserError):
            parse_age_intervals(bad)


def test_age_plan_bins_seeded_one_per_bin():
    plan = AgePlan.from_options(age_intervals="0-5,5-10,10-15,15-20,20-30,30-40,40-50,50-70", seed=3)
    a = plan.ages_for("seed0001")
    assert len(a) == 8
    for age, (lo, hi) in zip(a, plan.intervals, strict=True):
        assert lo <= age <= hi
    assert plan.ages_for("seed0001") == a  # deterministic
    others = {tuple(plan.ages_for(f"seed{i:04d}")) for i in range(20)}
    assert len(others) > 1  # drawn per identity
    two = AgePlan.from_options(age_intervals="0-5,20-30", per_interval=2, seed=1).ages_for("x")
    assert len(two) == 4
    with pytest.raises(UserError):
        AgePlan.from_options(age_intervals="0-2", per_interval=5)
    with pytest.raises(UserError):
        AgePlan.from_options(ages="5", age_intervals="0-5")


# --- registry ---------------------------------------------------------------------------------------------
def test_registry_builtins_unknown_and_entry_points(monkeypatch):
    names = registry.available_generators()
    assert {"cardioid", "eg3d", "cusp", "diffusion"} <= set(names)
    with pytest.raises(UserError, match="unknown generator 'nope'"):
        registry.create_generator("nope")

    class FakeEP:
        name, value = "counting_ep", "tests:CountingGenerator"

        def load(self):
            return CountingGenerator

    monkeypatch.setattr(registry.GENERATORS, "entry_points", lambda: {"counting_ep": FakeEP()})
    assert "counting_ep" in registry.available_generators()
    gen = registry.create_generator("counting_ep", level=3)
    assert isinstance(gen, CountingGenerator) and gen.level == 3
    with pytest.raises(UserError, match="bad option"):
        registry.create_generator("counting_ep", nonsense=1)
    registry.register_generator("counting_reg", CountingGenerator)
    assert isinstance(registry.create_generator("counting_reg"), CountingGenerator)


# --- writer -----------------------------------------------------------------------------------------------
def test_layout_manifest_and_contact_sheet(tmp_path):
    gen = CountingGenerator()
    res = generate_to(tmp_path, gen, _ids(3), [7, 20, 45])
    assert res.written == 9 and res.reused == 0 and res.exit_code == 0
    p = tmp_path / "seed0000" / "seed0000_7.png"  # the thesis layout
    assert p.is_file()
    rows = _rows(tmp_path)
    assert len(rows) == 9
    assert {"id", "age", "path", "method", "seed", "source", "parameters", "checksum"} <= set(rows[0])
    for r in rows:
        data = (tmp_path / r["path"]).read_bytes()
        assert r["checksum"] == "sha256:" + hashlib.sha256(data).hexdigest()
        assert r["method"] == "counting"
        assert json.loads(r["parameters"])["level"] == 10
    assert rows[0]["seed"] == "0"
    sheet = Image.open(tmp_path / CONTACT_SHEET)
    assert sheet.width > 3 * 112 and sheet.height > 3 * 112
    assert json.loads((tmp_path / "generation.json").read_text())["written"] == 9
    # the data layer's reader accepts it
    from agebias.data.generated import scan_generated

    scan = scan_generated(tmp_path, verify_checksums=True)
    assert len(scan.records) == 9
    # the only thing the reader may flag is the contact sheet beside the layout (not an identity image)
    assert all(Path(p.path).name == CONTACT_SHEET for p in scan.problems)


def test_resume_skips_valid_and_redoes_corrupt(tmp_path):
    generate_to(tmp_path, CountingGenerator(), _ids(2), [5, 10])
    gen = CountingGenerator()
    res = generate_to(tmp_path, gen, _ids(2), [5, 10])
    assert res.written == 0 and res.reused == 4 and gen.calls == []
    # corrupt one file, delete another: only those two are redone
    (tmp_path / "seed0001" / "seed0001_5.png").write_bytes(b"not a png")
    (tmp_path / "seed0000" / "seed0000_10.png").unlink()
    gen = CountingGenerator()
    res = generate_to(tmp_path, gen, _ids(2), [5, 10])
    assert sorted(gen.calls) == [("seed0000", 10), ("seed0001", 5)]
    assert res.reused == 2
    # different settings: refused in one line, nothing touched (the folder holds another generation)
    before = (tmp_path / "manifest.csv").read_bytes()
    with pytest.raises(DataError, match=r"holds another generation \(different generator settings \(level\)\)"):
        generate_to(tmp_path, CountingGenerator(level=99), _ids(2), [5, 10])
    assert (tmp_path / "manifest.csv").read_bytes() == before


def test_another_generation_in_the_folder_is_refused_the_same_resumes(tmp_path, caplog):
    """Generating other ages into a folder silently merged two generations (the manifest listed 6 ages while
    generation.json said 2) and kept the old qc/: now other ages, another method or a foreign folder are refused;
    the same generation resumes, more identities extend it, and an earlier qc/ is named when it goes stale."""
    generate_to(tmp_path, CountingGenerator(), _ids(2), [5, 10])
    with pytest.raises(DataError, match=r"holds another generation \(different ages \(5,10, now 20,30\)\)"):
        generate_to(tmp_path, CountingGenerator(), _ids(2), [20, 30])
    with pytest.raises(DataError, match=r"different ages \(5,10, now 5\)"):  # a subset would leave extra images
        generate_to(tmp_path, CountingGenerator(), _ids(2), [5])

    class Other(CountingGenerator):
        name = "other"

    with pytest.raises(DataError, match=r"different method \(counting, now other\)"):
        generate_to(tmp_path, Other(), _ids(2), [5, 10])
    assert json.loads((tmp_path / "generation.json").read_text())["identities"] == 2
    (tmp_path / "qc").mkdir()
    with caplog.at_level("WARNING"):
        res = generate_to(tmp_path, CountingGenerator(), _ids(3), [5, 10])  # one more identity: extends
    assert (res.reused, res.written) == (4, 2) and len(_rows(tmp_path)) == 6
    assert any("does not cover the 2 image(s) generated now" in r.getMessage() for r in caplog.records)
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "me.jpg").write_bytes(b"x")
    with pytest.raises(DataError, match="holds no generated set"):
        generate_to(foreign, CountingGenerator(), _ids(1), [5])
    assert not (foreign / MANIFEST).exists()


def test_interruption_leaves_no_partial_files_and_resumes(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        generate_to(tmp_path, CountingGenerator(fail_after=5), _ids(3), [5, 10, 15])
    leftovers = [p for p in tmp_path.rglob("*") if p.name.startswith(".") and p.is_file()]
    assert leftovers == []
    rows = _rows(tmp_path)
    assert 0 < len(rows) <= 5
    for r in rows:  # the manifest only lists whole, checksummed files
        data = (tmp_path / r["path"]).read_bytes()
        assert r["checksum"] == "sha256:" + hashlib.sha256(data).hexdigest()
    gen = CountingGenerator()
    res = generate_to(tmp_path, gen, _ids(3), [5, 10, 15])
    assert res.reused == len(rows) and res.written == 9 - len(rows)
    assert len(_rows(tmp_path)) == 9


def test_bad_identity_is_skipped_not_fatal(tmp_path):
    res = generate_to(tmp_path, CountingGenerator(bad_id="seed0001"), _ids(3), [5])
    assert res.written == 2 and res.exit_code == 1
    assert res.skipped[0].reason == "cannot edit this one"
    assert not (tmp_path / "seed0001").exists()


def test_age_range_checked_before_writing(tmp_path):
    out = tmp_path / "o"
    with pytest.raises(UserError, match="outside this model's range 0-80"):
        generate_to(out, CountingGenerator(), _ids(1), [5, 90])
    assert not (out / MANIFEST).exists()


def test_per_identity_ages_in_sheet(tmp_path):
    plan = AgePlan.from_options(age_intervals="0-10,10-20,20-40", seed=0)
    res = generate_to(tmp_path, CountingGenerator(), _ids(4), plan)
    assert res.written == 12
    assert repr(res) == f"GenerateResult({tmp_path}: 12 images of 4 identities, 12 written, 0 kept, 0 skipped)"
    for i in range(4):
        ages = sorted(int(r["age"]) for r in _rows(tmp_path) if r["id"] == f"seed{i:04d}")
        assert ages == plan.ages_for(f"seed{i:04d}")


def test_per_bin_with_fixed_ages_is_refused():
    with pytest.raises(UserError, match="per_interval.*goes with age intervals"):
        AgePlan.from_options(ages="5,10", per_interval=3)
    assert AgePlan.from_options(ages="5,10").all_ages() == [5, 10]
