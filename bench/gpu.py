"""The one-shot GPU check (`make bench-gpu`): bench.extract at LLaVA-1.5-7B's full architecture
with the real ids, in fp16 and in NF4, each way side by side, against the GPU's prefill limit.

    python -m bench.gpu                      # one GPU, under 8 minutes on an H100
    python -m bench.gpu --smoke              # the same logic on a CPU: 7B cut to 1 layer, 2 images

For each mode it prints one line:
RESULT mode=<fp16|nf4> fast_images_per_s=<f> naive_images_per_s=<n> speedup=<n/f time>
memory_ratio=<naive peak / fast peak> prefill_limit_images_per_s=<L> prefill_fraction=<f / L>
same_answers=<a>/<n> max_map_diff_agreeing=<d> fp32_same_answers=<a>/<m> fp32_max_map_diff=<d>
fidelity=<ok|FAILED>
where L = the GPU's peak dense fp16/bf16 rate / the FLOPs of one image's prompt forward
(bench.llava7b.prefill_flops): the rate no batching could beat, since every image needs at least
that forward. Random weights: the answers are noise, the work per image is the real one. The
fidelity fields are bench.extract's: answers that agree between the fast and naive ways, the
largest map difference over the images whose answers agree, and both ways again in float32 on
--fidelity-images images, where all answers must agree and the maps differ by at most 1e-4
(the exit status is 1 when a mode fails that).
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from bench import extract as bench_extract

# Peak dense (no sparsity) fp16/bf16 tensor-core rates from the vendors' datasheets, in FLOP/s.
PEAK_DENSE_FLOPS = (
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("H100", 989e12),  # SXM
    ("H200", 989e12),
    ("GH200", 989e12),
    ("A100", 312e12),
    ("L40S", 362e12),
    ("L4", 121e12),
    ("A10", 125e12),
)
MODES = {"fp16": "none", "nf4": "4bit"}  # mode -> bench.extract --quant


def peak_dense_flops(device_name: str) -> float | None:
    return next((rate for key, rate in PEAK_DENSE_FLOPS if key in device_name), None)


def mode_args(args: argparse.Namespace, quant: str) -> argparse.Namespace:
    argv = [
        "--arch", args.arch, "--quant", quant, "--images", str(args.images),
        "--batch-size", str(args.batch_size), "--max-new-tokens", str(args.max_new_tokens),
        "--repeats", str(args.repeats), "--device", args.device,
        "--fidelity-images", str(args.fidelity_images),
    ]  # fmt: skip
    if args.layers is not None:
        argv += ["--layers", str(args.layers)]
    if args.dtype is not None:
        argv += ["--dtype", args.dtype]
    if args.threads is not None:
        argv += ["--threads", str(args.threads)]
    cli = bench_extract.parser()
    parsed = cli.parse_args(argv)
    bench_extract.check_args(parsed, cli.error)
    return parsed


def result_line(mode: str, result: dict, flops: float, peak: float | None) -> str:
    fast, naive = result["images_per_s"]["fast"], result["images_per_s"]["naive"]
    limit = peak / flops if peak else None
    return (
        f"RESULT mode={mode} fast_images_per_s={fast:.3f} naive_images_per_s={naive:.3f} "
        f"speedup={result['speedup']:.2f} memory_ratio={result['memory_ratio']:.2f} "
        + (
            f"prefill_limit_images_per_s={limit:.2f} prefill_fraction={fast / limit:.4f}"
            if limit
            else "prefill_limit_images_per_s=n/a prefill_fraction=n/a"
        )
        + " "
        + bench_extract.fidelity_fields(result)
    )


def main(argv: list[str] | None = None) -> None:
    cli = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cli.add_argument("--smoke", action="store_true", help="CPU: 7B cut to 1 layer, 2 images")
    cli.add_argument("--arch", choices=["llava-1.5-7b", "tiny-llama"], default="llava-1.5-7b")
    cli.add_argument("--layers", type=int, default=None, help="cut depth (default: full)")
    cli.add_argument("--images", type=int, default=16)
    cli.add_argument(
        "--batch-size",
        type=bench_extract.batch_size_arg,
        default=8,
        help="auto: what `make extract` uses by default (from free GPU memory)",
    )
    cli.add_argument("--max-new-tokens", type=int, default=12)
    cli.add_argument("--repeats", type=int, default=2)
    cli.add_argument("--fidelity-images", type=int, default=4, help="of the float32 comparison")
    cli.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    cli.add_argument("--dtype", choices=["float16", "bfloat16", "float32"], default=None)
    cli.add_argument("--threads", type=int, default=None)
    cli.add_argument("--peak-tflops", type=float, default=None, help="override the table")
    cli.add_argument("--modes", default="fp16,nf4", help="comma-separated: fp16, nf4")
    args = cli.parse_args(argv)
    if args.smoke:  # the whole logic, small enough for a CPU
        args.device, args.images, args.batch_size, args.repeats = "cpu", 2, 2, 1
        args.fidelity_images = min(args.fidelity_images, 2)
        args.max_new_tokens = min(args.max_new_tokens, 3)
        args.layers = 1 if args.arch == "llava-1.5-7b" and args.layers is None else args.layers
        args.dtype = args.dtype or "float32"  # CPUs have no fast fp16 matmul
    elif args.device != "cpu" and not torch.cuda.is_available():
        cli.error("no CUDA device: bench.gpu measures a GPU (use --smoke to try it on a CPU)")

    on_gpu = args.device != "cpu" and torch.cuda.is_available()
    name = torch.cuda.get_device_name(0) if on_gpu else "cpu"
    peak = args.peak_tflops * 1e12 if args.peak_tflops else peak_dense_flops(name)
    print(
        f"device: {name}; peak dense rate: {'unknown' if peak is None else f'{peak / 1e12:.0f} TFLOP/s'}"
    )
    lines: list[str] = []
    failed = False
    started = time.perf_counter()
    for mode in args.modes.split(","):
        margs = mode_args(args, MODES[mode])
        result = bench_extract.measure(margs)
        bench_extract.report(margs, result)
        tokens = result["timing"]["prompt_tokens"]
        flops = result["timing"]["prefill_flops"]  # of the model the worker ran
        print(f"{mode}: prompt {tokens:.0f} tokens, {flops / 1e12:.3f} TFLOP per image's prefill")
        lines.append(result_line(mode, result, flops, peak))
        print(lines[-1], flush=True)
        print(f"elapsed {time.perf_counter() - started:.0f} s", flush=True)
        failed = failed or not result["fidelity_ok"]
    if failed:
        sys.exit(1)  # after every mode's RESULT line


if __name__ == "__main__":
    main()
