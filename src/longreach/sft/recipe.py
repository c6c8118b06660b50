"""Multi-stage instruction tuning (ChatQA 2 stages 1 -> 2 -> 3) on the one training loop.

For each stage, in the order of the YAML: draw the stage's blend, format and tokenize the samples with the
start model's tokenizer, pack them into shards with a loss mask (OUT/STAGE/shards), then call
`longreach.train.loop.train` with the model set to the previous stage's final checkpoint
(`checkpoint.latest`). Checkpoints record the chain in their `lineage`.

A re-run skips finished stages (their last checkpoint reached max_steps) and resumes an unfinished one from
its newest checkpoint; shards are rebuilt only when their inputs changed (a fingerprint of the datasets'
files, the stage settings and the tokenizer), and never under a stage that already has checkpoints.

Run:  longreach sft --config configs/sft-demo-cpu.yaml [--set stages.sft2.train.lr=1e-4]
      (one GPU as is; torchrun works too: rank 0 builds the data, the other ranks wait for it)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from longreach import config as config_io
from longreach.errors import InputError
from longreach.eval.chatrag import DEFAULT_INSTRUCTION
from longreach.sft.synth import SynthConfig

_SET_BY_RECIPE = ("model", "data", "out", "stage")  # TrainConfig fields the recipe fills in for each stage


@dataclass
class DatasetConfig:
    path: str = ""  # .jsonl / .json / .parquet file, or a folder of them (see sft/data.py for the records)
    instruction: str | None = None  # instruction for this dataset's first user turns (None = the recipe's)


@dataclass
class StageConfig:
    blend: dict[str, float] = field(default_factory=dict)  # dataset name -> sampling weight (proportions)
    samples: int = 0  # samples drawn for the stage; 0 = as many as its datasets hold together
    seq_len: int = 0  # packed sequence length; 0 = the recipe's
    train: dict[str, Any] = field(default_factory=dict)  # TrainConfig overrides for this stage (max_steps: 0
    # or absent = one pass over the stage's packed sequences)


@dataclass
class SFTConfig:
    model: str = ""  # start model: HF folder (or .gguf) that stage 1 starts from
    tokenizer: str = ""  # tokenizer for every stage ("" = the start model's)
    out: str = "runs/sft"  # OUT/recipe.yaml, OUT/data/ (synthesized sets), OUT/STAGE/ (shards + training run)
    format: str = "chatqa"  # chatqa (the ChatQA prompt) or template (the tokenizer's chat template)
    system: str | None = None  # system message; None = ChatQA's (chatqa) / none of ours (template)
    instruction: str = DEFAULT_INSTRUCTION  # first-user-turn instruction when neither sample nor dataset has one
    seq_len: int = 4096  # packed sequence length of every stage (a stage may set its own)
    pack: bool = True  # several samples per sequence (False: one sample per sequence, padded)
    seed: int = 0  # blend draws and data order
    datasets: dict[str, Any] = field(default_factory=dict)  # name -> path, or {path, instruction}
    synth: dict[str, Any] = field(default_factory=dict)  # name -> SynthConfig: long QA made before the stages
    train: dict[str, Any] = field(default_factory=dict)  # TrainConfig overrides shared by every stage
    stages: dict[str, Any] = field(default_factory=dict)  # stage name -> StageConfig, run in this order

    def __post_init__(self) -> None:
        self.datasets = {k: v if isinstance(v, DatasetConfig) else
                         DatasetConfig(path=v) if isinstance(v, str) else
                         config_io.from_dict(DatasetConfig, _mapping(v, f"datasets.{k}"), f"datasets.{k}.")
                         for k, v in self.datasets.items()}
        self.synth = {k: v if isinstance(v, SynthConfig) else
                      config_io.from_dict(SynthConfig, _mapping(v, f"synth.{k}"), f"synth.{k}.")
                      for k, v in self.synth.items()}
        self.stages = {k: v if isinstance(v, StageConfig) else
                       config_io.from_dict(StageConfig, _mapping(v, f"stages.{k}"), f"stages.{k}.")
                       for k, v in self.stages.items()}


def _mapping(v: Any, where: str) -> dict:
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise InputError(f"expected a mapping, got {v!r}", field=where)
    return v


def load(path: str | None, overrides: list[str] | None = None) -> SFTConfig:
    return config_io.load(SFTConfig, path, overrides)


def check(cfg: SFTConfig) -> None:
    from longreach.sft.format import FORMATS
    from longreach.sft.synth import check_config as check_synth
    from longreach.train.config import TrainConfig

    if not cfg.model:
        raise InputError("the start model is not set", field="model")
    if cfg.format not in FORMATS:
        raise InputError(f"must be one of {FORMATS}, got {cfg.format!r}", field="format")
    if not cfg.stages:
        raise InputError("no stage", field="stages")
    clash = set(cfg.datasets) & set(cfg.synth)
    if clash:
        raise InputError(f"names used both as datasets and synth: {sorted(clash)}", field="synth")
    for name, st in cfg.stages.items():
        if not st.blend:
            raise InputError("empty blend", field=f"stages.{name}.blend")
        for ds, w in st.blend.items():
            if ds not in cfg.datasets and ds not in cfg.synth:
                raise InputError(f"dataset {ds!r} is neither in `datasets` nor in `synth`",
                                 field=f"stages.{name}.blend.{ds}")
            if not isinstance(w, (int, float)) or not w > 0:
                raise InputError(f"weight must be a number > 0, got {w!r}", field=f"stages.{name}.blend.{ds}")
        for where, overrides in ((f"stages.{name}.train", st.train), ("train", cfg.train)):
            bad = [k for k in overrides if k in _SET_BY_RECIPE]
            if bad:
                raise InputError(f"{bad} are set by the recipe for each stage", field=where)
            config_io.from_dict(TrainConfig, {k: v for k, v in overrides.items()}, prefix=where + ".")
    for name, d in cfg.datasets.items():
        if not d.path:
            raise InputError("no path", field=f"datasets.{name}")
    for name, scfg in cfg.synth.items():  # before any tokenizer loads or set is made
        try:
            check_synth(scfg)
        except InputError as e:
            raise InputError(e.reason, field=f"synth.{name}" + (f".{e.field}" if e.field else "")) from None


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


def _fingerprint(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _files_id(path: str | Path) -> list[tuple[str, int, str]]:
    """What identifies a dataset's content: its files' names, sizes and content hashes (not modification
    times, which a copy to another machine changes)."""
    p = Path(path)
    files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
    out = []
    for f in files:
        h = hashlib.sha256()
        with f.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        out.append((f.name if f == p else str(f.relative_to(p)), f.stat().st_size, h.hexdigest()[:16]))
    return out


def _wait_for(path: Path, fingerprint: str, what: str, timeout_s: float = 7200) -> None:
    """Ranks other than 0 wait until rank 0 has written `path` (a file whose JSON has this fingerprint)."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if path.is_file():
            try:
                if _read_fingerprint(path) == fingerprint:
                    return
            except (json.JSONDecodeError, OSError):
                pass
        time.sleep(2)
    raise TimeoutError(f"rank {_rank()}: {what} did not appear at {path}")


