"""RULER-style synthetic tasks, generated at any token length from any haystack text, and their metrics.

Task definitions follow NVIDIA/RULER (scripts/synthetic.yaml, scripts/data/synthetic/*.py, their prompt
templates and answer prefixes); the code is longreach's own:
- niah_single_1/2/3, niah_multikey_1/2/3, niah_multivalue, niah_multiquery: needles "One of the special magic
  {numbers|uuids} for {key} is: {value}." hidden in a haystack of repeated noise sentences, essay text (cut at
  sentence boundaries, needles at depths drawn from 40 evenly spaced ones) or distractor needles;
- vt: a chain "VAR A = 12345", "VAR B = VAR A", ... (4 hops) in noise; find every variable equal to the value;
  one worked example comes first, as in RULER;
- cwe: a numbered word list where 10 words appear 30 times (6 below 4K tokens) and the rest 3 times (1), after a
  worked example; fwe: coded words drawn from a Zipf (zeta, alpha 2) law, name the three most frequent.
Each example is {"id", "task", "length", "input", "outputs", "answer_prefix", "tokens", "max_new_tokens"}:
`length` is the requested total (prompt + max_new_tokens, as in RULER), `tokens` what the prompt measures
(input + answer_prefix). As in RULER the answer prefix is kept apart from `input`: a completion model gets
`input + answer_prefix`; a chat model gets `input` as the user turn and the prefix at the start of its reply.
Everything is drawn from `random.Random` seeded by (seed, task, length, index): the same call gives the same data.

Metrics: string_match_all (share of references found in the output, case-insensitive) for all of these;
string_match_part (any reference found) for RULER's QA tasks.
"""

from __future__ import annotations

import functools
import itertools
import random
import re
import string
import uuid
from dataclasses import dataclass
from pathlib import Path

from longreach.errors import InputError

NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
NEEDLE = "One of the special magic {kind} for {key} is: {value}."


@dataclass(frozen=True)
class NiahSpec:
    haystack: str  # "noise" (repeated NOISE), "essay" (haystack text) or "needle" (distractor needles)
    key_type: str  # what keys are: "words" (adjective-noun), "numbers" or "uuids"
    value_type: str  # what values are: "numbers" (7 digits) or "uuids"
    num_keys: int = 1  # needles with different keys
    num_values: int = 1  # values per key
    num_queries: int = 1  # keys asked about


@dataclass(frozen=True)
class VtSpec:
    num_chains: int = 1  # variable chains hidden in the noise
    num_hops: int = 4  # assignments after the first, per chain


@dataclass(frozen=True)
class CweSpec:
    freq_cw: int = 30  # repeats of each common word (6 below 4K tokens)
    freq_ucw: int = 3  # repeats of each other word (1 below 4K tokens)
    num_cw: int = 10  # common words to name


@dataclass(frozen=True)
class FweSpec:
    alpha: float = 2.0  # zeta-law exponent of word frequencies


TASKS = {  # RULER's synthetic.yaml
    "niah_single_1": NiahSpec("noise", "words", "numbers"),
    "niah_single_2": NiahSpec("essay", "words", "numbers"),
    "niah_single_3": NiahSpec("essay", "words", "uuids"),
    "niah_multikey_1": NiahSpec("essay", "words", "numbers", num_keys=4),
    "niah_multikey_2": NiahSpec("needle", "words", "numbers"),
    "niah_multikey_3": NiahSpec("needle", "uuids", "uuids"),
    "niah_multivalue": NiahSpec("essay", "words", "numbers", num_values=4),
    "niah_multiquery": NiahSpec("essay", "words", "numbers", num_queries=4),
    "vt": VtSpec(),
    "cwe": CweSpec(),
    "fwe": FweSpec(),
}
_GEN = {NiahSpec: 128, VtSpec: 30, CweSpec: 120, FweSpec: 50}  # RULER's tokens_to_generate
TOKENS_TO_GENERATE = {name: _GEN[type(spec)] for name, spec in TASKS.items()}

