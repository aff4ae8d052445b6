"""Extraction benchmark: the fast path against the naive way, same teacher, same images.

    python -m bench.extract                        # tiny teacher (what `make bench-extract` runs)
    python -m bench.extract --arch llava-1.5-7b --layers 2 --images 4   # 7B shapes, cut depth
    python -m bench.extract --arch llava-1.5-7b --quant 4bit            # 7B in NF4 (a GPU)

fast:  teacher.extract (SDPA + only the selected attention rows, batches of --batch-size)
naive: eager attention, generate(output_attentions=True), one image at a time, rows picked
       afterwards (teacher.naive)
Each way runs in its own process, so one's memory never inflates the other's; memory is the
peak beyond the loaded weights after a one-image warm-up (RSS sampled every 2 ms on the CPU,
with glibc returning large freed blocks; max allocated on a GPU). The maps of the two
are compared: answers that agree, the largest map difference over the images whose answers
agree (in fp16 a near-tie in the greedy argmax may pick another word, and then other rows), and
a float32 run of both ways on --fidelity-images images (the main run itself when it is float32),
where every answer must agree and the maps differ by at most FP32_MAP_TOLERANCE. Ends with
exactly one line:
RESULT speedup=<naive s per image / fast s per image> memory_ratio=<naive peak / fast peak>
max_abs_diff=<d> same_answers=<a>/<n> max_map_diff_agreeing=<d> fp32_same_answers=<a>/<m>
fp32_max_map_diff=<d> fidelity=<ok|FAILED>
The 7B architecture uses the real LLaVA-1.5 ids (the tiny llama teacher's processor: Llama-2
vocabulary, <image> 32000, <pad> 32001); bench.gpu runs it at full depth in fp16 and NF4.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import torch
from PIL import Image
from transformers import LlavaForConditionalGeneration, LlavaProcessor

from bench.llava7b import (
    FULL_TEXT_LAYERS,
    FULL_VISION_LAYERS,
    llava_15_7b_config,
    prefill_flops,
    quantize_nf4,
)
from pipeline.datasets.generated import SHAPES
from teacher import TeacherConfig, TeacherInput, load_teacher
from teacher.maps.capture import register_rows_attention
from teacher.model import Teacher
from teacher.naive import extract_naive
from teacher.spec import TeacherSpec
from teacher.weights.aliases import default_tiny_dir
from teacher.weights.checkpoint import facts_from_config
from teacher.weights.tiny import build_tiny_teacher

VOCABULARY = [name for name, _, _ in SHAPES]
MAP_ARRAYS = ("c_fore", "c_back", "c_vlm")
FP32_MAP_TOLERANCE = 1e-4  # float32: the two ways differ only by summation order


# ---- teachers --------------------------------------------------------------------------------


def build_teacher(args: argparse.Namespace) -> Teacher:
    device = "cuda" if args.device == "auto" and torch.cuda.is_available() else args.device
    device = "cpu" if device == "auto" else device
    cfg = TeacherConfig(
        model=args.tiny_dir, quant="none", dtype=args.dtype, device=device,
        batch_size=args.batch_size, max_new_tokens=args.max_new_tokens,
    )  # fmt: skip
    if args.arch != "llava-1.5-7b":
        return load_teacher(cfg.model_copy(update={"quant": args.quant}), VOCABULARY)
    # Random weights of the real shapes, with the real ids (the tiny llama teacher's processor).
    processor = LlavaProcessor.from_pretrained(args.tiny_dir)
    tokenizer = processor.tokenizer
    config = llava_15_7b_config(
        tokenizer.convert_tokens_to_ids("<image>"), tokenizer.pad_token_id, args.layers
    )
    register_rows_attention()
    torch.manual_seed(0)  # both worker processes build the same weights
    previous = torch.get_default_dtype()
    torch.set_default_dtype(getattr(torch, args.dtype))
    with torch.device(device):
        model = LlavaForConditionalGeneration(config).eval()
    torch.set_default_dtype(previous)
    if args.quant == "4bit":
        quantize_nf4(model, getattr(torch, args.dtype))
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    cfg = cfg.model_copy(update={"quant": args.quant})
    weights = {"random": "llava-1.5-7b", "seed": 0}
    facts = facts_from_config(args.arch, config, processor.image_processor.crop_size["height"])
    description = TeacherSpec(cfg, VOCABULARY, facts, tokenizer, weights)
    teacher = Teacher(description, model, processor)
    teacher.use_rows_attention()
    return teacher


def bench_items(count: int) -> list[TeacherInput]:
    rng = np.random.default_rng(0)
    items = []
    for i in range(count):
        width, height = int(rng.integers(48, 96)), int(rng.integers(48, 96))
        pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        x0, y0 = int(rng.integers(0, width // 2)), int(rng.integers(0, height // 2))
        box = (x0, y0, int(rng.integers(x0 + 8, width)), int(rng.integers(y0 + 8, height)))
        label = i % len(VOCABULARY)
        items.append(
            TeacherInput(f"img{i:04d}", Image.fromarray(pixels), [box], VOCABULARY[label], label)
        )
    return items


# ---- memory ----------------------------------------------------------------------------------


class PeakRSS:
    """Peak resident memory of this process, sampled by a thread (the CPU has no peak counter
    that can be reset)."""

    def __init__(self, interval_s: float = 0.002) -> None:
        self.process = psutil.Process()
        self.interval_s = interval_s
        self.peak = self.process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(self.interval_s)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.process.memory_info().rss)


# ---- workers, each in its own process ---------------------------------------------------------


def ways(teacher: Teacher) -> dict:
    return {"fast": teacher.extract, "naive": lambda items: extract_naive(teacher, items)}


def synchronize(teacher: Teacher) -> None:
    if teacher.model.device.type == "cuda":
        torch.cuda.synchronize()


def time_worker(args: argparse.Namespace, teacher: Teacher, items: list[TeacherInput]) -> dict:
    """Both ways in one process, alternating, so a shared machine's load hits both alike."""
    runs = ways(teacher)
    for run in runs.values():
        run(items[:1])  # warm-up
    seconds: dict[str, list[float]] = {"fast": [], "naive": []}
    results = {}
    for _ in range(args.repeats):
        for name, run in runs.items():
            synchronize(teacher)
            started = time.perf_counter()
            results[name] = run(items)
            synchronize(teacher)
            seconds[name].append(time.perf_counter() - started)
    for name, rs in results.items():
        np.savez(
            Path(args.out).with_name(f"{name}.npz"),
            **{k: np.stack([getattr(r, k) for r in rs]) for k in MAP_ARRAYS},
        )
    prompts = [teacher.description.prompt(item)[0] for item in items]
    text_tokens = [len(teacher.tokenizer(p)["input_ids"]) for p in prompts]
    return {
        "seconds": {name: float(np.median(s)) for name, s in seconds.items()},
        "answers": {name: [r.answer for r in rs] for name, rs in results.items()},
        # One image's prompt as the model sees it: text tokens + the image's 576 (not 1).
        "prompt_tokens": float(np.mean(text_tokens)) + teacher.num_image_tokens - 1,
    }


