"""trainer=fsdp2: PyTorch's FSDP2 (`torch.distributed.fsdp.fully_shard`) through Lightning's ModelParallelStrategy.

Lightning's `FSDPStrategy` (trainer=fsdp) drives torch's first FSDP, which refuses the CPU; FSDP2 shards parameters
as DTensors and runs on CPU processes with gloo as well as on GPUs with NCCL, so `tests/test_fsdp2.py` trains, kills
and resumes it here. Lightning leaves the sharding to the module (`configure_model`); encdec shards the whole
encoder-decoder as one unit, as trainer=fsdp does, so tied weights (an LM head tied to its embeddings, BERTShare)
stay in one unit whatever the pairing. Checkpoints are gathered on rank 0 into one `.ckpt` file
(`save_distributed_checkpoint=False`), written atomically like every other trainer's, so `resume=`, `eval.py
model_path=X.ckpt` and the export read them unchanged.
"""

from __future__ import annotations

from lightning.pytorch.strategies import ModelParallelStrategy


class FullyShardStrategy(ModelParallelStrategy):
    """ModelParallelStrategy with every rank in one data-parallel (FSDP2) group and no tensor parallelism: what
    `data_parallel_size="auto"` means here is the whole world (Lightning's own "auto" is the number of nodes, with
    the node's devices as the tensor-parallel group)."""

    def __init__(self, save_distributed_checkpoint: bool = False, **kwargs) -> None:
        kwargs.setdefault("tensor_parallel_size", 1)
        super().__init__(save_distributed_checkpoint=save_distributed_checkpoint, **kwargs)

    def setup_environment(self) -> None:
        if self._data_parallel_size == "auto":
            self._data_parallel_size = self.num_nodes * self.num_processes // int(self._tensor_parallel_size)
        super().setup_environment()


def shard(module) -> None:
    """`Seq2SeqModule.configure_model` under a ModelParallelStrategy: the model sharded by FSDP2 over the
    data-parallel mesh, once (Lightning calls the hook again for each validate/fit/test)."""
    from torch.distributed.fsdp import FSDPModule, fully_shard

    strategy = module.trainer.strategy if module._trainer is not None else None
    if not isinstance(strategy, ModelParallelStrategy) or isinstance(module.model, FSDPModule):
        return
    fully_shard(module.model, mesh=module.device_mesh["data_parallel"])
