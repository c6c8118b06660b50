"""Long-context QA samples built from real documents (ChatQA 2 stage-3 data, and held-out evaluation).

Two constructions, each with contexts up to a target length in tokens of the model's tokenizer:
- insert: the gold passage (the summary or paragraph a QA pair was written from) goes in at a random
  sentence boundary of a long document - how ChatQA 2 built NarrativeQA_131072 from NarrativeQA's summaries
  and books. The document is cut at a sentence boundary to leave room for the passage; when it is shorter
  than the target, further documents follow it (each separated by a blank line). `gold_depth: [LO, HI]` puts
  the passage at a depth drawn in that range instead (low: far from the question that follows the context).
- distractors: the gold document is shuffled among distractor documents (pieces of other texts).
Both record where the gold sits: its character offset and depth (offset / (context length - gold length)).

Where the QA pairs come from (`qa`):
- records: your own file of {"document", "passage" (or "summary"), "question", "answer"/"answers"}
  (e.g. NarrativeQA: book, summary, question, answers) - real QA, `synthetic: false`.
- needle: SYNTHETIC key-value facts ("The secret code of the blue door is 4821.") placed in real text, asked
  back ("What is the secret code of the blue door?" -> "4821"); `facts - 1` other facts with other keys are
  placed too, so copying any number is not enough.
- statement: SYNTHETIC sentence facts with a phrase for an answer ("Mara's favourite way to spend a rainy
  afternoon is to bake bread and listen to jazz records by the fireplace."), asked back without an instruction
  ("What is Mara's favourite way to spend a rainy afternoon?") and answered by restating the sentence; the
  other facts share the template with other subjects, so the answer must be bound to the asked subject. It
  teaches needle-in-a-haystack retrieval in the answer form a chat user expects, with templates, subjects and
  phrases that are not the NIAH test's (no city, no "best thing to do"; `STATEMENT_TEMPLATES`). With
  `subject_echoes`, more sentences name the asked subject without its value, so the subject alone does not lead
  to the answer (`SUBJECT_ECHOES`).
- cloze: SYNTHETIC questions on real text: a paragraph of a real document is the gold passage and one of its
  sentences is asked back with a word blanked out.
- text: no question - real running text of the target length ({"text": ...}), trained on every token: the
  language-modelling replay an SFT stage mixes in to keep next-token prediction over long text.

Run:  longreach sft synth --tokenizer MODEL --qa needle --lengths 4000,16000 --n 200 --out long_qa.jsonl
Deterministic: the same config, documents and tokenizer give the same file.
"""

from __future__ import annotations

import json
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from longreach.data.readers import iter_json_lines
from longreach.errors import InputError
from longreach.rag.chunk import ChunkConfig, chunk_text, sentence_spans

SHORT_SPAN = "Answer the following question with a short span."  # ChatQA's instruction for short answers
UNIT_TOKENS = 64  # tokens per unit of text (whole sentences) from which haystacks are cut
SEP_TOKENS = 2  # tokens counted for the blank line between two documents
GOLD_TOKENS = 96  # cloze: tokens of the real paragraph used as the gold passage
LONG_BIN = 32768  # contexts below this many tokens are "<32K", the others "32K-128K" (the paper's two sets)
QA_KINDS = ("needle", "statement", "cloze", "records", "text")
CONSTRUCTIONS = ("insert", "distractors")
SPLITS = ("train", "heldout", "all")


@dataclass
class SynthConfig:
    docs: list[str] = field(default_factory=list)  # real text: paths or gutenberg / paul_graham / linux-doc
    qa: str = "needle"  # needle, statement (synthetic facts), cloze (questions on real text), records (yours),
    # text (plain running text, trained on every token)
    records: str = ""  # qa=records: .jsonl of {document, passage|summary, question, answer|answers}
    construction: str = "insert"  # insert (gold at a random sentence boundary) or distractors (shuffled docs)
    lengths: list[int] = field(default_factory=lambda: [4000])  # target context tokens; samples cycle them
    n: int = 100  # samples to write
    facts: int = 3  # needle: facts per context (one asked, the others have other keys)
    piece_tokens: int = 512  # distractors: tokens per distractor document at most (whole sentences)
    split: str = "train"  # documents used: train (9 in 10, by a hash of the file name), heldout (1 in 10), all
    max_docs: int = 0  # use at most this many documents (0 = all); keeps quick runs quick
    statement_forms: str = "classic"  # qa=statement: classic (STATEMENT_TEMPLATES) or mixed (~40% of the draws in
    # BARE_FORMS, where no fixed "to" comes before the value; the same subjects and values; a sample whose form
    # is unchanged is the classic one byte for byte)
    subject_echoes: int = 0  # qa=statement: this many more sentences (at most 4) name the asked fact's subject
    # but not its value (SUBJECT_ECHOES), placed like the other facts, so the subject's place is not the answer's
    gold_depth: list[float] = field(default_factory=list)  # construction=insert: [LO, HI], the gold's depth drawn
    # uniformly in it (0: the context's start, farthest from the question after it; 1: its end), at the sentence
    # boundary nearest by characters; [] (default): any boundary, the draws as before
    seed: int = 0  # same seed, same samples


