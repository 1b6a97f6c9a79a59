"""Cost of one hair-trigger meta step, as ratios to a plain training step (same model, same batch).

    python -m benchmarks.meta_step                      # 2x64, 2x128, 4x256; 1 thread
    python benchmarks/meta_step.py --quick              # smoke run (seconds)
    python -m benchmarks.meta_step --threads 2 --repeats 11 --out meta_step.json
    python -m benchmarks.meta_step --sizes smollm2 --batch 8 --seq 64 --repeats 3 --methods hvp,lean,chunked,fd

For each model size (a randomly initialised tiny GPT-2 from ``llm.models.build_tiny``, or a
real model's shape from :data:`SHAPES` such as ``smollm2``; eager attention, LoRA r=8 on every
linear map from ``llm.lora.add_lora``) it times, in the same process and on
batches of the same shape (``--batch`` sequences × ``--seq`` tokens):

* ``plain``: ``response_loss`` forward + backward + Adam step on the LoRA tensors;
* ``plain_parts``: the same with gradient accumulation over ``--chunks`` micro-batches (what a
  plain step costs when it is split like the meta step);
* the meta step ``now(θ) + after(θ − η ∇inner(θ))`` (``llm.metalearn.meta_gradient``) + the
  same Adam step, by each method (``naive`` on whole batches; ``hvp``, ``lean``, ``chunked``,
  the finite-difference ``fd`` and FOMAML with every batch in ``--chunks`` micro-batch parts,
  default 4);
* the same step with the ``higher`` library (``innerloop_ctx``, differentiable SGD), if it
  imports and runs on the peft model.

Time: every round runs each variant once (in a rotated order), after ``--warmup`` rounds;
a variant's ratio is the median over rounds of its time over the plain step's time *in the
same round*, so background load that comes and goes hits both sides of each ratio.

Peak memory: on CPU, the peak of live tensor bytes allocated during one step, from the
allocator events of ``torch.profiler`` (deterministic, unaffected by other processes or by
what malloc keeps cached; memory that is not a tensor, e.g. autograd nodes, is not counted);
on CUDA, ``torch.cuda.max_memory_allocated`` above what was allocated before the step.

Targets: an exact meta step within 4.0× a plain step's time and 2.0× its
peak memory, in the same run; every row prints PASS or MISS against them, and its relative error against the
naive meta-gradient (``fd`` is the one approximate method: read its error next to its ratios).
"""

from __future__ import annotations

import abc
import argparse
import csv
import importlib.metadata
import json
import os
import platform
import random
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedModel  # noqa: E402

from llm.batches import batch_of  # noqa: E402
from llm.lora import adapter_params, add_lora  # noqa: E402
from llm.metagrad import METHODS, meta_gradient  # noqa: E402
from llm.models import TinySpec, build_tiny, response_loss, response_loss_parts  # noqa: E402
from llm.tokenizer import train_tokenizer  # noqa: E402

TARGET_TIME, TARGET_MEMORY = 4.0, 2.0
#: real models' shapes, randomly initialised (the cost of a step depends on the shape, not the
#: weights): SmolLM2-135M-Instruct's config (30 layers, width 576, 9 query and 3 key-value heads,
#: SwiGLU width 1536, tied embeddings over 49,152 tokens)
SHAPES = {
    "smollm2": dict(
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        vocab_size=49152,
        max_position_embeddings=8192,
        rope_theta=100000.0,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
    ),
}
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
FAST = [m for m in METHODS if m != "naive"]  # the methods held to the targets (fd: approximate)
WORDS = (
    "alpha beta gamma delta river stone cloud bright quick slow market paper window garden "
    "silver number yellow orange forest castle simple plain engine planet"
).split()

Step = Callable[[], None]


# ---------------------------------------------------------------------------- setup


def _sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def _batch(tok, rng: random.Random, size: int, seq: int) -> dict[str, torch.Tensor]:
    """``size`` chat examples cut to exactly ``seq`` tokens (long prompt and response, no padding)."""
    pairs = [(_sentence(rng, seq), _sentence(rng, seq)) for _ in range(size)]
    batch = batch_of(tok, pairs, seq)
    assert batch["input_ids"].shape == (size, seq), batch["input_ids"].shape
    return batch


