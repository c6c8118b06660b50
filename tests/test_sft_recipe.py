"""Stage chaining: the demo recipe runs sft1 -> sft2 -> sft3 from one command on a tiny model (losses fall in
each stage, only answers are targets, the lineage names every stage, a re-run resumes / skips), recipe checks,
data fingerprints, and the shipped ChatQA 2 example config."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from longreach.errors import InputError
from longreach.sft import recipe

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "configs" / "sft-demo-cpu.yaml"

STAGE2 = {"drop": 0.069, "narrativeqa": 0.095, "quoref": 0.026, "ropes": 0.026, "squad1.1": 0.095,
          "squad2.0": 0.095, "newsqa": 0.095, "tatqa-arithmetic": 0.15, "tatqa-others": 0.08,
          "synthetic_convqa": 0.3, "sft": 0.2}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def start_model(tmp_path_factory):
    from longreach.sft.tiny import write_tiny_chat_model
    return write_tiny_chat_model(tmp_path_factory.mktemp("start") / "model")


def test_chatqa2_example_config_has_the_paper_blends():
    cfg = recipe.load(str(ROOT / "configs" / "chatqa2-stages.yaml"))
    recipe.check(cfg)
    assert list(cfg.stages) == ["sft1", "sft2", "sft3"]
    assert cfg.stages["sft2"].blend == STAGE2
    assert cfg.stages["sft3"].blend == {**STAGE2, "long_sft": 2.5, "NarrativeQA_131072": 5.0}
    assert set(cfg.datasets) == set(STAGE2) | {"long_sft", "NarrativeQA_131072"}


@pytest.mark.parametrize("name", ["sft-smollm2-longqa.yaml", "smollm2-135m-32k-sft.yaml",
                                  "smollm2-135m-128k-sft.yaml", "smollm2-135m-128k-sft-replay.yaml",
                                  "smollm2-135m-128k-sft-replay-mixed.yaml",
                                  "smollm2-135m-128k-sft-replay-echo.yaml",
                                  "smollm2-135m-128k-sft-replay-far.yaml",
                                  "smollm2-135m-128k-sft-replay-32k.yaml",
                                  "smollm2-135m-128k-sft-replay-64k.yaml",
                                  "smollm2-135m-128k-sft-replay-160k.yaml"])
def test_gpu_sft_configs_pass_their_checks(name):
    from longreach.sft.synth import check_config

    cfg = recipe.load(str(ROOT / "configs" / name), ["model=m"])
    recipe.check(cfg)
    for scfg in cfg.synth.values():
        check_config(scfg)
    if name != "sft-smollm2-longqa.yaml":  # one pass draws every synthesized sample once
        assert cfg.stages["sft3"].blend == {k: v.n for k, v in cfg.synth.items()}
        assert all("paul_graham" not in v.docs for v in cfg.synth.values())  # the NIAH haystack stays unseen


@pytest.mark.parametrize("variant,field,value", [("mixed", "statement_forms", "mixed"),
                                                  ("echo", "subject_echoes", 3)])
def test_each_replay_variant_differs_from_the_replay_recipe_only_in_its_statement_sets_field(variant, field, value):
    classic = recipe.load(str(ROOT / "configs" / "smollm2-135m-128k-sft-replay.yaml"), ["model=m"])
    other = recipe.load(str(ROOT / "configs" / f"smollm2-135m-128k-sft-replay-{variant}.yaml"), ["model=m"])
    assert {k for k, v in other.synth.items() if getattr(v, field) == value} == {
        k for k, v in classic.synth.items() if v.qa == "statement"}
    for k, v in other.synth.items():
        setattr(v, field, getattr(classic.synth[k], field))
        assert v == classic.synth[k]
    other.synth, other.out = classic.synth, classic.out
    assert other == classic  # blend, training and stages too


def test_the_far_variant_is_the_replay_recipe_plus_one_set_of_far_facts_at_96k_127k():
    classic = recipe.load(str(ROOT / "configs" / "smollm2-135m-128k-sft-replay.yaml"), ["model=m"])
    far = recipe.load(str(ROOT / "configs" / "smollm2-135m-128k-sft-replay-far.yaml"), ["model=m"])
    extra = far.synth.pop("statement_far")
    assert (extra.qa, extra.construction, extra.gold_depth, extra.lengths, extra.n, extra.facts) == (
        "statement", "insert", [0.0, 0.6], [96000, 127000], 18, 4)  # as the config's header says
    assert far.stages["sft3"].blend.pop("statement_far") == extra.n
    far.out = classic.out
    assert far == classic


@pytest.mark.parametrize("suffix,seq_len,resize", [
    ("32k", 32768, lambda n: min(n, 32000)),  # every context capped
    ("64k", 65536, lambda n: min(n, 64000)),
    ("160k", 163840, lambda n: n if n <= 64000 else n * 5 // 4),  # every context above 64K stretched by a quarter
])
def test_each_length_variant_is_the_replay_recipe_with_only_its_contexts_resized(suffix, seq_len, resize):
    classic = recipe.load(str(ROOT / "configs" / "smollm2-135m-128k-sft-replay.yaml"), ["model=m"])
    other = recipe.load(str(ROOT / "configs" / f"smollm2-135m-128k-sft-replay-{suffix}.yaml"), ["model=m"])
    assert other.seq_len == seq_len
    for k, v in other.synth.items():
        assert v.lengths == [resize(n) for n in classic.synth[k].lengths]
        assert max(v.lengths) < seq_len
        v.lengths = classic.synth[k].lengths
    other.seq_len, other.out = classic.seq_len, classic.out
    assert other == classic  # kinds, counts, blend and training


def test_recipe_checks_name_the_bad_field(tmp_path):
    base = {"model": "m", "datasets": {"a": "a.jsonl"}, "stages": {"s1": {"blend": {"a": 1.0}}}}
    for change, field in [({"stages": {"s1": {"blend": {"b": 1.0}}}}, "stages.s1.blend.b"),
                          ({"stages": {"s1": {"blend": {"a": 0}}}}, "stages.s1.blend.a"),
                          ({"stages": {"s1": {"blend": {"a": 1}, "train": {"model": "x"}}}}, "stages.s1.train"),
                          ({"stages": {"s1": {"blend": {"a": 1}, "train": {"lr": "fast"}}}}, "stages.s1.train.lr"),
                          ({"stages": {"s1": {"blnd": {"a": 1}}}}, "stages.s1"),
                          ({"format": "alpaca"}, "format"),
                          ({"synth": {"x": {"qa": "statement", "statement_forms": "bare"}}},
                           "synth.x.statement_forms"),
                          ({"synth": {"x": {"qa": "cloze", "lengths": [8]}}}, "synth.x.lengths")]:
        path = tmp_path / "r.yaml"
        path.write_text(yaml.safe_dump({**base, **change}))
        with pytest.raises(InputError) as e:
            recipe.check(recipe.load(str(path)))
        assert e.value.field == field, (change, e.value)
    cfg = recipe.load(str(DEMO), ["stages.sft2.train.lr=0.5", "datasets.sft=other.jsonl"])
    assert cfg.stages["sft2"].train["lr"] == 0.5 and cfg.datasets["sft"].path == "other.jsonl"
    assert cfg.datasets["context_qa"].instruction.startswith("Answer the following question")


def test_shards_are_reused_until_their_inputs_change(tmp_path, start_model, monkeypatch):
    from longreach.data.tokenize import load_tokenizer, tokenizer_hash

    monkeypatch.chdir(ROOT)
    data = tmp_path / "qa.jsonl"
    data.write_text((ROOT / "tests/data/sft/context_qa.jsonl").read_text())
    cfg = recipe.load(str(DEMO), [f"out={tmp_path / 'run'}", f"model={start_model}", f"datasets.context_qa={data}"])
    tok = load_tokenizer(start_model)
    paths = {n: Path(d.path) for n, d in cfg.datasets.items()}
    dest = tmp_path / "run" / "sft2" / "shards"
    m1 = recipe.build_stage(cfg, "sft2", tok, tokenizer_hash(tok), paths, dest)
    stamp = (dest / "manifest.json").stat().st_mtime_ns
    assert recipe.build_stage(cfg, "sft2", tok, tokenizer_hash(tok), paths, dest) == m1
    assert (dest / "manifest.json").stat().st_mtime_ns == stamp  # reused, not rebuilt
    assert m1["sft"]["drawn"] == {"context_qa": 24, "convqa": 14, "sft": 10}  # 48 at 0.5/0.3/0.2: 24/14.4/9.6
    tcfg = recipe.stage_train_config(cfg, "sft2", "start", m1["sequences"])
    assert tcfg.max_steps == -(-m1["sequences"] // 4) and tcfg.doc_mask and tcfg.stage == "sft2"
    with data.open("a") as f:
        f.write(json.dumps({"question": "New?", "answer": "Yes."}) + "\n")
    m2 = recipe.build_stage(cfg, "sft2", tok, tokenizer_hash(tok), paths, dest)
    assert m2["sft"]["fingerprint"] != m1["sft"]["fingerprint"] and m2["sft"]["sizes"]["context_qa"] == 13
    (tmp_path / "run" / "sft2" / "checkpoints" / "step-000001").mkdir(parents=True)
    (tmp_path / "run" / "sft2" / "checkpoints" / "step-000001" / "longreach.json").write_text("{}")
    with data.open("a") as f:
        f.write(json.dumps({"question": "Newer?", "answer": "No."}) + "\n")
    with pytest.raises(InputError, match="has checkpoints but its data changed"):
        recipe.build_stage(cfg, "sft2", tok, tokenizer_hash(tok), paths, dest)


def _losses(run: Path) -> list[float]:
    return [json.loads(ln)["loss"] for ln in (run / "metrics.jsonl").read_text().splitlines()]


def _data_loss(model_dir: str | Path, shards: Path) -> float:
    """Mean answer-token loss of a model over all sequences of a stage's shards (the loop's own batches)."""
    from transformers import AutoModelForCausalLM

    from longreach.train import parallel
    from longreach.train.loop import Batches, CausalLMLoss
    from longreach.train.loss import IGNORE

    model = CausalLMLoss(AutoModelForCausalLM.from_pretrained(model_dir).float(), 4096)
    b = Batches(str(shards), 0, parallel.setup(1))
    total, n = 0.0, 0
    with torch.no_grad():
        for i in range(0, b.n, 16):
            batch = b._collate(list(range(i, min(i + 16, b.n))), doc_mask=True)
            total += float(model(**batch))
            n += int((batch["labels"] != IGNORE).sum())
    return total / n


@pytest.mark.slow
def test_three_stages_from_one_command(tmp_path, start_model, monkeypatch, capsys):
    from longreach.data.shards import PackedShards
    from longreach.data.tokenize import load_tokenizer
    from longreach.train import checkpoint
    from test_sft_data import run_cli

    monkeypatch.chdir(ROOT)
    out = tmp_path / "run"
    args = ["sft", "--config", str(DEMO), "--set", f"model={start_model}", "--set", f"out={out}"]
    # First run: stage 3 stops early (as if killed after a checkpoint) ...
    code, stdout, err = run_cli(args + ["--set", "stages.sft3.train.max_steps=3"], capsys)
    assert code == 0, err
    assert checkpoint.read_meta(checkpoint.latest(out / "sft3"))["step"] == 3
    # ... the same command again: stages 1 and 2 are skipped, stage 3 resumes from its step-3 checkpoint.
    code, stdout, err = run_cli(args, capsys)
    assert code == 0, err
    summary = json.loads(stdout)
    assert [s["skipped"] for s in summary["stages"]] == [True, True, False]
    assert "resuming from" in err and "sft3/checkpoints/step-000003" in err
    steps = [json.loads(ln)["step"] for ln in (out / "sft3" / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, summary["stages"][2]["step"] + 1)) and len(steps) > 6

    tok = load_tokenizer(start_model)
    start = str(start_model)
    for st in summary["stages"]:
        run = out / st["stage"]
        losses = _losses(run)
        third = max(1, len(losses) // 3)
        assert sum(losses[-third:]) / third < sum(losses[:third]) / third, (st["stage"], losses)
        # the stage's model predicts its own stage's answers better than the model it started from
        before, after = _data_loss(start, run / "shards"), _data_loss(st["checkpoint"], run / "shards")
        assert after < before - 0.1, (st["stage"], before, after)
        # masking: every target stretch is an answer after "Assistant:" and ends with EOS
        shards = PackedShards(run / "shards")
        item = shards[0]
        ids, mask = item["input_ids"].tolist(), item["loss_mask"].tolist()
        stretches, i = 0, 0
        while i < len(ids):
            if mask[i]:
                j = i
                while j < len(ids) and mask[j]:
                    j += 1
                assert ids[j - 1] == tok.eos_token_id and tok.decode(ids[max(0, i - 12):i]).endswith("Assistant:")
                stretches, i = stretches + 1, j
            else:
                i += 1
        assert stretches >= 1 and sum(mask) < len(mask) / 2
        start = st["checkpoint"]

    meta = checkpoint.read_meta(summary["final"])
    assert meta["stage"] == "sft3"
    assert [x["stage"] for x in meta["lineage"]] == ["start", "sft1", "sft2"]
    assert [x["path"] for x in meta["lineage"]] == [str(start_model)] + [s["checkpoint"] for s in
                                                                         summary["stages"][:2]]
    assert (out / "recipe.yaml").is_file() and (out / "data" / "long_qa.jsonl").is_file()
    # A third run has nothing left to do.
    code, stdout, err = run_cli(args, capsys)
    assert code == 0 and all(s["skipped"] for s in json.loads(stdout)["stages"])


def test_eval_long_qa_command_runs_a_local_model(tmp_path, start_model, capsys):
    """`longreach sft eval-long-qa` end to end with the real LocalHF backend (an untrained toy: 0 is fine)."""
    from longreach import assets
    from test_sft_data import run_cli
    docs = tmp_path / "docs"
    docs.mkdir()
    for f in sorted(assets.paul_graham_essays().glob("*.txt"))[:3]:
        (docs / f.name).write_text(f.read_text())
    code, stdout, err = run_cli(["sft", "eval-long-qa", "--model", str(start_model), "--lengths", "120,200",
                                 "--n", "2", "--docs", str(docs), "--split", "all", "--out", str(tmp_path / "ev")],
                                capsys)
    assert code == 0, err
    res = json.loads(stdout)
    assert set(res["accuracy"]) == {"120", "200"} and res["n"] == {"120": 2, "200": 2} and 0 <= res["mean"] <= 1
    recs = [json.loads(ln) for ln in (tmp_path / "ev" / "predictions.jsonl").read_text().splitlines()]
    assert len(recs) == 4 and all(r["prompt_tokens"] > 100 and "prediction" in r for r in recs)


def test_prepare_only_builds_every_stage_and_trains_nothing(tmp_path, start_model, monkeypatch):
    monkeypatch.chdir(ROOT)
    cfg = recipe.load(str(DEMO), [f"out={tmp_path / 'run'}", f"model={start_model}"])
    res = recipe.run(cfg, prepare_only=True)
    assert recipe.load(str(tmp_path / "run" / "recipe.yaml")) == cfg  # the resolved recipe reads back the same
    assert [r["stage"] for r in res["stages"]] == ["sft1", "sft2", "sft3"]
    for r in res["stages"]:
        assert Path(r["shards"], "manifest.json").is_file() and r["sequences"] > 0 and r["dropped"] == 0
        assert not (tmp_path / "run" / r["stage"] / "checkpoints").exists()
    long_qa = [json.loads(ln) for ln in (tmp_path / "run" / "data" / "long_qa.jsonl").read_text().splitlines()]
    assert len(long_qa) == 32 and all(r["tokens"] <= r["target_tokens"] for r in long_qa)
    assert {r["target_tokens"] for r in long_qa} == {300, 400}


def test_shipped_gpu_recipe_loads():
    cfg = recipe.load(str(ROOT / "configs" / "sft-smollm2-longqa.yaml"), ["model=some/model"])
    recipe.check(cfg)
    assert cfg.format == "template" and cfg.stages["sft3"].seq_len == 32768
    assert all(s.split == "train" for s in cfg.synth.values())  # the evaluation's held-out documents stay out


def test_text_replay_set_is_packed_with_every_token_a_target(tmp_path, start_model, monkeypatch):
    """A `qa: text` set in a stage's blend (language-modelling replay): each sample gets a sequence of its own
    with a loss on every token, so the stage's target tokens grow by about the replay's tokens."""
    monkeypatch.chdir(ROOT)
    raw = yaml.safe_load(DEMO.read_text())
    raw["synth"]["replay"] = {"docs": ["paul_graham"], "qa": "text", "lengths": [200], "n": 8, "max_docs": 6}
    raw["stages"] = {"sft3": {"seq_len": 512, "blend": {"long_qa": 32, "replay": 8}, "samples": 40}}
    path = tmp_path / "replay.yaml"
    path.write_text(yaml.safe_dump(raw))
    cfg = recipe.load(str(path), [f"out={tmp_path / 'run'}", f"model={start_model}"])
    res = recipe.run(cfg, prepare_only=True)
    sft = json.loads((Path(res["stages"][0]["shards"]) / "manifest.json").read_text())["sft"]
    replay = [json.loads(ln) for ln in (tmp_path / "run" / "data" / "replay.jsonl").read_text().splitlines()]
    assert sft["drawn"] == {"long_qa": 32, "replay": 8} and sft["samples"] == 40 and sft["dropped"] == 0
    text_tokens = sum(r["tokens"] for r in replay)
    # every replay token (+ its EOS) is a target; the 32 QA samples add only their short answers
    assert text_tokens + 8 <= sft["target_tokens"] <= text_tokens + 8 + 32 * 12
    from longreach.data.shards import PackedShards
    shards = PackedShards(res["stages"][0]["shards"])
    alone = [i for i in range(len(shards)) if int(shards[i]["loss_mask"].sum()) > 150]  # the replay sequences
    assert len(alone) == 8  # one each, sharing with no QA sample (its targets would drown their answers):
    assert all(len(shards.doc_starts(i)) <= 2 for i in alone)  # the text, then at most the padding
