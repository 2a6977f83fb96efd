"""CSV manifests, the generated layout, AgeDB names, plain folders and `open_dataset` auto-detection."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from agebias.data.agedb import parse_agedb_name
from agebias.data.generated import (file_checksum, generated_image_path, parse_generated_name, read_generated_rows,
                                    scan_generated, write_generated_manifest)
from agebias.data.manifest import read_manifest, write_manifest
from agebias.data.records import FaceRecord
from agebias.data.sources import detect_kind, open_dataset
from agebias.errors import UserError


def _img(path, value=128, size=(16, 16)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((*size, 3), value, np.uint8)).save(path)
    return path


def test_manifest_relative_paths_extras_and_problems(tmp_path):
    _img(tmp_path / "data" / "imgs" / "a.png")
    _img(tmp_path / "data" / "imgs" / "b.png")
    (tmp_path / "data" / "list.csv").write_text(
        "path,subject,age,gender,lm0_x,lm0_y,lm1_x,lm1_y,lm2_x,lm2_y,lm3_x,lm3_y,lm4_x,lm4_y\n"
        "imgs/a.png,s1,12,f,1,2,3,4,5,6,7,8,9,10\n"
        "imgs/b.png,s2,,m,,,,,,,,,,\n"
        "imgs/missing.png,s3,30,m,,,,,,,,,,\n"
        "imgs/a.png,s4,old,m,,,,,,,,,,\n")
    scan = open_dataset(tmp_path / "data" / "list.csv")
    assert [(r.path.name, r.subject, r.age) for r in scan.records] == [("a.png", "s1", 12), ("b.png", "s2", None)]
    assert scan.records[0].path == tmp_path / "data" / "imgs" / "a.png"
    assert scan.records[0].extra == {"gender": "f"}
    assert scan.records[0].landmarks == ((1, 2), (3, 4), (5, 6), (7, 8), (9, 10))
    assert scan.records[1].landmarks is None
    reasons = sorted(p.reason for p in scan.problems)
    assert len(reasons) == 2 and "not found" in reasons[1] and "bad age" in reasons[0]


def test_manifest_missing_column_is_user_error(tmp_path):
    (tmp_path / "m.csv").write_text("file,age\nx.png,3\n")
    with pytest.raises(UserError, match="path"):
        read_manifest(tmp_path / "m.csv")


def test_manifest_cells_short_rows_spaced_headers_and_ages(tmp_path):
    from agebias.data.manifest import parse_age

    _img(tmp_path / "a.png")
    (tmp_path / "m.csv").write_text(" path , subject ,age,note\n"
                                    "a.png, s1 ,012\n"         # short row: note empty; age with a leading zero
                                    "\n"                       # blank line skipped
                                    "a.png,s2,12.6,x,surplus\n"  # surplus cell ignored; age rounded
                                    "a.png,s3,999,y\n")        # out of range: a problem
    scan = read_manifest(tmp_path / "m.csv")
    assert [(r.subject, r.age, r.extra) for r in scan.records] == [("s1", 12, {"note": ""}),
                                                                   ("s2", 13, {"note": "x"})]
    assert len(scan.problems) == 1 and "bad age '999'" in scan.problems[0].reason
    assert [parse_age(v) for v in ("7", " 199 ", "", "nan", "3.0")] == [7, 199, None, None, 3]
    for bad in ("200", "199.6", "-1", "old", "inf"):
        with pytest.raises(ValueError):
            parse_age(bad)


def test_write_manifest_roundtrip(tmp_path):
    _img(tmp_path / "x" / "a.png")
    recs = [FaceRecord(tmp_path / "x" / "a.png", "s1", 7, ((1.0, 2.0),) * 5, {"source": "z"})]
    write_manifest(tmp_path / "manifest.csv", recs)
    assert (tmp_path / "manifest.csv").read_text().splitlines()[0].startswith("path,subject,age")
    back = open_dataset(tmp_path)
    assert back.records[0].path == recs[0].path and back.records[0].age == 7
    assert back.records[0].landmarks == recs[0].landmarks and back.records[0].extra == {"source": "z"}


def test_generated_layout_and_manifest(tmp_path):
    root = tmp_path / "gen"
    assert generated_image_path(root, "id7", 35) == root / "id7" / "id7_35.png"
    for ident in ("id1", "id2"):
        for age in (5, 35, 70):
            _img(generated_image_path(root, ident, age), value=age)
    write_generated_manifest(root, [{"id": "id1", "age": a, "method": "cardioid", "seed": 3,
                                     "parameters": {"strength": 0.5}, "note": "x"} for a in (5, 35)])
    # merge: a later write adds rows and replaces same (id, age)
    write_generated_manifest(root, [{"id": i, "age": a, "method": "cardioid", "seed": 4}
                                    for i in ("id1", "id2") for a in (35, 70)] +
                             [{"id": "id2", "age": 5, "method": "cardioid", "source": "photo.jpg"}])
    rows = read_generated_rows(root)
    assert len(rows) == 6
    assert list(rows[0])[:8] == ["path", "id", "age", "method", "seed", "source", "parameters", "checksum"]
    r5 = [r for r in rows if r["id"] == "id1" and r["age"] == "5"][0]
    assert json.loads(r5["parameters"]) == {"strength": 0.5} and r5["note"] == "x"
    assert r5["checksum"] == file_checksum(root / "id1" / "id1_5.png")
    assert [r["seed"] for r in rows if r["id"] == "id1" and r["age"] == "35"] == ["4"]
    assert detect_kind(root) == "generated"
    scan = open_dataset(root)
    assert sorted((r.subject, r.age) for r in scan.records) == [(i, a) for i in ("id1", "id2") for a in (5, 35, 70)]
    assert all(r.extra["method"] == "cardioid" for r in scan.records) and not scan.problems
    # an unlisted image and a corrupted file are reported
    _img(root / "id3" / "id3_9.png")
    (root / "id2" / "id2_70.png").write_bytes(b"changed")
    scan = scan_generated(root, verify_checksums=True)
    reasons = sorted(p.reason for p in scan.problems)
    assert any("checksum" in r for r in reasons) and any("not listed" in r for r in reasons)


def test_generated_layout_without_manifest(tmp_path):
    root = tmp_path / "gen"
    _img(root / "abc" / "abc_10.png")
    _img(root / "abc" / "abc_60.png")
    _img(root / "abc" / "stray.png")
    scan = scan_generated(root)
    assert sorted((r.subject, r.age) for r in scan.records) == [("abc", 10), ("abc", 60)]
    assert [p.path.endswith("stray.png") for p in scan.problems] == [True]
    assert parse_generated_name(root / "abc" / "xyz_10.png") is None


def test_generated_id_must_be_folder_safe(tmp_path):
    with pytest.raises(UserError):
        generated_image_path(tmp_path, "../evil", 3)


def test_agedb_names(tmp_path):
    assert parse_agedb_name("0_MariaCallas_35_f.jpg") == ("MariaCallas", 35, "f", "0")
    assert parse_agedb_name("12_Jean_Paul_Belmondo_70_m.JPG") == ("Jean_Paul_Belmondo", 70, "m", "12")
    assert parse_agedb_name("MariaCallas_35.jpg") is None
    for name in ("0_MariaCallas_35_f.jpg", "1_MariaCallas_50_f.jpg", "2_AlPacino_40_m.jpg", "3_AlPacino_70_m.jpg",
                 "4_X_1_m.jpg"):
        _img(tmp_path / "agedb" / name)
    _img(tmp_path / "agedb" / "weird.jpg")
    assert detect_kind(tmp_path / "agedb") == "agedb"
    scan = open_dataset(tmp_path / "agedb")
    assert len(scan.records) == 5 and scan.subjects == ["AlPacino", "MariaCallas", "X"]
    r = [r for r in scan.records if r.path.name == "3_AlPacino_70_m.jpg"][0]
    assert r.age == 70 and r.extra["gender"] == "m"
    assert [p.path.endswith("weird.jpg") for p in scan.problems] == [True]


def test_plain_folder(tmp_path):
    _img(tmp_path / "in" / "alice" / "1.jpg")
    _img(tmp_path / "in" / "bob" / "x.png")
    (tmp_path / "in" / "bob" / "notes.txt").write_text("ignored")
    (tmp_path / "in" / "bob" / "data.xyz").write_text("listed")
    assert detect_kind(tmp_path / "in") == "folder"
    scan = open_dataset(tmp_path / "in")
    assert [(r.subject, r.age) for r in scan.records] == [("alice", None), ("bob", None)]
    assert [p.path.endswith("data.xyz") for p in scan.problems] == [True]


def test_open_dataset_errors(tmp_path):
    with pytest.raises(UserError, match="not found"):
        open_dataset(tmp_path / "nope")
    with pytest.raises(UserError, match="unknown dataset kind"):
        open_dataset(tmp_path, "lfw")


def test_summary_bins_and_check_other_kinds(tmp_path, capsys):
    import json as _json

    from agebias.cli import main
    from agebias.data.summary import age_bin_label

    assert [age_bin_label(a) for a in (0, 5, 6, 20, 21, 60, 61, 99, None)] == [
        "0-5", "0-5", "6-10", "16-20", "21-30", "51-60", "61+", "61+", "unknown"]
    for name in ("0_A_3_f.jpg", "1_A_64_f.jpg", "2_B_25_m.jpg"):
        _img(tmp_path / "agedb" / name)
    assert main(["datasets", "check", "agedb", "--root", str(tmp_path / "agedb"), "--json"]) == 0
    s = _json.loads(capsys.readouterr().out)
    assert (s["subjects"], s["images"]) == (2, 3)
    assert s["per_age_bin"]["0-5"] == 1 and s["per_age_bin"]["21-30"] == 1 and s["per_age_bin"]["61+"] == 1
    _img(tmp_path / "plain" / "p" / "x.png")
    assert main(["datasets", "check", "auto", "--root", str(tmp_path / "plain"), "--json"]) == 0
    assert _json.loads(capsys.readouterr().out)["per_age_bin"]["unknown"] == 1
    assert main(["datasets", "check", "manifest"]) == 2  # no --root and no default


def test_generated_without_manifest_reports_images_outside_identity_folders(tmp_path):
    """Top-level or deeply nested images were ignored silently (0 images, no problems, exit 0)."""
    root = tmp_path / "gen"
    _img(root / "abc" / "abc_10.png")
    _img(root / "loose.png")
    _img(root / "abc" / "deeper" / "abc_20.png")
    _img(root / "contact_sheet.png")  # written by the generator: not a problem
    _img(root / "qc" / "similarity_vs_age.png")
    scan = scan_generated(root)
    assert [(r.subject, r.age) for r in scan.records] == [("abc", 10)]
    assert sorted(p.path.split("gen")[-1] for p in scan.problems) == ["/abc/deeper/abc_20.png", "/loose.png"]


def test_binary_csv_is_a_user_error(tmp_path):
    """A non-UTF-8 manifest used to end in a UnicodeDecodeError traceback."""
    bad = tmp_path / "m.csv"
    bad.write_bytes(b"\xb8\xff\x00\x13" * 20)
    with pytest.raises(UserError, match="UTF-8"):
        read_manifest(bad)
    (tmp_path / "gen").mkdir()
    (tmp_path / "gen" / "manifest.csv").write_bytes(b"\xb8\xff\x00\x13" * 20)
    with pytest.raises(UserError, match="UTF-8"):
        scan_generated(tmp_path / "gen")
    with pytest.raises(UserError, match="UTF-8"):
        open_dataset(tmp_path / "gen")  # kind auto reads the header first


def test_datasets_check_flags_zero_byte_images(tmp_path, capsys):
    from agebias.cli import main
    from helpers_faces import make_fgnet_tree

    root = tmp_path / "fgnet"
    make_fgnet_tree(root, with_pts=False)
    victim = sorted((root / "images").iterdir())[0]
    victim.write_bytes(b"")
    rc = main(["datasets", "check", "fgnet", "--root", str(root), "--json"])
    out = capsys.readouterr().out
    assert rc == 1
    assert victim.name in out and "empty file (0 bytes)" in out


def test_a_generated_sets_own_manifest_names_the_set(tmp_path):
    from agebias.data.generated import write_generated_manifest
    from agebias.data.images import save_png

    root = tmp_path / "gen"
    for ident in ("a", "b"):
        for age in (5, 30):
            save_png(np.full((112, 112, 3), 100, np.uint8), generated_image_path(root, ident, age))
    write_generated_manifest(root, [{"id": i, "age": a, "path": f"{i}/{i}_{a}.png", "method": "test"}
                                    for i in ("a", "b") for a in (5, 30)])
    assert detect_kind(root / "manifest.csv") == "generated"
    scan = open_dataset(root / "manifest.csv")
    assert sorted((r.subject, r.age) for r in scan.records) == [("a", 5), ("a", 30), ("b", 5), ("b", 30)]
