"""Where one training step of encdec's loss goes on a GPU: wall time vs GPU kernel time, and the kernel count.

    python bench/gpu_profile.py                       # bert2bert-base, batch 32, 256/64 tokens, bf16 autocast, cuda
    python bench/gpu_profile.py --device cpu --model bert2gpt2-4x256 --batch-size 2 --steps 2   # dry run

If the kernels' summed time is far below the step's wall time, the step is bound by the host (launches, Python),
not by the GPU: bigger batches or CUDA graphs (`model.compile=true`) are then the levers, not fewer FLOPs.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="bert2bert-base", choices=sorted(common.MODELS))
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--source", type=int, default=256)
    parser.add_argument("--target", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()

    common.quiet()
    import torch
    from torch.profiler import ProfilerActivity, profile

    from encdec.lit.module import Seq2SeqModule

    _, model, _, decoder_tokenizer = common.build(args.model)
    device = torch.device(args.device)
    model.to(device).train()
    module = Seq2SeqModule(model, decoder_tokenizer, optimizer=None)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, foreach=True)
    generator = torch.Generator().manual_seed(0)
    b, s, t = args.batch_size, args.source, args.target
    batch = {
        "input_ids": torch.randint(1000, 20000, (b, s), generator=generator),
        "attention_mask": torch.ones(b, s, dtype=torch.long),
        "decoder_input_ids": torch.randint(1000, 20000, (b, t), generator=generator),
        "decoder_attention_mask": torch.ones(b, t, dtype=torch.long),
        "labels": torch.randint(1000, 20000, (b, t), generator=generator),
    }
    batch = {k: v.to(device) for k, v in batch.items()}
    cuda = device.type == "cuda"
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda)

    def step():
        with autocast:
            loss = module.loss(batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def sync():
        if cuda:
            torch.cuda.synchronize()

    for _ in range(3):
        step()
    sync()
    started = time.perf_counter()
    for _ in range(args.steps):
        step()
    sync()
    wall = (time.perf_counter() - started) / args.steps

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        for _ in range(2):
            step()
        sync()
    events = prof.key_averages()
    try:
        kernel_us = sum(e.self_device_time_total for e in events if e.device_type.name == "CUDA") / 2 if cuda else 0.0
    except AttributeError:  # older profiler event API
        kernel_us = (
            sum(getattr(e, "self_cuda_time_total", 0) for e in events if str(e.device_type).endswith("CUDA")) / 2
        )
    launches = (
        sum(
            e.count
            for e in events
            if e.key in ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernelEx")
        )
        / 2
    )
    launch_us = sum(e.self_cpu_time_total for e in events if "LaunchKernel" in e.key) / 2
    print(
        f"{args.model} on {device} ({torch.cuda.get_device_name() if cuda else 'cpu'}), batch {b}x{s}/{t}, "
        f"bf16 autocast={cuda}"
    )
    print(
        f"STEP wall {wall * 1000:.1f} ms; GPU kernels {kernel_us / 1000:.1f} ms "
        f"({100 * kernel_us / 1000 / (wall * 1000):.0f}% of wall); kernel launches {launches:.0f} per step, "
        f"{launch_us / 1000:.1f} ms of CPU time in launch calls"
    )
    for sort in ["self_device_time_total", "self_cuda_time_total"] if cuda else []:
        try:
            print(events.table(sort_by=sort, row_limit=12, max_name_column_width=60))
            break
        except Exception as error:  # noqa: BLE001  (sort key names moved between torch versions)
            print(f"(sort by {sort}: {error})")
    print(events.table(sort_by="self_cpu_time_total", row_limit=12, max_name_column_width=60))


if __name__ == "__main__":
    main()
