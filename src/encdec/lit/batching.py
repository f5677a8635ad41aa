"""Length-bucketed, token-budget batches: little padding, a deterministic shuffle per epoch, DDP and mid-epoch resume.

A batch costs the tokens it occupies once padded: ``max(source_len) * n + max(target_len) * n``. Items are sorted by
length inside buckets (ties broken at random), packed greedily until the next item would push the batch over
``max_tokens``, and the batches are then shuffled across the epoch from ``seed + epoch``. An item longer than the
budget on its own forms a batch of one.

Under DDP every rank builds the same list of batches (same seed, same epoch) and takes every ``num_replicas``-th
one. Consecutive batches (similar lengths) go to different ranks at the same step, so no rank waits long at the
gradient all-reduce; the batch count is made divisible by ``num_replicas`` by splitting the largest batches, so every
rank gets the same number of batches and every index is used exactly once per epoch (only when there are fewer
items than ranks are indices repeated).
"""

from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler

from encdec.errors import EncdecError


class TokenBudgetBatchSampler(Sampler[list[int]]):
    """Yields lists of dataset indices whose padded size stays within ``max_tokens``.

    lengths: one length per item, or one ``(source_len, target_len)`` pair per item.
    max_tokens: the padded-token budget per batch (source + target).
    shuffle: shuffle within ties and across batches, per epoch (training); otherwise longest batches first, fixed.
    seed: the shuffle for epoch ``e`` is drawn from ``seed + e`` only (call ``set_epoch`` every epoch).
    bucket_size: sort within random buckets of this many items (more variety across epochs, a little more
        padding); ``None`` sorts the whole data set.
    max_batch_size: an optional cap on items per batch.
    num_replicas, rank: DDP world size and this process's rank.
    """

    def __init__(
        self,
        lengths: Sequence[int] | Sequence[Sequence[int]],
        max_tokens: int,
        shuffle: bool = True,
        seed: int = 0,
        bucket_size: int | None = None,
        max_batch_size: int | None = None,
        num_replicas: int = 1,
        rank: int = 0,
    ):
        array = np.asarray(lengths, dtype=np.int64)
        if array.ndim == 1:
            array = np.stack([array, np.zeros_like(array)], axis=1)
        if array.ndim != 2 or array.shape[1] != 2:
            raise ValueError("lengths must be one int per item or one (source_len, target_len) pair per item")
        if len(array) == 0:
            raise ValueError("lengths is empty: nothing to batch")
        if int(max_tokens) <= 0:
            raise ValueError(f"max_tokens={max_tokens} must be a positive integer")
        if bucket_size is not None and int(bucket_size) <= 0:
            raise ValueError(f"bucket_size={bucket_size} must be a positive integer or None")
        if max_batch_size is not None and int(max_batch_size) <= 0:
            raise ValueError(f"max_batch_size={max_batch_size} must be a positive integer or None")
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"rank={rank} must be in [0, num_replicas={num_replicas})")
        self.source_lengths = array[:, 0]
        self.target_lengths = array[:, 1]
        self.max_tokens = int(max_tokens)
        self.shuffle = shuffle
        self.seed = int(seed)
        self.bucket_size = int(bucket_size) if bucket_size is not None else None
        self.max_batch_size = int(max_batch_size) if max_batch_size is not None else None
        self.num_replicas = int(num_replicas)
        self.rank = int(rank)
        self.epoch = 0
        self.position = 0  # batches of the current epoch already yielded on this rank
        self._cache: tuple[int, list[list[int]]] | None = None
        # Lightning calls set_epoch on `loader.sampler` and `loader.batch_sampler.sampler`, never on the batch
        # sampler itself: pointing `sampler` here makes it reach us.
        self.sampler = self

    # -- the batches -------------------------------------------------------------------------------------------------

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

    def _global_batches(self, epoch: int) -> list[list[int]]:
        """Every rank's batches of one epoch, in step order: batch j goes to rank j % num_replicas."""
        if self._cache is not None and self._cache[0] == epoch:
            return self._cache[1]
        n = len(self.source_lengths)
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(n) if self.shuffle else np.arange(n)
        size = self.bucket_size if (self.bucket_size and self.shuffle) else n
        batches: list[list[int]] = []
        for start in range(0, n, size):
            bucket = order[start : start + size]
            # Longest first; a stable sort keeps the random order among equal lengths.
            key = np.lexsort((-self.target_lengths[bucket], -self.source_lengths[bucket]))
            batches.extend(self._pack(bucket[key]))
        batches = self._divisible(batches)
        if self.shuffle:
            # Shuffle groups of num_replicas consecutive (similar-length) batches, so ranks stay in step.
            groups = [batches[i : i + self.num_replicas] for i in range(0, len(batches), self.num_replicas)]
            batches = [batch for g in rng.permutation(len(groups)).tolist() for batch in groups[g]]
        self._cache = (epoch, batches)
        return batches

    def _divisible(self, batches: list[list[int]]) -> list[list[int]]:
        """Split the most expensive multi-item batches until each rank can get the same number of batches."""
        replicas = self.num_replicas
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

    def batches(self, epoch: int | None = None) -> list[list[int]]:
        """This rank's batches of an epoch (the current one by default), in order."""
        epoch = self.epoch if epoch is None else epoch
        return self._global_batches(epoch)[self.rank :: self.num_replicas]

    # -- Sampler -----------------------------------------------------------------------------------------------------

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
        """The next iteration of `epoch` skips the `batches_done` batches this rank already trained on."""
        self.epoch = int(epoch)
        self.position = min(max(int(batches_done), 0), len(self.batches()))

    # -- resume ------------------------------------------------------------------------------------------------------

    def state_dict(self, consumed: int | None = None) -> dict[str, int]:
        """Epoch and position for a resumed run.

        A DataLoader (and Lightning's fetcher) iterates ahead of training, so pass ``consumed``, the batches of this
        epoch that were actually trained on, when the sampler's own count may be ahead.
        """
        position = self.position if consumed is None else int(consumed)
        return {"epoch": self.epoch, "position": position, "seed": self.seed, "num_replicas": self.num_replicas}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if state.get("seed", self.seed) != self.seed or state.get("num_replicas", self.num_replicas) != self.num_replicas:
            raise ValueError(
                f"cannot resume batches of seed {state.get('seed')} on {state.get('num_replicas')} ranks "
                f"with seed {self.seed} on {self.num_replicas} ranks"
            )
        self.resume_at(state["epoch"], state["position"])


def dataset_lengths(dataset, columns: Sequence[str] = ("input_ids", "labels")) -> list[tuple[int, ...]]:
    """Per-row lengths of list columns of a `datasets.Dataset`, computed in Arrow (no Python lists of tokens)."""
    try:
        import pyarrow.compute as pc

        table = dataset.with_format("arrow")[:]
        columns_lengths = [pc.list_value_length(table[c]).to_numpy(zero_copy_only=False) for c in columns]
    except Exception:  # not a datasets.Dataset (a list of dicts, a torch Dataset): count in Python
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


def check_token_budget(name: str, budget) -> int | None:
    """A user's token budget (data.max_tokens_per_batch and kin): a positive integer, or None for fixed-size batches."""
    if budget is not None and (not isinstance(budget, int) or isinstance(budget, bool) or budget <= 0):
        raise EncdecError(f"{name}={budget} must be a positive integer or null (batches of a fixed size)")
    return budget


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
