"""The embedded CPU demo behind `make demo`: a tiny Llama goes from a 128-token window to 2,048 (16x).

    longreach demo --out runs/demo                        # 2 CPU cores: extend, evaluate, write report.md
    longreach demo --out runs/demo --set extend.steps=10  # any field below, as key=value
    longreach demo --stage base --out runs/demo-base      # re-make the committed base (one GPU: minutes)

The extension stage follows the recipe on a small scale: the committed base (pretrained by `--stage base` at
window L) gets a larger RoPE base (`rope.recommended_base`) and continued pretraining on documents packed
into 16 x L token sequences with a plain-text "<s>" between them (`longreach data prepare`, `longreach
train`); then
the base model, the base-change-only model and the extended model are compared on needle in a haystack
(pass-key needle in Paul Graham essays, text none of them saw) and perplexity by position (a held-out play).

A one-million-parameter model does not learn to retrieve from prose alone, so both stages mix in a declared
share of synthetic pass-key documents (Gutenberg prose with a pass-key sentence inside and the question, in
the NIAH prompt's own words, at the end). The report says so, with the share measured from the shards.
"""

from __future__ import annotations

import json
import random
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from longreach import config as config_io
from longreach.errors import InputError

ASSETS = Path(__file__).parent / "demo_assets"
COMMITTED_BASE = ASSETS / "base"
NEEDLE = "The pass key is {key}. Remember it. {key} is the pass key."
QUESTION = "What is the pass key?"
ANSWER = "{key}"
HELD_OUT = ("tempest",)  # Gutenberg plays (both editions) kept out of training: the perplexity text
SEP = "<s>"  # document separator of the extension data (ChatQA 2), plain text


@dataclass
class BaseStage:
    """The offline stage: tokenizer + base model at window L (`--stage base`)."""

    vocab_size: int = 2048  # byte-level BPE trained on the Gutenberg plays
    hidden: int = 128  # model width (4 layers x hidden 128: 1.0M parameters with the embeddings)
    layers: int = 4  # decoder layers (induction, the copy mechanism behind retrieval, needs at least 2)
    heads: int = 4  # attention heads (head dim 32)
    intermediate: int = 336  # MLP width (8/3 x hidden, rounded to 16)
    rope_theta: float = 10000.0  # RoPE base of the short-window model
    steps: int = 12000  # optimizer steps (retrieval appears abruptly, after 1,000-10,000 steps; GPU sweep in
    # docs/LOG.md: 3,000 steps gave a base that never retrieved, 12,000 the committed one)
    batch: int = 32  # sequences of L tokens per step
    lr: float = 1e-3  # peak learning rate (3e-3 learned retrieval later in calibration)
    warmup_steps: int = 100  # linear warm-up
    passkey_fraction: float = 0.8  # share of base sequences that are pass-key documents (0.8: its extension,
    # before filler numbers, reached 0.76-0.80 beyond L over 4 seeds; 0.5 or 0.9: 0.54-0.56)


@dataclass
class ExtendStage:
    """Continued pretraining at 16 x L after the base change."""

    steps: int = 1200  # optimizer steps (one epoch: the corpus holds steps x micro_batch sequences)
    micro_batch: int = 1  # sequences of 16 x L tokens per step (1 x 1,200 steps learned more than 2 x 600)
    lr: float = 3e-4  # peak learning rate, warm-up then cosine to lr/10 (1e-3 first wipes out retrieval)
    warmup_steps: int = 20  # linear warm-up
    passkey_fraction: float = 0.8  # share of the extension corpus's tokens in pass-key documents
    passkey_docs_max: int = 4  # pass-key documents per pass-key sequence: 1 to this many, random lengths (4:
    # NIAH beyond L 0.44 against 0.14 with 1 on the dev CPU; more answers per step, docs/LOG.md)
    named_fraction: float = 0.0  # share of pass-key sequences holding several named keys, each asked at the end
    # (0.5 wiped retrieval out: 0.00 everywhere; kept for the record and further tries, docs/LOG.md)
    named_keys: int = 6  # keys per such sequence ("The pass key of the red door is ..."): more long-range answers
    loss_weighting: str = ""  # "" | longce: LongCE's token weights (TrainConfig), the short view the base window L
    longce_stride: int = 128  # LongCE's targets per short window (windows of L + this many tokens)
    longce_floor: float = 0.0  # LongCE's least weight (TrainConfig.longce_floor)
    filler_numbers: float = 0.01  # share of the pass-key documents' filler words followed by a random number
    # (1-4 digits; the essays have 1%): distractor digits the key's copy learns to ignore (0: beyond L 0.78, the
    # last digit pulled to the haystack's numbers; 0.01: 0.94 on the CPU, 0.90-0.94 over 4 seeds; docs/LOG.md)


