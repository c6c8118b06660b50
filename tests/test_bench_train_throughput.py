"""benchmarks/train_throughput.py at toy size on CPU, so the GPU benchmark cannot rot; and its FLOP formula
against PyTorch's FLOP counter."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "train_throughput.py"
sys.path.insert(0, str(BENCH.parent))

import train_throughput as bench


def _run(tmp_path: Path, *args: str) -> tuple[dict, str]:
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, str(BENCH), "--device", "cpu", "--shapes", "tiny", "--steps", "2",
                           "--warmup", "1", "--out", str(out), *args], check=False, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text()), proc.stdout


def test_toy_run_times_both_trainers_and_finds_the_longest(tmp_path):
    report, stdout = _run(tmp_path, "--lengths", "64", "--variants", "hf;ours:docs=16;ours;ours:ac=attn,chunk=16",
                          "--longest", "--longest-start", "64", "--longest-max", "128", "--longest-step", "64")
    rows = report["results"]
    assert [r["variant"] for r in rows] == ["hf", "ours:docs=16", "ours", "ours:ac=attn,chunk=16"]
    # A configuration that fails is recorded and the table goes on with the next ones.
    bad = rows.pop(1)
    assert bad["status"] == "error" and "attn=flex" in bad["error"]
    assert "| ours:docs=16 | error |" in stdout
    for r in rows:
        assert r["status"] == "ok" and r["fit"] is True, r
        assert r["tokens_per_s"] > 0 and r["mfu"] > 0 and r["hfu"] >= r["mfu"]
        assert len(r["step_times"]) == 2 and r["tokens_per_step"] == 64
    # Same seeded weights and batch: the plain HF loss and ours are the same number before any update.
    assert rows[0]["loss_first"] == pytest.approx(rows[1]["loss_first"], abs=1e-4)
    assert rows[1]["loss_first"] == pytest.approx(rows[2]["loss_first"], abs=1e-5)
    (longest,) = report["longest"]
    assert longest["longest_fit"] == 128 and [p["seq"] for p in longest["probes"]] == [128]
    assert report["meta"]["device"] == "cpu" and "torch" in report["meta"]
    assert "| tiny (2 layers) | 1 | 64 | hf | yes |" in stdout


def test_det_runs_a_job_under_deterministic_algorithms_and_lists_its_losses(tmp_path):
    """det=1 (what a GPU hold times against the default) trains the whole job with torch's deterministic algorithms
    on, and only that job; each result lists every step's loss, so two jobs can be checked for repeating each other."""
    report, _ = _run(tmp_path, "--lengths", "64", "--variants", "ours:ac=attn,det=1;ours:ac=attn;ours:ac=attn,det=1")
    det, plain, det2 = report["results"]
    assert [r["deterministic"] for r in (det, plain, det2)] == [True, False, True]
    assert len(det["losses"]) == 3 and det["losses"] == det2["losses"]  # warm-up step + 2 timed
    with pytest.raises(ValueError, match="det=1 with attn=fa4"):
        bench.parse_variant("ours:attn=fa4,det=1")


