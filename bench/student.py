"""Training-step time and forward FLOPs of the I-ViT against the same timm ViT.

Compared, side by side in one process with interleaved repetitions:
  vit    the plain timm ViT trained normally (every weight trainable, fused SDPA attention,
         cross-entropy), i.e. the paper's ViT baseline row;
  probe  the same ViT frozen with only a new head trainable (printed for context);
  ivit   the I-ViT: frozen backbone, Interaction Queries + gates + head trainable, CE + alignment
         over all blocks (recording the CLS rows), as student.engine trains it: fused SDPA
         attention (student/fused_attention.py);
  ivit_explicit  the same I-ViT forming every [B, H, N, N] matrix (the reference form, and what
         align_rows=all runs).
A step is forward + backward + AdamW update on one fixed batch. FLOPs are forward FLOPs of one
image from torch's FlopCounterMode (paper Table 1: I-ViT-S/16 / ViT-S/16 = 18.1 / 15.5 = 1.17).
Memory per variant: the bytes autograd saves for backward in one step (activations, every
device), and on CUDA the step's peak allocation beyond the model and batch.

    python -m bench.student [--model vit_small_patch16_224] [--batch 4] [--reps 5] [--device cpu]

Ends with `RESULT step_ratio=<ivit/vit> explicit_step_ratio=<ivit_explicit/vit>
flops_ratio=<ivit/vit> saved_mib_ratio=<ivit/vit> [peak_mib_ratio=<ivit/vit> on CUDA]`.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
import warnings
from pathlib import Path

if __package__ in (None, ""):
    # Run as a file, this script's folder comes first on sys.path and its own name would
    # shadow the `student` package; the repository root must win.
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import torch
import torch.nn.functional as F

from student.build import build
from student.config import StudentConfig
from student.engine import autocast
from student.model import count_forward_flops, count_parameters, explicit_attention, plain_vit


def make_step(model, trainable_only: bool, loss_fn, device, amp: bool):
    params = [p for p in model.parameters() if p.requires_grad or not trainable_only]
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=1e-4)

    def step(batch: dict) -> None:
        with autocast(device, amp):
            loss = loss_fn(model, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def saved_for_backward_bytes(step, batch: dict, model: torch.nn.Module) -> int:
    """Bytes of the distinct tensors autograd saves during one step, the model's own weights
    left out: the activation memory."""
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in weights:
            storages[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        step(batch)
    return sum(storages.values())


def peak_step_bytes(step, batch: dict, device: torch.device) -> int | None:
    """The step's peak CUDA allocation beyond what was allocated before it (None off CUDA)."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    step(batch)
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated(device) - before


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="vit_small_patch16_224")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--classes", type=int, default=200)
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)

    cfg = StudentConfig(model=args.model, weights="none", num_classes=args.classes)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random weights are fine for timing
        ivit, criterion = build(cfg)
    # The plain ViT: same timm config, its own weights, nothing replaced.
    vit = plain_vit(cfg)
    probe = copy.deepcopy(vit)
    for p in probe.parameters():
        p.requires_grad_(False)
    probe.head.requires_grad_(True)

    img = ivit.vit.patch_embed.img_size[0]
    flops_ivit = count_forward_flops(ivit, img)
    flops_vit = count_forward_flops(vit, img)
    (ivit_trainable, ivit_total), (_, vit_total) = count_parameters(ivit), count_parameters(vit)

    g = ivit.grid
    c_vlm = torch.rand(args.batch, g, g)
    batch = {
        "image": torch.randn(args.batch, 3, img, img),
        "label": torch.randint(0, args.classes, (args.batch,)),
        "c_vlm": c_vlm / c_vlm.sum(dim=(1, 2), keepdim=True),
        "map_valid": torch.ones(args.batch, dtype=torch.bool),
    }
    batch = {k: v.to(device) for k, v in batch.items()}
    amp = device.type == "cuda"

    def ce(model, b):
        return F.cross_entropy(model(b["image"]).float(), b["label"])

    def ivit_loss(model, b):
        return criterion(model.forward_with_interactions(b["image"]), b)["loss"]

    def ivit_explicit_loss(model, b):
        with explicit_attention(model):
            return ivit_loss(model, b)

    steps = {
        "vit": make_step(vit.to(device).train(), False, ce, device, amp),
        "probe": make_step(probe.to(device).train(), True, ce, device, amp),
        "ivit": make_step(ivit.to(device).train(), True, ivit_loss, device, amp),
        "ivit_explicit": make_step(ivit, True, ivit_explicit_loss, device, amp),
    }
    models = {"vit": vit, "probe": probe, "ivit": ivit, "ivit_explicit": ivit}
    saved = {name: saved_for_backward_bytes(steps[name], batch, models[name]) for name in steps}
    peak = {name: peak_step_bytes(step, batch, device) for name, step in steps.items()}
    times: dict[str, list[float]] = {name: [] for name in steps}
    for rep in range(args.warmup + args.reps):
        for name, step in steps.items():  # interleaved: drift hits every variant alike
            synchronize(device)
            start = time.perf_counter()
            step(batch)
            synchronize(device)
            if rep >= args.warmup:
                times[name].append(time.perf_counter() - start)

    median = {name: statistics.median(t) for name, t in times.items()}
    print(
        f"{args.model} @ {img}px, batch {args.batch}, {args.reps} reps, device {device} (AMP {amp})"
    )
    print(
        f"params: vit {vit_total / 1e6:.2f}M (all trainable); ivit {ivit_total / 1e6:.2f}M ({ivit_trainable / 1e6:.2f}M trainable)"
    )
    print(
        f"forward GFLOPs/image: vit {flops_vit / 1e9:.2f}  ivit {flops_ivit / 1e9:.2f}  ratio {flops_ivit / flops_vit:.3f} (paper 1.17)"
    )
    mib = 2.0**20
    for name, t in median.items():
        reps = ", ".join(f"{x * 1e3:.0f}" for x in times[name])
        memory = f"saved {saved[name] / mib:7.1f} MiB"
        if peak[name] is not None:
            memory += f"  peak {peak[name] / mib:7.1f} MiB"
        print(
            f"step {name:13s}: median {t * 1e3:8.1f} ms  x{t / median['vit']:.3f}  {memory}  ({reps})"
        )
    print(f"ivit/probe step ratio {median['ivit'] / median['probe']:.3f}")
    result = (
        f"RESULT step_ratio={median['ivit'] / median['vit']:.3f} "
        f"explicit_step_ratio={median['ivit_explicit'] / median['vit']:.3f} "
        f"flops_ratio={flops_ivit / flops_vit:.3f} "
        f"saved_mib_ratio={saved['ivit'] / saved['vit']:.3f}"
    )
    if peak["vit"]:
        result += f" peak_mib_ratio={peak['ivit'] / peak['vit']:.3f}"
    print(result)


if __name__ == "__main__":
    main()