@dataclass
class DemoEval:
    """What is measured for each of the three models."""

    niah_lengths: list[int] = field(default_factory=list)  # prompt tokens; empty: L/2, then L..16L minus 8
    niah_depths: list[float] = field(default_factory=lambda: [0.0, 25.0, 50.0, 75.0, 100.0])  # % of context
    niah_trials: int = 2  # random pass keys per (length, depth) cell
    ppl_sequences: int = 4  # held-out windows of 16 x L tokens per model
    ppl_buckets: int = 16  # position ranges on the perplexity curve
    haystack: str | None = None  # NIAH haystack (.txt or folder); None: the Paul Graham essays
    ppl_text: str | None = None  # perplexity text; None: the held-out Gutenberg play (The Tempest)


@dataclass
class DemoConfig:
    out: str = "runs/demo"  # everything goes here: report.md, PNGs, config.yaml, models, data
    stage: str = "extend"  # extend (from the base model) or base (pretrain a new base model)
    base_model: str = ""  # base model folder; empty: the committed src/longreach/demo_assets/base
    window: int = 128  # L: the base model's window (base stage; the extension reads it from the model)
    factor: int = 16  # target window = factor x L
    rope_base: float | None = None  # new RoPE base; None: rope.recommended_base(target, head dim)
    scheme: str = "theta"  # theta (the recipe: a new base); yarn, pi, ntk, llama3 for comparison (rope_base unused)
    key_digits: int = 5  # digits of pass keys (training documents and NIAH)
    seed: int = 0  # corpus sampling, data order, initialisation
    base: BaseStage = field(default_factory=BaseStage)
    extend: ExtendStage = field(default_factory=ExtendStage)
    eval: DemoEval = field(default_factory=DemoEval)


def _log(msg: str) -> None:
    print(f"demo: {msg}", file=sys.stderr, flush=True)


# -------------------------------------------------------------------------------------------------- text

def gutenberg_files(held_out: bool) -> list[Path]:
    """The Gutenberg plays for training (held_out=False) or for the perplexity curves (True)."""
    from longreach import assets

    files = [p for p in sorted(assets.gutenberg_texts().glob("*.txt")) if p.name != "metadata.txt"]
    return [p for p in files if p.name.startswith(HELD_OUT) == held_out]


def lead_in() -> str:
    """The needle's words before the key: what the NIAH prompt ends with ("The pass key is")."""
    from longreach.eval.niah import lead_in as niah_lead_in

    return niah_lead_in(NEEDLE, ANSWER)


def question_block() -> str:
    """What follows the context, as `longreach eval niah` writes it for a raw-text model."""
    return f"\n\nQuestion: {QUESTION}\nAnswer: {lead_in()}"


def make_key(rng: random.Random, digits: int) -> str:
    return str(rng.randint(10 ** (digits - 1), 10 ** digits - 1))


def with_numbers(text: str, rate: float, seed: int) -> str:
    """`text` with a random number (1-4 digits, mostly 1 or 4 as in the essays) after a `rate` share of its
    words; the same seed places them the same way on any prefix of the words."""
    if rate <= 0:
        return text
    rng = random.Random(seed)
    words = text.split(" ")
    for i, w in enumerate(words):
        if rng.random() < rate:
            digits = rng.choices([1, 2, 3, 4], weights=[5, 2, 1, 2])[0]
            words[i] = f"{w} {rng.randint(0 if digits == 1 else 10 ** (digits - 1), 10 ** digits - 1)}"
    return " ".join(words)


def passkey_document(filler: str, key: str, depth: float) -> str:
    """Prose with the needle after a sentence at `depth` % and the question + answer at the end."""
    from longreach.eval.niah import insert_needle

    text = insert_needle(filler, NEEDLE.replace("{key}", key), depth, int(len(filler) * depth / 100))
    return text + question_block() + f" {key}.\n"


