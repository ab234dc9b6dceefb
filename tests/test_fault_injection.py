"""Fault injection (issue 28 item 8): the failures a careful user or an attacker provokes, kept from
coming back. Each case plants the fault (a stale lock, a crafted file...) and checks the outcome:
no hang, no code run, an error naming the file and the fix. Fast enough for CI (seconds each).

The training / checkpoint / output cases: crafted checkpoints, a run folder that is never
overwritten silently, symlinks planted in --out, a full disk, and kill -9 at checkpoint moments.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from helpers import require_backend

REPO = Path(__file__).resolve().parents[1]


def _python(code: str, env: dict, timeout: float, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, timeout=timeout,
                          capture_output=True, text=True, **kwargs)


# -- item 6: an interrupted extension build ------------------------------------------------------

@pytest.fixture
def built_copy(tmp_path):
    """$TORCH_EXTENSIONS_DIR holding a copy of this environment's built cpu extension (so loading it
    is a no-op build of seconds), and the environment that points there."""
    require_backend("cpu", torch.device("cpu"))
    from magnn.backends import cpu

    source = cpu.build_directory()
    root = tmp_path / "extensions"
    shutil.copytree(source, root / source.name, ignore=shutil.ignore_patterns("lock", "magnn-build.lock"))
    env = {**os.environ, "TORCH_EXTENSIONS_DIR": str(root), "PYTHONPATH": f"{REPO}{os.pathsep}"
           + os.environ.get("PYTHONPATH", "")}
    return root / source.name, env


BUILD = """
    import warnings
    warnings.simplefilter("always")
    from magnn.backends import cpu
    print(cpu.build())
"""


def test_planted_stale_build_lock_is_cleared_within_seconds(built_copy):
    # what kill -9 during `magnn build-ext` leaves: torch's FileBaton "lock" with no build behind it
    directory, env = built_copy
    lock = directory / "lock"
    lock.touch()
    old = time.time() - 3600
    os.utime(lock, (old, old))
    try:
        result = _python(BUILD, env, timeout=60)  # a no-op build loads in seconds
    except subprocess.TimeoutExpired:
        pytest.fail(f"the build hung on the stale lock {lock}")
    assert result.returncode == 0, result.stderr
    assert not lock.exists()
    assert f"removed the stale C++ extension build lock {lock}" in result.stderr


def test_build_killed_holding_the_locks_does_not_block_the_next(built_copy):
    # a build killed (SIGKILL) while it held both magnn's lock and torch's: the kernel drops the first,
    # the second stays on disk; the next build must clear it, not wait forever
    directory, env = built_copy
    killed = _python(f"""
        import os, signal
        from pathlib import Path
        from magnn.backends import cpu
        directory = Path({str(directory)!r})
        with cpu.build_guard(directory):
            (directory / "lock").touch()  # as cpp_extension.load does first
            os.kill(os.getpid(), signal.SIGKILL)
    """, env, timeout=60)
    assert killed.returncode == -9
    assert (directory / "lock").exists()
    result = _python(BUILD, env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert not (directory / "lock").exists()
    assert "removed the stale C++ extension build lock" in result.stderr


def test_a_live_build_is_waited_for_and_named(built_copy):
    # a build that is really running keeps its lock; the waiter says whose build it waits for
    from magnn.backends.cpu import BuildLockWarning, build_guard

    directory, env = built_copy
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import time
        from pathlib import Path
        from magnn.backends import cpu
        directory = Path({str(directory)!r})
        with cpu.build_guard(directory):
            (directory / "lock").touch()
            print("building", flush=True)
            time.sleep(2.0)
            (directory / "lock").unlink()
    """)], env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "building"
        started = time.monotonic()
        with pytest.warns(BuildLockWarning, match=rf"waiting for the C\+\+ extension build of process {holder.pid}\b"):
            with build_guard(directory, report_after=0.2):
                waited = time.monotonic() - started
                assert not (directory / "lock").exists()  # the live build's lock was left to it
        assert waited > 0.5
    finally:
        holder.wait(timeout=60)


# -- item 1: no code from data files -------------------------------------------------------------

