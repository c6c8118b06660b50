"""The training loop on a tiny model: resume equals uninterrupted, accumulation equals a large batch,
packed-with-document-mask equals unpacked, every parameter moves, NaN stops the run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import write_pattern_shards, write_tiny_llama
from longreach import config as config_io
from longreach.errors import InputError, RunStopped, TrainingDiverged
from longreach.train import checkpoint
from longreach.train.config import TrainConfig
from longreach.train.loop import train


def _cfg(model, data, out, **kw) -> TrainConfig:
    base = {"model": str(model), "data": str(data), "out": str(out), "max_steps": 6, "micro_batch": 2, "lr": 3e-3,
                "warmup_steps": 2, "save_every": 100, "progress": False}
    base.update(kw)
    return TrainConfig(**base)


def _losses(run: Path) -> list[float]:
    """The logged losses; a last line still being written (another process training) is left out."""
    lines = (run / "metrics.jsonl").read_text().split("\n")
    return [json.loads(ln)["loss"] for ln in lines[:-1]]


def _subprocess_env() -> dict[str, str]:
    """The environment of a training run started as a process of its own: this checkout's longreach."""
    return {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(checkpoint.latest(run) / "model.safetensors")


def test_loss_falls_and_every_parameter_changes(tiny_model, pattern_shards, tmp_path):
    out = train(_cfg(tiny_model, pattern_shards, tmp_path / "run", max_steps=12))
    losses = _losses(tmp_path / "run")
    assert len(losses) == 12 and losses[-1] < losses[0] - 0.3
    before = load_file(tiny_model / "model.safetensors")
    after = _weights(tmp_path / "run")
    for name, w in before.items():
        assert not torch.equal(w, after[name]), f"{name} did not change"
    meta = checkpoint.read_meta(out["checkpoint"])
    assert meta["stage"] == "pretrain" and meta["step"] == 12 and meta["lineage"][0]["path"] == str(tiny_model)
    # training runs without a KV cache; the checkpoint is written for generation
    assert json.loads((Path(out["checkpoint"]) / "config.json").read_text())["use_cache"] is True
    # The resolved config is written next to the outputs and reads back to the same config.
    cfg = config_io.load(TrainConfig, tmp_path / "run" / "config.yaml")
    assert cfg.max_steps == 12 and cfg.model == str(tiny_model)


def test_resumed_run_matches_uninterrupted(tiny_model, pattern_shards, tmp_path):
    train(_cfg(tiny_model, pattern_shards, tmp_path / "full"))
    train(_cfg(tiny_model, pattern_shards, tmp_path / "split", max_steps=3, save_every=3))
    train(_cfg(tiny_model, pattern_shards, tmp_path / "split", save_every=3))
    assert _losses(tmp_path / "split") == pytest.approx(_losses(tmp_path / "full"), abs=1e-6)
    full, split = _weights(tmp_path / "full"), _weights(tmp_path / "split")
    for name in full:
        assert torch.allclose(full[name], split[name], atol=1e-6), name


def test_stop_file_saves_the_step_and_the_run_resumes(tiny_model, pattern_shards, tmp_path, monkeypatch):
    """A STOP file in the run folder ends the run after the step in progress, with a checkpoint of that step;
    running again goes on to the same losses and weights as a run never stopped."""
    from longreach.train import loop
    train(_cfg(tiny_model, pattern_shards, tmp_path / "full"))
    run = tmp_path / "stopped"
    real_lr_at = loop.lr_at

    def lr_at(step, cfg):  # asks for the stop while step 3 (index 2) trains
        if step == 2:
            (run / loop.STOP_FILE).touch()
        return real_lr_at(step, cfg)

    monkeypatch.setattr(loop, "lr_at", lr_at)
    out = train(_cfg(tiny_model, pattern_shards, run))
    assert out["stopped"] and out["step"] == 3 and checkpoint.read_meta(out["checkpoint"])["step"] == 3
    monkeypatch.setattr(loop, "lr_at", real_lr_at)
    out = train(_cfg(tiny_model, pattern_shards, run))  # the STOP file left behind is cleared, not obeyed
    assert not out["stopped"] and out["step"] == 6 and not (run / loop.STOP_FILE).exists()
    assert _losses(run) == pytest.approx(_losses(tmp_path / "full"), abs=1e-6)
    full, resumed = _weights(tmp_path / "full"), _weights(run)
    for name in full:
        assert torch.allclose(full[name], resumed[name], atol=1e-6), name


def test_stop_file_with_a_step_number_ends_there(tiny_model, pattern_shards, tmp_path, monkeypatch):
    from longreach.train import loop
    run = tmp_path / "run"
    real_lr_at = loop.lr_at

    def lr_at(step, cfg):  # written once training runs (a file there at the start is a stale one, removed)
        if step == 0:
            (run / loop.STOP_FILE).write_text("4\n")
        return real_lr_at(step, cfg)

    monkeypatch.setattr(loop, "lr_at", lr_at)
    out = train(_cfg(tiny_model, pattern_shards, run))
    assert out["stopped"] and out["step"] == 4 and len(_losses(run)) == 4
    assert checkpoint.read_meta(checkpoint.latest(run))["step"] == 4
    # callers that go on to use the model (the demo) get an error instead of a half-trained model
    with pytest.raises(RunStopped, match="step 5 of 6"):
        (run / loop.STOP_FILE).unlink()
        monkeypatch.setattr(loop, "lr_at", lambda step, cfg: ((run / loop.STOP_FILE).write_text("5")
                                                               if step == 4 else None) or real_lr_at(step, cfg))
        loop.train_to_end(_cfg(tiny_model, pattern_shards, run))


def test_unreadable_stop_file_is_a_stop_request(tiny_model, pattern_shards, tmp_path, monkeypatch):
    """Something at STOP that cannot be read as a step (here a folder) still stops the run, on every rank alike,
    and one left behind is named in a clear error at the next start."""
    from longreach.errors import InputError
    from longreach.train import loop
    run = tmp_path / "run"
    real_lr_at = loop.lr_at
    monkeypatch.setattr(loop, "lr_at", lambda step, cfg: ((run / loop.STOP_FILE).mkdir() if step == 1 else None)
                        or real_lr_at(step, cfg))
    out = train(_cfg(tiny_model, pattern_shards, run))
    assert out["stopped"] and out["step"] == 2
    with pytest.raises(InputError, match="STOP"):
        train(_cfg(tiny_model, pattern_shards, run))


def test_sigterm_in_the_last_step_is_reported(tiny_model, pattern_shards, tmp_path, monkeypatch):
    """A SIGTERM that arrives while the last step trains is not swallowed: the finished run says it was asked to
    stop, so a recipe does not start its next stage; afterwards SIGTERM acts as before (handler restored)."""
    from longreach.train import loop
    real_lr_at = loop.lr_at
    monkeypatch.setattr(loop, "lr_at", lambda step, cfg: (os.kill(os.getpid(), signal.SIGTERM) if step == 5
                                                          else None) or real_lr_at(step, cfg))
    before = signal.getsignal(signal.SIGTERM)
    out = train(_cfg(tiny_model, pattern_shards, tmp_path / "run"))
    assert out["stopped"] and out["step"] == 6
    assert signal.getsignal(signal.SIGTERM) is before


def test_accumulated_equals_large_batch(tiny_model, pattern_shards, tmp_path):
    train(_cfg(tiny_model, pattern_shards, tmp_path / "big", micro_batch=4, grad_accum=1, max_steps=3))
    train(_cfg(tiny_model, pattern_shards, tmp_path / "acc", micro_batch=1, grad_accum=4, max_steps=3))
    assert _losses(tmp_path / "acc") == pytest.approx(_losses(tmp_path / "big"), abs=1e-5)
    big, acc = _weights(tmp_path / "big"), _weights(tmp_path / "acc")
    for name in big:
        assert torch.allclose(big[name], acc[name], atol=1e-5), name


def test_loss_mask_counts_only_unmasked_targets(tiny_model, tmp_path):
    data = write_pattern_shards(tmp_path / "masked", loss_mask=True)
    train(_cfg(tiny_model, data, tmp_path / "run", max_steps=1))
    rec = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert rec["tokens"] == 2 * 15  # 2 sequences x 16 even positions, minus position 0 (no predecessor)


def test_document_mask_packed_equals_documents_alone(tiny_model, tmp_path):
    """Two 16-token documents packed with the document mask give the loss of each document alone."""
    from transformers import AutoModelForCausalLM

    from longreach.train.loop import CausalLMLoss, document_positions
    from longreach.train.loss import IGNORE, shift_labels

    lm = AutoModelForCausalLM.from_pretrained(tiny_model, attn_implementation="sdpa")
    model = CausalLMLoss(lm, chunk_tokens=8)
    torch.manual_seed(1)
    docs = [torch.randint(0, 64, (1, 16)) for _ in range(2)]
    alone = sum(model(d, shift_labels(d)) for d in docs)
    packed = torch.cat(docs, dim=1)
    labels = shift_labels(packed)
    labels[0, 15] = IGNORE  # the first document's last token does not predict the second document
    extra = document_positions(32, [torch.tensor([0, 16]).numpy()])
    together = model(packed, labels, **extra)
    assert torch.allclose(alone, together, atol=1e-4)


def test_nan_loss_stops_with_clear_error_and_keeps_checkpoints(tmp_path, pattern_shards):
    good = write_tiny_llama(tmp_path / "good")
    train(_cfg(good, pattern_shards, tmp_path / "run", max_steps=2, save_every=2))
    weights = load_file(good / "model.safetensors")
    weights = {k: torch.full_like(v, float("nan")) if "norm" in k else v for k, v in weights.items()}
    bad = write_tiny_llama(tmp_path / "bad")
    from safetensors.torch import save_file
    save_file(weights, bad / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(TrainingDiverged, match="step 1"):
        train(_cfg(bad, pattern_shards, tmp_path / "bad-run", max_steps=2))
    assert checkpoint.latest(tmp_path / "bad-run") is None
    assert checkpoint.latest(tmp_path / "run").name == "step-000002"


@pytest.mark.slow
def test_killed_run_resumes_to_same_losses(tiny_model, tmp_path):
    """SIGKILL at an arbitrary moment, then the same command again: the loss curve equals an uninterrupted run."""
    data = write_pattern_shards(tmp_path / "shards", n_seq=32, seq_len=64)
    cfg = {"max_steps": 40, "save_every": 3, "micro_batch": 4}  # killed after 5 of 40: far from the end
    train(_cfg(tiny_model, data, tmp_path / "full", **cfg))
    run = tmp_path / "killed"
    args = [sys.executable, "-m", "longreach.cli", "train", "--model", str(tiny_model), "--data", str(data),
            "--out", str(run)] + [f"--set={k}={v}" for k, v in {**cfg, "lr": 3e-3, "warmup_steps": 2,
                                                               "progress": False}.items()]
    env = _subprocess_env()
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline:
        lines = (run / "metrics.jsonl").read_text().splitlines() if (run / "metrics.jsonl").exists() else []
        if len(lines) >= 5:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert checkpoint.latest(run) is not None and len(_losses(run)) < 40
    subprocess.run(args, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=300)
    assert _losses(run) == pytest.approx(_losses(tmp_path / "full"), abs=1e-6)


def test_sigterm_saves_the_step_in_progress(tiny_model, tmp_path):
    """SIGTERM (a scheduler's preemption) ends the run cleanly after its current step, saved although the step is
    not a multiple of save_every."""
    data = write_pattern_shards(tmp_path / "shards", n_seq=32, seq_len=64)
    run = tmp_path / "run"
    args = [sys.executable, "-m", "longreach.cli", "train", "--model", str(tiny_model), "--data", str(data),
            "--out", str(run)] + [f"--set={k}={v}" for k, v in {"max_steps": 400, "save_every": 1000, "micro_batch": 4,
                                                               "progress": False}.items()]
    env = _subprocess_env()
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and len(_losses(run) if (run / "metrics.jsonl").exists() else []) < 3:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    try:
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()  # no worker outlives a failed test
    assert proc.returncode == 0, err
    assert "stopped on request" in err
    step = checkpoint.read_meta(checkpoint.latest(run))["step"]
    assert 3 <= step < 400 and step == len(_losses(run))


def test_shards_of_another_tokenizer_are_refused(tmp_path):
    """Shards prepared with one tokenizer and a model with another would train on garbage: a clear error."""
    from longreach import assets
    from longreach.data.config import PrepareConfig
    from longreach.data.prepare import prepare
    from longreach.errors import InputError
    from test_eval_backends import tiny_tokenizer

    model = Path(__file__).resolve().parents[1] / "src/longreach/demo_assets/base"  # 2,048-token vocabulary
    essays = sorted(assets.paul_graham_essays().glob("*.txt"))[:2]
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for f in essays:
        (corpus / f.name).write_text(f.read_text())
    tiny_tokenizer().save_pretrained(tmp_path / "tok400")
    for tok, name in ((tmp_path / "tok400", "s400"), (model, "same"), (assets.llama3_tokenizer(), "llama3")):
        prepare(PrepareConfig(inputs=[str(corpus)], tokenizer=str(tok), seq_len=64, out=str(tmp_path / name)))

    def run(data):
        return train(TrainConfig(model=str(model), data=str(tmp_path / data), out=str(tmp_path / f"run-{data}"),
                                 max_steps=1, micro_batch=1, progress=False))

    with pytest.raises(InputError, match="another tokenizer") as e:
        run("s400")
    assert "tokenizer" in str(e.value) and "s400" in str(e.value)
    with pytest.raises(InputError, match="larger than the model's embedding"):
        run("llama3")
    assert run("same")["step"] == 1
    assert not (tmp_path / "run-s400" / "checkpoints").exists()


@pytest.mark.parametrize("seconds,reported", [(0.3, True), (0, False)])
def test_a_step_past_stall_report_s_prints_the_stacks_and_the_run_goes_on(tiny_model, pattern_shards, tmp_path,
                                                                          capfd, monkeypatch, seconds, reported):
    from longreach.train import loop
    real = loop.forward_backward

    def waiting_forward_backward(*args):
        time.sleep(2)  # where a stalled step waits (a CUDA sync, a collective)
        return real(*args)

    monkeypatch.setattr(loop, "forward_backward", waiting_forward_backward)
    out = train(_cfg(tiny_model, pattern_shards, tmp_path / "run", max_steps=2, stall_report_s=seconds))
    err = capfd.readouterr().err
    assert out["step"] == 2 and len(_losses(tmp_path / "run")) == 2
    assert err.count("still running after 0.3 s (rank 0, pid") == (2 if reported else 0)
    assert ("in waiting_forward_backward" in err and "loop.py" in err) == reported


_HANGING_RUN = """
import json, sys, time
from longreach.train import loop
from longreach.train.config import TrainConfig
real, calls = loop.forward_backward, []
def hanging(*args):  # step argv[2] first waits argv[3] seconds, as a hung kernel (or a compilation) would
    calls.append(1)
    if len(calls) == int(sys.argv[2]):
        time.sleep(float(sys.argv[3]))
    return real(*args)
loop.forward_backward = hanging
loop.train(TrainConfig(**json.loads(open(sys.argv[1]).read())))
"""


def _hanging_run(cfg: TrainConfig, tmp_path: Path, hang_step: int, sleep_s: float = 600) -> subprocess.CompletedProcess:
    """train(cfg) in a process of its own whose step `hang_step` (0: none) first sleeps `sleep_s`."""
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps(config_io.to_dict(cfg)))
    return subprocess.run([sys.executable, "-c", _HANGING_RUN, str(path), str(hang_step), str(sleep_s)],
                          env=_subprocess_env(), capture_output=True, text=True, timeout=300, check=False)


def test_a_step_past_stall_exit_s_ends_the_process_and_the_same_command_resumes(tiny_model, pattern_shards,
                                                                               tmp_path):
    kw = {"max_steps": 8, "save_every": 3, "micro_batch": 4}
    train(_cfg(tiny_model, pattern_shards, tmp_path / "full", **kw))
    cfg = _cfg(tiny_model, pattern_shards, tmp_path / "run", **kw, stall_exit_s=10.0)
    hung = _hanging_run(cfg, tmp_path, 5)
    assert hung.returncode == 75, hung.stderr[-3000:]
    assert "step 5 still running after 10 s" in hung.stderr and "ending the process (exit 75)" in hung.stderr
    assert "in hanging" in hung.stderr
    assert checkpoint.read_meta(checkpoint.latest(tmp_path / "run"))["step"] == 3
    again = _hanging_run(cfg, tmp_path, 0)
    assert again.returncode == 0, again.stderr[-3000:]
    assert _losses(tmp_path / "run") == pytest.approx(_losses(tmp_path / "full"), abs=1e-6)


def test_the_first_step_of_a_process_is_exempt_from_stall_exit_s(tiny_model, pattern_shards, tmp_path):
    cfg = _cfg(tiny_model, pattern_shards, tmp_path / "run", max_steps=2, stall_exit_s=5, stall_report_s=0)
    done = _hanging_run(cfg, tmp_path, 1, sleep_s=8)  # compiling, say
    assert done.returncode == 0 and "still running" not in done.stderr, done.stderr[-3000:]
    assert len(_losses(tmp_path / "run")) == 2


def test_deterministic_trains_under_torchs_deterministic_algorithms(tiny_model, pattern_shards, tmp_path,
                                                                     monkeypatch):
    """`deterministic: true` runs each step with torch's (and cuDNN's) deterministic algorithms on, keeps a
    CUBLAS_WORKSPACE_CONFIG already set, and gives the process its settings back after the run; on CPU it changes no
    loss. With FA4's kernels it is refused before anything loads."""
    from longreach.train import loop

    seen = []
    real = loop.forward_backward

    def spy(*args, **kwargs):
        seen.append((torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic))
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, "forward_backward", spy)
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")
    train(_cfg(tiny_model, pattern_shards, tmp_path / "det", max_steps=3, deterministic=True))
    assert seen == [(True, True)] * 3 and os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"
    assert not torch.are_deterministic_algorithms_enabled() and not torch.backends.cudnn.deterministic
    seen.clear()
    train(_cfg(tiny_model, pattern_shards, tmp_path / "plain", max_steps=3))
    assert seen == [(False, False)] * 3 and _losses(tmp_path / "det") == _losses(tmp_path / "plain")
    with pytest.raises(InputError, match="deterministic"):
        train(_cfg(tiny_model, pattern_shards, tmp_path / "fa4", attn="longreach_fa4", deterministic=True))
    assert not (tmp_path / "fa4").exists()


