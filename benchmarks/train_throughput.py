"""Training throughput and memory at long sequence lengths: longreach's trainer step against plain Hugging Face.

For each model shape, sequence length, layout (1 GPU, context parallel, FSDP2 data parallel) and variant it
times full optimizer steps in one process on one card and reports tokens/s, MFU, peak memory and whether it
fit; `--longest` searches the longest sequence that trains. Formulas and variants: benchmarks/README.md.

    # CPU, toy size (what tests/test_bench_train_throughput.py runs)
    python benchmarks/train_throughput.py --device cpu --shapes tiny --lengths 64,128 --out /tmp/bench.json
    # one H100 (one call < 9 minutes: --budget-s bounds the whole run)
    python benchmarks/train_throughput.py --shapes smollm2-135m --lengths 16k,32k,64k,128k \\
        --variants "hf;ours;ours:ac=mlp" --budget-s 480 --out $OUT/smollm2.json
    # 2 GPUs: the script starts torchrun itself for every layout that needs several processes
    python benchmarks/train_throughput.py --shapes llama3.2-1b --lengths 128k --layouts "1;cp2" ...

Variants: "hf" = model(input_ids, labels=input_ids), full logits, default attention, gradient checkpointing,
torch AdamW. "ours[:k=v,...]" = the training loop's step (train/loop.py: CausalLMLoss, forward_backward,
clip, fused AdamW, fp32 master weights + bf16 autocast) with options ac=off|full|attn|mlp|every:K (activation
checkpointing, default full; attn = keep attention outputs, recompute the rest), compile=0|1, loss=chunked|liger, chunk=N (loss chunk tokens, 4096),
sdpa=auto|cudnn|flash|efficient|math, attn=sdpa|flex, docs=N (packed documents of mean length N with a
document mask; needs attn=flex), offload=0|1 (layer inputs in pinned CPU memory; with ac=full), seqs=N
(sequences per step, default: one per data-parallel rank), det=0|1 (torch's deterministic algorithms for the whole
job, as a training config's `deterministic: true`: its cost, and whether two jobs repeat each other's losses, which
every result lists).

A parent process (no torch) hands jobs one at a time to a worker process (or a torchrun group) through files
in a queue folder, so an out-of-memory error, a CUDA fault, a hang or the time budget ends one configuration,
never the table: the parent records it and starts a fresh worker for the rest.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve()
H100_PEAK_TFLOPS = 989.0  # dense bf16, H100 SXM datasheet: the MFU denominator


# ============================================================================ parent: plan, run, report

def parse_lengths(text: str) -> list[int]:
    return [int(float(x[:-1]) * 1024) if x.lower().endswith("k") else int(x) for x in text.split(",") if x]


def parse_layout(text: str) -> tuple[int, int]:
    """"1" -> (dp 1, cp 1); "cp2" -> (1, 2); "dp2" -> (2, 1); "dp2cp2" -> (2, 2)."""
    if text == "1":
        return 1, 1
    m = re.fullmatch(r"(?:dp(\d+))?(?:cp(\d+))?", text)
    if not m or not (m.group(1) or m.group(2)):
        raise SystemExit(f"bad layout {text!r}: use 1, cpN, dpN or dpNcpM")
    return int(m.group(1) or 1), int(m.group(2) or 1)


def fmt_len(n: int) -> str:
    return f"{n // 1024}K" if n % 1024 == 0 else str(n)


class Runner:
    """Runs jobs in a worker (python or torchrun) that outlives jobs; restarts it after a crash or OOM."""

    def __init__(self, args, queue: Path, log: Path):
        self.args, self.queue, self.log = args, queue, log
        self.proc, self.nproc, self.n = None, 0, 0
        self.deadline = time.time() + args.budget_s

    def remaining(self) -> float:
        return self.deadline - time.time()

    def _start(self, nproc: int) -> None:
        self.stop()
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
        env.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")  # long sequences fragment memory
        # det=1 jobs need cuBLAS's fixed workspace, and torch reads the setting once, at a worker's first matmul,
        # which may be a default job's: every worker starts with it (on Hopper the default workspace is as large)
        env.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        src = str(HERE.parents[1] / "src")
        env["PYTHONPATH"] = os.pathsep.join([src, env["PYTHONPATH"]]) if env.get("PYTHONPATH") else src
        cmd = [sys.executable, str(HERE), "--worker", str(self.queue), "--first-job", str(self.n)]
        if nproc > 1:
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
                   *cmd[1:]]
        logf = self.log.open("a")
        logf.write(f"\n===== worker for jobs from {self.n}: {' '.join(cmd)}\n")
        logf.flush()
        self.proc = subprocess.Popen(cmd, env=env, stdout=logf, stderr=subprocess.STDOUT, start_new_session=True)
        self.nproc = nproc

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            (self.queue / f"job-{self.n:05d}.json").write_text(json.dumps({"stop": True}))
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._kill()
        self.proc = None

    def _kill(self) -> None:
        """Stop the worker: SIGTERM first (torchrun then stops its ranks), then SIGKILL the process group and
        every rank (torchrun starts ranks in sessions of their own; each wrote its pid into the queue)."""
        import signal
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=15)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        for f in self.queue.glob("pid-*"):
            pid = int(f.name[4:])
            try:  # only a live rank of this run: its command line names this queue folder
                if str(self.queue).encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                    os.kill(pid, signal.SIGKILL)
            except (OSError, ProcessLookupError):
                pass
            f.unlink(missing_ok=True)
        self.proc.wait()

    def run(self, job: dict) -> dict:
        nproc = job["dp"] * job["cp"]
        if self.proc is None or self.proc.poll() is not None or self.nproc != nproc:
            self._start(nproc)
        n, self.n = self.n, self.n + 1
        tmp = self.queue / f"job-{n:05d}.tmp"
        tmp.write_text(json.dumps(job))
        tmp.rename(self.queue / f"job-{n:05d}.json")
        res_path, t0 = self.queue / f"res-{n:05d}.json", time.time()
        while True:
            if res_path.exists():
                res = json.loads(res_path.read_text())
                break
            if self.proc.poll() is not None:  # worker died: OOM on some rank (distributed) or a crash
                time.sleep(0.5)
                if res_path.exists():
                    continue
                errs = [json.loads(p.read_text()) for p in sorted(self.queue.glob(f"err-{n:05d}-*.json"))]
                if any(e["status"] == "oom" for e in errs):  # peers of an OOM rank may fail otherwise
                    res = {"status": "oom", "fit": False, "error": errs[0]["error"]}
                elif errs:  # a Python error on some rank (the others were stopped by torchrun)
                    res = {"status": "error", "fit": None, "error": errs[0]["error"]}
                else:
                    res = {"status": "crashed", "fit": None, "error": self.log.read_text()[-1500:]}
                self._kill()  # torchrun has stopped the other ranks; make sure
                self.proc = None
                break
            if time.time() > min(self.deadline - 2, t0 + self.args.job_timeout_s):
                self._kill()
                self.proc = None
                res = {"status": "timeout", "fit": None,
                       "error": f"stopped after {time.time() - t0:.0f}s (--budget-s / --job-timeout-s)"}
                break
            time.sleep(0.05)
        res["wall_s"] = round(time.time() - t0, 1)
        return {**job, **res}


def plan(args) -> list[dict]:
    jobs = []
    for shape in args.shapes.split(","):
        for seq in parse_lengths(args.lengths):
            for layout in args.layouts.split(";"):
                dp, cp = parse_layout(layout)
                for variant in args.variants.split(";"):
                    if variant.startswith("hf") and dp * cp > 1:
                        continue  # the plain Hugging Face baseline is a one-GPU script
                    jobs.append(job_for(args, shape, seq, layout, variant, "table"))
    return jobs


def job_for(args, shape: str, seq: int, layout: str, variant: str, kind: str) -> dict:
    dp, cp = parse_layout(layout)
    probe = kind == "probe"
    return {"shape": shape, "layers": args.layers, "seq": seq, "layout": layout, "dp": dp, "cp": cp,
            "variant": variant, "kind": kind, "device": args.device, "seed": args.seed,
            "warmup": 0 if probe else args.warmup, "steps": 1 if probe else args.steps,
            "max_timed_s": args.max_timed_s, "peak_tflops": args.peak_tflops,
            "profile": not probe and args.profile}  # probes (the longest search) are never profiled


def memory_guess(fits: list[dict], grain: int, margin: float = 0.92) -> int | None:
    """The longest length whose peak memory, extrapolated linearly from the two longest fits, stays under
    `margin` of the card's memory (rounded down to the grain). With SDPA, chunked loss and checkpointing every
    activation grows linearly in the length, so two points predict the limit; None without two measured fits."""
    pts = [(r["seq"], r["peak_mem_gib"], r.get("device_mem_gib")) for r in fits
           if r.get("peak_mem_gib") and r.get("device_mem_gib")]
    if len(pts) < 2 or pts[-1][0] == pts[-2][0]:
        return None
    (t1, m1, _), (t2, m2, cap) = pts[-2], pts[-1]
    slope = (m2 - m1) / (t2 - t1)
    if slope <= 0:
        return None
    return int((margin * cap - m2) / slope + t2) // grain * grain


def search_longest(runner: Runner, args, shape: str, layout: str, variant: str, known: list[dict]) -> dict:
    """Grow from the longest known fit until a step fails, then bisect in --longest-step tokens; stop early when
    the next probe would not finish inside the time budget. Growth goes to the length that the peak memory of
    the two longest fits predicts (memory_guess), else x --longest-growth: near the limit that takes 2-3 probes
    where doubling and bisecting take 5-8, each a long step."""
    grain = args.longest_step
    same = [r for r in known if (r["shape"], r["layers"], r["layout"], r["variant"])
            == (shape, args.layers, layout, variant)]
    fits = sorted((r for r in same if r.get("fit")), key=lambda r: r["seq"])
    lo, hi = (fits[-1]["seq"] if fits else 0), min((r["seq"] for r in same if r.get("fit") is False), default=None)
    # last: (length, step seconds) of the longest fitting run, to predict the next probe's time
    last = (lo, fits[-1]["step_s"]) if fits else None
    probes, note = [], ""
    while True:
        if hi is None:
            guess = memory_guess(fits, grain)
            if guess is not None and guess <= lo:  # past the safe margin already: aim at the whole card
                guess = memory_guess(fits, grain, margin=1.0)
            if guess is not None:
                seq = min(max(guess, lo + grain), args.longest_max)
            else:
                seq = max(int(lo * args.longest_growth) // grain * grain, lo + grain, args.longest_start)
            if seq > args.longest_max or seq <= lo:
                note = f"not tried above --longest-max {fmt_len(args.longest_max)}"
                break
        else:
            if hi - lo <= grain:
                break
            seq = (lo + hi) // 2 // grain * grain
            if seq <= lo:
                break
        if last is not None:  # attention grows with the square of the length; ~15 s to build the model
            predicted = last[1] * (seq / last[0]) ** 2 + 15
            if predicted > runner.remaining() - 5:
                note = f"stopped: a {fmt_len(seq)} probe would take ~{predicted:.0f}s, past the time budget"
                break
        res = runner.run(job_for(args, shape, seq, layout, variant, "probe"))
        probes.append(res)
        print(_line(res), file=sys.stderr)
        if res.get("fit"):
            lo = seq
            last = (seq, res["step_s"])
            fits.append(res)
        elif res.get("fit") is False:
            hi = seq
        else:
            note = f"{res['status']} at {fmt_len(seq)}"
            break
    return {"shape": shape, "layers": args.layers, "layout": layout, "variant": variant, "longest_fit": lo or None,
            "first_fail": hi, "note": note, "probes": probes}


def _line(r: dict) -> str:
    if r.get("status") == "ok":
        return (f"{r['shape']} {r['layout']} {fmt_len(r['seq'])} {r['variant']}: {r['tokens_per_s']:.0f} tok/s, "
                f"MFU {100 * r['mfu']:.1f}%, peak {r.get('peak_mem_gib') or 0:.1f} GiB, {r['wall_s']}s")
    return f"{r['shape']} {r['layout']} {fmt_len(r['seq'])} {r['variant']}: {r['status']} {r.get('error', '')[:200]}"


def table(results: list[dict], longest: list[dict]) -> str:
    head = "| shape | layout | seq | variant | fit | tok/s | tok/s/GPU | step s | MFU % | TFLOP/s/GPU | peak GiB | first loss |"
    rows = [head, "|---" * (head.count("|") - 1) + "|"]
    for r in results:
        shape = r["shape"] + (f" ({r['n_layers']} layers)" if r.get("n_layers") else "")
        if r["status"] == "ok":
            rows.append(f"| {shape} | {r['layout']} | {fmt_len(r['seq'])} | {r['variant']} | yes "
                        f"| {r['tokens_per_s']:.0f} | {r['tokens_per_s_per_gpu']:.0f} | {r['step_s']:.3f} "
                        f"| {100 * r['mfu']:.1f} | {r['tflops_per_gpu']:.0f} | {_gib(r)} | {r['loss_first']:.4f} |")
        else:
            fit = {"oom": "no (OOM)"}.get(r["status"], r["status"])
            rows.append(f"| {shape} | {r['layout']} | {fmt_len(r['seq'])} | {r['variant']} | {fit} "
                        "| | | | | | | |")
    out = "\n".join(rows)
    if longest:
        out += "\n\n| shape | layout | variant | longest that trains | first that failed | note |\n|---|---|---|---|---|---|\n"
        out += "\n".join(f"| {x['shape']} | {x['layout']} | {x['variant']} | "
                         f"{fmt_len(x['longest_fit']) if x['longest_fit'] else 'none'} | "
                         f"{fmt_len(x['first_fail']) if x['first_fail'] else '-'} | {x['note']} |" for x in longest)
    return out


def _gib(r: dict) -> str:
    return f"{r['peak_mem_gib']:.1f}" if r.get("peak_mem_gib") is not None else "-"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default="smollm2-135m", help="comma list: smollm2-135m, llama3.2-1b, llama3-8b, tiny")
    ap.add_argument("--layers", type=int, default=None, help="decoder layers (default: the shape's; e.g. 4 for 8B)")
    ap.add_argument("--lengths", default="16k,32k,64k,128k", help="comma list of tokens per sequence (k = 1024)")
    ap.add_argument("--layouts", default="1", help="';' list: 1, cpN, dpN, dpNcpM (N*M processes)")
    ap.add_argument("--variants", default="hf;ours", help="';' list of variants (see the module docstring)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps before timing")
    ap.add_argument("--steps", type=int, default=3, help="timed steps (median), at least 2 unless over --max-timed-s")
    ap.add_argument("--max-timed-s", type=float, default=20.0, help="stop timing after this much (>= 2 steps)")
    ap.add_argument("--longest", action="store_true", help="search the longest sequence that trains")
    ap.add_argument("--longest-variant", default="ours", help="';' list of variants to search with")
    ap.add_argument("--longest-layouts", default=None, help="';' list of layouts to search (default: --layouts)")
    ap.add_argument("--longest-start", type=lambda s: parse_lengths(s)[0], default=131072)
    ap.add_argument("--longest-max", type=lambda s: parse_lengths(s)[0], default=1048576)
    ap.add_argument("--longest-step", type=lambda s: parse_lengths(s)[0], default=8192, help="bisection grain")
    ap.add_argument("--longest-growth", type=float, default=2.0, help="growth factor while every probe fits")
    ap.add_argument("--budget-s", type=float, default=500.0, help="wall-clock budget of the whole run")
    ap.add_argument("--job-timeout-s", type=float, default=300.0, help="stop one configuration after this long")
    ap.add_argument("--append", action="store_true", help="add to the results already in --out")
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--peak-tflops", type=float, default=H100_PEAK_TFLOPS, help="per-device peak for MFU")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--profile", action="store_true",
                    help="one more step of each table row under torch.profiler: kernel time by group, top kernels")
    ap.add_argument("--out", default="bench_train.json", help="JSON results (rewritten after every job)")
    ap.add_argument("--dry-run", action="store_true", help="print the planned jobs and exit")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--first-job", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        serve(Path(args.worker), args.first_job)
        return
    jobs = plan(args)
    if args.dry_run:
        print("\n".join(json.dumps(j) for j in jobs))
        return
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    queue = Path(tempfile.mkdtemp(prefix="bench-queue-"))
    runner = Runner(args, queue, out.with_suffix(".log"))
    report = {"meta": {"argv": [], "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                       "peak_tflops": args.peak_tflops}, "results": [], "longest": []}
    if args.append and out.exists():
        report = json.loads(out.read_text())
    report["meta"]["argv"].append(sys.argv[1:])

    def save():
        out.write_text(json.dumps(report, indent=1))

    try:
        for job in jobs:
            if runner.remaining() < 5:
                res = {**job, "status": "skipped", "fit": None, "error": "time budget (--budget-s) spent"}
            else:
                res = runner.run(job)
            report["meta"].update(res.pop("env", {}) or {})
            report["results"].append(res)
            print(_line(res), file=sys.stderr)
            save()
        if args.longest:
            for shape in args.shapes.split(","):
                for layout in (args.longest_layouts or args.layouts).split(";"):
                    for variant in args.longest_variant.split(";"):
                        found = search_longest(runner, args, shape, layout, variant, report["results"])
                        for p in found["probes"]:
                            report["meta"].update(p.pop("env", {}) or {})
                        report["longest"].append(found)
                        save()
    finally:
        runner.stop()
        shutil.rmtree(queue, ignore_errors=True)
    report["meta"]["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    save()
    print(table(report["results"], report["longest"]))
    prof = profile_table(report["results"])
    if prof:
        print("\nWhere the profiled step's time went (" + ("device kernel time" if args.device == "cuda"
                                                          else "CPU operator self time") + "):\n" + prof)


# ============================================================================ worker: build, time, measure

def parse_variant(spec: str) -> dict:
    """"hf" or "ours[:k=v,...]" -> options with defaults (see the module docstring)."""
    name, _, rest = spec.partition(":")
    if name not in ("hf", "ours"):
        raise ValueError(f"unknown variant {spec!r}: hf[:...] or ours[:...]")
    opts = {"name": name, "ac": "full", "compile": 0, "loss": "chunked", "chunk": 4096, "sdpa": "auto",
            "attn": "sdpa", "docs": 0, "offload": 0, "seqs": 0, "det": 0}
    for kv in filter(None, rest.split(",")):
        k, _, v = kv.partition("=")
        if k not in opts or k == "name":
            raise ValueError(f"unknown option {k!r} in variant {spec!r}; known: {sorted(opts)[1:]}")
        opts[k] = v if k in ("ac", "loss", "sdpa", "attn") else int(v)
    if opts["docs"] and opts["attn"] != "flex":
        raise ValueError("docs=N (document mask) needs attn=flex: sdpa would build a dense T x T mask")
    if opts["det"] and opts["attn"] == "fa4":
        raise ValueError("det=1 with attn=fa4: its backward is not run in a deterministic mode here")
    return opts


def model_config(job: dict):
    from longreach.model.tiny import shape_config, tiny_llama_config

    if job["shape"] == "tiny":
        return tiny_llama_config(256, hidden=64, layers=job["layers"] or 2, heads=4, kv_heads=2,
                                 max_position=max(job["seq"], 2048))
    return shape_config(job["shape"], layers=job["layers"], max_position=max(job["seq"], 8192))


def doc_lengths(seq: int, mean: int, seed: int) -> list[int]:
    """Packed documents: lengths drawn from an exponential of the given mean (>= 128 tokens), summing to seq."""
    import random
    rng, out = random.Random(seed), []
    while sum(out) < seq:
        out.append(max(128, int(rng.expovariate(1 / mean))))
    out[-1] -= sum(out) - seq
    return [x for x in out if x > 0]


def flop_parts(c, seq: int, seqs: int, opts: dict, docs: list[int]) -> dict[str, float]:
    """FLOPs of one optimizer step by kind (README.md: the formula). `matmul` and `attention` as MFU counts them
    (backward twice the forward); `matmul_recomputed` and `attention_recomputed`: forwards run again by
    activation checkpointing, and our chunked loss's output projection."""
    L, H, hd = c.num_hidden_layers, c.hidden_size, c.hidden_size // c.num_attention_heads
    hd = getattr(c, "head_dim", None) or hd
    nh, nkv, inter, vocab = c.num_attention_heads, c.num_key_value_heads, c.intermediate_size, c.vocab_size
    attn_proj = H * nh * hd * 2 + H * nkv * hd * 2  # q, o; k, v
    mlp = 3 * H * inter
    matmul_params = L * (attn_proj + mlp) + vocab * H  # the output layer counts once (embedding lookup is free)
    tokens = seq * seqs
    pairs = sum(x * x / 2 for x in docs) if docs else seq * seq / 2  # causal (query, key) pairs per sequence
    attn = 12 * L * nh * hd * pairs * seqs  # QK^T and AV: 4*hd per pair forward; backward 2x forward
    ac = opts["ac"]
    if ac == "full":
        frac = 1.0
    elif ac.startswith("every:"):
        k = int(ac.split(":")[1])
        frac = len(range(0, L, k)) / L
    else:
        frac = 0.0
    mm_again = frac * 2 * L * (attn_proj + mlp) * tokens
    if ac == "attn":  # every matmul again, the attention kernel not
        mm_again += 2 * L * (attn_proj + mlp) * tokens
    if ac == "mlp":
        mm_again += 2 * L * mlp * tokens
    if opts["name"] == "ours" and opts["loss"] == "chunked":
        mm_again += 2 * vocab * H * tokens  # each loss chunk's logits are recomputed in backward
    return {"matmul": 6 * matmul_params * tokens, "attention": attn,
            "matmul_recomputed": mm_again, "attention_recomputed": frac * attn / 3}


