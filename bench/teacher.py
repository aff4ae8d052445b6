"""The teacher's throughput on the CPU (`make bench-teacher`): the tiny teacher's images/s by
batch size, the cost of one decode step with and without the row capture, the host reads
(GPU synchronisations, where there is a GPU) per batch, and the CPU time to build a batch's
inputs (views drawn, image processor, tokenizer), which `Teacher.extract` does on a second
thread while the model runs the batch before.

    python -m bench.teacher [--images 32] [--batch-sizes 1,8,32] [--repeats 2] [--arch tiny]

Decode steps: the same batch of --step-batch images generated greedily with the capture (the
fast path, `Teacher.run_fast`) and without it (the same `generate`, plain SDPA), and once with a
budget of one token (the prompt's forward); a step costs (whole - prompt) / (steps - 1). Host
reads are counted by a TorchDispatchMode (item, bool and int of a tensor, nonzero) plus
`Tensor.tolist`, over a whole `run_fast` and between its decode forwards. Ends with one line:
RESULT images_per_s_b<k>=<x>... decode_step_ms=<d> capture_ms_per_step=<c>
host_reads_per_batch=<r> host_reads_per_decode_step=<s> inputs_ms_per_image=<i>
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from bench.extract import VOCABULARY, bench_items
from teacher import TeacherConfig, load_teacher
from teacher.model import Teacher
from teacher.weights.aliases import default_tiny_dir
from teacher.weights.tiny import build_tiny_teacher

# Ops whose result the host must wait for on a GPU (under inference_mode the mode sees
# item/is_nonzero before they decompose to _local_scalar_dense); nonzero's size is data.
READ_OPS = {
    torch.ops.aten._local_scalar_dense.default,
    torch.ops.aten.item.default,
    torch.ops.aten.is_nonzero.default,
    torch.ops.aten._is_all_true.default,
    torch.ops.aten._is_any_true.default,
    torch.ops.aten.equal.default,
    torch.ops.aten.nonzero.default,
}


class HostReads(TorchDispatchMode):
    """Counts the host's reads of tensor values (see the module docstring)."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0
        self._tolist = torch.Tensor.tolist

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in READ_OPS:
            self.count += 1
        return func(*args, **(kwargs or {}))

    def __enter__(self) -> HostReads:
        original = self._tolist

        def counted(tensor: torch.Tensor):
            self.count += 1
            return original(tensor)

        torch.Tensor.tolist = counted
        return super().__enter__()

    def __exit__(self, *exc: object) -> None:
        torch.Tensor.tolist = self._tolist
        super().__exit__(*exc)


def load(arch: str, threads: int) -> Teacher:
    torch.set_num_threads(threads)
    vocab = "bpe" if arch == "tiny" else "llama"
    folder = default_tiny_dir(vocab)
    if not (folder / "config.json").exists():
        folder = build_tiny_teacher(folder, vocab)
    cfg = TeacherConfig(model=str(folder), quant="none", dtype="float32", device="cpu")
    return load_teacher(cfg, VOCABULARY)


def median_seconds(action: Callable[[], object], repeats: int) -> float:
    """Median wall time of `repeats` calls of `action` (warm it up first)."""
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        action()
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds)


def images_per_s(teacher: Teacher, items: list, batch_size: int, repeats: int) -> float:
    teacher.cfg = teacher.cfg.model_copy(update={"batch_size": batch_size})
    teacher.extract(items[:batch_size])  # warm-up
    return len(items) / median_seconds(lambda: teacher.extract(items), repeats)


def inputs_ms_per_image(teacher: Teacher, items: list, repeats: int) -> float:
    """Median ms per image to build a batch's inputs (the input thread's work)."""
    teacher.prepared_batch(items)  # warm-up
    return median_seconds(lambda: teacher.prepared_batch(items), repeats) / len(items) * 1e3