DEBIAN_DOCS = {  # Debian packages' reStructuredText sources (.rst.txt), the long technical text of RECIPE.md
    "linux-doc": ("linux-doc-6.1", "/usr/share/doc/linux-doc-6.1/html/_sources"),
    "python-doc": ("python3.11-doc", "/usr/share/doc/python3.11/html/_sources"),
}


def named_docs(name: str) -> Path:
    """A path for a document name: gutenberg, paul_graham, linux-doc, python-doc (Debian), or a path itself."""
    from longreach import assets
    if name == "gutenberg":
        return assets.gutenberg_texts()
    if name == "paul_graham":
        return assets.paul_graham_essays()
    if name in DEBIAN_DOCS:
        package, folder = DEBIAN_DOCS[name]
        if not Path(folder).is_dir():
            raise InputError(f"Debian package {package} is not installed (apt-get install {package})")
        return Path(folder)
    return Path(name)


def in_split(doc_id: str, split: str) -> bool:
    """train / heldout by a hash of the file name (not the install path), so every machine splits alike."""
    if split not in SPLITS:
        raise InputError(f"split must be one of {SPLITS}, got {split!r}", field="split")
    if split == "all":
        return True
    heldout = zlib.crc32(Path(doc_id).name.encode()) % 10 == 0
    return heldout == (split == "heldout")


def load_docs(names: list[str], split: str = "all", max_docs: int = 0) -> list[Any]:
    """Documents (longreach.data.readers.Document) of the named sources in one split, in a fixed order."""
    from longreach.data.readers import iter_documents
    docs = []
    for name in names or ["gutenberg"]:
        for d in iter_documents(named_docs(name)):
            # the Gutenberg folder also holds a catalogue of its files, which is not a text
            if name == "gutenberg" and Path(d.doc_id).name == "metadata.txt":
                continue
            if in_split(d.doc_id, split) and d.text.strip():
                docs.append(d)
    if max_docs:
        docs = docs[:max_docs]
    if not docs:
        raise InputError(f"no document in split {split!r} of {names or ['gutenberg']}", field="docs")
    return docs


def length_bin(tokens: int) -> str:
    """The paper's two long-SFT sets: "<32K" or "32K-128K"."""
    return "<32K" if tokens < LONG_BIN else "32K-128K"


def count_tokens(tok: Any, text: str) -> int:
    return len(tok(text, add_special_tokens=False)["input_ids"])


class DocPool:
    """Real documents cut into small whole-sentence units with token counts (one tokenization per document).

    Units are small (`unit_tokens`), so a stretch of text can be cut close to any budget.
    """

    def __init__(self, docs: list[Any], tok: Any, unit_tokens: int = UNIT_TOKENS):
        self.tok = tok
        cfg = ChunkConfig(chunk_tokens=unit_tokens)
        units = [chunk_text(d.text, tok, cfg, doc=d.doc_id, source=d.source) for d in docs]
        keep = [i for i, u in enumerate(units) if u]
        self.docs, self.units = [docs[i] for i in keep], [units[i] for i in keep]
        if not self.docs:
            raise InputError("no document has any text", field="docs")

    def run(self, rng: np.random.Generator, budget: int) -> tuple[str, int, str]:
        """A random stretch of consecutive sentences of a random document, at most `budget` tokens
        (text, tokens, doc id); ("", 0, id) when the first unit is already too long."""
        k = int(rng.integers(len(self.docs)))
        units = self.units[k]
        i = j = int(rng.integers(len(units)))
        n = 0
        while j < len(units) and n + units[j].n_tokens <= budget:
            n += units[j].n_tokens
            j += 1
        text = self.docs[k].text[units[i].start:units[j - 1].end] if j > i else ""
        return text, n, self.docs[k].doc_id

    def haystack(self, budget: int, rng: np.random.Generator, first: str | None = None) -> tuple[str, list[str]]:
        """Running text of about `budget` tokens: the start of `first` (a document) if given, then random
        stretches of random documents, separated by blank lines."""
        parts, sources, used = [], [], 0
        if first:
            text, n = _prefix(first, self.tok, budget)
            parts.append(text)
            used += n
        misses = 0
        while budget - used > 2 * SEP_TOKENS and misses < 20:
            text, n, doc = self.run(rng, budget - used - (SEP_TOKENS if parts else 0))
            if not text:
                misses += 1
                continue
            used += n + (SEP_TOKENS if parts else 0)
            parts.append(text)
            sources.append(doc)
        return "\n\n".join(parts), sources