def flop_totals(f: dict[str, float]) -> tuple[float, float]:
    """(model FLOPs, hardware FLOPs incl. recomputation) from flop_parts."""
    model = f["matmul"] + f["attention"]
    return model, model + f["matmul_recomputed"] + f["attention_recomputed"]


def kernel_tflops(parts: dict[str, float], groups_ms: dict[str, float], n_gpu: int) -> dict[str, float]:
    """TFLOP/s per GPU that the profiled attention and matmul kernels reached, counting the work they do:
    every matmul including the recomputed ones, and for attention the forward (4*d per causal pair) plus a
    backward of 2.5x the forward (flash-style kernels compute QK^T again and four more products: dV, dP, dQ, dK),
    which is how RECIPE.md's ~440 TFLOP/s for cuDNN at head dim 64 is counted. MFU's 2x backward stays as it is."""
    work = {"attention": parts["attention"] / 3 * 3.5 + parts["attention_recomputed"],
            "matmul": parts["matmul"] + parts["matmul_recomputed"]}
    return {g: w / n_gpu / (groups_ms[g] / 1000) / 1e12 for g, w in work.items() if groups_ms.get(g, 0) > 0}


def _oom(e: BaseException) -> bool:
    import torch
    text = str(e)
    return isinstance(e, torch.OutOfMemoryError) or "out of memory" in text or "ALLOC_FAILED" in text