NAMES = ["red door", "blue box", "old mill", "green gate", "back room", "iron chest", "north tower", "tin lamp",
         "stone well", "oak desk", "glass jar", "west wing"]


def named_passkey_document(filler: str, keys: list[tuple[str, str, float]], rng: random.Random) -> str:
    """Prose with one needle per (name, key, depth) and, at the end, each name's question and answer in a random
    order: several long-range answers from one context (the NIAH prompt asks about one unnamed key)."""
    from longreach.eval.niah import insert_needles, needle_position

    placed = [(needle_position(filler, d, int(len(filler) * d / 100)), i,
               f"The pass key of the {name} is {key}. Remember it. {key} is the pass key of the {name}.")
              for i, (name, key, d) in enumerate(keys)]
    asked = rng.sample(keys, len(keys))
    return insert_needles(filler, placed) + "".join(
        f"\n\nQuestion: What is the pass key of the {name}?\nAnswer: The pass key of the {name} is {key}."
        for name, key, _ in asked) + "\n"


def build_tokenizer(texts: list[str], vocab_size: int, seed: int = 0):
    """Byte-level BPE trained on `texts` plus 30,000 pass-key sentences, as a transformers tokenizer.

    Digits are single tokens and the space before a number stays with its first digit (" 4" "8" "2" "1" "3"),
    so a key is copied digit by digit; runs of spaces become one space (the essays put two after a period,
    which would otherwise be a frequent bare-space token right where a key begins). The sentences make sure
    every " 0".." 9" merge exists. "<s>" is the BOS token (base sequences start with it); no BOS is added to
    text."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.Sequence([normalizers.Replace("\r\n", "\n"),
                                           normalizers.Replace(Regex(" {2,}"), " ")])
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r" ?[0-9]"), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    tok.decoder = decoders.ByteLevel()
    rng = random.Random(seed)
    sentences = "\n".join(f"The pass key is {rng.randint(0, 99999):05d}." for _ in range(30000))
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(list(texts) + [sentences], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="</s>",
                                   model_max_length=1 << 30)


# ------------------------------------------------------------------------------------------------ base stage

def base_sequences(cfg: DemoConfig, tok, out_dir: Path, n: int) -> dict[str, Any]:
    """`n` sequences of exactly L tokens, written as shards: BOS, then a pass-key document or a prose window.

    Built from token pieces (not packed text), so every pass-key document is whole inside its sequence."""
    import numpy as np

    from longreach.data.shards import ShardWriter
    from longreach.data.tokenize import encode_batch, plain_text_encoder, vocab_size

    enc = plain_text_encoder(tok)
    L = cfg.window
    plays = encode_batch(enc, [p.read_text(errors="replace") for p in gutenberg_files(held_out=False)])
    weights = np.array([len(p) for p in plays], dtype=np.float64)
    q = [int(i) for i in encode_batch(enc, [question_block()])[0]]
    rng, nprng = random.Random(cfg.seed), np.random.default_rng(cfg.seed)

    def prose(k: int) -> list[int]:
        ids = plays[nprng.choice(len(plays), p=weights / weights.sum())]
        start = int(nprng.integers(0, len(ids) - k))
        return [int(i) for i in ids[start:start + k]]

    passkeys = 0
    with ShardWriter(out_dir, L, vocab_size(tok), overwrite=True) as writer:
        for _ in range(n):
            if rng.random() < cfg.base.passkey_fraction:
                key = make_key(rng, cfg.key_digits)
                needle, answer = [[int(i) for i in x] for x in
                                  encode_batch(enc, ["\n" + NEEDLE.replace("{key}", key) + "\n", f" {key}."])]
                room = L - 1 - len(needle) - len(q) - len(answer)
                if room < 1:
                    raise InputError(f"window {L} is too short for the pass-key document", field="window")
                filler, cut = prose(room), rng.randint(0, room)
                seq = [tok.bos_token_id] + filler[:cut] + needle + filler[cut:] + q + answer
                passkeys += 1
            else:
                seq = [tok.bos_token_id] + prose(L - 1)
            writer.add(np.asarray(seq))
        return writer.close({"demo": {"passkey_sequences": passkeys, "sequences": n}})


def run_base(cfg: DemoConfig) -> dict[str, Any]:
    """Tokenizer, data, and a base model pretrained at window L; writes OUT/base (a Hugging Face folder)."""
    from longreach.model.load import save_model
    from longreach.model.tiny import tiny_llama_config
    from longreach.train.config import TrainConfig
    from longreach.train.loop import train_to_end

    out, b = Path(cfg.out), cfg.base
    t0 = time.time()
    texts = [p.read_text(errors="replace") for p in gutenberg_files(held_out=False)]
    tok = build_tokenizer(texts, b.vocab_size, cfg.seed)
    manifest = base_sequences(cfg, tok, out / "base-data", b.steps * b.batch)
    _log(f"base data: {manifest['sequences']} sequences of {cfg.window} tokens "
         f"({manifest['demo']['passkey_sequences']} pass-key documents) in {time.time() - t0:.0f}s")
    mcfg = tiny_llama_config(len(tok), hidden=b.hidden, layers=b.layers, heads=b.heads, kv_heads=b.heads,
                             intermediate=b.intermediate, max_position=cfg.window, rope_theta=b.rope_theta)
    mcfg.rms_norm_eps = 1e-6  # as the committed base (transformers' LlamaConfig default)
    mcfg.bos_token_id, mcfg.eos_token_id = tok.bos_token_id, tok.eos_token_id
    mcfg.pad_token_id = tok.pad_token_id
    init = out / "base-init"
    init.mkdir(parents=True, exist_ok=True)
    mcfg.save_pretrained(init)
    tok.save_pretrained(init)
    tcfg = TrainConfig(model=str(init), data=str(out / "base-data"), out=str(out / "base-train"),
                       stage="base", max_steps=b.steps, micro_batch=b.batch, lr=b.lr, min_lr=b.lr / 10,
                       warmup_steps=b.warmup_steps, seed=cfg.seed, save_every=max(1, b.steps // 4),
                       keep_checkpoints=1, loss_chunk_tokens=8192, precision="fp32")  # fp32 on a GPU too
    summary = train_to_end(tcfg)
    model, _ = _load(summary["checkpoint"])
    save_model(model, tok, out / "base", extra={"stage": "base", "recipe": "longreach demo --stage base",
                                                 "config": config_io.to_dict(cfg), "train": summary})
    res = niah(cfg, out / "base", out / "eval" / "niah-base", niah_lengths(cfg, cfg.window)[:2])
    _log(f"base model: {out / 'base'}; NIAH inside its window: {res['mean']:.2f} "
         f"(copy it to {COMMITTED_BASE} to make it the demo's base)")
    return {"base": str(out / "base"), "niah_in_window": res["mean"], "seconds": round(time.time() - t0, 1)}


def _load(path):
    from longreach.model.load import load_model

    return load_model(path)


# -------------------------------------------------------------------------------------------------- extension

def write_corpus(cfg: DemoConfig, tok, target: int, corpus_dir: Path) -> dict[str, Any]:
    """Gutenberg prose + pass-key documents as two JSON-lines sources, sized for one epoch of training.

    Documents are cut to exact token counts so that, packed in order with "<s>" after each, every sequence
    holds whole documents: a pass-key document split across two sequences would teach the model to invent a
    key (the question without its needle) and would lose exactly the long-distance examples. A pass-key
    sequence is one document with the needle at a uniform depth; a prose sequence is two passages of random
    lengths (so documents also meet mid-sequence at a separator, as in the recipe)."""
    import numpy as np

    from longreach.data.tokenize import encode_batch, plain_text_encoder

    e = cfg.extend
    enc = plain_text_encoder(tok)  # what `data prepare` encodes with

    def count(text: str) -> int:
        return len(enc.encode(text, add_special_tokens=False).ids)

    plays = encode_batch(enc, [p.read_text(errors="replace") for p in gutenberg_files(held_out=False)])
    sizes = np.array([len(p) for p in plays])
    weights = sizes / sizes.sum()
    rng, nprng = random.Random(cfg.seed), np.random.default_rng(cfg.seed)
    sep = count(SEP)
    unit = target - sep  # tokens of one document filling a sequence

    def exact(n: int, make) -> str:
        """Text of exactly n tokens from `make(m)` (m prose tokens): re-encoding decoded tokens can merge or
        split a few at the seams, so adjust m until the count is right (a fresh passage if it never is)."""
        long_enough = weights * (sizes > n)  # a short text (one has 829 tokens) cannot hold n tokens
        for _ in range(20):
            ids = plays[nprng.choice(len(plays), p=long_enough / long_enough.sum())]
            start = int(nprng.integers(0, len(ids) - n))
            m = n
            for _ in range(6):
                text = make(tok.decode(ids[start:start + max(m, 0)]))
                k = count(text)
                if k == n:
                    return text
                m += n - k
        raise RuntimeError(f"could not cut a text of exactly {n} tokens")  # a bug, never seen in practice

    sequences = e.steps * e.micro_batch
    n_passkey = round(sequences * e.passkey_fraction)
    corpus_dir.mkdir(parents=True, exist_ok=True)
    with open(corpus_dir / "gutenberg.jsonl", "w") as f:
        for _ in range(sequences - n_passkey):
            room = unit - sep  # two passages and one more separator fill the sequence
            first = rng.randint(64, room - 64)
            f.writelines(json.dumps({"text": exact(n, lambda t: t)}) + "\n" for n in (first, room - first))
    docs = 0
    with open(corpus_dir / "passkey.jsonl", "w") as f:
        for _ in range(n_passkey):
            if rng.random() < e.named_fraction:
                keys = [(name, make_key(rng, cfg.key_digits), rng.uniform(0, 100))
                        for name in rng.sample(NAMES, min(e.named_keys, len(NAMES)))]
                f.write(json.dumps({"text": exact(unit, lambda t, k=keys: named_passkey_document(t, k, rng))})
                        + "\n")
                docs += 1
                continue
            for n in passkey_lengths(rng, unit, sep, e.passkey_docs_max):
                key, depth = make_key(rng, cfg.key_digits), rng.uniform(0, 100)
                salt = docs  # numbers placed by the document's index: the corpus draws stay as without them
                text = exact(n, lambda t, k=key, d=depth, z=salt:
                             passkey_document(with_numbers(t, e.filler_numbers, z), k, d))
                f.write(json.dumps({"text": text}) + "\n")
                docs += 1
    return {"passkey_documents": docs, "passkey_sequences": n_passkey, "sequences": sequences,
            "separator_tokens": sep}


def passkey_lengths(rng: random.Random, unit: int, sep: int, most: int, shortest: int = 96) -> list[int]:
    """Token counts of the 1..`most` pass-key documents of one sequence: they and a separator after each but
    the last fill `unit` tokens (one document: the whole sequence, so the longest distances stay covered)."""
    k = rng.randint(1, max(1, min(most, unit // (shortest + sep))))
    room = unit - (k - 1) * sep
    cuts = sorted(rng.sample(range(shortest, room - shortest + 1), k - 1)) if k > 1 else []
    lengths = [b - a for a, b in zip([0] + cuts, cuts + [room])]
    if min(lengths) < shortest:  # cuts closer than `shortest`: fall back to equal parts
        lengths = [room // k] * (k - 1) + [room - (room // k) * (k - 1)]
    return lengths


def niah(cfg: DemoConfig, model: Path, out: Path, lengths: list[int]) -> dict[str, Any]:
    """Pass-key needle in the Paul Graham essays (`longreach eval niah`, greedy, raw-text prompt)."""
    from longreach.eval.niah import NiahConfig, run

    return run(NiahConfig(model=str(model), haystack=cfg.eval.haystack, needle=NEEDLE, question=QUESTION,
                          answer=ANSWER, lengths=lengths, depths=list(cfg.eval.niah_depths), out=str(out),
                          trials=cfg.eval.niah_trials, key_digits=cfg.key_digits,
                          max_new_tokens=cfg.key_digits + 4, chat=False, seed=cfg.seed, batch_size=8,
                          resume=False))


def niah_lengths(cfg: DemoConfig, window: int) -> list[int]:
    """Prompt lengths: L/2, then just under L, 2L, 4L, 8L, 12L, 16L, leaving room for the answer, so that the
    key is generated inside the window being tested (a model fails on positions it never saw)."""
    if cfg.eval.niah_lengths:
        return list(cfg.eval.niah_lengths)
    room = cfg.key_digits + 3
    return [window // 2] + [window * k - room for k in (1, 2, 4, 8, 12, 16) if k <= cfg.factor]


def run_extend(cfg: DemoConfig) -> dict[str, Any]:
    """Base change + continued pretraining at factor x L; NIAH and perplexity of three models; report."""
    from longreach.data.config import PrepareConfig
    from longreach.data.prepare import prepare
    from longreach.eval.ppl import PplConfig
    from longreach.eval.ppl import run as ppl_run
    from longreach.model import rope
    from longreach.model.extend import extend_checkpoint
    from longreach.train.config import TrainConfig
    from longreach.train.loop import train_to_end

    out, e = Path(cfg.out), cfg.extend
    times: dict[str, float] = {}
    t0 = time.time()
    base_src = Path(cfg.base_model) if cfg.base_model else COMMITTED_BASE
    if not (base_src / "config.json").is_file():
        raise InputError("no base model here: run `longreach demo --stage base` first", path=str(base_src),
                         field="base_model")
    for sub in ("corpus", "data", "models", "train", "eval"):  # a run starts clean; nothing else is touched
        shutil.rmtree(out / sub, ignore_errors=True)
    model, tok = _load(base_src)
    window = int(model.config.max_position_embeddings)
    target = cfg.factor * window
    new_base = cfg.rope_base or rope.recommended_base(target, rope.head_dim(model.config))
    del model
    base_dir = out / "models" / "base"
    shutil.copytree(base_src, base_dir)
    _log(f"base model {base_src}: window {window}; target {target} tokens; RoPE base -> {new_base:.3g}")

    # data: corpus files -> `data prepare` at the target length, "<s>" between documents
    corpus = write_corpus(cfg, tok, target, out / "corpus")
    sources = [str(p) for p in (out / "corpus" / "gutenberg.jsonl", out / "corpus" / "passkey.jsonl")
               if p.stat().st_size > 0]  # a tiny run may draw no document of one kind
    pcfg = PrepareConfig(inputs=sources, tokenizer=str(base_dir), seq_len=target, out=str(out / "data"),
                         sep_mode="sep", sep=SEP,
                         upsample_ratio=1.0, shuffle=False, seed=cfg.seed)  # the corpus sets mix and layout
    data = prepare(pcfg, overwrite=True)
    if data["sequences"] != corpus["sequences"] or data["tail_tokens_dropped"]:
        raise RuntimeError(f"packing is not aligned with the corpus: {data['sequences']} sequences, "
                           f"{data['tail_tokens_dropped']} tokens left over")  # a bug, never bad input
    src = data["sources"]
    written = {k: v["tokens_written"] for k, v in src.items()}
    passkey_share = written.get("passkey", 0) / max(1, sum(written.values()))
    times["data"] = time.time() - t0
    _log(f"data: {data['sequences']} sequences of {target} tokens; pass-key documents {passkey_share:.1%} of "
         f"tokens ({corpus['passkey_documents']} documents) in {times['data']:.0f}s")

    # the base change, then continued pretraining
    t = time.time()
    change_dir = out / "models" / "base-change"
    extend_checkpoint(base_dir, change_dir, target, scheme=cfg.scheme,
                      base=new_base if cfg.scheme == "theta" else None)
    tcfg = TrainConfig(model=str(change_dir), data=str(out / "data"), out=str(out / "train"), stage="extend",
                       max_steps=e.steps, micro_batch=e.micro_batch, lr=e.lr, min_lr=e.lr / 10,
                       warmup_steps=e.warmup_steps, seed=cfg.seed, save_every=e.steps, keep_checkpoints=1,
                       loss_chunk_tokens=8192, precision="fp32",  # as on the CPU, also where a GPU runs it
                       loss_weighting=e.loss_weighting, longce_window=window, longce_stride=e.longce_stride,
                       longce_floor=e.longce_floor)
    summary = train_to_end(tcfg)
    ext_dir = out / "models" / "extended"
    shutil.copytree(summary["checkpoint"], ext_dir, ignore=shutil.ignore_patterns("trainer_state.pt"))
    times["train"] = time.time() - t
    _log(f"trained {e.steps} steps x {e.micro_batch} x {target} tokens in {times['train']:.0f}s, "
         f"final loss {summary['loss']:.3f}")

    # evaluation of the three models
    t = time.time()
    lengths = niah_lengths(cfg, window)
    models = {"base": base_dir, "base-change": change_dir, "extended": ext_dir}
    niah_res = {name: niah(cfg, path, out / "eval" / f"niah-{name}", lengths)
                for name, path in models.items()}
    ppl_text = cfg.eval.ppl_text or str(gutenberg_files(held_out=True)[0])
    ppl_res = ppl_run(PplConfig(models=[str(p) for p in models.values()], text=ppl_text, length=target,
                                buckets=cfg.eval.ppl_buckets, sequences=cfg.eval.ppl_sequences,
                                out=str(out / "eval" / "ppl")))
    times["eval"] = time.time() - t
    times["total"] = time.time() - t0
    facts = {"window": window, "target": target, "old_base": float(_load_config(base_dir)["rope_theta"]),
             "new_base": new_base, "passkey_share": passkey_share, "sequences": data["sequences"],
             "tokens_per_step": e.micro_batch * target, "train_loss": summary["loss"], "times": times,
             "corpus": corpus, "sources": src}
    return write_report(cfg, out, facts, niah_res, ppl_res)


def _load_config(path: Path) -> dict[str, Any]:
    from transformers import AutoConfig

    from longreach.model.rope import rope_parameters

    return rope_parameters(AutoConfig.from_pretrained(path))


# -------------------------------------------------------------------------------------------------- report

def niah_summary(res: dict[str, Any], window: int) -> dict[str, Any]:
    """Mean score per length, inside the base window (<= L) and beyond it (L, target]."""
    from longreach.eval.niah import per_length

    per = per_length(res)
    inside = [s for n, s in per.items() if n <= window]
    beyond = [s for n, s in per.items() if n > window]
    return {"per_length": per, "inside": sum(inside) / len(inside) if inside else None,
            "beyond": sum(beyond) / len(beyond) if beyond else None}


def write_report(cfg: DemoConfig, out: Path, facts: dict[str, Any], niah_res: dict[str, Any],
                 ppl_res: dict[str, Any]) -> dict[str, Any]:
    """report.md + PNGs in OUT, summary.json, and a table on stderr; returns the summary."""
    window = facts["window"]
    rows = []
    for name, res in niah_res.items():
        s = niah_summary(res, window)
        curve = next(m for m in ppl_res["models"] if m["model"] == name)["curve"]
        inside = [b["ppl"] for b in curve if b["end"] <= window]
        rows.append({"model": name, "niah_inside": s["inside"], "niah_beyond": s["beyond"],
                     "niah_per_length": s["per_length"], "ppl_last": curve[-1]["ppl"],
                     "ppl_inside": sum(inside) / len(inside) if inside else None})
        shutil.copy(out / "eval" / f"niah-{name}" / "heatmap.png", out / f"niah-{name}.png")
    shutil.copy(out / "eval" / "ppl" / "ppl.png", out / "ppl.png")
    keys = ("window", "target", "old_base", "new_base", "passkey_share", "tokens_per_step", "train_loss")
    summary = {"rows": rows, **{k: facts[k] for k in keys}, "times": facts["times"]}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "report.md").write_text("\n".join(report_lines(cfg, facts, rows)))

    def f(x: float | None, fmt: str = ".2f") -> str:
        return "-" if x is None else format(x, fmt)

    table = [f"{'model':<12} {'NIAH<=L':>8} {'NIAH>L':>8} {'ppl<=L':>8} {'ppl@end':>8}"]
    table += [f"{r['model']:<12} {f(r['niah_inside']):>8} {f(r['niah_beyond']):>8} "
              f"{f(r['ppl_inside'], '.1f'):>8} {f(r['ppl_last'], '.1f'):>8}" for r in rows]
    print("\n".join(table), file=sys.stderr)
    _log(f"report: {out / 'report.md'} ({facts['times']['total']:.0f}s)")
    return summary


def report_lines(cfg: DemoConfig, facts: dict[str, Any], rows: list[dict[str, Any]]) -> list[str]:
    """The markdown of report.md."""
    def f(x: float | None, fmt: str = ".2f") -> str:
        return "-" if x is None else format(x, fmt)

    window, target, e, t = facts["window"], facts["target"], cfg.extend, facts["times"]
    lengths = list(rows[0]["niah_per_length"])
    recipe = (
        f"A 4-layer Llama (1.0M parameters) that longreach pretrained at a {window}-token window gets the "
        + (f"ChatQA 2 treatment on a small scale: the RoPE base goes from {facts['old_base']:.3g} to "
           f"{facts['new_base']:.3g} (`rope.recommended_base` for {target} tokens at its head dimension), then "
           if cfg.scheme == "theta" else
           f"RoPE scheme `{cfg.scheme}` (factor {cfg.factor}) instead of ChatQA 2's base change, then ")
        + f"{e.steps} steps of continued pretraining on {facts['sequences']} sequences of {target} tokens "
        f"({facts['tokens_per_step']:,} tokens per step, lr {e.lr:g}) made by `longreach data prepare`, "
        f"documents joined by a plain-text `{SEP}`"
        + (f", each token's loss weighted by LongCE (the short view {window} + {e.longce_stride} tokens)."
           if e.loss_weighting else "."))
    synthetic = (
        "**Synthetic data, declared.** Besides Gutenberg plays, the training data holds synthetic pass-key "
        f"documents: Gutenberg prose with the sentence \"{NEEDLE.replace('{key}', '48213')}\" at a random "
        f"depth and, at the end, \"Question: {QUESTION} / Answer: {lead_in()} 48213.\" (the NIAH prompt's "
        f"own words). They are **{facts['passkey_share']:.1%} of the extension tokens** (1 to "
        f"{cfg.extend.passkey_docs_max} whole documents per sequence, never split across two) and "
        f"{cfg.base.passkey_fraction:.0%} of the base model's sequences: a model of one million parameters does "
        "not learn retrieval from prose alone in this budget."
        + (f" A random number of 1-4 digits follows {cfg.extend.filler_numbers:.0%} of the extension pass-key "
           "documents' filler words (distractor digits, as numbers occur in the essays)."
           if cfg.extend.filler_numbers > 0 else "")
        + " The NIAH haystack (Paul Graham essays) and the perplexity text (The Tempest, held out) were "
        "never trained on.")
    method = (
        f"NIAH: prompt lengths in tokens (the answer fits the window too), greedy answer, "
        f"{cfg.key_digits}-digit keys, depths {', '.join(f'{d:g}' for d in cfg.eval.niah_depths)}%, "
        f"{cfg.eval.niah_trials} keys per cell. Perplexity: {cfg.eval.ppl_sequences} windows of {target} "
        f"tokens, {cfg.eval.ppl_buckets} position buckets.")
    timing = (f"data {t['data']:.0f} s, training {t['train']:.0f} s, evaluation {t['eval']:.0f} s, "
              f"total {t['total']:.0f} s.")
    lines = [f"# longreach demo: a {window}-token model extended to {target} tokens", "", recipe, "",
             synthetic, "", "| model | NIAH <= L | NIAH (L, 16L] | " + " | ".join(str(n) for n in lengths)
             + f" | ppl, positions < {window} | ppl, last positions |",
             "|---|---|---|" + "---|" * len(lengths) + "---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {f(r['niah_inside'])} | **{f(r['niah_beyond'])}** | "
                     + " | ".join(f(v) for v in r["niah_per_length"].values())
                     + f" | {f(r['ppl_inside'], '.1f')} | {f(r['ppl_last'], '.1f')} |")
    return lines + [
        "", method, "", "## Needle in a haystack", "",
        *[f"![{r['model']}](niah-{r['model']}.png)" for r in rows],
        "", "## Perplexity by position", "", "![perplexity](ppl.png)", "", "## Time", "", timing, "",
        "## Reproduce", "",
        "    longreach demo --out runs/demo                  # this report; config.yaml holds every setting",
        "    longreach demo --stage base --out runs/base     # the base model; then copy runs/base/base to",
        "                                                    # src/longreach/demo_assets/base", ""]


def run(cfg: DemoConfig) -> dict[str, Any]:
    """The demo stage `cfg.stage`; writes the resolved config next to its outputs."""
    if cfg.stage not in ("extend", "base"):
        raise InputError(f"stage must be extend or base, got {cfg.stage!r}", field="stage")
    if not 0.0 <= cfg.extend.passkey_fraction < 1.0 or not 0.0 <= cfg.base.passkey_fraction <= 1.0:
        raise InputError("pass-key fractions must be in [0, 1) (extension) and [0, 1] (base)",
                         field="extend.passkey_fraction")
    Path(cfg.out).mkdir(parents=True, exist_ok=True)
    config_io.dump(cfg, Path(cfg.out) / "config.yaml")
    return run_base(cfg) if cfg.stage == "base" else run_extend(cfg)