class _Marker:
    """Unpickling this creates `path` (open(path, "w")): the proof that a file's code ran."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _zinc_source(count=4):
    from magnn.data import load_zinc

    bundled = load_zinc(source="bundled")
    return {split: [bundled[split][i] for i in range(count)] for split in ("train", "val", "test")}


def _write_zinc_raw(raw, source, extra=None, edit=None):
    """benchmarking-gnns raw files (see tests/test_data.py); `extra` is appended to train.pickle's
    list, `edit(split, molecules)` may change the molecules before they are written."""
    import pickle

    raw.mkdir(parents=True, exist_ok=True)
    for split, graphs in source.items():
        molecules = []
        for graph in graphs:
            adjacency = torch.zeros(graph.num_nodes, graph.num_nodes, dtype=torch.long)
            adjacency[graph.edge_index[0], graph.edge_index[1]] = graph.edge_type
            molecules.append({"atom_type": graph.x.view(-1).clone(), "bond_type": adjacency,
                              "logP_SA_cycle_normalized": graph.y.clone()})
        if edit is not None:
            edit(split, molecules)
        if extra is not None and split == "train":
            molecules.append(extra)
        with open(raw / f"{split}.pickle", "wb") as f:
            pickle.dump(molecules, f)
        (raw / f"{split}.index").write_text(",".join(str(i) for i in range(len(graphs))) + "\n")


def test_crafted_zinc_raw_pickle_runs_no_code(tmp_path, monkeypatch):
    from magnn.data import UntrustedFileError, load_dataset, load_zinc

    monkeypatch.delenv("MAGNN_ALLOW_PICKLE", raising=False)
    marker = tmp_path / "code_ran"
    raw = tmp_path / "data" / "ZINC" / "raw"
    _write_zinc_raw(raw, _zinc_source(), extra=_Marker(marker))
    for load in (lambda: load_zinc(root=tmp_path / "data"), lambda: load_dataset("zinc", root=tmp_path / "data")):
        with pytest.raises(UntrustedFileError) as caught:
            load()
        message = str(caught.value)
        assert str(raw / "train.pickle") in message and re.search(r"asks for \w+\.open\b", message)
        assert "allow_pickle=True" in message and "MAGNN_ALLOW_PICKLE=1" in message and "runs" in message
        assert not marker.exists()
    # the opt-in is what lets a pickle's code run: with it the same file does run it
    monkeypatch.setenv("MAGNN_ALLOW_PICKLE", "1")
    load_zinc(root=tmp_path / "data")  # (the marker object is no indexed molecule: the rest loads)
    assert marker.exists()


def test_plain_zinc_raw_pickles_load_without_opting_in(tmp_path, monkeypatch):
    # the official files hold tensors and plain data only: read as such, nothing to opt in to
    from magnn.data import load_zinc

    monkeypatch.delenv("MAGNN_ALLOW_PICKLE", raising=False)
    source = _zinc_source()
    _write_zinc_raw(tmp_path / "ZINC" / "raw", source)
    splits = load_zinc(root=tmp_path, source="official")
    assert [len(splits[s]) for s in ("train", "val", "test")] == [4, 4, 4]
    assert torch.equal(splits["val"][2].x, source["val"][2].x) and torch.equal(splits["val"][2].y, source["val"][2].y)


@pytest.mark.parametrize("cache_file", ["pre_transform.pt", "pre_filter.pt", "train.pt"])
def test_crafted_processed_zinc_cache_runs_no_code(tmp_path, monkeypatch, cache_file):
    # PyG reads pre_transform.pt / pre_filter.pt with weights_only=False and falls back to it for its
    # caches: under magnn every one of them is read as weights only
    from magnn.data import UntrustedFileError, load_zinc

    monkeypatch.delenv("MAGNN_ALLOW_PICKLE", raising=False)
    _write_zinc_raw(tmp_path / "ZINC" / "raw", _zinc_source())
    load_zinc(root=tmp_path, source="official")  # builds the processed cache
    crafted = tmp_path / "ZINC" / "subset" / "processed" / cache_file
    assert crafted.exists()
    marker = tmp_path / "code_ran"
    torch.save(_Marker(marker), crafted)
    with pytest.raises(UntrustedFileError, match="MAGNN_ALLOW_PICKLE=1") as caught:
        load_zinc(root=tmp_path, source="official")
    assert str(crafted) in str(caught.value)
    assert not marker.exists()


TOX21_HEADER = ("NR-AR,NR-AR-LBD,NR-AhR,NR-Aromatase,NR-ER,NR-ER-LBD,NR-PPAR-gamma,SR-ARE,SR-ATAD5,SR-HSE,"
                "SR-MMP,SR-p53,mol_id,smiles")
TOX21_SMILES = ("CCO", "c1ccccc1O", "CC(=O)O", "c1ccncc1", "CCN(CC)CC", "C1CCCCC1", "OC(=O)c1ccccc1",
                "CC(C)O", "c1ccc2ccccc2c1", "NCCO")


def _tox21_csv(path, labels=None):
    rows = [TOX21_HEADER]
    for i, smiles in enumerate(TOX21_SMILES):
        values = (labels or {}).get(i, ["0", "1", "", "0", "1", "0", "", "1", "0", "0", "1", "0"])
        rows.append(",".join(values) + f",TOX{i},{smiles}")
    path.write_text("\n".join(rows) + "\n")
    return path


def test_tox21_reads_the_csv_in_the_data_root_and_its_cache_runs_no_code(tmp_path, monkeypatch):
    from magnn.data import UntrustedFileError, load_dataset

    monkeypatch.delenv("MAGNN_ALLOW_PICKLE", raising=False)
    _tox21_csv(tmp_path / "tox21.csv")
    splits, _ = load_dataset("tox21", root=tmp_path)
    molecules = sorted(graph.smiles for split in splits.values() for graph in split)
    assert molecules == sorted(TOX21_SMILES)  # the user's CSV, not the bundled 7,831 molecules
    processed = next((tmp_path / "tox21" / "processed").iterdir())
    marker = tmp_path / "code_ran"
    torch.save(_Marker(marker), processed / "pre_transform.pt")
    with pytest.raises(UntrustedFileError) as caught:
        load_dataset("tox21", root=tmp_path)
    assert str(processed / "pre_transform.pt") in str(caught.value) and "allow_pickle=True" in str(caught.value)
    assert not marker.exists()


# -- item 7: corrupt dataset entries, named ------------------------------------------------------

@pytest.mark.parametrize("field,value,words", [
    ("atom_type", 40, "atom type 40, outside 0..27"),
    ("atom_type", -1, "atom type -1, outside 0..27"),
    ("bond_type", 7, "bond type 7, outside 1..3"),
    ("logP_SA_cycle_normalized", float("nan"), "label (logP_SA_cycle_normalized) nan, not finite"),
    ("logP_SA_cycle_normalized", float("inf"), "label (logP_SA_cycle_normalized) inf, not finite"),
])
def test_corrupt_zinc_entry_names_the_file_and_graph(tmp_path, field, value, words):
    from magnn.data import CorruptDataError, load_zinc

    def edit(split, molecules):
        if split == "val":
            molecule = molecules[2]
            if field == "bond_type":
                src, dst = molecule["bond_type"].nonzero()[0].tolist()
                molecule["bond_type"][src, dst] = value
            elif field == "atom_type":
                molecule["atom_type"][1] = value
            else:
                molecule[field] = torch.tensor([value])

    raw = tmp_path / "ZINC" / "raw"
    _write_zinc_raw(raw, _zinc_source(), edit=edit)
    with pytest.raises(CorruptDataError) as caught:
        load_zinc(root=tmp_path, source="official")
    message = str(caught.value)
    assert f"ZINC val graph 2 (molecule 2 of {raw / 'val.pickle'})" in message, message
    assert words in message and "delete" in message


def test_non_finite_tox21_label_names_the_row_and_column(tmp_path):
    from magnn.data import CorruptDataError, TOX21

    labels = {3: ["0", "1", "", "0", "inf", "0", "", "1", "0", "0", "1", "0"]}
    csv = _tox21_csv(tmp_path / "mine.csv", labels)
    with pytest.raises(CorruptDataError) as caught:
        TOX21(root=tmp_path, csv_path=csv)
    message = str(caught.value)
    assert str(csv) in message and "row 4 (line 5, mol_id TOX3), column NR-ER" in message and "inf" in message


def test_magnn_backend_is_validated_with_the_choices(monkeypatch):
    from magnn.core.errors import UserError
    from magnn.functional import edge_attention, select_backend

    edge_index = torch.tensor([[0, 1], [1, 0]])
    q = torch.randn(2, 1, 2)
    monkeypatch.setenv("MAGNN_BACKEND", "fast")
    with pytest.raises(UserError, match=r"MAGNN_BACKEND='fast'.*'auto', 'torch', 'triton', 'cpu'"):
        edge_attention(q, q, q, torch.randn(2, 1, 2), edge_index)
    monkeypatch.setenv("MAGNN_BACKEND", "torch")
    assert select_backend("auto", torch.device("cpu"), torch.float32).name == "torch"
    monkeypatch.setenv("MAGNN_BACKEND", "auto")
    assert select_backend("auto", torch.device("cpu"), torch.float32).name in ("cpu", "torch")


@pytest.mark.parametrize("cache_file", ["pre_transform.pt", "geometric_data_processed.pt"])
def test_crafted_ogbn_proteins_cache_runs_no_code(tmp_path, monkeypatch, cache_file):
    # ogb's processed file and PyG's pre_transform.pt beside it are read as weights only too
    from magnn.data import UntrustedFileError, load_ogbn_proteins, write_ogb_proteins_raw

    monkeypatch.delenv("MAGNN_ALLOW_PICKLE", raising=False)
    write_ogb_proteins_raw(tmp_path, num_nodes=60, num_edges_undirected=200, seed=3)
    load_ogbn_proteins(tmp_path)  # processes once
    crafted = next((tmp_path / "ogbn_proteins" / "processed").glob(cache_file))
    marker = tmp_path / "code_ran"
    torch.save(_Marker(marker), crafted)
    with pytest.raises(UntrustedFileError) as caught:
        load_ogbn_proteins(tmp_path)
    assert str(crafted) in str(caught.value) and "MAGNN_ALLOW_PICKLE=1" in str(caught.value)
    assert not marker.exists()


# -- item 1: checkpoints hold tensors and plain data; a crafted one runs no code -----------------

from cli_helpers import TINY, data_root, error_line, run, run_copy, trained  # noqa: E402,F401  (fixtures)


class _Touch:
    """Unpickling it creates `path` (what a crafted file could do with any code)."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _crafted(folder, good_path, marker):
    """A checkpoint shaped like good_path's whose unpickling would create `marker`."""
    good = torch.load(good_path, weights_only=True)
    path = folder / "crafted.pt"
    torch.save({**good, "epoch": _Touch(marker)}, path)
    return path