# Keys of word type are adjective-noun pairs (RULER draws them from wonderwords' lists).
_ADJECTIVES = (  # noqa: SIM905 - word lists read better as text
    "able acid amber ancient angry arctic azure bitter blazing bold brave brief bright broad bronze busy calm "
    "careful cheap clever cloudy coastal cold crimson crisp curious damp dapper daring dark dizzy dusty eager "
    "early elastic elegant empty fancy fast fierce flat fluffy foggy fragile fresh friendly frozen gentle giant "
    "glossy golden grumpy hidden hollow humble icy jolly keen lively lonely loud lucky marble mellow mighty "
    "misty modern muddy narrow nimble noisy odd olive orange pale patient plain polite proud purple quick quiet "
    "rapid rare rough royal rusty salty scarlet shaggy sharp shiny silent silver sleepy slim smooth snowy "
    "solid sour spicy steady stormy sturdy sunny swift tall tame tender tidy tiny tough velvet vivid warm wary "
    "wild windy wise witty wooden yellow young zealous"
).split()
_NOUNS = (  # noqa: SIM905
    "acorn anchor apple arrow badge bakery balloon banjo barrel basket beacon beetle bell bicycle blanket "
    "bottle bridge bucket button cabin camel candle canyon carpet castle cedar chair cherry chimney cliff clock "
    "cloud comet compass cookie copper cottage crayon crown cup curtain daisy desert dolphin donkey dragon "
    "drum eagle engine falcon feather fern fiddle flag flute forest fountain fox garden garlic glacier goat "
    "guitar hammer harbor helmet hill honey horizon island jacket jungle kettle kite ladder lantern lemon "
    "lighthouse lizard magnet maple meadow mirror monkey mountain needle nest notebook oak ocean orchard otter "
    "owl paddle panda parrot pebble pencil pepper piano pillow pine planet pocket pond puzzle quilt rabbit "
    "raven ribbon river rocket saddle sailor sandal scarf shell shovel spider squirrel stable statue stone "
    "sunset swan teapot temple thunder tiger tomato tower tractor trumpet tulip tunnel turtle umbrella valley "
    "violin wagon walnut whale whistle window wizard yacht zebra"
).split()
_DEPTHS = [round(100 * k / 39) for k in range(40)]  # 40 evenly spaced depths, 0..100


@functools.lru_cache(maxsize=2)
def _default_haystack() -> str:
    from longreach import assets

    files = sorted(Path(assets.paul_graham_essays()).glob("*.txt"))
    return "\n\n".join(f.read_text(encoding="utf-8", errors="replace") for f in files)


def _count(tokenizer, text: str) -> int:
    return len(tokenizer.encode(text, add_special_tokens=False))


def _draw(kind: str, rng: random.Random) -> str:
    if kind == "numbers":
        return str(rng.randint(10**6, 10**7 - 1))
    if kind == "uuids":
        return str(uuid.UUID(int=rng.getrandbits(128), version=4))
    if kind == "words":
        return f"{rng.choice(_ADJECTIVES)}-{rng.choice(_NOUNS)}"
    raise InputError(f"unknown needle type '{kind}'", field="type")


def _distinct(kind: str, n: int, rng: random.Random, exclude: set[str] = frozenset()) -> list[str]:
    out: list[str] = []
    while len(out) < n:
        x = _draw(kind, rng)
        if x not in exclude and x not in out:
            out.append(x)
    return out


def _sentences(text: str) -> list[str]:
    return [s for s in re.split(r"(?<=[.!?])\s+", text.strip()) if s]