def prompt_flops(teacher: Teacher, prompt_tokens: float) -> float:
    return prefill_flops(teacher.model.config, prompt_tokens)


def memory_worker(args: argparse.Namespace, teacher: Teacher, items: list[TeacherInput]) -> dict:
    """One way alone: the peak beyond the weights (and the code) after a warm-up."""
    run = ways(teacher)[args.worker.removeprefix("memory-")]
    run(items[:1])
    if teacher.model.device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        run(items)
        torch.cuda.synchronize()
        return {"peak_bytes": torch.cuda.max_memory_allocated() - base}
    base = psutil.Process().memory_info().rss
    with PeakRSS() as rss:
        run(items)
    return {"peak_bytes": rss.peak - base}


def fidelity_worker(args: argparse.Namespace, teacher: Teacher, items: list[TeacherInput]) -> dict:
    """Both ways once on the first --fidelity-images images (the teacher is float32 here)."""
    chosen = items[: args.fidelity_images]
    results = {name: run(chosen) for name, run in ways(teacher).items()}
    return compare(results["fast"], results["naive"])


def compare(fast: list, naive: list) -> dict:
    """Agreeing answers, and the largest map difference over all images and over the images
    whose answers agree (None when none agree)."""
    agree = [a.answer == b.answer for a, b in zip(fast, naive, strict=True)]
    diffs = [
        max(float(np.abs(getattr(a, k) - getattr(b, k)).max()) for k in MAP_ARRAYS)
        for a, b in zip(fast, naive, strict=True)
    ]
    agreeing = [d for d, same in zip(diffs, agree, strict=True) if same]
    return {
        "images": len(agree),
        "same_answers": sum(agree),
        "max_map_diff": max(diffs, default=0.0),
        "max_map_diff_agreeing": max(agreeing) if agreeing else None,
    }


