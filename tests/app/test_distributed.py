"""svdguard.app.distributed: the plan, the merge of the ranks' rows, and real 2-rank runs over gloo.

References: the plan against the optimum found by trying every assignment; the
rows of any split among ranks against the rows of one process; 2-rank runs
(``--jobs 2`` and ``torchrun --nproc_per_node 2``) against the JSON document of
one process, byte for byte; tensor lists against ``safetensors.safe_open``.
"""

from __future__ import annotations

import functools
import itertools
import json
import math
import os
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from torch.distributed import TCPStore  # type: ignore[attr-defined]
from typer.testing import CliRunner

from svdguard.app import distributed
from svdguard.app.distributed import (
    FAULT_VARIABLE,
    Launch,
    list_jobs,
    plan_owners,
    tensor_cost,
)
from svdguard.app.inspection import inspect
from svdguard.cli.app import app
from svdguard.errors import InputError
from svdguard.io import DEFAULT_MAX_ELEMENTS, expand_inputs

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "sample_data"
CHECKPOINT = SAMPLES / "checkpoint.safetensors"
SHARDED = SAMPLES / "sharded"

#: Seconds a 2-rank run with a failing rank may take before the test calls it a hang: two
#: interpreters importing torch on a loaded 2-core machine take about 10 s; a hang would be
#: held by the collective timeout (minutes), far above this.
FAULT_DEADLINE_S = 90.0

#: Largest instance whose optimum is found by trying every assignment (ranks ** jobs cases).
BRUTE_FORCE_JOBS = 7


def optimum(costs: list[int], ranks: int) -> int:
    """The smallest possible largest load, by trying every assignment of jobs to ranks."""
    best = math.inf
    for owners in itertools.product(range(ranks), repeat=len(costs)):
        loads = [0] * ranks
        for cost, owner in zip(costs, owners, strict=True):
            loads[owner] += cost
        best = min(best, max(loads))
    return int(best)


def loads_of(costs: list[int], owners: list[int], ranks: int) -> list[int]:
    loads = [0] * ranks
    for cost, owner in zip(costs, owners, strict=True):
        loads[owner] += cost
    return loads


# --- the plan ----------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    costs=st.lists(st.integers(min_value=0, max_value=1000), min_size=1, max_size=BRUTE_FORCE_JOBS),
    ranks=st.integers(min_value=1, max_value=3),
)
def test_plan_is_within_the_largest_job_of_the_optimum(costs: list[int], ranks: int) -> None:
    owners = plan_owners(costs, ranks)
    assert all(0 <= owner < ranks for owner in owners)
    best = optimum(costs, ranks)
    largest = max(loads_of(costs, owners, ranks))
    assert largest <= best + max(costs)
    # Graham's bound for longest-first: ≤ (4/3 − 1/(3·ranks))·optimum, in integers.
    assert 3 * ranks * largest <= (4 * ranks - 1) * best
    assert plan_owners(list(costs), ranks) == owners  # deterministic


def test_plan_takes_the_longest_first_onto_the_least_loaded_rank() -> None:
    # Longest-first by hand (loads after each step): 9 → r0 (9, 0, 0), 7 → r1 (9, 7, 0),
    # 5 → r2 (9, 7, 5), 4 → r2 (9, 7, 9), 2 → r1 (9, 9, 9), 1 → r0 (a three-way tie: lowest rank).
    costs = [4, 9, 1, 7, 5, 2]
    assert plan_owners(costs, 3) == [2, 0, 0, 1, 2, 1]
    # Equal costs go in plan order onto the least-loaded, lowest rank.
    assert plan_owners([3, 3, 3, 3], 2) == [0, 1, 0, 1]
    assert plan_owners([], 2) == []
    with pytest.raises(InputError, match="ranks must be at least 1"):
        plan_owners([1], 0)


def test_tensor_cost_is_m_n_min_of_the_analysed_matrix() -> None:
    assert tensor_cost((40, 32), "float32") == 40 * 32 * 32
    assert tensor_cost((8, 3, 3, 3), "float32") == 8 * 27 * 8  # analysed as 8 × 27
    assert tensor_cost((16, 16), "bfloat16") == 16**3
    # Read but not decomposed: their element count.
    assert tensor_cost((1, 16), "int64") == 16
    assert tensor_cost((32,), "float32") == 32
    assert tensor_cost((), "float64") == 1
    assert tensor_cost((0, 5), "float32") == 0