def _insert_at_depths(words: list[str], size: int, inserts: list[str], rng: random.Random) -> str:
    """The first `size` haystack words (repeated if needed), split into sentences, with `inserts` placed at
    sentence boundaries at depths drawn (without repeats) from `_DEPTHS`."""
    reps = -(-size // len(words))
    sents = _sentences(" ".join((words * reps)[:size]))
    cuts = sorted(int(len(sents) * d / 100) for d in rng.sample(_DEPTHS, len(inserts)))
    parts, last = [], 0
    for cut, ins in zip(cuts, inserts):
        parts.append(" ".join(sents[last:cut]))
        parts.append(ins)
        last = cut
    parts.append(" ".join(sents[last:]))
    return " ".join(p for p in parts if p)


def _insert_in_lines(lines: list[str], inserts: list[str], rng: random.Random) -> str:
    """`inserts` placed among `lines` at random positions, keeping their order; joined by newlines."""
    spots = sorted(rng.sample(range(len(lines) + 1), len(inserts))) if len(inserts) <= len(lines) + 1 else \
        sorted(rng.choices(range(len(lines) + 1), k=len(inserts)))
    out, last = [], 0
    for spot, ins in zip(spots, inserts):
        out.extend(lines[last:spot])
        out.append(ins)
        last = spot
    out.extend(lines[last:])
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------------------
# Task builders: (size, rng, ...) -> (input, answer_prefix, outputs); `size` is what the length search tunes.

def _niah(spec: NiahSpec, size: int, rng: random.Random, hay_words: list[str]) -> tuple[str, str, list[str]]:
    n_keys = max(spec.num_keys, spec.num_queries)
    keys = _distinct(spec.key_type, n_keys, rng)
    values = [_distinct(spec.value_type, spec.num_values, rng) for _ in keys]
    needles = [NEEDLE.format(kind=spec.value_type, key=k, value=v) for k, vs in zip(keys, values) for v in vs]
    rng.shuffle(needles)
    if spec.haystack == "essay":
        context = _insert_at_depths(hay_words, size, needles, rng)
    else:
        if spec.haystack == "noise":
            lines = [NOISE] * size
        else:  # distractor needles, with keys other than the real ones
            lines = [NEEDLE.format(kind=spec.value_type, key=_distinct(spec.key_type, 1, rng, set(keys))[0],
                                   value=_draw(spec.value_type, rng)) for _ in range(size)]
        context = _insert_in_lines(lines, needles, rng)
    asked = rng.sample(range(n_keys), spec.num_queries)
    query = keys[asked[0]] if len(asked) == 1 else \
        ", ".join(keys[i] for i in asked[:-1]) + ", and " + keys[asked[-1]]
    outputs = [v for i in asked for v in values[i]]
    if spec.num_queries * spec.num_values == 1:  # RULER's singular wording
        kind = spec.value_type[:-1]
        text = (f"A special magic {kind} is hidden within the following text. Make sure to memorize it. I will "
                f"quiz you about the {kind} afterwards.\n{context}\nWhat is the special magic {kind} for {query} "
                "mentioned in the provided text?")
        prefix = f" The special magic {kind} for {query} mentioned in the provided text is"
    else:
        kind = spec.value_type
        text = (f"Some special magic {kind} are hidden within the following text. Make sure to memorize it. I "
                f"will quiz you about the {kind} afterwards.\n{context}\nWhat are all the special magic {kind} "
                f"for {query} mentioned in the provided text?")
        prefix = f" The special magic {kind} for {query} mentioned in the provided text are"
    return text, prefix, outputs


def _vt_one(spec: VtSpec, size: int, rng: random.Random, taken: set[str]) -> tuple[str, str, list[str]]:
    n_vars = spec.num_chains * (spec.num_hops + 1)
    names = []
    while len(names) < n_vars:
        name = "".join(rng.choices(string.ascii_uppercase, k=5))
        if name not in taken and name not in names:
            names.append(name)
    taken.update(names)
    chains, lines = [], [NOISE] * size
    for c in range(spec.num_chains):
        vs = names[c * (spec.num_hops + 1):(c + 1) * (spec.num_hops + 1)]
        value = str(rng.randint(10000, 99999))
        statements = [f"VAR {vs[0]} = {value}"] + [f"VAR {b} = VAR {a}" for a, b in itertools.pairwise(vs)]
        chains.append((vs, value, statements))
    context = lines
    for _, _, statements in chains:  # each chain in order, at random places in the noise
        context = _insert_in_lines(context, statements, rng).split("\n")
    query = chains[0][1]
    text = ("Memorize and track the chain(s) of variable assignment hidden in the following text.\n\n"
            + "\n".join(context)
            + f"\nQuestion: Find all variables that are assigned the value {query} in the text above.")
    prefix = (" Answer: According to the chain(s) of variable assignment in the text above, "
              f"{spec.num_hops + 1} variables are assigned the value {query}, they are: ")
    return text, prefix, chains[0][0]


def _vt(spec: VtSpec, size: int, rng: random.Random) -> tuple[str, str, list[str]]:
    taken: set[str] = set()
    text, prefix, outputs = _vt_one(spec, size, rng, taken)
    shot_text, shot_prefix, shot_out = _vt_one(spec, 10, rng, taken)  # the worked example (RULER: ~500 tokens)
    return f"{shot_text}{shot_prefix}{' '.join(shot_out)}\n{text}", prefix, outputs


_CWE_TEMPLATE = ("Below is a numbered list of words. In these words, some appear more often than others. Memorize "
                 "the ones that appear most often.\n{context}\nQuestion: What are the {n} most common words in the "
                 "above list?")
_CWE_PREFIX = " Answer: The top {n} words that appear most often in the list are:"


def _cwe(spec: CweSpec, size: int, rng: random.Random, vocab: list[str], length: int
         ) -> tuple[str, str, list[str]]:
    def example(n_words: int, common_reps: int, other_reps: int) -> tuple[str, list[str]]:
        chosen = rng.sample(vocab, n_words)
        common, rest = chosen[:spec.num_cw], chosen[spec.num_cw:]
        seq = common * common_reps + rest * other_reps
        rng.shuffle(seq)
        return " ".join(f"{i + 1}. {w}" for i, w in enumerate(seq)), common

    small = length < 4096  # RULER shortens the lists for short contexts
    shot_ctx, shot_ans = example(20 if small else 40, 3 if small else 10, 1 if small else 3)
    ctx, ans = example(max(size, spec.num_cw), 6 if small else spec.freq_cw, 1 if small else spec.freq_ucw)
    n = spec.num_cw
    shot = (_CWE_TEMPLATE.format(context=shot_ctx, n=n) + _CWE_PREFIX.format(n=n) + " "
            + " ".join(f"{i + 1}. {w}" for i, w in enumerate(shot_ans)))
    return shot + "\n" + _CWE_TEMPLATE.format(context=ctx, n=n), _CWE_PREFIX.format(n=n), ans


def _zeta(alpha: float) -> float:
    """Riemann zeta for alpha > 1 (Euler-Maclaurin; error far below what int() of the counts can see)."""
    n = 1000
    return (sum(k ** -alpha for k in range(1, n)) + n ** (1 - alpha) / (alpha - 1) + 0.5 * n ** -alpha
            + alpha / 12 * n ** (-alpha - 1))


def _fwe(spec: FweSpec, size: int, rng: random.Random, length: int) -> tuple[str, str, list[str]]:
    vocab_size = max(length // 50, 8)  # RULER: (window - generated tokens) // 50 coded words
    vocab = sorted(_distinct_coded(vocab_size, rng))
    rng.shuffle(vocab)
    vocab[0] = "..."  # the most frequent "word" is noise, to be ignored
    z = _zeta(spec.alpha)
    words = [w for k, w in enumerate(vocab, 1) for _ in range(int(size * k ** -spec.alpha / z))]
    rng.shuffle(words)
    text = ("Read the following coded text and track the frequency of each coded word. Find the three most "
            f"frequently appeared coded words. {' '.join(words)}\nQuestion: Do not provide any explanation. Please "
            "ignore the dots '....'. What are the three most frequently appeared words in the above coded text?")
    prefix = " Answer: According to the coded text above, the three most frequently appeared words are:"
    return text, prefix, vocab[1:4]


def _distinct_coded(n: int, rng: random.Random) -> set[str]:
    out: set[str] = set()
    while len(out) < n:
        out.add("".join(rng.choices(string.ascii_lowercase, k=6)))
    return out


def _vocabulary(text: str, need: int) -> list[str]:
    """Distinct lowercase words of `text` (3-12 letters), topped up with made-up words when too few."""
    words = sorted({w for w in re.findall(r"[a-z]+", text.lower()) if 3 <= len(w) <= 12})
    if len(words) < need:
        syll = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"]
        made = (a + b + c for a in syll for b in syll for c in syll)
        have = set(words)
        words += [w for w, _ in zip((w for w in made if w not in have), range(need - len(words)))]
    return words


# ---------------------------------------------------------------------------------------------------------

def _builder(task: str, length: int, haystack_text: str | None):
    """(size, rng -> (input, answer_prefix, outputs), smallest useful size, largest size or None)."""
    spec = TASKS.get(task)
    if spec is None:
        raise InputError(f"unknown RULER task '{task}'; known: {sorted(TASKS)}", field="task")
    if isinstance(spec, NiahSpec):
        words = []
        if spec.haystack == "essay":
            words = re.sub(r"\s+", " ", haystack_text or _default_haystack()).strip().split(" ")
            if not words[0]:
                raise InputError("the haystack text is empty", field="haystack")
        return (lambda size, rng: _niah(spec, size, rng, words)), 1, None
    if isinstance(spec, VtSpec):
        return (lambda size, rng: _vt(spec, size, rng)), 1, None
    if isinstance(spec, CweSpec):
        # Every list entry ("123. word") takes a few tokens, so length // 3 distinct words is plenty.
        vocab = _vocabulary(haystack_text or _default_haystack(), max(1000, length // 3))
        return (lambda size, rng: _cwe(spec, size, rng, vocab, length)), spec.num_cw, len(vocab)
    return (lambda size, rng: _fwe(spec, size, rng, length)), 4 * length // 50, None


def generate(task: str, length: int, tokenizer, num_samples: int = 1, seed: int = 0,
             haystack_text: str | None = None) -> list[dict]:
    """`num_samples` examples of `task` whose prompt plus max new tokens comes as close to `length` tokens of
    `tokenizer` as the haystack granularity allows without exceeding it.

    haystack_text: the text of the essay haystack and of the cwe vocabulary (default: the Paul Graham essays).
    """
    make, min_size, max_size = _builder(task, length, haystack_text)
    gen = TOKENS_TO_GENERATE[task]

    def sample(size: int, index: int) -> tuple[str, str, list[str], int]:
        rng = random.Random(f"{seed}/{task}/{length}/{index}")
        text, prefix, outputs = make(size, rng)
        return text, prefix, outputs, _count(tokenizer, text + prefix) + gen

    smallest = sample(min_size, 0)[3]
    if smallest > length:
        raise InputError(f"length {length} is too short for {task}: its smallest prompt plus answer needs "
                         f"{smallest} tokens", field="length")
    size = _largest_fitting(lambda s: sample(s, 0)[3], length, min_size, smallest, max_size)
    out = []
    for i in range(num_samples):
        text, prefix, outputs, total = sample(size, i)
        if total > length or total < 0.98 * length:  # this draw tokenizes differently: fit it on its own
            t_min = sample(min_size, i)[3]
            if t_min > length:
                raise InputError(f"length {length} is too short for {task} (sample {i} needs {t_min} tokens)",
                                 field="length")
            s = _largest_fitting(lambda s, i=i: sample(s, i)[3], length, min_size, t_min, max_size)
            text, prefix, outputs, total = sample(s, i)
        out.append({"id": f"{task}-{length}-{i}", "task": task, "length": length, "input": text,
                    "outputs": outputs, "answer_prefix": prefix, "tokens": total - gen, "max_new_tokens": gen})
    return out


def _largest_fitting(total, length: int, lo: int, t_lo: int, hi: int | None) -> int:
    """Largest size in [lo, hi] with total(size) <= length, given total(lo) = t_lo <= length and total growing
    with size (about linearly): a linear guess, a bracket grown around it, then bisection."""
    probe = lo + max(lo, 8)
    per_unit = max((total(probe) - t_lo) / (probe - lo), 1e-3)
    cur = max(lo, int(lo + (length - t_lo) / per_unit))
    if hi is not None:
        cur = min(cur, hi)
    step = max(1, cur // 50)
    if total(cur) <= length:
        good = cur
        while True:
            nxt = cur + step if hi is None else min(cur + step, hi)
            if nxt == cur:
                return cur  # the largest size there is
            if total(nxt) > length:
                bad = nxt
                break
            good = cur = nxt
            step *= 2
    else:
        bad = cur
        while True:
            nxt = max(lo, cur - step)
            if total(nxt) <= length:
                good = nxt
                break
            bad = cur = nxt
            step *= 2
    while bad - good > 1:
        mid = (good + bad) // 2
        if total(mid) <= length:
            good = mid
        else:
            bad = mid
    return good


# ---------------------------------------------------------------------------------------------------------
# Metrics (RULER's scripts/eval/synthetic/constants.py, per example)

def postprocess(prediction: str) -> str:
    """RULER's clean-up: strip, control characters to newlines, strip."""
    return re.sub(r"[\x00-\x1f]", "\n", prediction.strip()).strip()


def string_match_all(prediction: str, references: list[str]) -> float:
    """Share of the references found in the prediction (case-insensitive substring)."""
    pred = prediction.lower()
    return sum(1.0 for r in references if r.lower() in pred) / len(references)


def string_match_part(prediction: str, references: list[str]) -> float:
    """1 if any reference is found in the prediction (case-insensitive substring), else 0."""
    pred = prediction.lower()
    return max(1.0 if r.lower() in pred else 0.0 for r in references)


def score(task: str, prediction: str, outputs: list[str]) -> float:
    """Per-example score in [0, 1]: string_match_part for QA tasks (qa_*), string_match_all otherwise."""
    pred = postprocess(prediction)
    return string_match_part(pred, outputs) if task.startswith("qa") else string_match_all(pred, outputs)


def aggregate(scores: list[float]) -> float:
    """Task score as RULER reports it: mean x 100, rounded to 2 decimals."""
    return round(sum(scores) / len(scores) * 100, 2)