def run_worker(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    teacher = build_teacher(args)
    items = bench_items(args.images)
    worker = {"time": time_worker, "fidelity": fidelity_worker}.get(args.worker, memory_worker)
    summary = worker(args, teacher, items)
    if "prompt_tokens" in summary:
        summary["prefill_flops"] = prompt_flops(teacher, summary["prompt_tokens"])
    summary.setdefault("images", args.images)
    summary["device"] = str(teacher.model.device)
    summary["text_layers"] = teacher.model.config.text_config.num_hidden_layers
    summary["vision_layers"] = teacher.model.config.vision_config.num_hidden_layers
    Path(args.out).write_text(json.dumps(summary))


def spawn(args: argparse.Namespace, worker: str, workdir: Path) -> dict:
    out = workdir / f"{worker}.json"
    command = [
        sys.executable, "-m", "bench.extract", "--worker", worker, "--out", str(out),
        "--arch", args.arch, "--quant", args.quant, "--images", str(args.images),
        "--batch-size", str(args.batch_size),
        "--dtype", args.dtype, "--device", args.device, "--tiny-dir", args.tiny_dir,
        "--max-new-tokens", str(args.max_new_tokens), "--threads", str(args.threads),
        "--repeats", str(args.repeats), "--fidelity-images", str(args.fidelity_images),
    ]  # fmt: skip
    if args.layers is not None:
        command += ["--layers", str(args.layers)]
    # --strict-rss: glibc serves blocks >= 64 KiB with mmap, so freed memory leaves the RSS and
    # the warm-up cannot pre-pay the peak (slower, so only the memory workers get it).
    strict = args.strict_rss and worker.startswith("memory")
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"} if strict else None
    subprocess.run(command, check=True, env=env)
    return json.loads(out.read_text())


def batch_size_arg(text: str) -> int | str:
    """A positive count, or "auto" (the teacher's own choice: teacher.batching)."""
    if text == "auto":
        return text
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1 or auto, got {value}")
    return value


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", choices=["tiny", "tiny-llama", "llava-1.5-7b"], default="tiny")
    parser.add_argument("--quant", choices=["none", "4bit"], default="none", help="4bit: NF4")
    parser.add_argument("--layers", type=int, default=None, help="cut depth (7B arch, for CPUs)")
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument(
        "--batch-size", type=batch_size_arg, default=8, help="images per batch, or auto"
    )
    parser.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default=None)
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--max-new-tokens", type=int, default=12)
    # One intra-op thread by default: on a shared CPU, OpenMP spin-waiting under contention
    # made timings swing 30x between runs; both ways get the same threads either way.
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--strict-rss", action="store_true", help="CPU memory without reuse")
    parser.add_argument("--tiny-dir", default=None, help="tiny teacher (tokenizer for 7B too)")
    parser.add_argument("--repeats", type=int, default=3, help="alternating timed rounds")
    parser.add_argument(
        "--fidelity-images", type=int, default=4, help="images of the float32 comparison"
    )
    parser.add_argument(
        "--worker",
        choices=["time", "fidelity", "memory-fast", "memory-naive"],
        help=argparse.SUPPRESS,
    )
    parser.add_argument("--out", default=None, help=argparse.SUPPRESS)
    return parser


def check_args(args: argparse.Namespace, error) -> None:
    if args.dtype is None:
        on_gpu = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
        args.dtype = "float16" if on_gpu and args.arch == "llava-1.5-7b" else "float32"
    on_cpu = args.device == "cpu" or (args.device == "auto" and not torch.cuda.is_available())
    if args.arch == "llava-1.5-7b" and args.layers is None and on_cpu:
        error("the full 7B architecture needs a GPU; on the CPU cut it with --layers N")


def measure(args: argparse.Namespace) -> dict:
    """Both ways, side by side: seconds per way, peak memory per way, maps compared."""
    with tempfile.TemporaryDirectory(prefix="bench-extract-") as tmp:
        workdir = Path(tmp)
        if args.tiny_dir is None:
            vocab = "bpe" if args.arch == "tiny" else "llama"  # the 7B uses the real ids
            ready = (default_tiny_dir(vocab) / "config.json").exists()
            args.tiny_dir = str(
                default_tiny_dir(vocab) if ready else build_tiny_teacher(workdir / "tiny", vocab)
            )
        timing = spawn(args, "time", workdir)
        maps = {name: dict(np.load(workdir / f"{name}.npz")) for name in ("fast", "naive")}
        memory = {name: spawn(args, f"memory-{name}", workdir) for name in ("fast", "naive")}
        if args.dtype != "float32":
            fp32 = argparse.Namespace(**{**vars(args), "dtype": "float32"})
            float32 = spawn(fp32, "fidelity", workdir)
    seconds = timing["seconds"]
    answers = timing["answers"]
    agreement = compare(*(map_rows(maps[name], answers[name]) for name in ("fast", "naive")))
    if args.dtype == "float32":  # the main run is the float32 run
        float32 = agreement
    return {
        "timing": timing,
        "memory": memory,
        "images_per_s": {name: args.images / seconds[name] for name in seconds},
        "speedup": seconds["naive"] / seconds["fast"],
        "memory_ratio": memory["naive"]["peak_bytes"] / max(memory["fast"]["peak_bytes"], 1),
        "max_abs_diff": agreement["max_map_diff"],
        "same_answers": agreement["same_answers"],
        "max_map_diff_agreeing": agreement["max_map_diff_agreeing"],
        "float32": float32,
        "fidelity_ok": fidelity_ok(float32),
    }