def base_model(label: str, tok, args) -> PreTrainedModel:
    """The model a size label names: ``LxD`` a tiny GPT-2 of L layers and width D, or a name of
    :data:`SHAPES` (a Llama of that real model's shape, randomly initialised)."""
    if label in SHAPES:
        config = LlamaConfig(**SHAPES[label], pad_token_id=tok.pad_token_id)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(args.seed)
            return LlamaForCausalLM._from_config(config, attn_implementation="eager", dtype=torch.float32).eval()
    try:
        n_layer, n_embd = (int(x) for x in label.lower().split("x"))
    except ValueError:
        raise SystemExit(
            f"--sizes: {label!r} is neither n_layer x n_embd (e.g. 2x64) nor one of {sorted(SHAPES)}"
        ) from None
    spec = TinySpec(
        "gpt2", n_layer=n_layer, n_embd=n_embd, n_head=args.heads, vocab_size=len(tok), n_ctx=max(128, args.seq)
    )
    return build_tiny(spec, tok, seed=args.seed)


def build(label: str, tok, args) -> tuple[torch.nn.Module, dict[str, torch.Tensor], dict]:
    """The model of ``label`` (:func:`base_model`) with LoRA, and three batches (inner, now, after)."""
    dtype = getattr(torch, args.dtype)
    model = base_model(label, tok, args).to(device=args.device, dtype=dtype)
    torch.manual_seed(args.seed)  # LoRA A is drawn from the global RNG
    model = add_lora(model, rank=args.rank, alpha=2.0 * args.rank)
    gen = torch.Generator().manual_seed(args.seed)
    for name, p in model.named_parameters():  # B ≠ 0: a generic point, not peft's B = 0 start
        if "lora_B" in name:
            p.data = 0.02 * torch.randn(p.shape, generator=gen, dtype=dtype).to(args.device)
    rng = random.Random(args.seed)
    batches = {
        k: {n: t.to(args.device) for n, t in _batch(tok, rng, args.batch, args.seq).items()}
        for k in ("inner", "now", "after")
    }
    return model, adapter_params(model), batches


def plain_step(model, params, batches, opt, chunks: int = 1) -> Step:
    """What a training step costs: forward + backward + Adam on the same tensors and batch
    (``chunks`` > 1: gradient accumulation over that many micro-batches)."""
    parts = response_loss_parts(model, batches["inner"], chunks)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        for part in parts:
            part(None).backward()
        opt.step()

    return step


def closures(model, batches, chunks: int = 1):
    """(inner, now, after) losses as functions of θ, as the training loop builds them; with
    ``chunks`` > 1, each as that many micro-batch parts (``llm.models.response_loss_parts``)."""
    keys = ("inner", "now", "after")
    if chunks > 1:
        return tuple(response_loss_parts(model, batches[k], chunks) for k in keys)
    return tuple(lambda theta, b=batches[k]: response_loss(model, b, theta) for k in keys)


def meta_step(model, params, batches, opt, lr: float, method: str, first_order: bool = False, chunks: int = 1) -> Step:
    inner, now, after = closures(model, batches, chunks)

    def step() -> None:
        grads, _ = meta_gradient(params, inner, now, after, lr, first_order=first_order, method=method)
        for name, p in params.items():
            p.grad = grads[name]
        opt.step()

    return step


# ---------------------------------------------------------------------------- higher


def _shim_higher_mro(why: str) -> None:
    """Let ``higher`` 0.2.1 patch peft modules (the only change; behaviour is otherwise as shipped).

    ``higher`` subclasses each module as ``class MonkeyPatched(type(module), _MonkeyPatchBase)``
    with ``_MonkeyPatchBase(ABC, Module)``. peft's LoRA layers are ``(Module, ..., ABC)``, so no
    consistent MRO exists (``TypeError: Cannot create a consistent method resolution order``).
    The same class with its bases in the order ``(Module, ABC)`` fixes it. ``why`` (the error
    without the shim) is kept on the class, for the report.
    """
    import higher.patch as hp

    if getattr(hp._MonkeyPatchBase, "_hairtrigger_shim", False):
        return
    skip = {"__dict__", "__weakref__", "__abstractmethods__", "_abc_impl", "__module__", "__qualname__"}
    body = {k: v for k, v in vars(hp._MonkeyPatchBase).items() if k not in skip}
    body["_hairtrigger_shim"] = why
    hp._MonkeyPatchBase = type("_MonkeyPatchBase", (torch.nn.Module, abc.ABC), body)


