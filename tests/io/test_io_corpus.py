"""Every file of the malformed/hostile corpus raises its svdguard error, naming the file."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from corpus.make_corpus import MARKER_FILES, CorpusCase, hostile_pickle, make_corpus, npy_bytes

from svdguard.errors import SvdguardError
from svdguard.io import expand_inputs, iter_records, read_tensor

with tempfile.TemporaryDirectory() as _scratch:
    CASES = make_corpus(_scratch)  # the names and expectations, for parametrisation


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("corpus")
    assert [case.filename for case in make_corpus(directory)] == [case.filename for case in CASES]
    return directory


def _read_everything(path: Path) -> list[torch.Tensor]:
    """What `svdguard inspect` does: expand, list, load each tensor."""
    return [record.load() for file in expand_inputs([path]) for record in iter_records(file)]


def test_corpus_size() -> None:
    assert len(CASES) >= 30
    assert len({case.filename for case in CASES}) == len(CASES)
    for prefix in ("st_", "npy_", "npz_", "idx_", "pt_", "empty."):
        assert sum(case.filename.startswith(prefix) for case in CASES) >= 3, prefix


@pytest.mark.parametrize("case", CASES, ids=[case.filename for case in CASES])
def test_corpus_case(corpus: Path, case: CorpusCase) -> None:
    path = corpus / case.filename
    if case.error is None:
        tensors = _read_everything(path)
        assert len(tensors) == 1 and tensors[0].dtype.is_floating_point
        return
    with pytest.raises(SvdguardError) as info:
        _read_everything(path)
    error = info.value
    assert type(error) is case.error, f"{type(error).__name__}: {error}"
    message = str(error)
    assert case.message in message
    assert message.startswith(str(path)), message  # the file is named first
    assert "Traceback" not in message and "\n" not in message


def test_corpus_read_tensor(corpus: Path) -> None:
    """read_tensor (what `svdguard grad` calls) raises the same classes on single files."""
    for case in CASES:
        path = corpus / case.filename
        if case.error is None or path.is_dir() or "index" in case.filename:
            continue
        with pytest.raises(case.error) as info:
            read_tensor(path, None if "npy" in case.filename else "w")
        assert str(path) in str(info.value)


def test_nan_matrix_loads(corpus: Path) -> None:
    tensor = read_tensor(corpus / "nan_matrix.npy")
    assert tensor.shape == (4, 3) and bool(torch.isnan(tensor).all())


def test_corpus_pickles_never_run(corpus: Path) -> None:
    for case in CASES:
        path = corpus / case.filename
        try:
            _read_everything(path)
        except SvdguardError:
            pass
    for marker in MARKER_FILES:
        assert not (corpus / marker).exists(), marker


def test_pickle_payloads_are_live_but_not_run(tmp_path: Path) -> None:
    """The hostile files are real: numpy/torch WITH pickling enabled run them (control);
    svdguard's loaders do not."""
    npy_marker, pt_marker = tmp_path / "npy.marker", tmp_path / "pt.marker"
    npy_header = "{'descr': '|O', 'fortran_order': False, 'shape': (1,), }"
    hostile_npy = tmp_path / "hostile.npy"
    hostile_npy.write_bytes(npy_bytes(npy_header, hostile_pickle(npy_marker)))
    corpus = tmp_path / "corpus"
    make_corpus(corpus)
    hostile_pt = tmp_path / "hostile.pt"
    shutil.copy(corpus / "pt_pickle_payload.pt", hostile_pt)

    for path in (hostile_npy, hostile_pt, corpus / "pt_raw_pickle_payload.pt"):
        with pytest.raises(SvdguardError, match="refused"):
            _read_everything(path)
        with pytest.raises(SvdguardError, match="refused"):
            read_tensor(path)
    assert not npy_marker.exists()
    assert not any((corpus / marker).exists() for marker in MARKER_FILES)

    # Control, deliberately unsafe and confined to tmp_path: the payload does run when a
    # loader unpickles it, so the assertions above test something.
    np.load(hostile_npy, allow_pickle=True)
    assert npy_marker.exists()
    torch.load(hostile_pt, weights_only=False)
    assert (corpus / MARKER_FILES[1]).exists()
    del pt_marker
