"""``python -m data.prepare`` over an existing data set folder: refused without
``--overwrite``, naming what the folder holds that the new one would not; replaced, and said,
with it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from test_prepare import build_ucsd, check_ped2, no_leftovers

from common.errors import InputError
from data import prepare as prep


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*.*")}


def test_re_preparing_refuses_to_replace_what_a_user_added_unless_overwrite(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    top = build_ucsd(tmp_path / "src")
    root = tmp_path / "datasets"
    argv = ["ped2", "--root", str(root), "--source", str(top), "--quiet"]
    assert prep.main(argv) == 0
    dataset = root / "ped2"
    (dataset / "notes.txt").write_text("mine")
    shutil.copytree(dataset / "testing" / "frames" / "02", dataset / "testing" / "frames" / "13")
    added = sorted(p.name for p in (dataset / "testing" / "frames" / "13").iterdir())
    before = snapshot(dataset)
    capsys.readouterr()

    with pytest.raises(SystemExit) as refused:
        prep.main(argv)
    assert refused.value.code == 2
    lost = ["notes.txt", *(f"testing/frames/13/{name}" for name in added)]
    assert capsys.readouterr().err.splitlines() == [
        f"error: {dataset} already holds {len(lost)} files the new one would not "
        f"({', '.join(lost[:3])}, ...); replace it with --overwrite, or give another --root"
    ]
    assert snapshot(dataset) == before and no_leftovers(root)

    assert prep.main([*argv, "--overwrite"]) == 0
    assert f"replaced the earlier {dataset} (--overwrite)" in capsys.readouterr().err
    check_ped2(dataset)
    assert no_leftovers(root)


def test_a_folder_holding_nothing_extra_is_still_not_replaced_silently(tmp_path: Path) -> None:
    top = build_ucsd(tmp_path / "src")
    root = tmp_path / "datasets"
    prep.prepare("ped2", root, [top], progress=False)
    with pytest.raises(InputError, match=r"already exists \(every file in it would be"):
        prep.prepare("ped2", root, [top], progress=False)
    check_ped2(root / "ped2")