def run_job(job: dict) -> dict:
    from longreach.train.loop import deterministic_mode

    with deterministic_mode(bool(parse_variant(job["variant"])["det"])):
        return _run_job(job)


def _run_job(job: dict) -> dict:
    import torch
    from transformers import LlamaForCausalLM

    from longreach.train import attention, context_parallel, parallel
    from longreach.train.config import TrainConfig
    from longreach.train.loop import CausalLMLoss, _precision, forward_backward, param_groups
    from longreach.train.loss import IGNORE, shift_labels

    opts = parse_variant(job["variant"])
    seq = job["seq"]
    d = parallel.setup(job["cp"])
    if job["device"] == "cpu":
        d.device = torch.device("cpu")
    parallel.check_seq_len(seq, d.cp)
    if opts["attn"] == "fa4" and d.cp > 1:
        raise ValueError("attn=fa4 does not run with context parallelism (that path has its own attention)")
    if opts["offload"] and d.world > 1:
        raise ValueError("offload=1 is for one GPU (reentrant checkpointing under FSDP2 is not tested)")
    cuda = d.device.type == "cuda"
    seqs = opts["seqs"] or d.dp
    if seqs % d.dp:
        raise ValueError(f"seqs={seqs} must divide among {d.dp} data-parallel ranks")
    # Train-loop defaults (precision, clipping, AdamW betas and decay) from the loop's own config class.
    cfg = TrainConfig(loss_chunk_tokens=opts["chunk"], attn=opts["attn"])
    autocast = _precision(cfg, d.device)
    gen = torch.Generator().manual_seed(job["seed"] + 1)
    config = model_config(job)
    ids = torch.randint(0, config.vocab_size, (seqs, seq), generator=gen)
    docs = doc_lengths(seq, opts["docs"], job["seed"]) if opts["docs"] else []
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    torch.manual_seed(job["seed"])
    with torch.device(d.device):
        lm = LlamaForCausalLM(config)  # fp32 master weights, the same on every rank and every run
    lm.config.use_cache = False
    lm.train()
    n_params = sum(p.numel() for p in lm.parameters())
    mine = ids[d.dp_rank::d.dp]  # this data-parallel rank's sequences, one micro-batch each
    if opts["name"] == "hf":
        if opts["ac"] == "full":
            lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        opt = torch.optim.AdamW(lm.parameters(), lr=cfg.lr)

        def step() -> float:
            total = 0.0
            for row in mine:
                x = row[None].to(d.device)
                with autocast():
                    out = lm(input_ids=x, labels=x)
                (out.loss / len(mine)).backward()
                total += out.loss.item() / len(mine)
            torch.nn.utils.clip_grad_norm_(lm.parameters(), cfg.grad_clip)
            opt.step()
            opt.zero_grad(set_to_none=True)
            return total
    else:
        attention.register()
        lm.config._attn_implementation = {"flex": attention.FLEX_NAME, "fa4": attention.FA4_NAME}.get(opts["attn"],
                                                                                                    opts["attn"])
        attention.prepare(lm.config._attn_implementation)
        parallel.configure_layers(lm, checkpointing=opts["ac"], compile=bool(opts["compile"]),
                                  offload=bool(opts["offload"]))
        if d.cp > 1:
            context_parallel.enable(lm, d.cp_group)
        model = parallel.shard_model(CausalLMLoss(lm, opts["chunk"], loss_impl=opts["loss"]), d)
        opt = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2),
                                fused=cuda)
        micro = []
        for row in mine:
            m = {"input_ids": row[None], "labels": shift_labels(row[None])}
            if docs:
                m["position_ids"] = torch.cat([torch.arange(x) for x in docs])[None]
            micro.append(context_parallel.shard_batch(m, d.cp, d.cp_rank))

        def step() -> float:  # the body of train/loop.py's step, with the same functions
            n_tokens = torch.tensor(float(sum(int((m["labels"] != IGNORE).sum()) for m in micro)), device=d.device)
            n_tokens = parallel.all_reduce_sum(n_tokens, d)
            loss_sum = forward_backward(model, micro, n_tokens, autocast, d)
            loss_val = parallel.all_reduce_sum(loss_sum, d).item() / n_tokens.item()
            gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            float(gnorm.full_tensor() if hasattr(gnorm, "full_tensor") else gnorm)
            opt.step()
            opt.zero_grad(set_to_none=True)
            return loss_val

    warmup = job["warmup"] if not (opts["compile"] and job["kind"] == "table") else max(job["warmup"], 2)
    times, losses = [], []
    with attention.sdpa_backend(opts["sdpa"]):
        for i in range(warmup + job["steps"]):
            t0 = time.perf_counter()
            if cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
            losses.append(step())
            if cuda:
                end.record()
                end.synchronize()
                dt = start.elapsed_time(end) / 1000
            else:
                dt = time.perf_counter() - t0
            if i >= warmup:
                times.append(dt)
                if len(times) >= job["steps"] or (len(times) >= 2 and sum(times) > job["max_timed_s"]):
                    break
        prof = profile_step(step, cuda) if job.get("profile") else None
    step_s = statistics.median(times)
    n_gpu = d.world
    parts = flop_parts(config, seq, seqs, opts, docs)
    model_flops, hw_flops = flop_totals(parts)
    if prof and "groups_ms" in prof:
        prof["kernel_tflops"] = {g: float(f"{v:.4g}")  # 4 significant digits (tiny on a CPU)
                                 for g, v in kernel_tflops(parts, prof["groups_ms"], d.world).items()}
    peak = reserved = device_mem = None
    if cuda:
        device_mem = torch.cuda.get_device_properties(d.device).total_memory / 2**30
        mem = torch.tensor([torch.cuda.max_memory_allocated(), torch.cuda.max_memory_reserved()],
                           dtype=torch.float64, device=d.device)
        if d.world > 1:
            torch.distributed.all_reduce(mem, op=torch.distributed.ReduceOp.MAX)
        peak, reserved = (float(x) / 2**30 for x in mem)
    if opts["compile"]:
        torch._dynamo.reset()
    tokens = seq * seqs
    peak_flops = job["peak_tflops"] * 1e12
    return {"status": "ok", "fit": True, "n_layers": config.num_hidden_layers, "params": n_params,
            "tokens_per_step": tokens, "step_s": step_s, "step_times": times, "tokens_per_s": tokens / step_s,
            "tokens_per_s_per_gpu": tokens / step_s / n_gpu, "model_flops_per_step": model_flops,
            "hw_flops_per_step": hw_flops, "mfu": model_flops / (step_s * n_gpu * peak_flops),
            "hfu": hw_flops / (step_s * n_gpu * peak_flops), "tflops_per_gpu": model_flops / step_s / n_gpu / 1e12,
            "peak_mem_gib": peak, "reserved_gib": reserved, "device_mem_gib": device_mem,
            "loss_first": losses[0], "loss_last": losses[-1], "losses": losses,
            "deterministic": torch.are_deterministic_algorithms_enabled(),
            "attn_impl": lm.config._attn_implementation, "n_docs": len(docs) or None, "profile": prof,
            "env": _env(d)}


