"""Seeded splits and k-fold folds: deterministic, disjoint, covering; splits.json round trip."""
from __future__ import annotations

import json

import pytest

from unetkit.data.splits import get_fold, load_splits, make_kfold, make_split, save_splits
from unetkit.errors import ConfigError, DataError

NAMES = [f"case_{i:03d}" for i in range(23)]


def test_split_deterministic_disjoint_covering():
    a, b = make_split(NAMES, 0.2, seed=3), make_split(list(reversed(NAMES)), 0.2, seed=3)
    assert a == b
    assert set(a["train"]).isdisjoint(a["val"])
    assert sorted(a["train"] + a["val"]) == sorted(NAMES)
    assert len(a["val"]) == round(23 * 0.2)
    assert make_split(NAMES, 0.2, seed=4) != a


def test_split_keeps_one_each_side():
    s = make_split(["a", "b"], 0.01, seed=0)
    assert len(s["train"]) == 1 and len(s["val"]) == 1


def test_kfold_each_case_validated_once():
    folds = make_kfold(NAMES, k=5, seed=1)
    assert folds == make_kfold(NAMES, k=5, seed=1)
    vals = [n for f in folds for n in f["val"]]
    assert sorted(vals) == sorted(NAMES)
    assert {len(f["val"]) for f in folds} <= {4, 5}
    for f in folds:
        assert set(f["train"]).isdisjoint(f["val"]) and len(f["train"]) + len(f["val"]) == 23
    with pytest.raises(ConfigError):
        make_kfold(NAMES, k=1)


def test_save_load_splits(tmp_path):
    folds = make_kfold(NAMES, k=3, seed=0)
    path = save_splits(tmp_path / "splits.json", folds, seed=0, source="data/x")
    payload = load_splits(path)
    assert payload["kind"] == "kfold" and payload["seed"] == 0 and payload["source"] == "data/x"
    assert get_fold(path, 2) == folds[2]
    with pytest.raises(FileExistsError):
        save_splits(path, folds)
    save_splits(tmp_path / "one.json", make_split(NAMES, 0.25, seed=0), seed=0)
    assert json.loads((tmp_path / "one.json").read_text())["kind"] == "split"
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(DataError, match="bad.json"):
        load_splits(tmp_path / "bad.json")
    with pytest.raises(ConfigError, match="fold 3"):
        get_fold(path, 3)