def test_crafted_checkpoint_runs_no_code_in_detect_study_and_resume(capsys, tmp_path, trained, data_root):
    marker = tmp_path / "pwned"
    crafted = _crafted(tmp_path, trained / "best.pt", marker)
    resume_out = tmp_path / "resume"
    resume_out.mkdir()
    shutil.copy(crafted, resume_out / "last.pt")
    for command, argv in (("detect", ["--ckpt", crafted, "--out", tmp_path / "det"]),
                          ("study", ["--dataset", "zinc", "--quick", "--ckpt-no-ebt", crafted, "--out", tmp_path / "s"]),
                          ("train", [*TINY, "--layers", "2", "--epochs", "2", "--resume", "--out", resume_out,
                                     "--data-root", data_root])):
        code, err = run(capsys, command, *argv)
        line = error_line(err, command, code)
        assert not marker.exists(), command
        assert "--trust-checkpoint" in line and "MAGNN_ALLOW_PICKLE=1" in line and "runs whatever code" in line, line


def test_checkpoints_load_as_weights_only(trained):
    for name in ("best.pt", "last.pt"):
        state = torch.load(trained / name, weights_only=True)  # raises if anything needs unpickling
        assert isinstance(state["config"], str)


def test_older_pickled_checkpoint_needs_the_opt_in(capsys, tmp_path, trained, data_root, monkeypatch):
    import json

    import numpy as np

    good = torch.load(trained / "best.pt", weights_only=True)
    older = tmp_path / "older.pt"  # as magnn wrote them before: config a dict, numpy RNG arrays
    torch.save({**good, "config": json.loads(good["config"]), "rng": {"numpy": np.random.get_state()}}, older)
    code, err = run(capsys, "detect", "--ckpt", older, "--out", tmp_path / "det", "--data-root", data_root)
    assert "--trust-checkpoint" in error_line(err, "detect", code)
    code, err = run(capsys, "detect", "--ckpt", older, "--out", tmp_path / "det", "--data-root", data_root,
                    "--trust-checkpoint", "--max-batches", "1")
    assert code == 0, err
    assert "MAGNN_TRUST_CHECKPOINT" not in os.environ  # the flag's opt-in ends with the command
    monkeypatch.setenv("MAGNN_ALLOW_PICKLE", "1")
    from magnn.train import load_checkpoint

    assert load_checkpoint(older).config.dataset == "zinc"