def _read_fingerprint(path: Path) -> str | None:
    data = json.loads(path.read_text())
    return data.get("fingerprint") or data.get("sft", {}).get("fingerprint")


def make_synth(cfg: SFTConfig, tok: Any, tok_hash: str) -> dict[str, Path]:
    """Synthesize each `synth` set into OUT/data/NAME.jsonl (kept while its config and tokenizer match)."""
    from longreach.sft.synth import DocPool, load_docs, synthesize, write_jsonl

    paths, pools = {}, {}
    for name, scfg in cfg.synth.items():
        path = Path(cfg.out) / "data" / f"{name}.jsonl"
        meta = path.with_suffix(".json")
        fp = _fingerprint({"synth": dataclasses.asdict(scfg), "tokenizer": tok_hash})
        paths[name] = path
        if meta.is_file() and path.is_file() and _read_fingerprint(meta) == fp:
            continue
        if _rank() != 0:
            _wait_for(meta, fp, f"synthesized set {name}")
            continue
        t0 = time.time()
        key = (tuple(scfg.docs), scfg.split, scfg.max_docs)  # sets over the same documents share one pool
        if key not in pools:
            pools[key] = DocPool(load_docs(scfg.docs, scfg.split, scfg.max_docs), tok)
        records = synthesize(scfg, tok, pool=pools[key], salt=name)
        write_jsonl(records, path)
        meta.write_text(json.dumps({"fingerprint": fp, "records": len(records),
                                    "config": dataclasses.asdict(scfg)}, indent=2))
        _log(f"synth {name}: {len(records)} samples ({scfg.qa}, {scfg.construction}, lengths {scfg.lengths}) "
             f"-> {path} in {time.time() - t0:.1f}s")
    return paths