@pytest.mark.parametrize("source", [CHECKPOINT, SHARDED], ids=["single", "sharded"])
def test_jobs_are_every_tensor_with_its_header_shape(source: Path) -> None:
    expected: dict[tuple[str, str], int] = {}
    for path in expand_inputs([source]):
        shards = (
            sorted(
                path.parent / name
                for name in set(json.loads(path.read_text())["weight_map"].values())
            )
            if path.name.endswith(".index.json")
            else [path]
        )
        for shard in shards:
            with safe_open(shard, "np") as handle:
                for key in handle.keys():
                    shape = handle.get_slice(key).get_shape()
                    dtype = str(handle.get_slice(key).get_dtype())
                    rows = shape[0] if shape else 1
                    numel = math.prod(shape)
                    floating = dtype.startswith(("F", "BF"))
                    cost = (
                        rows * (numel // rows) * min(rows, numel // rows)
                        if floating and len(shape) >= 2 and numel
                        else numel
                    )
                    expected[(str(shard), key)] = cost
    jobs = list_jobs(expand_inputs([source]))
    assert {job.pair: job.cost for job in jobs} == expected
    assert len(jobs) == len(expected)


# --- the merge: any split among ranks gives the rows of one process ----------------------


def split_rows(files: list[Path], ranks: int) -> list[dict[str, object]]:
    """Every rank's share run here in turn, merged as rank 0 merges them."""
    jobs = list_jobs(files)
    owners = plan_owners([job.cost for job in jobs], ranks)
    planned = {job.pair for job in jobs}
    placed = []
    for rank in range(ranks):
        own = {job.pair for job, owner in zip(jobs, owners, strict=True) if owner == rank}
        share = distributed._Share(own, planned, rank, claim=lambda pair: None)
        for sequence, item in enumerate(inspect(files, only=share)):
            place = share.order(item, sequence)
            if place is not None:
                placed.append((place, item))
    return [item.to_dict() for _, item in sorted(placed, key=lambda row: row[0])]


@pytest.mark.parametrize("ranks", [1, 2, 3, 5])
def test_any_split_merges_to_the_rows_of_one_process(ranks: int, tmp_path: Path) -> None:
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not a header")
    array = tmp_path / "a.npy"
    np.save(array, np.arange(12.0).reshape(3, 4))
    files = expand_inputs([CHECKPOINT, broken, SHARDED, array])
    one = [item.to_dict() for item in inspect(files)]
    assert any(row["kind"] == "failed" and row["key"] is None for row in one)  # a file-level row
    assert split_rows(files, ranks) == one


def test_only_analyses_the_named_tensors(tmp_path: Path) -> None:
    key = "encoder.layer0.ffn.weight"
    rows = list(inspect(CHECKPOINT, only={(str(CHECKPOINT), key)}))
    assert [(row.key, row.matrix_shape) for row in rows] == [(key, (48, 24))]  # type: ignore[union-attr]
    assert list(inspect(CHECKPOINT, only=set())) == []


def test_detect_reads_the_launcher_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert Launch.detect(1) is None
    spawned = Launch.detect(3)
    assert spawned is not None and (spawned.rank, spawned.world_size, spawned.spawn) == (0, 3, True)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    launched = Launch.detect(1)
    assert launched is not None
    assert (launched.rank, launched.world_size, launched.spawn, launched.prints) == (
        1,
        4,
        False,
        False,
    )
    with pytest.raises(InputError, match="jobs=2 asks for local ranks"):
        Launch.detect(2)
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert Launch.detect(1) is None
    monkeypatch.setenv("RANK", "zero")
    with pytest.raises(InputError, match="must be integers"):
        Launch.detect(1)
    with pytest.raises(InputError, match="jobs must be at least 1"):
        Launch.detect(0)


# --- real ranks over gloo ----------------------------------------------------------------


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["inspect", *args])
    return result.exit_code, result.stdout


@pytest.mark.parametrize(
    ("source", "expected_code"),
    [(CHECKPOINT, 1), (SHARDED, 0)],
    ids=["single", "sharded"],
)
def test_two_local_ranks_print_the_report_of_one_process(source: Path, expected_code: int) -> None:
    # checkpoint.safetensors holds a NaN matrix (an error under --fail-on error); the
    # sharded sample only an info finding.
    one = invoke(str(source), "--format", "json")
    two = invoke(str(source), "--format", "json", "--jobs", "2")
    assert one[0] == expected_code
    assert two == one