def _shards_of_mixed_documents(path: Path, n_seq: int = 12, seq_len: int = 32) -> tuple[Path, list[float]]:
    """Pattern sequences whose documents differ: every third one a single document, the others cut in 4 or 8
    token pieces; returns the folder and each sequence's share of tokens in stretches of >= 16 tokens."""
    from longreach.data.shards import ShardWriter

    rng = np.random.default_rng(5)
    share = []
    with ShardWriter(path, seq_len=seq_len, vocab_size=64) as w:
        for i in range(n_seq):
            toks = (rng.integers(0, 64) + rng.integers(1, 4) * np.arange(seq_len)) % 64
            cut = {0: [], 1: list(range(0, seq_len, 4)), 2: [0, 8, 16]}[i % 3]  # 2: pieces of 8, then 16
            w.add(toks, doc_starts=np.array(cut, dtype=np.int64))
            share.append({0: 1.0, 1: 0.0, 2: 0.5}[i % 3])
        w.close({"source": "test-mixed-documents"})
    return path, share


def _rows_read(batches, steps: int, micro_batch: int, shards) -> list[int]:
    """The sequences the run's steps read, by matching their tokens to the shards' rows."""
    rows = {tuple(shards[i]["input_ids"].tolist()): i for i in range(len(shards))}
    out = []
    for _ in range(steps):
        for mb in batches.next_step(micro_batch, 1, doc_mask=False):
            out += [rows[tuple(r.tolist())] for r in mb["input_ids"]]
    return out