@torch.inference_mode()
def decode_steps(teacher: Teacher, items: list, repeats: int) -> dict:
    """ms per decode step with and without the capture, and the steps of the batch."""
    batch = [teacher.prepare(item) for item in items]
    encoded = teacher.encode(batch)
    kwargs = teacher.generate_kwargs(encoded)
    timings: dict[str, list[float]] = {"capture": [], "plain": [], "prompt": []}
    steps = 0
    for _ in range(repeats + 1):  # the first round warms up
        started = time.perf_counter()
        _, sequences, _ = teacher.run_fast(batch)
        capture = time.perf_counter() - started
        started = time.perf_counter()
        plain_sequences = teacher.model.generate(**kwargs)
        plain = time.perf_counter() - started
        started = time.perf_counter()
        teacher.model.generate(**{**kwargs, "max_new_tokens": 1})
        prompt = time.perf_counter() - started
        steps = sequences.shape[1] - encoded.prompt_length
        assert torch.equal(sequences, plain_sequences.cpu()), "the capture changed the answers"
        for name, value in (("capture", capture), ("plain", plain), ("prompt", prompt)):
            timings[name].append(value)
    median = {name: statistics.median(values[1:]) for name, values in timings.items()}
    per_step = {
        name: (median[name] - median["prompt"]) / max(1, steps - 1) * 1e3
        for name in ("capture", "plain")
    }
    return {"steps": steps, "ms_per_step": per_step}


def reads_per_forward(teacher: Teacher, items: list) -> tuple[list[tuple[int, int]], int]:
    """(query length, host reads so far) at each language-model forward of one run_fast (the
    prefill has the prompt's length, a decode step 1), and the batch's reads in all."""
    batch = [teacher.prepare(item) for item in items]
    reads = HostReads()
    marks: list[tuple[int, int]] = []

    def before_forward(module, args, kwargs):
        embeds = kwargs.get("inputs_embeds")
        length = (embeds if embeds is not None else kwargs["input_ids"]).shape[1]
        marks.append((length, reads.count))

    language = teacher.model.model.language_model
    hook = language.register_forward_pre_hook(before_forward, with_kwargs=True)
    try:
        with reads:
            teacher.run_fast(batch)
    finally:
        hook.remove()
    return marks, reads.count


def host_reads(teacher: Teacher, items: list) -> dict:
    """Host reads in one run_fast, and between consecutive decode forwards."""
    marks, total = reads_per_forward(teacher, items)
    decode = [count for length, count in marks if length == 1]
    between = [b - a for a, b in itertools.pairwise(decode)]
    return {"per_batch": total, "per_step": max(between, default=0)}


def main(argv: list[str] | None = None) -> None:
    cli = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cli.add_argument("--arch", choices=["tiny", "tiny-llama"], default="tiny")
    cli.add_argument("--images", type=int, default=32)
    cli.add_argument("--batch-sizes", default="1,8,32")
    cli.add_argument("--step-batch", type=int, default=8)
    cli.add_argument("--repeats", type=int, default=2)
    cli.add_argument("--threads", type=int, default=1)
    args = cli.parse_args(argv)
    teacher = load(args.arch, args.threads)
    items = bench_items(args.images)
    sizes = [int(size) for size in args.batch_sizes.split(",")]
    print(
        f"teacher {Path(str(teacher.cfg.model)).name} on the CPU, float32, {args.threads} "
        f"thread(s), {args.images} images, max_new_tokens {teacher.max_new_tokens}"
    )
    rates = {}
    for size in sizes:
        rates[size] = images_per_s(teacher, items, size, args.repeats)
        print(f"batch {size:3d}: {rates[size]:7.2f} images/s")
    steps = decode_steps(teacher, items[: args.step_batch], args.repeats)
    capture, plain = steps["ms_per_step"]["capture"], steps["ms_per_step"]["plain"]
    print(
        f"decode step, batch {args.step_batch} ({steps['steps']} steps): {capture:.2f} ms with "
        f"the capture, {plain:.2f} ms without ({capture - plain:+.2f} ms)"
    )
    reads = host_reads(teacher, items[: args.step_batch])
    print(
        f"host reads: {reads['per_batch']} in one batch of {args.step_batch}, "
        f"{reads['per_step']} per decode step (transformers' loop condition)"
    )
    inputs_ms = inputs_ms_per_image(teacher, items[: args.step_batch], args.repeats)
    print(
        f"inputs: {inputs_ms:.2f} ms per image (views, image processor, tokenizer), built on a "
        "second thread while the model runs the previous batch"
    )
    print(
        "RESULT "
        + " ".join(f"images_per_s_b{size}={rate:.2f}" for size, rate in rates.items())
        + f" decode_step_ms={capture:.2f} capture_ms_per_step={capture - plain:.2f}"
        + f" host_reads_per_batch={reads['per_batch']}"
        + f" host_reads_per_decode_step={reads['per_step']}"
        + f" inputs_ms_per_image={inputs_ms:.2f}"
    )


if __name__ == "__main__":
    main()