def test_two_ranks_share_the_work_of_the_plan() -> None:
    launch = Launch.detect(2)
    assert launch is not None
    files = expand_inputs([CHECKPOINT, SHARDED])
    rows = launch.rows(functools.partial(inspect, files), files)
    assert [row.to_dict() for row in rows] == [row.to_dict() for row in inspect(files)]
    costs = [job.cost for job in list_jobs(files)]
    assert sum(launch.loads) == sum(costs)
    assert max(launch.loads) <= optimum_bound(costs, 2)
    assert len(launch.busy_s) == 2 and all(seconds > 0 for seconds in launch.busy_s)


def optimum_bound(costs: list[int], ranks: int) -> int:
    """A load no plan may exceed: the mean load rounded up plus the largest job (≥ optimum + job)."""
    return math.ceil(sum(costs) / ranks) + max(costs)


def test_torchrun_prints_the_report_of_one_process() -> None:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    env.pop(FAULT_VARIABLE, None)
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    command += ["--standalone", "-m", "svdguard", "inspect", str(SHARDED)]
    command += ["--format", "json", "--fail-on", "never"]
    done = subprocess.run(
        command, capture_output=True, text=True, env=env, cwd=ROOT, timeout=FAULT_DEADLINE_S
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == invoke(str(SHARDED), "--format", "json", "--fail-on", "never")[1]


@pytest.mark.parametrize(
    ("fault", "said"),
    [
        ("1:raise", "rank 1 failed while analysing "),
        ("1:exit", "rank 1 ended while analysing "),
        ("0:raise", "rank 0 failed while analysing "),
    ],
)
def test_a_failing_rank_ends_the_run_with_exit_2(
    fault: str, said: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(FAULT_VARIABLE, fault)
    start = time.monotonic()
    result = CliRunner().invoke(
        app, ["inspect", str(CHECKPOINT), "--format", "json", "--jobs", "2"]
    )
    assert time.monotonic() - start < FAULT_DEADLINE_S
    assert result.exit_code == 2
    assert result.stdout == ""
    assert said in result.stderr
    assert str(CHECKPOINT) in result.stderr  # the tensor it was analysing
    assert "Traceback" not in result.stderr


def test_a_timeout_must_be_positive() -> None:
    with pytest.raises(InputError, match="timeout must be positive"):
        Launch.detect(2, timeout=timedelta(0))


def test_a_rank_that_lists_other_tensors_refuses_to_work() -> None:
    store = TCPStore("127.0.0.1", 0, 2, is_master=True, wait_for_workers=False)
    rank_1 = distributed._Rank(store, 1, 2, timedelta(seconds=FAULT_DEADLINE_S), run=0)
    rank_1.store.set("plan/0", "a plan of other files")
    result = rank_1.contribute(
        functools.partial(inspect, [CHECKPOINT]), [CHECKPOINT], DEFAULT_MAX_ELEMENTS
    )
    assert result.failure is not None and result.rows == []
    assert "lists other tensors than rank 0" in result.failure.message
    assert rank_1.store.check(["done/1"])  # rank 0 is told it may gather


def test_when_rank_0_cannot_plan_the_others_do_no_work() -> None:
    store = TCPStore("127.0.0.1", 0, 2, is_master=True, wait_for_workers=False)
    rank_1 = distributed._Rank(store, 1, 2, timedelta(seconds=FAULT_DEADLINE_S), run=0)
    rank_1.store.set("plan/0", distributed._NO_PLAN)
    result = rank_1.contribute(
        functools.partial(inspect, [CHECKPOINT]), [CHECKPOINT], DEFAULT_MAX_ELEMENTS
    )
    assert result.failure is None and result.rows == []


def test_torchrun_stopping_the_ranks_names_the_one_that_died() -> None:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        FAULT_VARIABLE: "1:exit",
    }
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    command += ["--standalone", "-m", "svdguard", "inspect", str(CHECKPOINT)]
    start = time.monotonic()
    done = subprocess.run(
        command, capture_output=True, text=True, env=env, cwd=ROOT, timeout=FAULT_DEADLINE_S
    )
    assert time.monotonic() - start < FAULT_DEADLINE_S
    assert done.returncode != 0 and done.stdout == ""
    assert "rank 0 was stopped by the launcher" in done.stderr
    assert f"unfinished: rank 1 (at {CHECKPOINT}[" in done.stderr


def test_three_local_ranks_write_the_report_of_one_process_with_output(tmp_path: Path) -> None:
    paths = [str(CHECKPOINT), str(SHARDED)]
    report = tmp_path / "report.json"
    code, stdout = invoke(*paths, "--format", "json", "--jobs", "3", "-o", str(report), "-q")
    assert (code, stdout) == (1, "")
    assert report.read_text(encoding="utf-8") == invoke(*paths, "--format", "json")[1]