def test_finish_on_puts_the_chosen_sequences_last_among_the_same_ones(tmp_path):
    from longreach.data.shards import epoch_order
    from longreach.train import parallel
    from longreach.train.loop import Batches

    data, share = _shards_of_mixed_documents(tmp_path / "mixed")
    d = parallel.setup(1)
    plain = Batches(str(data), 3, d, visited=8)
    random = _rows_read(plain, 4, 2, plain.shards)
    assert random == epoch_order(12, 3, 0)[:8].tolist()
    for on, pick in (("short_docs", min), ("long_docs", max)):
        b = Batches(str(data), 3, d, finish_on=on, finish_sequences=3, long_doc_tokens=16, visited=8)
        read = _rows_read(b, 4, 2, b.shards)
        assert sorted(read) == sorted(random) and read != random  # the same sequences, another order
        last, first = read[-3:], read[:-3]
        # last: three with the least (short_docs) / most (long_docs) long-document share; both groups in order
        sign = 1 if pick is min else -1
        assert all(sign * share[i] <= sign * share[j] for i in last for j in first)
        assert first == [i for i in random if i not in last] and last == [i for i in random if i in last]
        # the unvisited rest of the first epoch, then the next epoch: as without finish_on
        assert _rows_read(b, 4, 2, b.shards) == [*epoch_order(12, 3, 0)[8:], *epoch_order(12, 3, 1)[:4]]
    # a checkpoint's order: resumed with more steps, the first epoch keeps the order it began (8 visited)
    b = Batches(str(data), 3, d, finish_on="short_docs", finish_sequences=3, long_doc_tokens=16, visited=8)
    began = _rows_read(b, 6, 2, b.shards)
    more = Batches(str(data), 3, d, finish_on="short_docs", finish_sequences=3, long_doc_tokens=16, visited=12)
    more.position = 4
    more.resume_order(b.order_spec(), 4)
    assert _rows_read(more, 4, 2, more.shards) == began[4:]
    # another finish_on, or one a checkpoint from before it lacks, inside the first epoch: refused by field
    for saved, kw, field in ((b.order_spec(), {"finish_sequences": 2}, "finish_sequences"),
                             (None, {"finish_sequences": 3}, "finish_on"),
                             (b.order_spec(), {"finish_sequences": 3, "long_doc_tokens": 8}, "long_doc_tokens")):
        other = Batches(str(data), 3, d, finish_on="short_docs", visited=8, **{"long_doc_tokens": 16, **kw})
        with pytest.raises(InputError) as e:
            other.resume_order(saved, 4)
        assert e.value.field == field
        other.resume_order(saved, 12)  # the first epoch is over: its order no longer matters


