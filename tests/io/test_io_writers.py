"""Atomic writer: refusals, and no temp file or partial output after a failure."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from svdguard.errors import InputError, OutputExistsError
from svdguard.io import atomic_output, read_tensor, write_tensor
from svdguard.io import writers as writers_module


def _listing(directory: Path) -> list[str]:
    return sorted(entry.name for entry in directory.iterdir())


def test_existing_file_refused_without_force(tmp_path: Path) -> None:
    target = tmp_path / "g.npy"
    np.save(target, np.zeros(3))
    with pytest.raises(OutputExistsError, match="the file exists$") as info:
        write_tensor(target, torch.ones(3, dtype=torch.float64))
    assert str(target) in str(info.value)
    assert "--force" not in str(info.value)  # the library names no command-line flag
    assert np.array_equal(np.load(target), np.zeros(3))  # untouched
    write_tensor(target, torch.ones(3, dtype=torch.float64), force=True)
    assert np.array_equal(np.load(target), np.ones(3))
    assert _listing(tmp_path) == ["g.npy"]


def test_inputs_are_refused_even_with_force(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = tmp_path / "a.npy"
    np.save(source, np.arange(4.0))
    monkeypatch.chdir(tmp_path)
    for spelled in (source, "a.npy", "./a.npy", tmp_path / "sub" / ".." / "a.npy"):
        with pytest.raises(InputError, match="refusing to overwrite the input"):
            write_tensor(spelled, torch.zeros(4, dtype=torch.float64), force=True, inputs=[source])
    # A symlink to the input is the input too.
    (tmp_path / "link.npy").symlink_to(source)
    with pytest.raises(InputError, match="refusing to overwrite the input"):
        write_tensor(tmp_path / "link.npy", torch.zeros(4), force=True, inputs=["a.npy"])
    # A hard link to the input is the same file under another name.
    os.link(source, tmp_path / "hard.npy")
    with pytest.raises(InputError, match="refusing to overwrite the input"):
        write_tensor(tmp_path / "hard.npy", torch.zeros(4), force=True, inputs=[source])
    assert np.array_equal(np.load(source), np.arange(4.0))


@pytest.mark.parametrize("force", [False, True])
def test_devices_fifos_and_links_to_them_are_refused(tmp_path: Path, force: bool) -> None:
    fifo = tmp_path / "pipe.npy"
    os.mkfifo(fifo)
    link = tmp_path / "null.npy"
    link.symlink_to(os.devnull)
    for target in (Path(os.devnull), fifo, link):
        with pytest.raises(InputError, match="is not a regular file") as info:
            write_tensor(target, torch.zeros(2), force=force)
        assert not isinstance(info.value, OutputExistsError)  # --force would not help
        assert str(target) in str(info.value)
    assert link.is_symlink() and fifo.is_fifo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["null.npy", "pipe.npy"]


def test_a_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "d.npy").mkdir()
    with pytest.raises(InputError, match="is a directory"):
        write_tensor(tmp_path / "d.npy", torch.zeros(2), force=True)


def test_disk_full_while_writing_names_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "report.json"
    with pytest.raises(InputError, match="cannot write: No space left on device") as info:
        with atomic_output(target) as temporary:
            temporary.write_text("{")
            raise OSError(28, "No space left on device")
    assert str(target) in str(info.value)
    assert _listing(tmp_path) == []


@pytest.mark.parametrize("suffix", [".npy", ".npz", ".safetensors"])
@pytest.mark.parametrize("interrupt", [KeyboardInterrupt, OSError])
def test_failure_mid_write_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, suffix: str, interrupt: type[BaseException]
) -> None:
    def write_half_then_fail(*args: object, **kwargs: object) -> None:
        target = args[0] if isinstance(args[0], (str, os.PathLike)) else None
        if target is not None:
            Path(target).write_bytes(b"partial")
        else:
            args[0].write(b"partial")  # type: ignore[attr-defined]
        raise interrupt("simulated")

    monkeypatch.setattr(writers_module.np, "save", write_half_then_fail)
    monkeypatch.setattr(writers_module.np, "savez", write_half_then_fail)
    monkeypatch.setattr(
        writers_module, "save_file", lambda tensors, path: write_half_then_fail(path)
    )
    # An OSError (disk full, ...) becomes an InputError naming the file; Ctrl-C stays itself.
    expected = InputError if interrupt is OSError else interrupt
    with pytest.raises(expected, match="simulated"):
        write_tensor(tmp_path / f"g{suffix}", torch.ones(2, 2))
    assert _listing(tmp_path) == []


def test_failure_keeps_existing_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "g.npy"
    np.save(target, np.full(2, 7.0))

    def fail(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(writers_module.np, "save", fail)
    with pytest.raises(KeyboardInterrupt):
        write_tensor(target, torch.zeros(2, dtype=torch.float64), force=True)
    assert _listing(tmp_path) == ["g.npy"]
    assert np.array_equal(np.load(target), np.full(2, 7.0))


def test_atomic_output_context(tmp_path: Path) -> None:
    target = tmp_path / "report.json"
    with atomic_output(target) as temporary:
        assert temporary.parent == tmp_path and temporary != target
        temporary.write_text('{"ok": true}')
        assert not target.exists()  # nothing visible until the block succeeds
    assert target.read_text() == '{"ok": true}'
    assert _listing(tmp_path) == ["report.json"]
    with pytest.raises(ValueError, match="boom"), atomic_output(target, force=True) as temporary:
        temporary.write_text("partial")
        raise ValueError("boom")
    assert target.read_text() == '{"ok": true}'
    assert _listing(tmp_path) == ["report.json"]


def test_new_file_gets_umask_mode(tmp_path: Path) -> None:
    out = write_tensor(tmp_path / "g.safetensors", torch.ones(2))
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask


@pytest.mark.parametrize("name", ["g.txt", "g", "g.pt"])
def test_unknown_output_suffix(tmp_path: Path, name: str) -> None:
    with pytest.raises(InputError, match=r"use one of \.npy, \.npz, \.safetensors"):
        write_tensor(tmp_path / name, torch.ones(2))


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        write_tensor(tmp_path / "nope" / "g.npy", torch.ones(2))


def test_npz_key_and_complex(tmp_path: Path) -> None:
    tensor = torch.complex(
        torch.ones(2, 2, dtype=torch.float64), torch.arange(4.0).reshape(2, 2).double()
    )
    write_tensor(tmp_path / "g.npz", tensor, key="dA")
    assert torch.equal(read_tensor(tmp_path / "g.npz", "dA"), tensor)
    assert torch.equal(read_tensor(tmp_path / "g.npz"), tensor)


def test_rename_failure_is_an_input_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_space(*args: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(writers_module.os, "replace", no_space)
    with pytest.raises(InputError, match="cannot write: No space left on device") as info:
        write_tensor(tmp_path / "g.npy", torch.ones(2), force=True)
    assert str(tmp_path / "g.npy") in str(info.value)
    assert _listing(tmp_path) == []


def test_invalid_output_name(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="cannot write here"):
        write_tensor(str(tmp_path / "g\0.npy"), torch.ones(2))