def _prefix(text: str, tok: Any, budget: int) -> tuple[str, int]:
    """The longest run of whole sentences from the start of `text` within `budget` tokens."""
    chunks = chunk_text(text, tok, ChunkConfig(chunk_tokens=max(1, budget)))
    if not chunks:
        return "", 0
    return text[chunks[0].start:chunks[0].end], chunks[0].n_tokens


def insert_at_boundary(text: str, passage: str, rng: np.random.Generator, depth: float | None = None) -> str:
    """`passage` put in at a sentence boundary of `text`: random, or the boundary nearest to `depth` (0..1)."""
    bounds = [0] + [e for _, e in sentence_spans(text)]
    if depth is None:
        b = bounds[int(rng.integers(len(bounds)))]
    else:
        b = min(bounds, key=lambda x: abs(x - depth * len(text)))
    if b == 0:
        return passage + ("\n\n" + text if text else "")
    return text[:b] + " " + passage + text[b:]


def locate(context: str, gold: str) -> dict[str, Any]:
    off = context.find(gold)
    if off < 0:
        raise AssertionError("gold passage missing from its context")
    return {"char_offset": off, "char_end": off + len(gold),
            "depth": round(off / max(1, len(context) - len(gold)), 4)}


# ----------------------------------------------------------------------------- QA sources

_KINDS = ["secret code", "room number", "lucky number", "locker number", "access code", "serial number"]
_COLORS = ["blue", "red", "green", "yellow", "purple", "orange", "silver", "golden", "black", "white",
           "grey", "crimson", "amber", "violet", "copper", "ivory"]
_THINGS = ["door", "box", "gate", "lamp", "chest", "book", "clock", "key", "window", "boat", "tower",
           "bridge", "wagon", "garden", "mirror", "violin"]