def test_finish_on_resumes_to_the_same_losses_and_bad_values_name_their_field(tiny_model, tmp_path):
    data, _ = _shards_of_mixed_documents(tmp_path / "mixed")
    kw = {"finish_on": "short_docs", "finish_sequences": 4, "long_doc_tokens": 16, "save_every": 3}
    train(_cfg(tiny_model, data, tmp_path / "full", **kw))
    random = train(_cfg(tiny_model, data, tmp_path / "random", save_every=3))
    assert _losses(tmp_path / "full") != pytest.approx(_losses(tmp_path / "random"), abs=1e-6)
    assert random["step"] == 6
    # resume from step 3 of the same run: the order is recomputed, the losses repeat
    import shutil
    shutil.copytree(tmp_path / "full", tmp_path / "split")
    shutil.rmtree(checkpoint.latest(tmp_path / "split"))
    assert checkpoint.latest(tmp_path / "split").name.endswith("3")
    with pytest.raises(InputError) as e:  # resumed with another count inside the first epoch: refused
        train(_cfg(tiny_model, data, tmp_path / "split", **{**kw, "finish_sequences": 6}))
    assert e.value.field == "finish_sequences"
    assert config_io.load(TrainConfig, tmp_path / "split" / "config.yaml").finish_sequences == 4  # the run's own
    train(_cfg(tiny_model, data, tmp_path / "split", **kw))
    assert _losses(tmp_path / "split") == pytest.approx(_losses(tmp_path / "full"), abs=1e-6)
    long = {"finish_on": "long_docs", "finish_sequences": 2, "long_doc_tokens": 16}
    for i, (bad, field) in enumerate((({"finish_on": "shortest"}, "finish_on"),
                                      ({"finish_on": "long_docs"}, "finish_sequences"),
                                      ({"finish_sequences": 2}, "finish_sequences"),
                                      ({"finish_sequences": -1}, "finish_sequences"),
                                      ({**long, "finish_sequences": 13}, "finish_sequences"),
                                      ({**long, "long_doc_tokens": 0}, "long_doc_tokens"),
                                      ({**long, "long_doc_tokens": 33}, "long_doc_tokens"))):
        with pytest.raises(InputError) as e:
            train(_cfg(tiny_model, data, tmp_path / f"bad{i}", **bad))
        assert e.value.field == field, bad
        assert not (tmp_path / f"bad{i}").exists(), bad  # refused before the run folder is written