def higher_gradient(model, params, batches, lr: float) -> list[torch.Tensor]:
    """The meta-gradient by ``higher``: a differentiable SGD step (rate η) on the fast weights."""
    import higher

    theta = list(params.values())
    # copy_initial_weights=False: the fast weights start *as* θ, so gradients reach θ
    with higher.innerloop_ctx(
        model, torch.optim.SGD(theta, lr=lr), copy_initial_weights=False, track_higher_grads=True
    ) as (fmodel, diffopt):
        diffopt.step(response_loss(fmodel, batches["inner"]))
        total = response_loss(model, batches["now"]) + response_loss(fmodel, batches["after"])
        return list(torch.autograd.grad(total, theta))


def _error_of(fn: Callable[[], object]) -> str | None:
    """``None`` if ``fn()`` runs, else the exception in one line (reported, not raised)."""
    try:
        fn()
        return None
    except Exception as e:
        return f"{type(e).__name__}: {' '.join(str(e).split())[:160]}"


def try_higher(model, params, batches, lr: float, shim: bool) -> tuple[bool, str]:
    """Whether ``higher`` computes the meta-gradient on this peft model, and a note saying how (or why not)."""
    try:
        import higher.patch
    except ImportError as e:
        return False, f"not installed ({e}); pip install higher -c constraints.txt"
    version = importlib.metadata.version("higher")
    run = lambda: higher_gradient(model, params, batches, lr)  # noqa: E731
    stock_error = getattr(higher.patch._MonkeyPatchBase, "_hairtrigger_shim", None)  # set once shimmed
    if stock_error is None:
        stock_error = _error_of(run)
        if stock_error is None:
            return True, f"higher {version} runs on the peft model as shipped"
        if not shim or "method resolution order" not in stock_error:
            return False, f"higher {version} fails on the peft model: {stock_error}"
        _shim_higher_mro(stock_error)
    shim_error = _error_of(run)
    if shim_error is not None:
        return False, f"higher {version} fails on the peft model: {stock_error}; with the MRO shim: {shim_error}"
    return True, (
        f"higher {version} fails on the peft model as shipped ({stock_error}); it is timed with "
        "the MRO shim of this script (--no-higher-shim to skip)"
    )


def higher_step(model, params, batches, opt, lr: float) -> Step:
    def step() -> None:
        for p, g in zip(params.values(), higher_gradient(model, params, batches, lr)):
            p.grad = g
        opt.step()

    return step


