"""`fairchem-deq convert`: test-only conversion, which system went to which split, `id` as
"<sid>_<fid>", the --overwrite message, and elements that only val/test contain."""

from __future__ import annotations

import json
import pickle
import warnings
from pathlib import Path

import lmdb
import pytest

from fairchem_deq.data import convert

DATA = Path(__file__).parent / "data"
NPZ = DATA / "md17_ethanol_300.npz"
TRAJS = [DATA / "random1000156.traj", DATA / "random1000163.traj"]


def read_items(path: Path) -> list:
    env = lmdb.open(str(path), subdir=False, readonly=True, lock=False)
    with env.begin() as txn:
        n = pickle.loads(txn.get(b"length"))
        items = [pickle.loads(txn.get(str(i).encode())) for i in range(n)]
    env.close()
    return items


def test_test_only_conversion_cli(tmp_path, capsys):
    from fairchem_deq.cli import main

    out = tmp_path / "eval"
    assert main(["convert", str(TRAJS[1]), "--out", str(out), "--test-only", "--no-progress"]) == 0
    assert "test: 27 frames" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["conversion.json", "test"]
    fids = [int(d.fid) for d in read_items(out / "test" / "data.lmdb")]
    assert fids == list(range(27))  # time order
    info = json.loads((out / "conversion.json").read_text())
    assert info["split"] == "test" and info["counts"] == {"test": 27}
    assert convert(NPZ, tmp_path / "npz", split="test", progress=False) == {"test": 300}


def test_conversion_json_records_the_systems_of_each_split(tmp_path):
    counts = convert(TRAJS, tmp_path / "o", split_by="system", n_train=1, n_val=0, seed=0, progress=False)
    info = json.loads((tmp_path / "o" / "conversion.json").read_text())
    assert set(info["split_sids"]) == set(counts) == {"train", "test"}
    assert sorted(info["split_sids"]["train"] + info["split_sids"]["test"]) == [1000156, 1000163]
    for name, sids in info["split_sids"].items():
        items = read_items(tmp_path / "o" / name / "data.lmdb")
        assert sorted({int(d.sid) for d in items}) == sids
    # frame split: a system can be in several splits
    convert(TRAJS, tmp_path / "f", n_train=20, n_val=5, progress=False)
    info = json.loads((tmp_path / "f" / "conversion.json").read_text())
    assert info["split_sids"]["train"] == [1000156, 1000163]


def test_lmdb_id_is_sid_underscore_fid(tmp_path):
    from fairchem.core.datasets import LmdbDataset

    convert(TRAJS, tmp_path / "o", split="none", progress=False)
    items = read_items(tmp_path / "o" / "all" / "data.lmdb")
    assert [d.id for d in items[:3]] == ["1000156_0", "1000156_1", "1000156_2"]
    assert items[-1].id == "1000163_26"
    dataset = LmdbDataset({"src": str(tmp_path / "o" / "all" / "data.lmdb")})  # src = the file
    assert dataset[40].id == f"{int(dataset[40].sid)}_{int(dataset[40].fid)}"


def test_overwrite_message_names_the_cli_flag(tmp_path, capsys):
    from fairchem_deq.cli import main

    args = ["convert", str(TRAJS[1]), "--out", str(tmp_path / "o"), "--split", "none", "--no-progress"]
    assert main(args) == 0
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "already exists" in err and "--overwrite" in err and "overwrite=True" not in err
    with pytest.raises(FileExistsError, match="overwrite=True"):  # the Python API names its argument
        convert(TRAJS[1], tmp_path / "o", split="none", progress=False)


def test_elements_only_in_val_or_test_are_reported(tmp_path, capsys):
    from ase.data import atomic_numbers
    from ase.io import read

    from fairchem_deq.data.convert import UnseenElementsWarning

    train_elements = set(read(TRAJS[0], index=0).get_chemical_symbols())
    test_elements = set(read(TRAJS[1], index=0).get_chemical_symbols())
    unseen = sorted(test_elements - train_elements, key=atomic_numbers.get)  # reported by Z
    assert unseen, "the two bundled systems must differ in their elements for this test"
    # sid 1000156 -> train, 1000163 -> test (seeded system split)
    with pytest.warns(UnseenElementsWarning, match=", ".join(unseen)):
        convert(TRAJS, tmp_path / "o", split_by="system", n_train=1, n_val=0, seed=1, progress=False)
    info = json.loads((tmp_path / "o" / "conversion.json").read_text())
    assert info["split_sids"]["train"] == [1000156]
    assert info["elements_not_in_train"] == {"test": unseen}
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnseenElementsWarning)  # nothing to report without train
        convert(TRAJS, tmp_path / "n", split="none", progress=False)

    from fairchem_deq.cli import main

    assert (
        main(
            [
                "convert",
                *map(str, TRAJS),
                "--out",
                str(tmp_path / "c"),
                "--split-by",
                "system",
                "--n-train",
                "1",
                "--n-val",
                "0",
                "--seed",
                "1",
                "--no-progress",
            ]
        )
        == 0
    )
    err = capsys.readouterr().err
    assert "fairchem-deq convert: warning: test has element(s)" in err


def test_conversion_records_the_readout_constants_of_each_split(tmp_path):
    """Mean atoms per structure and neighbours per atom at the shipped graph (molecules 5 Å /
    1000 neighbours, periodic OC20 slabs 12 Å / 20): what `avg_num_nodes: auto` measures."""
    import json

    from conftest import DATA

    from fairchem_deq.data import convert

    convert(DATA / "md17_ethanol_300.npz", tmp_path / "eth", n_train=64, n_val=8, progress=False)
    graphs = json.loads((tmp_path / "eth" / "conversion.json").read_text())["graph_statistics"]
    assert set(graphs) == {"train", "val", "test"}
    assert graphs["train"]["avg_num_nodes"] == 9.0 and graphs["train"]["avg_degree"] == 8.0
    assert (graphs["train"]["cutoff"], graphs["train"]["max_neighbors"]) == (5.0, 1000)
    convert(DATA / "random1000156.traj", tmp_path / "slab", split="none", oc20_tags=True, progress=False)
    slab = json.loads((tmp_path / "slab" / "conversion.json").read_text())["graph_statistics"]["all"]
    assert slab["avg_num_nodes"] == 49.0 and slab["avg_degree"] == 20.0 and slab["cutoff"] == 12.0