def map_rows(maps: dict[str, np.ndarray], answers: list[str]) -> list[argparse.Namespace]:
    """One record per image (answer and maps) from a worker's saved arrays."""
    return [
        argparse.Namespace(answer=answer, **{k: maps[k][i] for k in MAP_ARRAYS})
        for i, answer in enumerate(answers)
    ]


def fidelity_ok(float32: dict) -> bool:
    """In float32 every answer agrees and no map differs by more than FP32_MAP_TOLERANCE."""
    return (
        float32["same_answers"] == float32["images"]
        and float32["max_map_diff"] <= FP32_MAP_TOLERANCE
    )


def fidelity_fields(result: dict) -> str:
    """The RESULT line's fidelity fields (bench.extract and bench.gpu print the same)."""
    agreeing = result["max_map_diff_agreeing"]
    float32 = result["float32"]
    return (
        f"same_answers={result['same_answers']}/{result['timing']['images']} "
        f"max_map_diff_agreeing={'n/a' if agreeing is None else f'{agreeing:.3g}'} "
        f"fp32_same_answers={float32['same_answers']}/{float32['images']} "
        f"fp32_max_map_diff={float32['max_map_diff']:.3g} "
        f"fidelity={'ok' if result['fidelity_ok'] else 'FAILED'}"
    )


def report(args: argparse.Namespace, result: dict) -> None:
    timing, memory, n = result["timing"], result["memory"], args.images
    print(
        f"arch={args.arch} quant={args.quant} device={timing['device']} dtype={args.dtype} "
        f"images={n} batch_size={args.batch_size} max_new_tokens={args.max_new_tokens} "
        f"threads={args.threads} repeats={args.repeats} prompt=prompt1 "
        "answer_mode=forced-foreground"
    )
    depth = f"language layers={timing['text_layers']} vision layers={timing['vision_layers']}"
    if args.arch == "llava-1.5-7b" and args.layers is not None:
        depth += (
            f"  (depth CUT from {FULL_TEXT_LAYERS}/{FULL_VISION_LAYERS} by --layers "
            f"{args.layers} so it fits a CPU run; random weights)"
        )
    print(depth)
    seconds = timing["seconds"]
    for name in ("fast", "naive"):
        print(
            f"{name:5}: {n / seconds[name]:8.2f} images/s  {seconds[name] / n * 1e3:9.1f} "
            f"ms/image (median of {args.repeats})  peak beyond weights "
            f"{memory[name]['peak_bytes'] / 2**20:9.1f} MiB"
        )
    print(f"answers identical: {result['same_answers']}/{n}")
    agreeing = result["max_map_diff_agreeing"]
    print(
        "largest map difference over the images whose answers agree: "
        + ("n/a (none agree)" if agreeing is None else f"{agreeing:.3g}")
    )
    float32 = result["float32"]
    print(
        f"float32, both ways on {float32['images']} images: answers identical "
        f"{float32['same_answers']}/{float32['images']}, largest map difference "
        f"{float32['max_map_diff']:.3g} (must be <= {FP32_MAP_TOLERANCE:g}): "
        + ("ok" if result["fidelity_ok"] else "FAILED")
    )


def main() -> None:
    cli = parser()
    args = cli.parse_args()
    check_args(args, cli.error)
    if args.worker:
        run_worker(args)
        return
    result = measure(args)
    report(args, result)
    print(
        f"RESULT speedup={result['speedup']:.2f} memory_ratio={result['memory_ratio']:.2f} "
        f"max_abs_diff={result['max_abs_diff']:.3g} {fidelity_fields(result)}"
    )
    if not result["fidelity_ok"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