# Kernel (or, on CPU, operator) names -> what the time went to: regular expressions on the lower-cased name,
# first match wins (attention kernels that call a GEMM inside count as attention; NCCL's reduce-scatter as
# communication, not as a reduction). Names that match none (elementwise math, RoPE, SwiGLU, casts) are "other".
PROFILE_GROUPS = [
    ("communication", r"nccl"),
    ("attention", r"flash|fmha|sdpa|scaled_dot_product|attention|attn"),
    ("optimizer", r"adam|multi_tensor|foreach|optimizer"),
    ("matmul", r"gemm|xmma|cutlass|nvjet|cublas|aten::(mm|addmm|bmm|matmul|linear)\b"),
    ("compiled (triton)", r"triton"),
    ("loss and reductions", r"cross_entropy|softmax|nll_loss|reduce_kernel|norm|aten::(sum|mean)\b"),
    ("copy", r"memcpy|memset|copy_kernel|_copy|batchedcopy|catarray|aten::(cat|copy_|fill_|zero_)\b|fill_kernel"),
]


def profile_group(name: str) -> str:
    low = name.lower()
    for group, pattern in PROFILE_GROUPS:
        if re.search(pattern, low):
            return group
    return "other"


def profile_step(step, cuda: bool, top: int = 20) -> dict:
    """One more optimizer step under torch.profiler. On CUDA: every kernel's time on the device, grouped
    (PROFILE_GROUPS) and the `top` longest; device time can exceed the step's wall time only where kernels
    overlap (communication streams). "GPU user annotation" rows (record_function ranges such as the optimizer's
    step or inductor's compiled graphs) span kernels counted already and are left out. On CPU: each operator's
    self time (the same grouping, by aten name). A profiler that fails leaves the row's timings alone."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    try:
        with profile(activities=acts) as prof:
            t0 = time.perf_counter()
            step()
            if cuda:
                torch.cuda.synchronize()
            wall = time.perf_counter() - t0
        events = prof.key_averages()
    except Exception as e:  # noqa: BLE001 - e.g. CUPTI unavailable: the timed row stands without a profile
        return {"error": f"{type(e).__name__}: {str(e)[:300]}"}
    rows = []
    for e in events:
        if cuda:
            on_device = e.device_type == torch.autograd.DeviceType.CUDA and not getattr(e, "is_user_annotation", False)
            us = (getattr(e, "self_device_time_total", None) or getattr(e, "self_cuda_time_total", 0)) if on_device else 0
        else:
            us = e.self_cpu_time_total
        if us > 0:
            rows.append((e.key, us / 1000, e.count))
    total = sum(ms for _, ms, _ in rows)
    groups: dict[str, float] = {}
    for name, ms, _ in rows:
        g = profile_group(name)
        groups[g] = groups.get(g, 0.0) + ms
    rows.sort(key=lambda r: -r[1])
    return {"what": "device kernel time" if cuda else "CPU operator self time", "wall_ms": round(wall * 1000, 2),
            "total_ms": round(total, 3),
            "groups_ms": {g: round(ms, 3) for g, ms in sorted(groups.items(), key=lambda kv: -kv[1])},
            "top": [{"name": n[:160], "ms": round(ms, 3), "calls": c, "group": profile_group(n)}
                    for n, ms, c in rows[:top]]}


def profile_table(results: list[dict]) -> str:
    """Where each profiled row's time went: group shares of the profiled step, and the rate its attention and
    matmul kernels reached (kernel_tflops)."""
    rows = [r for r in results if isinstance(r.get("profile"), dict) and "groups_ms" in r["profile"]]
    if not rows:
        return ""
    groups = [g for g, _ in PROFILE_GROUPS] + ["other"]
    rates = ["attention", "matmul"]
    out = ["| shape | seq | variant | profiled ms | " + " | ".join(groups) + " | "
           + " | ".join(f"{g} TFLOP/s" for g in rates) + " |", "|---" * (4 + len(groups) + len(rates)) + "|"]
    for r in rows:
        p = r["profile"]
        shares = [f"{100 * p['groups_ms'].get(g, 0.0) / p['total_ms']:.0f}%" if p["total_ms"] else "-" for g in groups]
        tflops = [f"{p['kernel_tflops'][g]:.3g}" if g in p.get("kernel_tflops", {}) else "-" for g in rates]
        out.append(f"| {r['shape']} | {fmt_len(r['seq'])} | {r['variant']} | {p['total_ms']:.0f} | "
                   + " | ".join(shares + tflops) + " |")
    return "\n".join(out)


def _env(d) -> dict:
    import torch
    import transformers
    env = {"torch": torch.__version__, "transformers": transformers.__version__, "world_size": d.world}
    if d.device.type == "cuda":
        env.update(device=torch.cuda.get_device_name(d.device), cuda=torch.version.cuda,
                   cudnn=torch.backends.cudnn.version())
    else:
        env["device"] = "cpu"
    return env


def serve(queue: Path, first: int) -> None:
    """Worker loop: run job files in order; rank 0 writes each result. See Runner for the protocol."""
    import gc

    import torch
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    (queue / f"pid-{os.getpid()}").touch()  # so that the parent can stop this rank
    n = first
    while True:
        path = queue / f"job-{n:05d}.json"
        while not path.exists():
            time.sleep(0.02)
        job = json.loads(path.read_text())
        if job.get("stop"):
            break
        fatal = False
        try:
            res = run_job(job)
        except Exception as e:  # noqa: BLE001 - one configuration failed; the table goes on
            oom = _oom(e)
            msg = f"{type(e).__name__}: {str(e)[:600]}"
            if world > 1:  # peers may be stuck in a collective: leave, torchrun stops them, the parent restarts
                (queue / f"err-{n:05d}-{rank}.json").write_text(json.dumps({"status": "oom" if oom else "error",
                                                                            "error": msg}))
                os._exit(3)
            res = {"status": "oom" if oom else "error", "fit": False if oom else None, "error": msg}
            # A CUDA fault poisons the context: finish this job's report, then let the parent restart us.
            fatal = not oom and torch.cuda.is_available() and ("CUDA" in msg or "cuDNN" in msg)
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        if rank == 0:
            tmp = queue / f"res-{n:05d}.tmp"
            tmp.write_text(json.dumps(res))
            tmp.rename(queue / f"res-{n:05d}.json")
        if fatal:
            os._exit(4)
        n += 1
    if world > 1 and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
