"""The order of training batches: one resumable sampler, three ways to cut an epoch into batches; evaluation batches.

`ResumableBatchSampler` owns what every training order shares: the epoch, the position inside it (batches already
yielded on this rank), sharding across DDP ranks (rank ``r`` takes batches ``r, r + W, ...`` of one global list
that every rank builds alike), `state_dict`, and `resume_at` (what `encdec.lit.resume` calls when a run restarts
mid-epoch). A strategy only turns ``(seed, epoch)`` into that global list:

* `FixedSize` — ``data.batch_size`` rows, shuffled per epoch (``data.group_by_length=false``);
* `GroupedByLength` — the same batch size, rows of similar length together (``data.group_by_length=true``);
  ``auto`` (the default) picks one of these two from the data's lengths (`grouping_pays`);
* `TokenBudget` — as many rows as fit a padded-token budget (``data.max_tokens_per_batch``).

Each strategy keeps the random generator it was written with (torch for the first two, numpy for the budget): the
orders are part of what a checkpoint resumes and of every published number, so they stay bit for bit. The global
list's length is a multiple of the world size, so every rank takes the same number of steps.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import Protocol

import numpy as np
import torch
from torch.utils.data import Sampler

log = logging.getLogger(__name__)


class BatchOrder(Protocol):
    def global_batches(self, epoch: int, seed: int, shuffle: bool, num_replicas: int) -> list[list[int]]:
        """Every rank's batches of one epoch in step order (batch j goes to rank j % num_replicas); a function of
        its arguments only, with a length divisible by num_replicas."""


class ResumableBatchSampler(Sampler[list[int]]):
    """Yields this rank's batches of the current epoch from `position` on; see the module docstring."""

    def __init__(self, order: BatchOrder, seed: int = 0, shuffle: bool = True, num_replicas: int = 1, rank: int = 0):
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"rank={rank} must be in [0, num_replicas={num_replicas})")
        self.order, self.seed, self.shuffle = order, int(seed), shuffle
        self.num_replicas, self.rank = int(num_replicas), int(rank)
        self.epoch = 0
        self.position = 0  # batches of the current epoch already yielded on this rank
        self._cache: tuple[int, list[list[int]]] | None = None
        # Lightning calls set_epoch on `loader.sampler` and `loader.batch_sampler.sampler`, never on the batch
        # sampler itself: pointing `sampler` here makes it reach us.
        self.sampler = self

    def batches(self, epoch: int | None = None) -> list[list[int]]:
        """This rank's batches of an epoch (the current one by default), in order."""
        epoch = self.epoch if epoch is None else int(epoch)
        if self._cache is None or self._cache[0] != epoch:
            self._cache = (epoch, self.order.global_batches(epoch, self.seed, self.shuffle, self.num_replicas))
        return self._cache[1][self.rank :: self.num_replicas]

    def __iter__(self) -> Iterator[list[int]]:
        batches = self.batches()
        while self.position < len(batches):
            batch = batches[self.position]
            self.position += 1
            yield list(batch)
        # A finished epoch: iterating again (without set_epoch) starts it over.
        self.position = 0

    def __len__(self) -> int:
        """Batches per epoch on this rank (a resumed epoch yields only the remaining ``len - position``)."""
        return len(self.batches())

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning (and by hand) before each epoch; the same epoch again keeps a restored position."""
        if int(epoch) != self.epoch:
            self.epoch = int(epoch)
            self.position = 0

    def resume_at(self, epoch: int, batches_done: int) -> None:
        """The next iteration of `epoch` skips the `batches_done` batches this rank already trained on. The epoch is
        set too: on resume Lightning creates the loader's iterator before it calls set_epoch."""
        self.epoch = int(epoch)
        self.position = min(max(int(batches_done), 0), len(self.batches()))

    def state_dict(self, consumed: int | None = None) -> dict[str, int]:
        """Epoch and position for a resumed run. A DataLoader (and Lightning's fetcher) iterates ahead of training:
        pass ``consumed``, the batches of this epoch actually trained on, when the own count may be ahead."""
        position = self.position if consumed is None else int(consumed)
        return {"epoch": self.epoch, "position": position, "seed": self.seed, "num_replicas": self.num_replicas}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if (
            state.get("seed", self.seed) != self.seed
            or state.get("num_replicas", self.num_replicas) != self.num_replicas
        ):
            raise ValueError(
                f"cannot resume batches of seed {state.get('seed')} on {state.get('num_replicas')} ranks "
                f"with seed {self.seed} on {self.num_replicas} ranks"
            )
        self.resume_at(state["epoch"], state["position"])