def test_flop_formula_matches_pytorch_flop_counter():
    """FlopCounterMode counts every matmul of forward + backward; with the math SDPA kernel it counts the full
    T x T attention, so it must equal our formula with the causal half doubled back."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    job = {"shape": "tiny", "layers": 3, "seq": 96}
    config = bench.model_config(job)
    from transformers import LlamaForCausalLM
    lm = LlamaForCausalLM(config)
    ids = torch.randint(0, config.vocab_size, (2, 96))
    with sdpa_kernel([SDPBackend.MATH]), FlopCounterMode(display=False) as counter:
        lm(input_ids=ids, labels=ids).loss.backward()
    model, hw = bench.flop_totals(bench.flop_parts(config, 96, 2, bench.parse_variant("ours:ac=off,loss=liger"), []))
    L, h, d = 3, config.num_attention_heads, config.hidden_size // config.num_attention_heads
    causal_attention = 12 * L * h * d * 96 * 96 / 2 * 2
    # (some transformers versions count RoPE's tiny angle product too: a few thousand FLOPs)
    assert counter.get_total_flops() == pytest.approx(model + causal_attention, rel=1e-4)
    assert hw == model  # nothing recomputed
    _, hw_full = bench.flop_totals(bench.flop_parts(config, 96, 2, bench.parse_variant("ours"), []))
    _, hw_attn = bench.flop_totals(bench.flop_parts(config, 96, 2, bench.parse_variant("ours:ac=attn"), []))
    assert hw_full > hw_attn > model


def test_variant_and_layout_parsing():
    assert bench.parse_variant("ours:ac=every:2,compile=1")["ac"] == "every:2"
    assert bench.parse_layout("dp2cp2") == (2, 2) and bench.parse_layout("cp2") == (1, 2)
    assert bench.parse_lengths("16k,100") == [16384, 100]
    with pytest.raises(ValueError, match="unknown option"):
        bench.parse_variant("ours:speed=11")
    assert sum(bench.doc_lengths(4096, 512, 0)) == 4096


@pytest.mark.slow
def test_context_parallel_and_data_parallel_layouts_under_torchrun(tmp_path):
    """2 gloo processes: context parallel gives the one-process loss of the same sequence, data parallel the
    one-process loss of the same two sequences."""
    report, _ = _run(tmp_path, "--lengths", "64", "--layouts", "1;cp2;dp2", "--variants", "ours;ours:seqs=2")
    by = {(r["layout"], r["variant"]): r for r in report["results"]}
    assert all(r["status"] == "ok" for r in by.values()), report["results"]
    assert by["cp2", "ours"]["loss_first"] == pytest.approx(by["1", "ours"]["loss_first"], abs=1e-5)
    assert by["dp2", "ours"]["loss_first"] == pytest.approx(by["1", "ours:seqs=2"]["loss_first"], abs=1e-5)
    assert by["cp2", "ours"]["tokens_per_s_per_gpu"] == pytest.approx(by["cp2", "ours"]["tokens_per_s"] / 2)


class _MemoryCard:
    """A runner standing in for a GPU: peak memory = 4 GiB + 0.25 GiB per 1K tokens on an 80 GiB card; a probe
    fits while its peak stays under the card's memory."""

    def __init__(self):
        self.probes = []

    def remaining(self) -> float:
        return 1e9

    def run(self, job: dict) -> dict:
        self.probes.append(job["seq"])
        peak = 4 + 0.25 * job["seq"] / 1024
        fit = peak <= 80
        return {**job, "status": "ok" if fit else "oom", "fit": fit, "step_s": 1.0, "tokens_per_s": 1.0,
                "mfu": 0.4, "wall_s": 1.0, "peak_mem_gib": peak if fit else None, "device_mem_gib": 80.0}


def test_longest_search_goes_where_the_memory_of_two_fits_points():
    """Two measured lengths predict the limit (here 304K tokens at 100%, 278K at the 92% margin): the search
    probes there and steps on by the grain, instead of doubling and bisecting through long probes."""
    args = bench.argparse.Namespace(layers=4, longest_step=8192, longest_growth=2.0, longest_start=65536,
                                    longest_max=1048576, peak_tflops=989.0, warmup=1, steps=3, device="cuda",
                                    seed=0, max_timed_s=20.0, job_timeout_s=300.0)
    card = _MemoryCard()
    known = [card.run({"shape": "s", "layers": 4, "layout": "1", "variant": "v", "seq": n}) for n in (16384, 32768)]
    card.probes.clear()
    found = bench.search_longest(card, args, "s", "1", "v", known)
    exact = (80 - 4) / 0.25 * 1024 // 8192 * 8192  # the longest multiple of the grain that fits
    assert found["longest_fit"] == exact and found["first_fail"] == exact + 8192
    assert len(card.probes) <= 4, card.probes
    # without memory figures (a CPU run) it falls back to doubling and bisecting: more probes, same answer
    plain = _MemoryCard()
    for r in known:
        r["peak_mem_gib"] = None
    found = bench.search_longest(plain, args, "s", "1", "v", known)
    assert found["longest_fit"] == exact and len(plain.probes) > 4, plain.probes
    assert bench.memory_guess([], 8192) is None


def test_profile_splits_a_real_step_by_kernel_group(tmp_path):
    """--profile runs one more step of each row under torch.profiler; on CPU it groups operator self time."""
    report, stdout = _run(tmp_path, "--lengths", "128", "--variants", "ours:ac=attn", "--profile")
    (row,) = report["results"]
    prof = row["profile"]
    assert prof["what"] == "CPU operator self time" and prof["total_ms"] > 0
    assert sum(prof["groups_ms"].values()) == pytest.approx(prof["total_ms"], rel=1e-3, abs=1e-2)
    # the step did real matmuls and real attention, and the table says where the time went
    assert prof["groups_ms"]["matmul"] > 0 and prof["groups_ms"]["attention"] > 0
    assert any(t["name"] == "aten::mm" and t["group"] == "matmul" for t in prof["top"])
    assert "Where the profiled step's time went" in stdout and "| tiny | 128 | ours:ac=attn |" in stdout
    # and the rate its attention and matmul operators reached (tiny on a CPU, but computed from this step)
    assert set(prof["kernel_tflops"]) == {"attention", "matmul"} and min(prof["kernel_tflops"].values()) > 0
    assert "attention TFLOP/s" in stdout
    # probes of the longest search and runs without the flag carry no profile
    plain, _ = _run(tmp_path, "--lengths", "64", "--variants", "ours")
    assert plain["results"][0]["profile"] is None