# -- item 5: a finished run folder is never overwritten silently ----------------------------------

def test_fresh_train_into_a_finished_folder_refuses(capsys, run_copy, data_root):
    before = {p.name: p.read_bytes() for p in run_copy.iterdir() if p.is_file()}
    code, err = run(capsys, "train", *TINY, "--layers", "2", "--epochs", "1", "--out", run_copy,
                    "--data-root", data_root)
    line = error_line(err, "train", code)
    assert "--resume" in line and "new --out" in line and "--overwrite" in line and str(run_copy) in line
    assert {p.name: p.read_bytes() for p in run_copy.iterdir() if p.is_file()} == before
    code, err = run(capsys, "train", *TINY, "--layers", "2", "--epochs", "1", "--out", run_copy,
                    "--data-root", data_root, "--overwrite", "--seed", "5")
    assert code == 0, err
    import json

    assert json.loads((run_copy / "metrics.json").read_text())["config"]["seed"] == 5


# -- item 2: outputs atomic, inside --out, and a full disk named -----------------------------------

def test_symlink_planted_in_out_is_refused(capsys, tmp_path, trained, data_root):
    outside = tmp_path / "outside.json"
    outside.write_text("precious")
    out = tmp_path / "det"
    out.mkdir()
    (out / "detect.json").symlink_to(outside)
    code, err = run(capsys, "detect", "--ckpt", trained / "best.pt", "--out", out, "--data-root", data_root,
                    "--max-batches", "1")
    line = error_line(err, "detect", code)
    assert "symlink" in line and str(out / "detect.json") in line
    assert outside.read_text() == "precious"