def _positive(name: str, value) -> int:
    if isinstance(value, bool) or int(value) <= 0:
        raise ValueError(f"{name}={value} must be a positive integer")
    return int(value)


def _pad_to_ranks(batches: list[list[int]], num_replicas: int) -> list[list[int]]:
    """Repeat batches from the start until each rank gets as many (as DistributedSampler pads)."""
    per_rank = -(-len(batches) // num_replicas)
    return batches + batches[: per_rank * num_replicas - len(batches)]


class FixedSize:
    """`batch_size` rows per batch in a random order drawn from ``seed + epoch`` (data order without shuffle)."""

    def __init__(self, size: int, batch_size: int):
        self.size, self.batch_size = _positive("size", size), _positive("batch_size", batch_size)

    def permutation(self, epoch: int, seed: int, shuffle: bool) -> tuple[list[int], torch.Generator | None]:
        if not shuffle:
            return list(range(self.size)), None
        generator = torch.Generator().manual_seed(seed + epoch)
        return torch.randperm(self.size, generator=generator).tolist(), generator

    def global_batches(self, epoch: int, seed: int, shuffle: bool, num_replicas: int) -> list[list[int]]:
        order, _ = self.permutation(epoch, seed, shuffle)
        batches = [order[i : i + self.batch_size] for i in range(0, self.size, self.batch_size)]
        return _pad_to_ranks(batches, num_replicas)


class GroupedByLength(FixedSize):
    """`batch_size` rows of similar length per batch, as transformers' group_by_length: the shuffled rows are sorted
    by length inside groups of GROUPED_BATCHES batches, then the batches are shuffled, the one with the longest row
    first (an out-of-memory shows at step 1, not hours in).

    jitter: the sort key is each row's source + target tokens times a factor drawn from [e^-jitter, e^jitter] per
    epoch. A strict sort (jitter 0: the only order before `data.length_jitter`) puts the same rows together every epoch on a small data set
    (one group): 60% of the rows that share a batch share one again the next epoch, against 2-6% for random batches.
    At 0.1 that is 7% on both ACLSum sets measured, for 4.7% padding instead of 2.4% (random: 19%) on 400 rows of
    spread lengths (bench/README.md, "Default batching")."""

    GROUPED_BATCHES = 50

    def __init__(self, lengths: Sequence[tuple[int, int]], batch_size: int, jitter: float = 0.0):
        super().__init__(len(lengths), batch_size)
        self.lengths = [tuple(pair) for pair in lengths]  # (source, target) tokens per row
        if not jitter >= 0:
            raise ValueError(f"jitter={jitter} must be >= 0")
        self.jitter = float(jitter)

    def global_batches(self, epoch: int, seed: int, shuffle: bool, num_replicas: int) -> list[list[int]]:
        order, generator = self.permutation(epoch, seed, shuffle)
        if generator is None:
            return super().global_batches(epoch, seed, shuffle, num_replicas)
        # A whole number of runs per group (below), so no run mixes the shortest of one group with the next's longest.
        group = self.batch_size * -(-self.GROUPED_BATCHES // num_replicas) * num_replicas
        key = self._sort_key(generator)
        order = [
            row
            for start in range(0, len(order), group)
            for row in sorted(order[start : start + group], key=key, reverse=True)
        ]
        batches = [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        # Shuffled in runs of num_replicas neighbours: under DDP the ranks' batches of one step have similar lengths,
        # so no rank waits long for another. A short last run stays last, so every other step's stay neighbours.
        whole = len(batches) - len(batches) % num_replicas
        runs = [batches[i : i + num_replicas] for i in range(0, whole, num_replicas)]
        runs = [runs[i] for i in torch.randperm(len(runs), generator=generator).tolist()]
        if runs:
            longest = max(
                range(len(runs)), key=lambda i: max(sum(self.lengths[row]) for batch in runs[i] for row in batch)
            )
            runs = [runs[longest], *runs[:longest], *runs[longest + 1 :]]
        return _pad_to_ranks([batch for run in runs for batch in run] + batches[whole:], num_replicas)

    def _sort_key(self, generator: torch.Generator):
        if not self.jitter:
            return lambda row: self.lengths[row]  # the strict order, bit for bit (configs saved before length_jitter)
        factors = torch.empty(self.size, dtype=torch.float64).uniform_(-self.jitter, self.jitter, generator=generator)
        keys = (torch.tensor([sum(pair) for pair in self.lengths], dtype=torch.float64) * factors.exp()).tolist()
        return keys.__getitem__


class TokenBudget:
    """Batches whose padded size, ``max(source_len) * n + max(target_len) * n``, stays within `max_tokens`.

    Items are sorted by length inside buckets (ties broken at random), packed greedily until the next item would push
    the batch over the budget, and the batches are then shuffled across the epoch from ``(seed, epoch)``. An item
    longer than the budget on its own forms a batch of one. Without shuffle: longest batches first, fixed.

    The batch count is made divisible by the world size by splitting the largest batches, so every rank gets the same
    number of batches and every index is used exactly once per epoch (only with fewer items than ranks are indices
    repeated); consecutive (similar-length) batches go to different ranks at the same step, so no rank waits long at
    the gradient all-reduce.

    lengths: one length per item, or one ``(source_len, target_len)`` pair per item.
    bucket_size: sort within random buckets of this many items (more variety across epochs, a little more padding);
        ``None`` sorts the whole data set.
    max_batch_size: an optional cap on items per batch.
    """

    def __init__(
        self,
        lengths: Sequence[int] | Sequence[Sequence[int]],
        max_tokens: int,
        bucket_size: int | None = None,
        max_batch_size: int | None = None,
    ):
        array = np.asarray(lengths, dtype=np.int64)
        if array.ndim == 1:
            array = np.stack([array, np.zeros_like(array)], axis=1)
        if array.ndim != 2 or array.shape[1] != 2:
            raise ValueError("lengths must be one int per item or one (source_len, target_len) pair per item")
        if len(array) == 0:
            raise ValueError("lengths is empty: nothing to batch")
        self.source_lengths, self.target_lengths = array[:, 0], array[:, 1]
        self.max_tokens = _positive("max_tokens", max_tokens)
        self.bucket_size = None if bucket_size is None else _positive("bucket_size", bucket_size)
        self.max_batch_size = None if max_batch_size is None else _positive("max_batch_size", max_batch_size)

    def cost(self, batch: Sequence[int]) -> int:
        """Padded tokens of a batch: max source length * n + max target length * n."""
        index = np.asarray(batch)
        return int((self.source_lengths[index].max() + self.target_lengths[index].max()) * len(index))

    def _pack(self, order: np.ndarray) -> list[list[int]]:
        batches: list[list[int]] = []
        current: list[int] = []
        longest_source = longest_target = 0
        sources, targets = self.source_lengths, self.target_lengths
        for i in order.tolist():
            source = max(longest_source, int(sources[i]))
            target = max(longest_target, int(targets[i]))
            full = self.max_batch_size is not None and len(current) >= self.max_batch_size
            if current and (full or (source + target) * (len(current) + 1) > self.max_tokens):
                batches.append(current)
                current, source, target = [], int(sources[i]), int(targets[i])
            current.append(i)
            longest_source, longest_target = source, target
        if current:
            batches.append(current)
        return batches

    def global_batches(self, epoch: int, seed: int, shuffle: bool, num_replicas: int) -> list[list[int]]:
        n = len(self.source_lengths)
        rng = np.random.default_rng([seed, epoch])
        order = rng.permutation(n) if shuffle else np.arange(n)
        size = self.bucket_size if (self.bucket_size and shuffle) else n
        batches: list[list[int]] = []
        for start in range(0, n, size):
            bucket = order[start : start + size]
            # Longest first; a stable sort keeps the random order among equal lengths.
            key = np.lexsort((-self.target_lengths[bucket], -self.source_lengths[bucket]))
            batches.extend(self._pack(bucket[key]))
        batches = self._divisible(batches, num_replicas)
        if shuffle:
            # Shuffle groups of num_replicas consecutive (similar-length) batches, so ranks stay in step.
            groups = [batches[i : i + num_replicas] for i in range(0, len(batches), num_replicas)]
            batches = [batch for g in rng.permutation(len(groups)).tolist() for batch in groups[g]]
        return batches

    def _divisible(self, batches: list[list[int]], replicas: int) -> list[list[int]]:
        """Split the most expensive multi-item batches until each rank can get the same number of batches."""
        while len(batches) % replicas:
            splittable = [j for j, b in enumerate(batches) if len(b) > 1]
            if not splittable:
                # Fewer items than ranks: repeat batches from the start (as DistributedSampler pads).
                missing = replicas - len(batches) % replicas
                batches = batches + [list(batches[k % len(batches)]) for k in range(missing)]
                break
            j = max(splittable, key=lambda k: (self.cost(batches[k]), len(batches[k])))
            batch = batches[j]
            half = len(batch) // 2
            batches[j : j + 1] = [batch[:half], batch[half:]]
        return batches


# group_by_length=auto groups when random batches would pad more than this share of their tokens. Grouping trades
# some batch randomness for less padding; below this there is little to save. Measured on ACLSum at the quickstart's
# 192/96 tokens (random batches pad 2.3%): grouped batches were no faster and tested 0.3 and 1.0 ROUGE-2 lower over
# two seeds (bench/README.md, "Default batching"); on 400 ACLSum sections at 256/32 (21%) they are 1.2x faster.
AUTO_GROUP_PADDING = 0.10


def grouping_pays(lengths: Sequence[tuple[int, int]], batch_size: int) -> tuple[bool, float]:
    """Whether group_by_length=auto groups, and the padding share of random batches it decided on (from at most
    1024 of the first epoch's random batches: the lengths alone, no model)."""
    batches = FixedSize(len(lengths), batch_size).global_batches(0, 0, True, 1)[:1024]
    sources, targets = zip(*((pair[0], pair[1]) for pair in lengths))
    padding = padding_stats(batches, sources, targets)["padding_fraction"]
    return padding > AUTO_GROUP_PADDING, padding


def training_order(
    lengths: Sequence[tuple[int, int]],
    batch_size: int,
    max_tokens: int | None,
    group_by_length: bool | str,
    length_jitter: float = 0.0,
    announce: bool = True,
) -> BatchOrder:
    """The strategy the data settings name: a token budget, batches grouped by length, or fixed-size batches
    (group_by_length="auto": grouped when random batches would pad more than AUTO_GROUP_PADDING, which is logged
    when `announce`: by DDP's rank 0 alone, since any record makes another rank write a log file of its own)."""
    if max_tokens:
        return TokenBudget(lengths, max_tokens)
    if group_by_length == "auto" and lengths:
        group, padding = grouping_pays(lengths, batch_size)
        (log.info if announce else log.debug)(
            "data.group_by_length=auto: random batches would pad %.1f%% of their tokens, so %s",
            100 * padding,
            "batches are grouped by length" if group else "batches stay random (grouping would save little)",
        )
        group_by_length = group
    if group_by_length is True:
        return GroupedByLength(lengths, batch_size, length_jitter)
    return FixedSize(len(lengths), batch_size)


def dataset_lengths(dataset, columns: Sequence[str] = ("input_ids", "labels")) -> list[tuple[int, ...]]:
    """Per-row lengths of list columns of a `datasets.Dataset`, computed in Arrow (no Python lists of tokens)."""
    try:
        import pyarrow.compute as pc

        table = dataset.with_format("arrow")[:]
        columns_lengths = [pc.list_value_length(table[c]).to_numpy(zero_copy_only=False) for c in columns]
    except Exception:  # noqa: BLE001 - not a datasets.Dataset (a list of dicts, a torch Dataset): count in Python
        columns_lengths = [[len(row[c]) for row in dataset] for c in columns]
    return [tuple(int(n) for n in row) for row in zip(*columns_lengths)]


def padding_stats(batches: Sequence[Sequence[int]], source_lengths, target_lengths) -> dict[str, float]:
    """Real tokens, padded tokens and the padding fraction of a list of batches."""
    sources, targets = np.asarray(source_lengths), np.asarray(target_lengths)
    real = padded = 0
    for batch in batches:
        index = np.asarray(batch)
        real += int(sources[index].sum() + targets[index].sum())
        padded += int((sources[index].max() + targets[index].max()) * len(index))
    return {"real": real, "padded": padded, "padding_fraction": 1 - real / padded if padded else 0.0}


def longest_first(lengths: Sequence[int]) -> list[int]:
    """Indices by decreasing length (ties in data order): batches cut from it pad little, and the first batch shows
    at once whether the longest inputs fit in memory."""
    return sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))


class EvalBatchSampler(Sampler[list[int]]):
    """Evaluation batches cut from the length-sorted rows, so generation spends its steps on real tokens.

    Batches hold ``batch_size`` rows, or with ``max_tokens`` as many as fit ``rows * (longest source +
    target_tokens) <= max_tokens``: short documents then share bigger batches, and the first (longest) batch bounds
    the memory. ``target_tokens`` is the room each row needs on the target side (the longest summary generated).

    Under DDP rank ``r`` takes rows ``r, r + W, ...`` of each group of ``W`` batches cut from the sorted order, so the
    ranks get equally long rows and the same number of batches, which sharded strategies (FSDP, DeepSpeed stage 3)
    need, since every forward gathers parameters from all ranks. A rank one row short in the last group repeats that
    group's shortest row. The repeats, at most ``W - 1`` rows, are dropped when predictions are gathered by index.
    """

    def __init__(
        self,
        lengths: Sequence[int],
        batch_size: int,
        num_replicas: int = 1,
        rank: int = 0,
        max_tokens: int | None = None,
        target_tokens: int = 0,
    ):
        if batch_size <= 0:
            raise ValueError(f"batch_size={batch_size} must be a positive integer")
        if max_tokens is not None and max_tokens <= 0:
            raise ValueError(f"max_tokens={max_tokens} must be a positive integer or None")
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"rank={rank} is not in [0, num_replicas={num_replicas})")
        order = longest_first(lengths)
        self._batches: list[list[int]] = []
        start = 0
        while start < len(order):
            rows = batch_size
            if max_tokens is not None:
                rows = max(1, max_tokens // max(1, lengths[order[start]] + target_tokens))
            group = order[start : start + rows * num_replicas]
            mine = group[rank::num_replicas]
            mine += (mine or group)[-1:] * (-(-len(group) // num_replicas) - len(mine))
            self._batches.append(mine)
            start += len(group)

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self._batches)

    def __len__(self) -> int:
        return len(self._batches)