def build_stage(cfg: SFTConfig, name: str, tok: Any, tok_hash: str, paths: dict[str, Path],
                dest: Path) -> dict[str, Any]:
    """Shards of one stage at `dest` (reused when their fingerprint matches); returns their manifest."""
    from longreach.data.shards import PackedShards
    from longreach.data.tokenize import vocab_size
    from longreach.sft.data import Dataset, draw_blend
    from longreach.sft.format import encode_fitted
    from longreach.sft.pack import PackStats, write_shards

    st = cfg.stages[name]
    seq_len = st.seq_len or cfg.seq_len
    instr = {ds: (cfg.datasets[ds].instruction if ds in cfg.datasets else None) for ds in st.blend}
    fp = _fingerprint({"blend": st.blend, "samples": st.samples, "seq_len": seq_len, "format": cfg.format,
                       "system": cfg.system, "instruction": cfg.instruction, "dataset_instructions": instr,
                       "pack": cfg.pack, "seed": cfg.seed, "tokenizer": tok_hash,
                       "files": {ds: _files_id(paths[ds]) for ds in st.blend}})
    manifest_path = dest / "manifest.json"
    if manifest_path.is_file() and _read_fingerprint(manifest_path) == fp:
        return PackedShards(dest).manifest
    from longreach.train import checkpoint
    if checkpoint.latest(dest.parent) is not None:
        raise InputError(f"stage {name} has checkpoints but its data changed since they were made; delete "
                         f"{dest.parent} to re-run the stage with the new data", field=f"stages.{name}")
    if _rank() != 0:
        _wait_for(manifest_path, fp, f"shards of stage {name}")
        return PackedShards(dest).manifest
    t0 = time.time()
    datasets = {ds: Dataset(paths[ds], ds) for ds in st.blend}
    sizes = {ds: len(d) for ds, d in datasets.items()}
    total = st.samples or sum(sizes.values())
    picks = draw_blend(sizes, st.blend, total, cfg.seed, salt=name)
    stats = PackStats()

    def encoded():
        for ds, i in picks:
            s = datasets[ds].sample(i)
            default = instr[ds] if instr[ds] is not None else cfg.instruction  # "" = no instruction
            enc, status = encode_fitted(tok, s, cfg.format, cfg.system, default, seq_len)
            if status == "truncated":
                stats.truncated += 1
            if enc is None:
                stats.dropped += 1
                continue
            yield enc

    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    manifest = write_shards(encoded(), dest, seq_len, vocab_size(tok), pad, stats, packed=cfg.pack,
                            manifest_extra={"config": {"stage": name, "blend": st.blend, "format": cfg.format},
                                            "sft": {"fingerprint": fp, "sizes": sizes,
                                                    "drawn": {ds: sum(1 for d, _ in picks if d == ds)
                                                              for ds in st.blend}}})
    _log(f"stage {name}: {stats.samples} samples from {sizes} ({stats.truncated} cut in the middle to fit "
         f"{seq_len} tokens, {stats.dropped} dropped) -> {stats.sequences} sequences, fill "
         f"{stats.fill(seq_len):.2f}, {stats.target_tokens} target tokens, {time.time() - t0:.1f}s")
    return manifest


def stage_train_config(cfg: SFTConfig, name: str, start: str, sequences: int):
    """The TrainConfig of one stage: recipe-wide overrides, then the stage's, then model/data/out/stage."""
    from longreach.train.config import TrainConfig

    merged = {**cfg.train, **cfg.stages[name].train, "model": start, "data": str(Path(cfg.out) / name / "shards"),
              "out": str(Path(cfg.out) / name), "stage": name}
    tcfg = config_io.from_dict(TrainConfig, merged, prefix=f"stages.{name}.train.")
    if not merged.get("max_steps"):  # derive: one pass over the stage's sequences
        dp = max(1, int(os.environ.get("WORLD_SIZE", "1")) // max(1, tcfg.context_parallel))
        tcfg.max_steps = max(1, math.ceil(sequences / (tcfg.micro_batch * tcfg.grad_accum * dp)))
    return tcfg


def run(cfg: SFTConfig, prepare_only: bool = False) -> dict[str, Any]:
    """Run (or resume) every stage; returns {"stages": [{stage, checkpoint, step, loss, skipped}], ...}.

    prepare_only: synthesize and build every stage's shards, train nothing (a stage's data does not depend on
    the previous stage's model, so data can be made on a CPU machine and carried to the GPU one).
    """
    from longreach.data.tokenize import load_tokenizer, tokenizer_hash
    from longreach.train import checkpoint
    from longreach.train.loop import train

    check(cfg)
    out = Path(cfg.out)
    if _rank() == 0:
        out.mkdir(parents=True, exist_ok=True)
        config_io.dump(cfg, out / "recipe.yaml")
    tok = load_tokenizer(cfg.tokenizer or cfg.model)
    tok_hash = tokenizer_hash(tok)
    paths = {n: Path(d.path) for n, d in cfg.datasets.items()}
    paths.update(make_synth(cfg, tok, tok_hash))
    start, results = cfg.model, []
    for name in cfg.stages:
        manifest = build_stage(cfg, name, tok, tok_hash, paths, out / name / "shards")
        if prepare_only:
            results.append({"stage": name, "shards": str(out / name / "shards"), "sequences": manifest["sequences"],
                            **{k: manifest["sft"][k] for k in ("samples", "truncated", "dropped", "fill")}})
            continue
        tcfg = stage_train_config(cfg, name, start, manifest["sequences"])
        last = checkpoint.latest(tcfg.out)
        done = last is not None and checkpoint.read_meta(last).get("step", 0) >= tcfg.max_steps
        if done:
            _log(f"stage {name}: finished earlier ({last}); skipped (delete {tcfg.out} to re-run it)")
            res = {"checkpoint": str(last), "step": checkpoint.read_meta(last)["step"], "loss": None}
        else:
            _log(f"stage {name}: training from {start} for {tcfg.max_steps} steps"
                 + (f" (resuming from {last})" if last else ""))
            res = train(tcfg)
        results.append({"stage": name, "skipped": done, **res})
        start = res["checkpoint"]
        if res.get("stopped"):  # stopped on request (STOP file, SIGTERM): the later stages wait for a re-run
            _log(f"stage {name}: stopped at step {res['step']}; run the recipe again to resume")
            break
    return {"out": str(out), "final": start, "stages": results}