def test_write_atomically_stays_inside_the_folder(tmp_path):
    from magnn.core.errors import UserError
    from magnn.core.files import write_atomically

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    (out / "stages").symlink_to(elsewhere)
    with pytest.raises(UserError, match="outside the output folder"):
        write_atomically(out / "stages" / "attack.json", "{}", folder=out)
    assert list(elsewhere.iterdir()) == []
    write_atomically(out / "ok.json", "{}", folder=out)
    assert sorted(p.name for p in out.iterdir()) == ["ok.json", "stages"]


def test_full_disk_is_one_line_naming_the_file_and_leaves_nothing_half_written(capsys, tmp_path, trained,
                                                                                data_root, monkeypatch):
    import errno
    import json

    from magnn.core import files

    out = tmp_path / "det"
    argv = ["detect", "--ckpt", trained / "best.pt", "--out", out, "--data-root", data_root, "--max-batches", "1"]
    assert run(capsys, *argv)[0] == 0
    before = (out / "detect.json").read_text()
    real_write = os.write

    def full(fd, data):
        real_write(fd, bytes(data)[: max(1, len(data) // 2)])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(files.os, "write", full)
    code, err = run(capsys, *argv)
    monkeypatch.undo()
    line = error_line(err, "detect", code)
    assert "no space left" in line and str(out) in line and "needs" in line and "free" in line, line
    assert [p.name for p in out.iterdir() if ".tmp-" in p.name] == []
    assert json.loads((out / "detect.json").read_text()) == json.loads(before)


# -- item 8: kill -9 at checkpoint moments, then --resume --------------------------------------------

_KILLER = """
    import os, signal, sys
    real = os.replace
    count = 0
    def replace(src, dst):
        global count
        if str(dst).endswith("last.pt"):
            count += 1
            if count == 2 and sys.argv[1] == "before":  # the temp file written, not yet renamed
                os.kill(os.getpid(), signal.SIGKILL)
            real(src, dst)
            if count == 2 and sys.argv[1] == "after":  # last.pt renamed, best.pt/metrics.json not yet
                os.kill(os.getpid(), signal.SIGKILL)
        else:
            real(src, dst)
    os.replace = replace
    from magnn.cli import main
    sys.exit(main(sys.argv[2:]))
"""


def _weights(path):
    return torch.load(path, weights_only=True)["model"]


def _kill_argv(data_root):
    return [*TINY, "--layers", "2", "--epochs", "3", "--data-root", str(data_root), "--ma-probe-graphs", "0"]


@pytest.fixture(scope="module")
def straight(tmp_path_factory, data_root):
    """The uninterrupted 3-epoch run both kill cases are compared with."""
    from magnn.cli import main

    out = tmp_path_factory.mktemp("straight")
    assert main(["train", *map(str, _kill_argv(data_root)), "--out", str(out), "--overwrite"]) == 0
    return out


@pytest.mark.parametrize("moment", ["before", "after"])
def test_kill_at_a_checkpoint_then_resume_matches_the_straight_run(capsys, tmp_path, data_root, straight, moment):
    import json

    argv = _kill_argv(data_root)
    killed = tmp_path / "killed"
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    child = subprocess.run([sys.executable, "-c", textwrap.dedent(_KILLER), moment, "train", *argv,
                            "--out", str(killed)], env=env, timeout=300, capture_output=True, text=True)
    assert child.returncode == -9, child.stderr[-2000:]
    assert not (killed / "metrics.json").exists()
    assert (moment == "before") == any(".tmp-" in p.name for p in killed.iterdir())
    code, err = run(capsys, "train", *argv, "--resume", "--out", killed)
    assert code == 0, err
    assert [p.name for p in killed.iterdir() if ".tmp-" in p.name] == []
    a, b = _weights(straight / "last.pt"), _weights(killed / "last.pt")
    assert all(torch.equal(a[key], b[key]) for key in a)
    strip = lambda m: [{k: v for k, v in row.items() if k != "seconds"} for row in m["history"]]  # noqa: E731
    expected = json.loads((straight / "metrics.json").read_text())
    resumed = json.loads((killed / "metrics.json").read_text())
    assert strip(expected) == strip(resumed) and expected["test"] == resumed["test"]


# -- items 1 and 7 on the command line: --allow-pickle and --tox21-csv ----------------------------

def test_allow_pickle_flag_is_the_cli_opt_in_for_dataset_pickles(capsys, tmp_path, monkeypatch):
    monkeypatch.delenv("MAGNN_ALLOW_PICKLE", raising=False)
    marker = tmp_path / "code_ran"
    _write_zinc_raw(tmp_path / "data" / "ZINC" / "raw", _zinc_source(), extra=_Marker(marker))
    argv = [*TINY, "--layers", "1", "--epochs", "1", "--data-root", tmp_path / "data", "--ma-probe-graphs", "0"]
    code, err = run(capsys, "train", *argv, "--out", tmp_path / "a")
    line = error_line(err, "train", code)
    assert "--allow-pickle" in line and "train.pickle" in line and not marker.exists()
    code, err = run(capsys, "train", *argv, "--out", tmp_path / "b", "--allow-pickle")
    assert code == 0, err
    assert marker.exists()  # trusted: the file was unpickled in full, as asked
    assert "MAGNN_ALLOW_PICKLE" not in os.environ


def test_tox21_csv_flag_trains_on_the_users_csv(capsys, tmp_path):
    import json

    csv = _tox21_csv(tmp_path / "mine.csv")
    argv = ["--dataset", "tox21", "--hidden", "8", "--heads", "2", "--layers", "1", "--epochs", "1",
            "--backend", "torch", "--data-root", tmp_path / "data", "--ma-probe-graphs", "0"]
    code, err = run(capsys, "train", *argv, "--out", tmp_path / "run", "--tox21-csv", csv)
    assert code == 0, err
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["config"]["tox21_csv"] == str(csv)
    code, err = run(capsys, "train", *argv, "--out", tmp_path / "other", "--tox21-csv", tmp_path / "absent.csv")
    assert str(tmp_path / "absent.csv") in error_line(err, "train", code)
    code, err = run(capsys, "train", *TINY, "--out", tmp_path / "z", "--tox21-csv", csv)
    assert "--tox21-csv applies to --dataset tox21 only" in error_line(err, "train", code)