def needle_facts(rng: np.random.Generator, n: int) -> list[tuple[str, str, str]]:
    """n synthetic facts (fact, question, answer) sharing a kind, with distinct keys and 4-digit values."""
    kind = _KINDS[int(rng.integers(len(_KINDS)))]
    keys = rng.choice(len(_COLORS) * len(_THINGS), size=n, replace=False)
    values = rng.choice(np.arange(1000, 10000), size=n, replace=False)
    out = []
    for key, value in zip(keys, values):
        color, thing = _COLORS[key // len(_THINGS)], _THINGS[key % len(_THINGS)]
        out.append((f"The {kind} of the {color} {thing} is {value}.",
                    f"What is the {kind} of the {color} {thing}?", str(value)))
    return out


# statement facts: (fact, question) with {s} the subject and {v} the value phrase; no template asks about a
# city or "the best thing to do", so the default NIAH needle stays unseen. In five of the six the value phrase
# follows a fixed "to" ("... is to {v}", "likes to {v}"): the word that opens the answer is the template's,
# not the context's. BARE_FORMS gives each of those five a twin whose value follows the link bare (a
# pseudo-cleft, "What {s} does on {t} is {v}."), so that the first word after "is" has to be read from the
# context too (statement_forms "mixed").
STATEMENT_TEMPLATES = [
    ("{s}'s favourite way to spend {t} is to {v}.", "What is {s}'s favourite way to spend {t}?", "person"),
    ("The secret to a perfect {s} is to {v}.", "What is the secret to a perfect {s}?", "dish"),
    ("The first rule of the {s} is to {v}.", "What is the first rule of the {s}?", "club"),
    ("The quickest way to reach the {s} is to {v}.", "What is the quickest way to reach the {s}?",
     "landmark"),
    ("Before every match, the captain of the {s} likes to {v}.",
     "What does the captain of the {s} like to do before every match?", "team"),
    ("On the last day of the festival, the people of {s} {v}.",
     "What do the people of {s} do on the last day of the festival?", "village"),
]
BARE_FORMS = {  # template index -> its twin, the same subject kind and value, no fixed word before {v}
    0: ("What {s} does on {t} is {v}.", "What does {s} do on {t}?"),
    1: ("For a perfect {s}, what you do is {v}.", "What do you do for a perfect {s}?"),
    2: ("What every member of the {s} must do first is {v}.", "What must every member of the {s} do first?"),
    3: ("To reach the {s} quickly, all you do is {v}.", "What do you do to reach the {s} quickly?"),
    4: ("Before every match, what the captain of the {s} does is {v}.",
        "What does the captain of the {s} do before every match?"),
}
STATEMENT_FORMS = ("classic", "mixed")


def _check_forms(forms: str) -> None:
    if forms not in STATEMENT_FORMS:
        raise InputError(f"statement_forms must be one of {STATEMENT_FORMS}, got {forms!r}",
                         field="statement_forms")


_SUBJECTS = {
    "person": ["Mara", "Tobias", "Ines", "Oskar", "Priya", "Lucas", "Hanna", "Mateo", "Yuki", "Elena",
               "Samir", "Greta", "Jonah", "Leila", "Felix", "Ada"],
    "dish": ["lentil soup", "apple pie", "fish stew", "risotto", "pancake", "curry", "bread loaf", "omelette",
             "dumpling", "plum cake", "goulash", "pea soup"],
    "club": ["chess club", "rowing club", "book club", "choir", "hiking club", "photography club",
             "garden society", "astronomy club", "debate club", "knitting circle"],
    "landmark": ["old lighthouse", "north tower", "stone bridge", "clock tower", "harbour wall",
                 "abbey ruins", "windmill", "summit cabin", "salt mine", "observatory"],
    "team": ["river rovers", "hill foxes", "grey herons", "red lanterns", "iron badgers", "blue comets",
             "marsh owls", "copper kites"],
    "village": ["Eldham", "Brackwater", "Sorvik", "Hollin", "Marrow Cross", "Tavistead", "Quillon",
                "Ashby Vale"],
}
_TIMES = ["a rainy afternoon", "a cold winter evening", "an early spring morning", "a quiet Sunday",
          "a long summer night", "a foggy autumn day"]
_ACTIONS = ["bake bread", "read old letters", "walk the dog", "play chess", "listen to jazz records",
            "fly a kite", "plant tulips", "fix an old bicycle", "feed the ducks", "sing folk songs",
            "paint the fence", "knit a scarf", "watch the boats", "carve a wooden spoon", "brew nettle tea",
            "polish the brass lamps", "count the stars", "ring the bells", "climb the ladder",
            "sort the seeds", "whistle a tune", "light a candle", "soak the beans overnight", "stir it slowly"]
_PLACES = ["by the fireplace", "in the attic", "on the porch", "at the harbour", "under the oak tree",
           "beside the river", "near the old mill", "in the greenhouse", "on the roof", "behind the barn",
           "in the cellar", "at the crossroads"]
_WHENS = ["at dawn", "after dinner", "before the first frost", "at midnight", "while it rains",
          "on a windy day", "when the tide is low", "at noon"]


# Sentences that name a subject in another relation than the templates' (SynthConfig.subject_echoes). In the
# issue's NIAH grid the question's subject, "San Francisco", is named three more times in the essays, at tokens
# ~95.8K-98.4K, in a passage about startup hubs (docs/RESULTS.md session 18); in the classic statement data the
# asked subject is named only in its fact, so where the subject is, the answer is (a hypothesis: the lexicon
# haystack names San Francisco three times as well, and there the needle is found). None of these shares a word
# (but "a", "the", "in" and the like) with _TIMES, _ACTIONS, _PLACES or _WHENS, and none tells what its subject
# does or likes to do, so none answers its template's question.
SUBJECT_ECHOES = {
    "person": ["{s} once lived in a narrow house with a green door.", "Everyone at the market knows {s} by name.",
               "{s} was born in a small town up north.",
               "Nobody in the family laughs as loudly as {s}."],
    "dish": ["A recipe for {s} was printed in the local paper.", "The {s} at the corner cafe is too salty.",
             "Some guests never order the {s} twice.", "Grandfather claimed to have invented the {s}."],
    "club": ["The {s} meets in the back room of the library.", "The {s} elected a new treasurer last year.",
             "A photograph of the {s} hangs in the town hall.", "The {s} was founded by two retired teachers."],
    "landmark": ["Tourists often photograph the {s}.", "The {s} was rebuilt following the great storm.",
                 "A painting of the {s} hangs in the museum.", "Maps from the last century do not show the {s}."],
    "team": ["The {s} wear striped shirts.", "The {s} lost three matches in a row last season.",
             "A new coach joined the {s} this year.", "The {s} were founded over a century ago."],
    "village": ["{s} has a small market on Thursdays.", "The road to {s} is narrow and steep.",
                "Few maps show {s} at all.", "The post office in {s} closed years ago."],
}


def statement_facts(rng: np.random.Generator, n: int, forms: str = "classic") -> list[tuple[str, str, str]]:
    """n synthetic sentence facts (fact, question, answer = the fact) of one template with distinct subjects;
    each value phrase ("{action} and {action} {place} {when}") is drawn on its own.

    forms "mixed": half of the draws (by a hash of the first value phrase, so `rng` is used exactly as for
    "classic" and the subjects and values are the same) use the template's BARE_FORMS twin, if it has one."""
    return _statement_draw(rng, n, forms)[0]


def _statement_draw(rng: np.random.Generator, n: int, forms: str) -> tuple[list[tuple[str, str, str]], str, str]:
    """statement_facts, with the template's subject kind and the first (asked) fact's subject."""
    _check_forms(forms)
    i = int(rng.integers(len(STATEMENT_TEMPLATES)))
    fact_t, question_t, kind = STATEMENT_TEMPLATES[i]
    subjects = rng.choice(_SUBJECTS[kind], size=n, replace=False)
    t = _TIMES[int(rng.integers(len(_TIMES)))]
    values = []
    for _ in subjects:
        a, b = rng.choice(_ACTIONS, size=2, replace=False)
        values.append(f"{a} and {b} {_PLACES[int(rng.integers(len(_PLACES)))]} "
                      f"{_WHENS[int(rng.integers(len(_WHENS)))]}")
    if forms == "mixed" and values and i in BARE_FORMS and zlib.crc32(values[0].encode()) % 2:
        fact_t, question_t = BARE_FORMS[i]
    out = []
    for s, v in zip(subjects, values):
        fact = fact_t.format(s=s, t=t, v=v)
        out.append((fact, question_t.format(s=s, t=t), fact))
    return out, kind, str(subjects[0])


def subject_echoes(rng: np.random.Generator, kind: str, subject: str, n: int) -> list[str]:
    """n distinct sentences of SUBJECT_ECHOES[kind] about `subject`, none with a value phrase's words."""
    if n <= 0:
        return []
    picks = rng.choice(len(SUBJECT_ECHOES[kind]), size=n, replace=False)
    return [SUBJECT_ECHOES[kind][int(k)].format(s=subject) for k in picks]


_WORD = re.compile(r"[A-Za-z]{6,}")


def cloze_question(passage: str, rng: np.random.Generator) -> tuple[str, str, str] | None:
    """A sentence of `passage` with one long word blanked out -> (question, answer, sentence), or None."""
    sentences = [passage[s:e] for s, e in sentence_spans(passage)]
    sentences = [s for s in sentences if 6 <= len(s.split()) <= 40 and _WORD.search(s)]
    if not sentences:
        return None
    s = sentences[int(rng.integers(len(sentences)))]
    words = _WORD.findall(s)
    word = words[int(rng.integers(len(words)))]
    blanked = " ".join(re.sub(rf"\b{word}\b", "_____", s, count=1).split())
    return f'Which word is missing from this sentence of the text: "{blanked}"', word, s


def read_qa_records(path: str | Path) -> list[dict[str, Any]]:
    """{document, passage, question, answer} records (NarrativeQA-like) with file/line errors."""
    out = []
    for n, rec in iter_json_lines(path):
        passage = rec.get("passage", rec.get("summary"))
        answers = rec.get("answers", rec.get("answer"))
        answer = answers[0] if isinstance(answers, list) and answers else answers
        for name, v in (("document", rec.get("document")), ("passage", passage),
                        ("question", rec.get("question")), ("answer", answer)):
            if not isinstance(v, str) or not v.strip():
                raise InputError("missing or not a non-empty string", path=str(path), line=n, field=name)
        out.append({"document": rec["document"], "passage": passage, "question": rec["question"],
                    "answer": answer, "where": f"{path}:{n}"})
    if not out:
        raise InputError("no record", path=str(path))
    return out


# ----------------------------------------------------------------------------- one sample

def _distractor_context(gold_doc: str, pool: DocPool, budget: int, piece_tokens: int,
                        rng: np.random.Generator, extra: list[str]) -> tuple[str, list[str]]:
    """The gold document among distractor documents (stretches of other texts, shuffled) filling `budget`
    tokens; each `extra` passage (another needle fact, already counted in the budget's caller) goes into a
    random distractor (into the gold document when there is none)."""
    docs, sources = [gold_doc], []
    used = count_tokens(pool.tok, gold_doc)
    misses = 0
    while budget - used > 2 * SEP_TOKENS and misses < 20:
        text, n, doc = pool.run(rng, min(piece_tokens, budget - used - SEP_TOKENS))
        if not text:
            misses += 1
            continue
        docs.append(text)
        sources.append(doc)
        used += n + SEP_TOKENS
    for e in extra:
        k = int(rng.integers(1, len(docs))) if len(docs) > 1 else 0
        docs[k] = insert_at_boundary(docs[k], e, rng)
    order = rng.permutation(len(docs))
    return "\n\n".join(docs[i] for i in order), sources


def make_sample(cfg: SynthConfig, pool: DocPool, length: int, rng: np.random.Generator,
                record: dict[str, Any] | None = None, depth: float | None = None) -> dict[str, Any] | None:
    """One long-context QA record (a dict `data.parse_record` reads), or None if this draw gives none."""
    tok = pool.tok
    if cfg.qa == "text":  # language-modelling replay: running text, no question
        text, sources = pool.haystack(int(length * 0.99), rng)
        if not text:
            return None
        tokens = count_tokens(tok, text)
        return {"text": text, "qa": "text", "synthetic": False, "target_tokens": length, "tokens": tokens,
                "length_bin": length_bin(tokens), "sources": sorted(set(sources))}
    others: list[str] = []
    sentence = None
    instruction: str | None = SHORT_SPAN
    if cfg.qa in ("needle", "statement"):
        echoes: list[str] = []
        if cfg.qa == "needle":
            facts = needle_facts(rng, max(1, cfg.facts))
        else:
            facts, kind, subject = _statement_draw(rng, max(1, cfg.facts), cfg.statement_forms)
            echoes = subject_echoes(rng, kind, subject, cfg.subject_echoes)
        gold, question, answer = facts[0]
        others = [f for f, _, _ in facts[1:]] + echoes
        if cfg.qa == "statement":
            instruction = ""  # asked as a NIAH question is: the question alone, the answer a sentence
    elif cfg.qa == "cloze":
        gold, _, _ = pool.run(rng, GOLD_TOKENS)
        qa = cloze_question(gold, rng)
        if qa is None:
            return None
        question, answer, sentence = qa
    else:
        gold, question, answer = record["passage"], record["question"], record["answer"]
        instruction = None
    # room for the gold passage and the other facts, plus a margin for tokens merging at the joins
    reserved = count_tokens(tok, gold) + sum(count_tokens(tok, o) + SEP_TOKENS for o in others) + SEP_TOKENS
    budget = int(length * 0.99) - reserved
    if budget < 0:
        raise InputError(f"the gold passage ({reserved} tokens) does not fit the target length {length}",
                         field="lengths")
    if cfg.construction == "insert":
        hay, sources = pool.haystack(budget, rng, first=record["document"] if record else None)
        sources += [record["where"]] if record else []
        for o in others:
            hay = insert_at_boundary(hay, o, rng)
        if depth is None and cfg.gold_depth:
            depth = float(rng.uniform(*cfg.gold_depth))
        context = insert_at_boundary(hay, gold, rng, depth)
    else:
        gold_doc = gold
        if cfg.qa in ("needle", "statement"):  # a fact alone is not a document: it goes into real text
            piece, n, _ = pool.run(rng, min(cfg.piece_tokens, budget))
            gold_doc = insert_at_boundary(piece, gold, rng)
            budget -= n
        context, sources = _distractor_context(gold_doc, pool, budget + count_tokens(tok, gold_doc),
                                               cfg.piece_tokens, rng, others)
    if sentence is not None and context.count(sentence) > 1:
        return None  # a repeated line (a refrain, a stage direction): the question would be ambiguous
    tokens = count_tokens(tok, context)
    rec = {"context": context, "question": question, "answer": answer, "synthetic": cfg.qa != "records",
           "qa": cfg.qa, "construction": cfg.construction, "target_tokens": length, "tokens": tokens,
           "length_bin": length_bin(tokens),
           "gold": {**locate(context, gold), "text": gold}, "sources": sorted(set(sources))}
    if instruction is not None:
        rec["instruction"] = instruction  # "" asks the question alone
    return rec


def check_config(cfg: SynthConfig) -> None:
    if cfg.qa not in QA_KINDS:
        raise InputError(f"qa must be one of {QA_KINDS}, got {cfg.qa!r}", field="qa")
    if cfg.construction not in CONSTRUCTIONS:
        raise InputError(f"construction must be one of {CONSTRUCTIONS}, got {cfg.construction!r}",
                         field="construction")
    if cfg.qa == "text" and cfg.construction != "insert":
        raise InputError("qa=text is plain running text: it takes no construction", field="construction")
    if cfg.qa == "records" and not cfg.records:
        raise InputError("qa=records needs `records` (a .jsonl of document, passage, question, answer)",
                         field="records")
    if not cfg.lengths or min(cfg.lengths) < 16:
        raise InputError(f"lengths must be target token counts >= 16, got {cfg.lengths}", field="lengths")
    if cfg.n < 1:
        raise InputError(f"n must be >= 1, got {cfg.n}", field="n")
    _check_forms(cfg.statement_forms)
    most = min(len(v) for v in _SUBJECTS.values())
    if cfg.qa == "statement" and not 1 <= cfg.facts <= most:
        raise InputError(f"qa=statement takes 1 to {most} facts per context (its templates' subjects), got "
                         f"{cfg.facts}", field="facts")
    if cfg.gold_depth:
        lo_hi = cfg.gold_depth
        if len(lo_hi) != 2 or not 0 <= lo_hi[0] <= lo_hi[1] <= 1:
            raise InputError(f"gold_depth is [LO, HI] with 0 <= LO <= HI <= 1, got {lo_hi}", field="gold_depth")
        if cfg.construction != "insert" or cfg.qa == "text":
            raise InputError(f"gold_depth places a gold passage in one haystack: construction=insert and a qa "
                             f"with a question (got construction={cfg.construction}, qa={cfg.qa})",
                             field="gold_depth")
    echoes = min(len(v) for v in SUBJECT_ECHOES.values())
    if not 0 <= cfg.subject_echoes <= echoes or (cfg.subject_echoes and cfg.qa != "statement"):
        raise InputError(f"subject_echoes is 0 to {echoes}, and only for qa=statement (got {cfg.subject_echoes} "
                         f"with qa={cfg.qa})", field="subject_echoes")


def synthesize(cfg: SynthConfig, tok: Any, docs: list[Any] | None = None, pool: DocPool | None = None,
               salt: str = "") -> list[dict[str, Any]]:
    """`cfg.n` records; sample i targets `cfg.lengths[i % len(lengths)]` tokens. Documents: `pool`, else
    `docs`, else those `cfg` names. `salt` (a set's name) keeps two sets with the same seed apart."""
    check_config(cfg)
    if pool is None:
        pool = DocPool(docs if docs is not None else load_docs(cfg.docs, cfg.split, cfg.max_docs), tok)
    records = read_qa_records(cfg.records) if cfg.qa == "records" else None
    out: list[dict[str, Any]] = []
    attempt = 0
    while len(out) < cfg.n:
        if attempt > 20 * cfg.n + 100:
            raise InputError(f"could only make {len(out)} of {cfg.n} samples from these documents", field="docs")
        rng = np.random.default_rng([cfg.seed, zlib.crc32(salt.encode()), attempt])
        attempt += 1
        record = records[len(out) % len(records)] if records else None
        rec = make_sample(cfg, pool, cfg.lengths[len(out) % len(cfg.lengths)], rng, record)
        if rec is not None:
            out.append(rec)
    return out


def write_jsonl(records: list[dict[str, Any]], path: str | Path) -> None:
    """Write atomically (a temporary file renamed into place)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    tmp.replace(path)
