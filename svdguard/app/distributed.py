"""Scale-out of ``inspect``: the tensors of a run shared among ranks over torch.distributed.

A *rank* is one process; ranks come from ``torchrun`` (``RANK`` / ``WORLD_SIZE`` /
``LOCAL_RANK`` in the environment) or are spawned here on one machine (``jobs=N``:
rank 0 is the calling process, ranks 1 … N−1 are spawned children meeting on a
free port of 127.0.0.1). Every rank

1. lists the headers of the same files (no payload is read) and makes the same
   plan (:func:`plan_owners`): tensors longest-first by cost ≈ m·n·min(m, n),
   each onto the least-loaded rank, ties broken by plan order;
2. analyses only its own tensors (``inspect(..., only=share)``), one row per tensor
   as in one process; rows that belong to no tensor (a file that cannot be read)
   are kept from rank 0 alone;
3. once every rank is done, sends its rows — report objects, never a tensor — to
   rank 0 (``gather_object`` over a gloo group), which puts them back in the
   order of one process: the order the run meets the tensors in.

Faults end the run: a rank whose analysis raises sends the error instead of rows,
and every rank then stops with :class:`RankFailedError` naming the rank and the
tensor it was analysing; a spawned rank that dies is noticed by rank 0 (its exit
status) and named the same way (under torchrun, the launcher stops the other ranks
when one dies). Every collective has a timeout (``timeout=``, default
:data:`DEFAULT_TIMEOUT`). See ``docs/scale-out.md``.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import math
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from torch.distributed import (  # type: ignore[attr-defined]  # re-exported by torch, untyped
    PrefixStore,
    TCPStore,
    rendezvous,
)

from svdguard.app.report import InspectionItem
from svdguard.app.threads import cpu_threads, limit_cpu_threads
from svdguard.errors import InputError, SvdguardError
from svdguard.io import DEFAULT_MAX_ELEMENTS, TensorRecord, iter_units
from svdguard.io.dtypes import torch_dtype

if TYPE_CHECKING:
    from multiprocessing.process import BaseProcess

__all__ = [
    "DEFAULT_TIMEOUT",
    "FAULT_VARIABLE",
    "Job",
    "Launch",
    "RankFailedError",
    "list_jobs",
    "plan_owners",
    "tensor_cost",
]

#: How long a collective (and the rendezvous of the ranks) may wait for a peer before the
#: run fails. Ranks only meet once all of them have finished their tensors, so this bounds
#: the time a lost peer can hold the others, not the length of the analysis.
DEFAULT_TIMEOUT = timedelta(minutes=10)

#: How often a rank that has finished looks whether the others have (seconds): the delay it
#: adds to a run, against the load of asking the store (a few bytes per rank and look).
POLL_INTERVAL_S = 0.05

#: Host the ranks of ``jobs=N`` meet on (one machine: loopback only, nothing listens outside).
LOCALHOST = "127.0.0.1"

#: Set to ``"RANK:raise"`` or ``"RANK:exit"``, this makes that rank fail at its first tensor
#: (raise an error, or end its process without a word). It exists to check that a failing
#: rank ends the run cleanly; nothing sets it but a test.
FAULT_VARIABLE = "SVDGUARD_TEST_FAULT"

#: Exit status of a rank ended by :data:`FAULT_VARIABLE` (``"RANK:exit"``).
FAULT_EXIT_STATUS = 86

#: The plan fingerprint of a rank that could not list its files.
_NO_PLAN = "none"

#: Runs of this process so far, so that each has its own keys: ranks of a launcher count their
#: runs alike; spawned ranks are told the number of their run.
_RUNS = itertools.count()

#: Prefix of every key this module writes in the rendezvous store (shared with the launcher).
_KEYS = "svdguard/"

Pair = tuple[str, str]  #: (path as the run names it, key inside the file; "" for a bare .npy)


class RankFailedError(SvdguardError):
    """A rank could not finish its share; the message names the rank and, where known, the tensor."""


@dataclass(frozen=True)
class Job:
    """One tensor to analyse: where it is, and what its analysis costs (arbitrary units)."""

    path: str
    key: str
    cost: int

    @property
    def pair(self) -> Pair:
        return (self.path, self.key)


def tensor_cost(shape: Sequence[int], dtype: str) -> int:
    """Work of one tensor ≈ m·n·min(m, n), the flop count of its singular values (to a factor).

    A ≥3-D tensor is analysed as ``shape[0] × ∏ shape[1:]``. Tensors that are not
    analysed (not floating, fewer than two dimensions) cost their element count: they
    are read, not decomposed.
    """
    numel = math.prod(shape)
    kind = torch_dtype(dtype)
    if len(shape) < 2 or numel == 0 or kind is None:
        return numel
    if not (kind.is_floating_point or kind.is_complex):
        return numel
    rows = shape[0]
    columns = numel // rows
    return rows * columns * min(rows, columns)


def list_jobs(files: Sequence[Path], *, max_elements: int = DEFAULT_MAX_ELEMENTS) -> list[Job]:
    """Every tensor of ``files``, in the order the run meets them, from the headers alone.

    Parts that cannot be listed are left out: the run reports them (from rank 0),
    and a tensor the plan does not know is analysed by rank 0.
    """
    jobs: list[Job] = []
    for path in files:
        for unit in iter_units(path, max_elements=max_elements):
            if isinstance(unit, TensorRecord):
                jobs.append(Job(str(unit.path), unit.key, tensor_cost(unit.shape, unit.dtype)))
    return jobs


def plan_owners(costs: Sequence[int], ranks: int) -> list[int]:
    """The rank of each job: longest-first, each onto the least-loaded rank (Graham's LPT).

    Jobs are taken by decreasing cost (equal costs in plan order); each goes to the
    rank with the smallest load so far (equal loads: the lowest rank). Deterministic,
    so every rank computes the same plan. The largest load is at most
    (4/3 − 1/(3·ranks)) times the optimum, and at most the optimum plus the largest job.

    >>> plan_owners([1, 5, 3, 3], 2)
    [0, 0, 1, 1]
    """
    if ranks < 1:
        raise InputError(f"ranks must be at least 1, got {ranks}")
    owners = [0] * len(costs)
    loads = [(0, rank) for rank in range(ranks)]  # a heap of (load, rank)
    for index in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        load, rank = heapq.heappop(loads)
        owners[index] = rank
        heapq.heappush(loads, (load + costs[index], rank))
    return owners


def _digest(jobs: Sequence[Job], owners: Sequence[int]) -> str:
    """A fingerprint of a plan: ranks that list different files or tensors disagree on it."""
    text = "\n".join(f"{j.path}\0{j.key}\0{j.cost}\0{o}" for j, o in zip(jobs, owners, strict=True))
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()


def _name(pair: Pair) -> str:
    path, key = pair
    return f"{path}[{key}]" if key else path


def _fault(rank: int) -> str | None:
    """What :data:`FAULT_VARIABLE` asks of ``rank`` ("raise" or "exit"), None when nothing."""
    target, _, action = os.environ.get(FAULT_VARIABLE, "").partition(":")
    return action if target.strip() == str(rank) else None


class _Share:
    """The tensors of one rank, in the form ``inspect(only=...)`` asks: ``pair in share``.

    The run asks once per tensor, in the order it meets them; the answers are counted,
    so that every row can be put back at its place in the order of one process:
    a tensor's rows at the count of its question, a row that belongs to no tensor
    just after the question before it.
    """

    def __init__(
        self, own: set[Pair], planned: set[Pair], rank: int, claim: Callable[[Pair], None]
    ) -> None:
        self.own = own
        self.planned = planned
        self.rank = rank
        self.claim = claim
        self.asked = 0
        self.positions: dict[Pair, int] = {}
        self.current: Pair | None = None
        self.fault = _fault(rank)

    def __contains__(self, pair: object) -> bool:
        if not (isinstance(pair, tuple) and len(pair) == 2):
            return False
        path, key = str(pair[0]), str(pair[1])
        position = self.asked
        self.asked += 1
        # A tensor the plan does not know (its listing differs from the run's) is rank 0's.
        mine = (path, key) in self.own or (self.rank == 0 and (path, key) not in self.planned)
        if mine:
            self.positions.setdefault((path, key), position)
            self.current = (path, key)
            self.claim((path, key))
            if self.fault == "raise":
                raise RuntimeError(f"fault injected by {FAULT_VARIABLE}")
            if self.fault == "exit":
                os._exit(FAULT_EXIT_STATUS)
        return mine

    def order(self, item: InspectionItem, sequence: int) -> tuple[int, int, int] | None:
        """The row's place in one process's order; None for a row that belongs to no tensor
        of this rank (kept from rank 0 only, where every rank yields it alike)."""
        pair = (item.path or "", item.key or "")
        position = self.positions.get(pair)
        if position is not None:
            return (position, 0, sequence)
        return (self.asked - 1, 1, sequence) if self.rank == 0 else None


@dataclass(frozen=True)
class _Failure:
    """Why a rank stopped (travels to rank 0 in place of its rows)."""

    rank: int
    message: str
    tensor: str | None = None


@dataclass
class _Result:
    """What a rank sends to rank 0: its rows with their places, its busy time, or its failure."""

    rank: int
    rows: list[tuple[tuple[int, int, int], InspectionItem]] = field(default_factory=list)
    busy_s: float = 0.0
    cpu_s: float = 0.0
    failure: _Failure | None = None


class _Rank:
    """One rank's part of a run: plan, analyse its share, wait for the others, exchange."""

    def __init__(
        self,
        store: Any,
        rank: int,
        world_size: int,
        timeout: timedelta,
        run: int,
        children: Sequence[BaseProcess] = (),
    ) -> None:
        # Keys of this run only: a launcher's store outlives restarts and earlier runs.
        restart = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        self.store = PrefixStore(f"{_KEYS}{restart}/{run}", store)
        self.group: Any = None  # the gloo group of the exchange, once made
        self.owns_default_group = False
        self.rank = rank
        self.world_size = world_size
        self.timeout = timeout
        self.children = list(children)
        self.busy_s: list[float] = []
        self.cpu_s: list[float] = []
        self.loads: list[int] = []

    def contribute(
        self,
        analyse: Callable[..., Iterable[InspectionItem]],
        files: Sequence[Path],
        max_elements: int,
    ) -> _Result:
        result = _Result(self.rank)
        share: _Share | None = None
        start, start_cpu = time.perf_counter(), time.process_time()
        try:
            try:
                jobs = list_jobs(files, max_elements=max_elements)
                owners = plan_owners([job.cost for job in jobs], self.world_size)
            except Exception:
                self.store.set(f"plan/{self.rank}", _NO_PLAN)  # the others need not wait for it
                raise
            self.loads = [0] * self.world_size
            for job, owner in zip(jobs, owners, strict=True):
                self.loads[owner] += job.cost
            digest = _digest(jobs, owners)
            self.store.set(f"plan/{self.rank}", digest)
            if self.rank != 0:
                theirs = self.store.get("plan/0").decode()
                if theirs == _NO_PLAN:
                    jobs, owners = [], []  # rank 0 could not plan: its failure ends the run
                elif theirs != digest:
                    raise InputError(
                        "this rank lists other tensors than rank 0 (are the files the same "
                        "on every node?)"
                    )
            own = {job.pair for job, owner in zip(jobs, owners, strict=True) if owner == self.rank}
            share = _Share(own, {job.pair for job in jobs}, self.rank, self._claim)
            for sequence, item in enumerate(analyse(only=share)):
                place = share.order(item, sequence)
                if place is not None:
                    result.rows.append((place, item))
        except Exception as err:  # noqa: BLE001 - the rank's failure travels to rank 0
            tensor = None if share is None or share.current is None else _name(share.current)
            text = str(err) if isinstance(err, SvdguardError) else f"{type(err).__name__}: {err}"
            result.failure = _Failure(self.rank, text, tensor)
        result.busy_s = time.perf_counter() - start
        result.cpu_s = time.process_time() - start_cpu
        self.store.set(f"done/{self.rank}", "1")
        return result

    def _claim(self, pair: Pair) -> None:
        self.store.set(f"at/{self.rank}", _name(pair))

    def _last_tensor(self, rank: int) -> str | None:
        try:
            if self.store.check([f"at/{rank}"]):
                return str(self.store.get(f"at/{rank}").decode())
        except RuntimeError:
            return None
        return None

    def wait_for_all(self) -> None:
        """Until every rank is done; a spawned rank that ended without finishing fails the run."""
        keys = [f"done/{rank}" for rank in range(self.world_size)]
        while not self.store.check(keys):
            for rank, child in enumerate(self.children, start=1):
                if child.exitcode is not None and not self.store.check([f"done/{rank}"]):
                    self.stop_children()
                    tensor = self._last_tensor(rank)
                    where = f" while analysing {tensor}" if tensor else ""
                    raise RankFailedError(
                        f"rank {rank} ended{where} ({_status(child.exitcode)}); no report was made"
                    )
            time.sleep(POLL_INTERVAL_S)

    def unfinished(self) -> str:
        """The other ranks that have not finished, each with the tensor it was analysing."""
        names = []
        try:
            for rank in range(self.world_size):
                if rank != self.rank and not self.store.check([f"done/{rank}"]):
                    tensor = self._last_tensor(rank)
                    names.append(f"rank {rank}" + (f" (at {tensor})" if tensor else ""))
        except RuntimeError:
            return "the other ranks cannot be reached"
        return "unfinished: " + ", ".join(names) if names else "every other rank had finished"

    def exchange(self, result: _Result) -> list[InspectionItem]:
        """Rows of every rank to rank 0, in one process's order; a failure to every rank."""
        verdict: list[Any] = [None]
        rows: list[InspectionItem] = []
        try:
            if dist.is_initialized():  # inside a program that has its own group: add ours
                self.group = dist.new_group(backend="gloo", timeout=self.timeout)
            else:
                dist.init_process_group(
                    "gloo",
                    store=PrefixStore("group", self.store),
                    rank=self.rank,
                    world_size=self.world_size,
                    timeout=self.timeout,
                )
                self.owns_default_group = True
            gathered: list[Any] | None = [None] * self.world_size if self.rank == 0 else None
            dist.gather_object(result, gathered, dst=0, group=self.group)
            if gathered is not None:
                results: list[_Result] = gathered
                verdict[0] = _verdict([r.failure for r in results if r.failure is not None])
                self.busy_s = [r.busy_s for r in results]
                self.cpu_s = [r.cpu_s for r in results]
                placed = sorted((row for r in results for row in r.rows), key=lambda row: row[0])
                rows = [item for _, item in placed]
            dist.broadcast_object_list(verdict, src=0, group=self.group)
        except (RuntimeError, ValueError) as err:  # torch's DistError and friends
            raise RankFailedError(
                f"rank {self.rank} could not exchange rows with the other ranks: {err}"
            ) from None
        if verdict[0] is not None:
            raise RankFailedError(str(verdict[0]))
        return rows

    def agree(self, code: int) -> int:
        """Rank 0's exit code, on every rank."""
        shared = [code]
        dist.broadcast_object_list(shared, src=0, group=self.group)
        return int(shared[0])

    def close(self) -> None:
        """Destroy what this run made: the default group it started, or its own gloo group."""
        if self.owns_default_group and dist.is_initialized():
            dist.destroy_process_group()
        elif self.group is not None:
            dist.destroy_process_group(self.group)
        self.group, self.owns_default_group = None, False

    def stop_children(self) -> None:
        """End the spawned ranks still running (after a failure; a no-op after a good run)."""
        started = [child for child in self.children if child.pid is not None]
        for child in started:
            if child.exitcode is None:
                child.terminate()
        for child in started:
            child.join(timeout=self.timeout.total_seconds())


#: Ranks running in a worker thread, whose SIGTERM the main thread receives: the command
#: line asks :func:`stopped_by_launcher` what to say (the rank itself cannot be interrupted).
_RUNNING_OFF_MAIN: list[_Rank] = []


def _stopped(rank_state: _Rank, signum: int) -> RankFailedError:
    return RankFailedError(
        f"rank {rank_state.rank} was stopped by the launcher (signal {signum}), "
        f"which stops every rank when one ends; {rank_state.unfinished()}"
    )


def stopped_by_launcher(signum: int = signal.SIGTERM) -> RankFailedError | None:
    """The error of the rank a SIGTERM stopped while it ran in a worker thread, if any."""
    return _stopped(_RUNNING_OFF_MAIN[-1], signum) if _RUNNING_OFF_MAIN else None


@contextmanager
def _stop_on_sigterm(rank_state: _Rank) -> Iterator[None]:
    """SIGTERM (torchrun stopping every rank when one has died) → RankFailedError naming the
    ranks that had not finished, rather than an end without a word."""
    if threading.current_thread() is not threading.main_thread():
        _RUNNING_OFF_MAIN.append(rank_state)
        try:
            yield
        finally:
            _RUNNING_OFF_MAIN.remove(rank_state)
        return

    def stop(signum: int, frame: object) -> None:
        raise _stopped(rank_state, signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _verdict(failures: Sequence[_Failure]) -> str | None:
    """One sentence per distinct failure; ranks that failed alike are named together."""
    if not failures:
        return None
    grouped: dict[tuple[str, str | None], list[int]] = {}
    for failure in failures:
        grouped.setdefault((failure.message, failure.tensor), []).append(failure.rank)
    sentences = []
    for (message, tensor), ranks in grouped.items():
        who = f"rank {ranks[0]}" if len(ranks) == 1 else "ranks " + ", ".join(map(str, ranks))
        where = f" while analysing {tensor}" if tensor else ""
        sentences.append(f"{who} failed{where}: {message}")
    return "; ".join(sentences)


def _status(exitcode: int | None) -> str:
    if exitcode is None:
        return "still running"
    if exitcode < 0:
        return f"killed by signal {-exitcode}"
    return f"exit status {exitcode}"


def _use_device(local_rank: int) -> None:
    """One GPU per rank: ``cuda:LOCAL_RANK`` (round-robin when ranks outnumber GPUs)."""
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank % torch.cuda.device_count())


def _child(
    rank: int,
    world_size: int,
    port: int,
    analyse: Callable[..., Iterable[InspectionItem]],
    files: Sequence[Path],
    max_elements: int,
    threads: int,
    timeout_s: float,
    run: int,
) -> None:
    """A spawned rank of ``jobs=N``: its share, then the exchange with rank 0."""
    limit_cpu_threads(threads)
    _use_device(rank)
    timeout = timedelta(seconds=timeout_s)
    store = TCPStore(LOCALHOST, port, world_size, is_master=False, timeout=timeout)
    rank_state = _Rank(store, rank, world_size, timeout, run)
    try:
        result = rank_state.contribute(analyse, files, max_elements)
        rank_state.wait_for_all()
        rank_state.exchange(result)
    except RankFailedError:
        pass  # rank 0 reports it
    except Exception as err:  # noqa: BLE001 - e.g. rank 0 gone: one line, and a status it reads
        print(f"svdguard: rank {rank}: {type(err).__name__}: {err}", file=sys.stderr)
        raise SystemExit(1) from None
    finally:
        rank_state.close()


class Launch:
    """The ranks of one run, and this process's place among them.

    ``Launch.detect(jobs)`` finds them: under torchrun, the launcher's ranks; with
    ``jobs > 1``, this process and ``jobs − 1`` spawned ones; else None (one
    process, no distribution). Then :meth:`rows` runs the analysis and
    returns the rows of the whole run on rank 0 (an empty list elsewhere), and
    :meth:`agree` hands rank 0's exit code to every rank. Only rank 0 ``prints``.
    """

    def __init__(
        self,
        *,
        rank: int,
        world_size: int,
        spawn: bool,
        local_rank: int = 0,
        timeout: timedelta = DEFAULT_TIMEOUT,
        threads: int | None = None,
    ) -> None:
        self.rank = rank
        self.world_size = world_size
        self.spawn = spawn
        self.local_rank = local_rank
        self.timeout = timeout
        self.threads = threads
        self.busy_s: list[float] = []  #: seconds each rank spent on its share (rank 0, after rows)
        self.cpu_s: list[float] = []  #: CPU seconds of each rank's process during its share
        self.loads: list[int] = []  #: planned cost of each rank's share
        self._rank: _Rank | None = None

    @classmethod
    def detect(
        cls, jobs: int = 1, *, timeout: timedelta = DEFAULT_TIMEOUT, threads: int | None = None
    ) -> Launch | None:
        """The ranks of this run: torchrun's (``RANK``/``WORLD_SIZE`` set), ``jobs`` local ones, or None.

        ``threads``: CPU threads of each spawned rank (default 1: ``jobs`` ranks on
        ``jobs`` cores); ranks of torchrun keep the launcher's setting.
        """
        if jobs < 1:
            raise InputError(f"jobs must be at least 1, got {jobs}")
        if timeout.total_seconds() <= 0:
            raise InputError(f"timeout must be positive, got {timeout}")
        if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
            try:
                rank = int(os.environ["RANK"])
                world_size = int(os.environ["WORLD_SIZE"])
                local_rank = int(os.environ.get("LOCAL_RANK", "0"))
            except ValueError:
                raise InputError(
                    "RANK, WORLD_SIZE and LOCAL_RANK must be integers, got "
                    f"{os.environ.get('RANK')!r}, {os.environ.get('WORLD_SIZE')!r}, "
                    f"{os.environ.get('LOCAL_RANK')!r}"
                ) from None
            if jobs > 1 and world_size > 1:
                raise InputError(
                    f"jobs={jobs} asks for local ranks, but this process is already rank {rank} "
                    f"of {world_size} (RANK and WORLD_SIZE are set by a launcher)"
                )
            if world_size > 1:
                return cls(
                    rank=rank,
                    world_size=world_size,
                    spawn=False,
                    local_rank=local_rank,
                    timeout=timeout,
                    threads=threads,
                )
        if jobs > 1:
            return cls(rank=0, world_size=jobs, spawn=True, timeout=timeout, threads=threads)
        return None

    @property
    def prints(self) -> bool:
        """True on rank 0, the one rank that writes the report."""
        return self.rank == 0

    def rows(
        self,
        analyse: Callable[..., Iterable[InspectionItem]],
        files: Sequence[Path],
        *,
        max_elements: int = DEFAULT_MAX_ELEMENTS,
    ) -> list[InspectionItem]:
        """Run ``analyse(only=share)`` on every rank; the whole run's rows on rank 0.

        ``analyse`` is the inspection run with every setting bound (for spawned ranks it
        must pickle: ``functools.partial(svdguard.inspect, files, ...)``); ``files`` and
        ``max_elements`` are what it lists, for the plan. Raises RankFailedError, on
        every rank, when some rank could not finish.
        """
        if self.spawn:
            return self._spawned(analyse, files, max_elements)
        _use_device(self.local_rank)
        store, _, _ = next(
            rendezvous("env://", rank=self.rank, world_size=self.world_size, timeout=self.timeout)
        )
        self._rank = _Rank(store, self.rank, self.world_size, self.timeout, next(_RUNS))
        try:
            with _stop_on_sigterm(self._rank):
                result = self._rank.contribute(analyse, files, max_elements)
                self._rank.wait_for_all()
            rows = self._rank.exchange(result)
        except BaseException:
            self._rank.close()
            raise
        self.busy_s, self.cpu_s, self.loads = self._rank.busy_s, self._rank.cpu_s, self._rank.loads
        return rows

    def _spawned(
        self,
        analyse: Callable[..., Iterable[InspectionItem]],
        files: Sequence[Path],
        max_elements: int,
    ) -> list[InspectionItem]:
        threads = self.threads or 1
        store = TCPStore(
            LOCALHOST,
            0,
            self.world_size,
            is_master=True,
            timeout=self.timeout,
            wait_for_workers=False,
        )
        run = next(_RUNS)
        context = multiprocessing.get_context("spawn")
        children = [
            context.Process(
                target=_child,
                args=(
                    rank,
                    self.world_size,
                    store.port,
                    analyse,
                    list(files),
                    max_elements,
                    threads,
                    self.timeout.total_seconds(),
                    run,
                ),
                name=f"svdguard-rank-{rank}",
                daemon=True,
            )
            for rank in range(1, self.world_size)
        ]
        rank_state = _Rank(store, 0, self.world_size, self.timeout, run, children)
        try:
            for child in children:
                child.start()
            with cpu_threads(threads):
                result = rank_state.contribute(analyse, files, max_elements)
            rank_state.wait_for_all()
            rows = rank_state.exchange(result)
            for child in children:
                child.join(timeout=self.timeout.total_seconds())
        finally:
            rank_state.close()
            rank_state.stop_children()
        self.busy_s, self.cpu_s, self.loads = rank_state.busy_s, rank_state.cpu_s, rank_state.loads
        return rows

    def agree(self, code: int) -> int:
        """Rank 0's exit code on every rank (torchrun); spawned ranks have already ended.

        Rank 0 calls it once its report is written, the others before they exit: a
        launcher such as torchrun stops every rank as soon as one ends with a non-zero
        code, which must not cut rank 0's report short.
        """
        if self._rank is None:
            return code
        try:
            return self._rank.agree(code)
        finally:
            self._rank.close()