def test_kernel_rates_count_attention_as_the_floor_measurement_does():
    """RECIPE.md's floor: cuDNN attention takes 157 ms per layer fwd+bwd at 128K for SmolLM2 (~440 TFLOP/s,
    backward counted as 2.5x the forward); 30 such layers in a profile read back as that rate. Checkpointing
    that recomputes attention (ac=full) adds one forward; recomputed matmuls count in the matmul rate."""
    config = bench.model_config({"shape": "smollm2-135m", "layers": None, "seq": 131072})
    parts = bench.flop_parts(config, 131072, 1, bench.parse_variant("ours:ac=attn"), [])
    rates = bench.kernel_tflops(parts, {"attention": 30 * 157.0, "matmul": 100.0, "other": 5.0}, n_gpu=1)
    assert rates["attention"] == pytest.approx(441, abs=1)
    assert rates["matmul"] * 0.1 * 1e12 == pytest.approx(parts["matmul"] + parts["matmul_recomputed"])
    full = bench.flop_parts(config, 131072, 1, bench.parse_variant("ours:ac=full"), [])
    assert full["attention_recomputed"] == pytest.approx(parts["attention"] / 3)
    assert bench.kernel_tflops(full, {"attention": 30 * 157.0}, 1)["attention"] == pytest.approx(441 * 4.5 / 3.5, abs=1)
    # two GPUs share the step's work; a group without time gets no rate
    assert bench.kernel_tflops(parts, {"attention": 30 * 157.0 / 2}, n_gpu=2) == pytest.approx({"attention": 441}, abs=1)


def test_profile_groups_name_the_hopper_kernels():
    """The kernel names an H100 run shows (cuDNN attention, cuBLAS, fused AdamW, compiled layers, copies)."""
    names = {
        "cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16_knob_7_64x64x64_4x1x1_kernel0_0": "attention",
        "void pytorch_flash::flash_bwd_dq_dk_dv_loop_seqk_parallel_kernel<Flash_bwd_kernel_traits>": "attention",
        "sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64_warpgroupsize1x1x1_execute_kernel__5x_cublas":
            "matmul",
        "nvjet_tst_128x256_64x4_1x2_h_bz_coopA_TNT": "matmul",
        "void at::native::(anonymous namespace)::multi_tensor_apply_kernel<FusedAdamMathFunctor<float, 4>>":
            "optimizer",
        "triton_per_fused__to_copy_add_mean_mul_pow_rsqrt_0": "compiled (triton)",
        "Memcpy DtoH (Device -> Pinned)": "copy",
        "void at::native::(anonymous namespace)::CatArrayBatchedCopy<float, unsigned int, 2, 64, 64>": "copy",
        "void at::native::vectorized_elementwise_kernel<4, at::native::CUDAFunctor_add<float>>": "other",
        # elementwise math whose template names mention casts, and scatter/gather, are not copies
        "void at::native::unrolled_elementwise_kernel<at::native::MulFunctor<float>, "
        "at::detail::Array<char*, 3>, TrivialOffsetCalculator<2>, memory::LoadWithCast<2>, "
        "memory::StoreWithCast<1>>": "other",
        "void at::native::_scatter_gather_elementwise_kernel<128, 8>": "other",
        # collectives of FSDP2 / context parallelism are communication, whatever their op
        "ncclDevKernel_ReduceScatter_Sum_f32_RING_LL(ncclDevKernelArgsStorage<4096ul>)": "communication",
        "ncclDevKernel_AllGather_RING_LL(ncclDevKernelArgsStorage<4096ul>)": "communication",
        "void at::native::reduce_kernel<512, 1, at::native::ReduceOp<float, at::native::func_wrapper_t>>":
            "loss and reductions",
    }
    assert {n: bench.profile_group(n) for n in names} == names


def test_profile_table_skips_rows_that_did_not_run():
    """A profiled plan's row that ran out of memory or time keeps the job's flag, not a profile."""
    ok = {"shape": "tiny", "seq": 64, "variant": "ours", "profile": {"total_ms": 10.0, "groups_ms": {"matmul": 6.0,
                                                                                                     "other": 4.0}}}
    failed = {"shape": "tiny", "seq": 128, "variant": "ours", "status": "oom", "profile": True}
    broken = {"shape": "tiny", "seq": 96, "variant": "ours", "profile": {"error": "CUPTI unavailable"}}
    out = bench.profile_table([failed, ok, broken])
    assert "| tiny | 64 | ours | 10 |" in out and "60%" in out and "| 128 |" not in out and "| 96 |" not in out