# ---------------------------------------------------------------------------- measuring


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def peak_memory(step: Step, device: str) -> int:
    """Peak bytes of tensors allocated during ``step`` above what was live before it."""
    if device.startswith("cuda"):
        _sync(device)
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        _sync(device)
        return torch.cuda.max_memory_allocated() - before
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events = sorted(
        (e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"), key=lambda e: e.start_ns()
    )
    live = peak = 0
    for e in events:  # +bytes on allocation, −bytes on free, in time order
        live += e.nbytes()
        peak = max(peak, live)
    return peak


def time_rounds(steps: dict[str, Step], device: str, warmup: int, repeats: int) -> dict[str, list[float]]:
    """Seconds per call of every step, ``repeats`` rounds (order rotated each round)."""
    names = list(steps)
    for _ in range(warmup):
        for name in names:
            steps[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            _sync(device)
            t0 = time.perf_counter()
            steps[name]()
            _sync(device)
            times[name].append(time.perf_counter() - t0)
    return times


def _rel(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    fa, fb = torch.cat([x.flatten() for x in a]), torch.cat([x.flatten() for x in b])
    return float((fa - fb).norm() / fb.norm())


def run_size(label: str, tok, args) -> tuple[list[dict], str | None]:
    model, params, batches = build(label, tok, args)
    n_layer, n_embd = model.config.num_hidden_layers, model.config.hidden_size
    theta = list(params.values())
    opt = torch.optim.Adam(theta, lr=1e-6)  # tiny rate: θ barely moves over the repeats
    inner, now, after = closures(model, batches)

    # agreement with the naive meta-gradient of the whole batches, at the same θ, before anything is timed
    ref = list(meta_gradient(params, inner, now, after, args.lr, method="naive")[0].values())
    parts = closures(model, batches, args.chunks)
    errors = {"naive": 0.0}
    for m in FAST:
        errors[m] = _rel(list(meta_gradient(params, *parts, args.lr, method=m)[0].values()), ref)

    # plain: the whole batch; the fast methods (and plain_parts, for comparison) in --chunks micro-batches
    steps: dict[str, Step] = {"plain": plain_step(model, params, batches, opt)}
    if args.chunks > 1:
        steps["plain_parts"] = plain_step(model, params, batches, opt, args.chunks)
    for m in METHODS:
        if m in args.methods:
            steps[m] = meta_step(model, params, batches, opt, args.lr, m, chunks=1 if m == "naive" else args.chunks)
    if "fomaml" in args.methods:
        steps["fomaml"] = meta_step(model, params, batches, opt, args.lr, "hvp", first_order=True, chunks=args.chunks)
    higher_note = None
    if "higher" in args.methods:
        works, higher_note = try_higher(model, params, batches, args.lr, args.higher_shim)
        if works:
            steps["higher"] = higher_step(model, params, batches, opt, args.lr)
            errors["higher"] = _rel(higher_gradient(model, params, batches, args.lr), ref)

    times = time_rounds(steps, args.device, args.warmup, args.repeats)
    memory = {name: peak_memory(step, args.device) for name, step in steps.items()} if args.memory else {}

    rows = []
    for name in steps:
        ratios = [t / p for t, p in zip(times[name], times["plain"])]
        rows.append(
            {
                "size": label,
                "n_layer": n_layer,
                "n_embd": n_embd,
                "n_params": sum(p.numel() for p in model.parameters()),
                "n_theta": sum(p.numel() for p in theta),
                "variant": name,
                "seconds": statistics.median(times[name]),
                "seconds_all": times[name],
                "time_ratio": statistics.median(ratios),
                "peak_bytes": memory.get(name),
                "memory_ratio": memory[name] / memory["plain"] if memory else None,
                "rel_err_vs_naive": errors.get(name),
            }
        )
    return rows, higher_note


# ---------------------------------------------------------------------------- report


def _verdict(ratio: float | None, target: float) -> str:
    return "" if ratio is None else ("PASS" if ratio <= target else "MISS")


def print_tables(rows: list[dict], dtype: str) -> None:
    sizes = list(dict.fromkeys(r["size"] for r in rows))
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    by = {(r["size"], r["variant"]): r for r in rows}
    meta = [v for v in variants if v != "plain"]

    def table(title: str, key: str, ratio: str, fmt: Callable[[float], str], unit: str) -> None:
        print(f"\n{title}")
        head = f"{'size':>6} {'θ':>8} {'plain ' + unit:>12}" + "".join(f" {v:>16}" for v in meta)
        print(head)
        print("-" * len(head))
        for s in sizes:
            plain = by[(s, "plain")]
            line = f"{s:>6} {plain['n_theta']:>8} {fmt(plain[key]):>12}"
            for v in meta:
                r = by.get((s, v))
                line += f" {fmt(r[key]) + ' ' + format(r[ratio], '5.2f') + '×':>16}" if r else f" {'-':>16}"
            print(line)

    table(
        "time per step (median), and × plain (median of same-round ratios)",
        "seconds",
        "time_ratio",
        lambda x: f"{x:.3f}s",
        "s",
    )
    if rows[0]["peak_bytes"] is not None:
        table("peak memory per step, and × plain", "peak_bytes", "memory_ratio", lambda x: f"{x / 2**20:.1f}MB", "MB")

    print(f"\nagreement with naive (relative error of the meta-gradient, {dtype}):")
    for s in sizes:
        errs = [
            f"{v} {by[(s, v)]['rel_err_vs_naive']:.1e}"
            for v in meta
            if (s, v) in by and by[(s, v)]["rel_err_vs_naive"] is not None and v != "naive"
        ]
        print(f"  {s}: " + ", ".join(errs))

    print(f"\ntargets: time ≤ {TARGET_TIME}× and peak memory ≤ {TARGET_MEMORY}× a plain step")
    for v in [v for v in variants if v in METHODS]:
        for s in sizes:
            r = by.get((s, v))
            if r is None:
                continue
            verdicts = [_verdict(r["time_ratio"], TARGET_TIME)]
            if r["memory_ratio"] is None:
                mem = "memory not measured"
            else:
                verdicts.append(_verdict(r["memory_ratio"], TARGET_MEMORY))
                mem = f"memory {r['memory_ratio']:.2f}× {verdicts[-1]}"
            overall = "MISS" if "MISS" in verdicts else ("PASS" if len(verdicts) == 2 else "time only: PASS")
            print(f"  {v:>6} {s:>6}: time {r['time_ratio']:.2f}× {verdicts[0]}, {mem}  -> {overall}")


def write_out(path: Path, rows: list[dict], info: dict) -> None:
    """``.json``: the run's settings and machine (``info``) with every row; ``.csv``: the table, and
    ``info`` beside it as ``<stem>_info.json`` (what ``results/benchmarks/`` holds for the paper)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".csv":
        fields = [k for k in rows[0] if k != "seconds_all"]
        with path.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
            w.writeheader()
            w.writerows(rows)
        info_path = path.with_name(f"{path.stem}_info.json")
        info_path.write_text(json.dumps(info, indent=1) + "\n")
        print(f"\nwrote {path} and {info_path}")
    else:
        path.write_text(json.dumps({"info": info, "rows": rows}, indent=1))
        print(f"\nwrote {path}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--sizes",
        help=f"comma-separated n_layer x n_embd (tiny GPT-2) or {', '.join(SHAPES)} (default 2x64,2x128,4x256)",
    )
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--batch", type=int, help="sequences per batch, every batch of the step (default 32)")
    ap.add_argument("--seq", type=int, help="tokens per sequence (default 64)")
    ap.add_argument("--rank", type=int, default=8, help="LoRA rank")
    ap.add_argument(
        "--chunks",
        type=int,
        default=4,
        help="micro-batches per batch for the fast methods, FOMAML and plain_parts (1: whole batches)",
    )
    ap.add_argument("--lr", type=float, default=1e-4, help="the victim's SGD rate η")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 is steadiest beside other jobs)")
    ap.add_argument("--repeats", type=int, help="timed rounds (default 7)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument(
        "--methods",
        default=",".join([*METHODS, "fomaml", "higher"]),
        help=f"variants besides plain: any of {', '.join([*METHODS, 'fomaml', 'higher'])}",
    )
    ap.add_argument("--no-memory", dest="memory", action="store_false", help="skip the peak-memory pass")
    ap.add_argument(
        "--no-higher-shim",
        dest="higher_shim",
        action="store_false",
        help="do not patch higher's MRO clash with peft (higher is then reported as failing)",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, help="write the results (.json, or .csv for the table)")
    ap.add_argument(
        "--quick", action="store_true", help="smoke run: defaults become size 1x32, batch 4x32 tokens, 2 rounds"
    )
    args = ap.parse_args(argv)
    defaults = (
        dict(sizes="1x32", batch=4, seq=32, repeats=2)
        if args.quick
        else dict(sizes="2x64,2x128,4x256", batch=32, seq=64, repeats=7)
    )
    for key, value in defaults.items():  # what is given explicitly wins, also with --quick
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = set(args.methods) - {*METHODS, "fomaml", "higher"}
    if unknown:
        ap.error(f"unknown --methods {sorted(unknown)}")
    return args


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    load = os.getloadavg()
    info = {
        "command": "python -m benchmarks.meta_step " + " ".join(sys.argv[1:] if argv is None else argv),
        "targets": {"time": TARGET_TIME, "memory": TARGET_MEMORY},
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "device": args.device,
        "dtype": args.dtype,
        "batch": args.batch,
        "seq": args.seq,
        "chunks": args.chunks,
        "rank": args.rank,
        "lr": args.lr,
        "repeats": args.repeats,
        "warmup": args.warmup,
        "cpus": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "loadavg_start": load,
    }
    print(
        f"meta step vs plain step: torch {torch.__version__}, {args.device}, {args.dtype}, "
        f"{torch.get_num_threads()} thread(s), batch {args.batch}×{args.seq} tokens in {args.chunks} part(s), "
        f"LoRA r={args.rank}, "
        f"η={args.lr}, {args.repeats} rounds after {args.warmup} warm-up; "
        f"load average {load[0]:.2f} on {os.cpu_count()} CPUs"
    )
    if load[0] > 0.5 * (os.cpu_count() or 1):
        print("note: the machine is busy; seconds are inflated, same-round ratios less so (1 thread is steadiest)")

    rng = random.Random(args.seed)
    tok = train_tokenizer([_sentence(rng, 40) for _ in range(200)], vocab_size=512)
    rows: list[dict] = []
    notes = set()
    for label in args.sizes.split(","):
        t0 = time.perf_counter()
        size_rows, note = run_size(label.strip(), tok, args)
        rows += size_rows
        if note:
            notes.add(note)
        print(f"  {label}: measured in {time.perf_counter() - t0:.0f}s", flush=True)

    print_tables(rows, args.dtype)
    for note in sorted(notes):
        print(f"\nhigher: {note}")
    info["loadavg_end"] = os.getloadavg()
    print(f"\nload average at the end {info['loadavg_end'][0]:.2f}")
    if args.out:
        write_out(args.out, rows, info)
    return rows


if __name__ == "__main__":
    main()
