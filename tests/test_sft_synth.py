"""Long-context QA synthesis from real documents (gold insertion at a sentence boundary, distractor documents,
needle / cloze / records QA), and the held-out long-document QA evaluation plumbing."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from longreach.data.readers import Document
from longreach.errors import InputError
from longreach.sft.synth import (
    BARE_FORMS,
    STATEMENT_TEMPLATES,
    SUBJECT_ECHOES,
    SynthConfig,
    count_tokens,
    in_split,
    insert_at_boundary,
    load_docs,
    needle_facts,
    statement_facts,
    synthesize,
)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tok():
    from longreach.sft.tiny import default_texts, train_tokenizer
    return train_tokenizer(default_texts(60_000), vocab_size=600)


@pytest.fixture(scope="module")
def docs():
    from longreach import assets
    files = sorted(assets.paul_graham_essays().glob("*.txt"))[:6]
    return [Document(text=f.read_text(), source="pg", doc_id=str(f)) for f in files]


def test_insert_lands_on_a_sentence_boundary():
    text = "One fish swam. Two fish swam! Three fish? Four."
    rng = np.random.default_rng(0)
    for _ in range(20):
        out = insert_at_boundary(text, "GOLD.", rng)
        i = out.index("GOLD.")
        assert out.replace(" GOLD.", "", 1) == text or out == "GOLD.\n\n" + text
        assert i == 0 or out[:i - 1].endswith((".", "!", "?"))
    assert insert_at_boundary(text, "GOLD.", rng, depth=1.0).endswith("Four. GOLD.")
    assert insert_at_boundary(text, "GOLD.", rng, depth=0.0).startswith("GOLD.")


def test_needle_facts_have_distinct_keys_and_values():
    facts = needle_facts(np.random.default_rng(3), 5)
    assert len({q for _, q, _ in facts}) == 5 and len({a for _, _, a in facts}) == 5
    fact, q, a = facts[0]
    assert fact.endswith(f" is {a}.") and q.startswith("What is the ") and len(a) == 4


def test_statement_facts_bind_distinct_subjects_and_avoid_the_niah_needle():
    for seed in range(40):
        facts = statement_facts(np.random.default_rng(seed), 4)
        assert len({q for _, q, _ in facts}) == 4 and len({f for f, _, _ in facts}) == 4
        for fact, q, answer in facts:
            assert answer == fact and q.endswith("?") and fact.endswith(".")
            assert "best thing to do" not in fact.lower() and "san francisco" not in fact.lower()


def test_statement_facts_are_limited_by_the_templates_subjects():
    from longreach.sft.synth import check_config
    with pytest.raises(InputError) as e:
        check_config(SynthConfig(qa="statement", facts=9))
    assert e.value.field == "facts"
    check_config(SynthConfig(qa="needle", facts=9))  # key-value needles have hundreds of keys


@pytest.mark.parametrize("construction", ["insert", "distractors"])
def test_statement_samples_ask_one_subject_among_others_without_an_instruction(tok, docs, construction):
    cfg = SynthConfig(qa="statement", construction=construction, lengths=[400, 900], n=4, facts=3,
                      piece_tokens=150, seed=1)
    for r in synthesize(cfg, tok, docs):
        assert r["instruction"] == "" and r["answer"] == r["gold"]["text"]
        assert r["context"].count(r["answer"]) == 1
        assert r["tokens"] <= r["target_tokens"]
        # the other facts are in the context too: same template, other subjects
        template = next(f for f, q, _ in STATEMENT_TEMPLATES
                        if re.fullmatch(_pattern(q), r["question"]))
        subjects = {m[0] for m in re.findall(_pattern(template), r["context"])}
        assert len(subjects) == 3


def test_mixed_statement_forms_keep_every_draw_and_read_the_first_value_word_from_the_context():
    bare = 0
    for seed in range(200):
        rng_classic, rng_mixed = np.random.default_rng(seed), np.random.default_rng(seed)
        classic = statement_facts(rng_classic, 3)
        mixed = statement_facts(rng_mixed, 3, "mixed")
        assert rng_mixed.bit_generator.state == rng_classic.bit_generator.state  # the form costs no draw
        i = next(k for k, (_, q, _) in enumerate(STATEMENT_TEMPLATES) if re.fullmatch(_pattern(q), classic[0][1]))
        if mixed == classic:
            continue
        bare += 1
        assert i in BARE_FORMS  # the village template has no fixed word before its value, so no twin
        for (fact, _, _), (mfact, mq, manswer) in zip(classic, mixed):
            slots = re.fullmatch(_pattern(STATEMENT_TEMPLATES[i][0], named=True), fact).groupdict()
            assert mfact == manswer == BARE_FORMS[i][0].format(**slots)  # same subject, time and value
            assert mq == BARE_FORMS[i][1].format(**slots)
            assert f" is {slots['v']}." in mfact and f"to {slots['v']}" not in mfact
            assert "best thing" not in mfact.lower() and "to do is" not in mfact
    assert 0.3 < bare / 200 < 0.55  # half the draws of the five templates with a twin: ~40%


def test_statement_forms_are_checked(tok, docs):
    with pytest.raises(InputError) as e:
        synthesize(SynthConfig(qa="statement", statement_forms="bare"), tok, docs)
    assert e.value.field == "statement_forms"
    with pytest.raises(InputError):
        statement_facts(np.random.default_rng(0), 2, "bare")


def test_mixed_statement_samples_ask_a_fact_that_is_in_their_context_once(tok, docs):
    cfg = SynthConfig(qa="statement", statement_forms="mixed", lengths=[400], n=12, facts=3, seed=2)
    bare = [_pattern(f) for f, _ in BARE_FORMS.values()]
    classic = [_pattern(f) for f, _, _ in STATEMENT_TEMPLATES]
    recs = synthesize(cfg, tok, docs)
    twins = sum(any(re.fullmatch(p, r["answer"]) for p in bare) for r in recs)
    assert 0 < twins < len(recs)  # both forms in one set
    cfg.statement_forms = "classic"
    for r, c in zip(recs, synthesize(cfg, tok, docs)):  # a sample whose form is unchanged is the classic one
        assert (r == c) == (r["question"] == c["question"])
    for r in recs:
        assert r["context"].count(r["answer"]) == 1 and r["answer"] == r["gold"]["text"]
        assert any(re.fullmatch(p, r["answer"]) for p in bare + classic)


@pytest.mark.parametrize("construction", ["insert", "distractors"])
def test_subject_echoes_name_the_asked_subject_elsewhere_without_its_value(tok, docs, construction):
    cfg = SynthConfig(qa="statement", construction=construction, subject_echoes=3, lengths=[500, 900], n=6,
                      facts=3, piece_tokens=150, seed=4)
    plain = synthesize(SynthConfig(**{**cfg.__dict__, "subject_echoes": 0}), tok, docs)
    for r, p in zip(synthesize(cfg, tok, docs), plain):
        assert (r["question"], r["answer"]) == (p["question"], p["answer"])  # the echoes draw after the facts
        fact_t, kind = next((f, k) for f, q, k in STATEMENT_TEMPLATES if re.fullmatch(_pattern(q), r["question"]))
        slots = re.fullmatch(_pattern(fact_t, named=True), r["answer"]).groupdict()
        echoes = [e.format(s=slots["s"]) for e in SUBJECT_ECHOES[kind] if e.format(s=slots["s"]) in r["context"]]
        assert len(echoes) == 3 and all(r["context"].count(e) == 1 for e in echoes)
        assert r["context"].count(r["answer"]) == 1 and r["answer"] == r["gold"]["text"]
        assert r["context"].count(slots["v"]) == 1 and r["tokens"] <= r["target_tokens"]  # the value: once


@pytest.mark.parametrize("change", [{"subject_echoes": 5}, {"subject_echoes": -1},
                                    {"subject_echoes": 2, "qa": "needle"}])
def test_subject_echoes_are_checked(tok, docs, change):
    with pytest.raises(InputError) as e:
        synthesize(SynthConfig(**{"qa": "statement", **change}), tok, docs)
    assert e.value.field == "subject_echoes"


def test_subject_echoes_share_no_word_with_the_times_and_value_phrases():
    from longreach.sft.synth import _ACTIONS, _PLACES, _TIMES, _WHENS

    def stems(text: str) -> set[str]:  # words, plural or not
        return {w.removesuffix("s") for w in re.findall(r"[a-z]+", text.lower())}

    glue = {"a", "an", "the", "and", "at", "in", "on", "by", "of", "to", "i", "it"}
    value_words = set().union(*(stems(p) for p in _TIMES + _ACTIONS + _PLACES + _WHENS)) - glue
    for sentences in SUBJECT_ECHOES.values():
        assert len(sentences) == 4
        for e in sentences:
            assert "{s}" in e and not stems(e) & value_words, e


def _pattern(template: str, named: bool = False) -> str:
    """A regex for a statement template: each {s} / {t} / {v} slot is a group of words without a period."""
    out = re.escape(template)
    for slot in ("s", "t", "v"):
        group = f"?P<{slot}>" if named else ""
        out = out.replace(re.escape("{" + slot + "}"), "(" + group + r"[\w' ]+?)")
    return out


def test_text_samples_are_running_real_text_of_their_length(tok, docs):
    from longreach.sft.data import parse_record

    recs = synthesize(SynthConfig(qa="text", lengths=[300, 900], n=4, seed=1), tok, docs)
    for i, r in enumerate(recs):
        target = [300, 900][i % 2]
        assert 0.75 * target <= r["tokens"] <= target and r["tokens"] == count_tokens(tok, r["text"])
        assert r["qa"] == "text" and not r["synthetic"] and r["sources"] and "question" not in r
        assert any(r["text"][:200] in d.text for d in docs)  # a stretch of a real document
        assert parse_record(r, "t.jsonl", i).text == r["text"]


@pytest.mark.parametrize("qa, construction", [("needle", "insert"), ("needle", "distractors"),
                                              ("cloze", "insert"), ("cloze", "distractors")])
def test_samples_reach_their_length_and_record_where_the_gold_is(tok, docs, qa, construction):
    cfg = SynthConfig(qa=qa, construction=construction, lengths=[300, 900], n=6, facts=3, piece_tokens=150, seed=1)
    recs = synthesize(cfg, tok, docs)
    assert recs == synthesize(cfg, tok, docs)  # deterministic
    assert recs != synthesize(SynthConfig(**{**cfg.__dict__, "seed": 2}), tok, docs)
    for i, r in enumerate(recs):
        target = cfg.lengths[i % 2]
        assert 0.75 * target <= r["tokens"] <= target and r["tokens"] == count_tokens(tok, r["context"])
        g = r["gold"]
        assert r["context"][g["char_offset"]:g["char_end"]] == g["text"] and 0 <= g["depth"] <= 1
        assert r["synthetic"] and r["length_bin"] == "<32K" and r["instruction"]
        if qa == "needle":
            assert r["context"].count(r["answer"]) == 1 and r["context"].count(" is ") >= 3
            assert g["text"] == r["question"].replace("What is the", "The").rstrip("?") + f" is {r['answer']}."
        else:
            sentence = r["question"].split('"')[1].replace("_____", r["answer"])
            assert " ".join(sentence.split()) in " ".join(g["text"].split())
        if construction == "insert" and g["char_offset"] > 0:
            # the gold starts a sentence: what precedes it is the end of a sentence of the real text
            assert r["context"][:g["char_offset"]].rstrip()[-1] in ".!?\"')]"
    depths = [r["gold"]["depth"] for r in recs]
    assert len(set(depths)) > 2  # random positions, not always the same place


def test_records_gold_passage_inserted_into_its_document(tok, docs, tmp_path):
    """The NarrativeQA_131072 construction: the summary goes into the long document at a sentence boundary."""
    book = docs[0].text
    path = tmp_path / "nqa.jsonl"
    path.write_text(json.dumps({"document": book, "summary": "Summary: the essay argues a point.",
                                "question": "What does the essay do?", "answers": ["argues a point"]}) + "\n")
    recs = synthesize(SynthConfig(qa="records", records=str(path), lengths=[500], n=2), tok, docs[1:])
    for r in recs:
        assert not r["synthetic"] and r["answer"] == "argues a point" and "instruction" not in r
        without = r["context"].replace(" Summary: the essay argues a point.", "", 1).replace(
            "Summary: the essay argues a point.\n\n", "", 1)
        common = next(i for i, (a, b) in enumerate(zip(without + "\0", book)) if a != b)
        assert common > 0.6 * len(without)  # the context is the book's own beginning (then filler if short)
        assert without[common:].startswith("\n\n") or common == len(without)  # cut at a sentence end
    (tmp_path / "bad.jsonl").write_text('{"document": "x", "question": "q", "answer": "a"}\n')
    with pytest.raises(InputError, match="bad.jsonl:1: field 'passage'"):
        synthesize(SynthConfig(qa="records", records=str(tmp_path / "bad.jsonl")), tok, docs)


def test_long_contexts_span_documents_and_the_bins(docs):
    """A 40K-token target needs several documents; it lands in the 32K-128K bin. (A whitespace tokenizer keeps
    this quick: lengths only need some tokenizer.)"""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    wt = Tokenizer(models.WordLevel({"[UNK]": 0}, unk_token="[UNK]"))
    wt.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    ws = PreTrainedTokenizerFast(tokenizer_object=wt, unk_token="[UNK]")
    from longreach import assets
    many = [Document(f.read_text(), "pg", str(f)) for f in sorted(assets.paul_graham_essays().glob("*.txt"))]
    r = synthesize(SynthConfig(lengths=[40_000], n=1), ws, many)[0]
    assert 36_000 < r["tokens"] <= 40_000 and r["length_bin"] == "32K-128K" and len(r["sources"]) > 3


def test_train_and_heldout_documents_are_disjoint():
    names = [f"doc{i}.txt" for i in range(200)]
    train = {n for n in names if in_split(f"/a/{n}", "train")}
    held = {n for n in names if in_split(f"/b/{n}", "heldout")}
    assert not train & held and train | held == set(names) and 5 < len(held) < 40
    docs = load_docs(["paul_graham"], "heldout")
    assert docs and all(in_split(d.doc_id, "heldout") for d in docs)


def test_synth_cli_writes_records(tmp_path, tok, capsys):
    from test_sft_data import run_cli
    tok.save_pretrained(tmp_path / "tok")
    out = tmp_path / "long.jsonl"
    code, stdout, err = run_cli(["sft", "synth", "--tokenizer", str(tmp_path / "tok"), "--docs", "paul_graham",
                                 "--max-docs", "3", "--lengths", "200,400", "--n", "4", "--out", str(out)], capsys)
    assert code == 0, err
    res = json.loads(stdout)
    assert res["n"] == 4 and res["bins"] == {"<32K": 4} and len(out.read_text().splitlines()) == 4


# ----------------------------------------------------------------------------- long-document QA evaluation

class _Reader:
    """A stand-in backend that reads the asked fact out of the prompt (perfect) or answers a fixed number."""

    def __init__(self, tokenizer, perfect: bool):
        self.tokenizer, self.perfect, self.max_length, self.batch_size = tokenizer, perfect, 10**6, 4

    def generate(self, prompts, max_new_tokens, stop=None):
        import re
        out = []
        for p in prompts:
            q = re.findall(r"What is the (.+?)\?", p)[-1]
            m = re.search(re.escape(f"The {q} is ") + r"(\d+)", p)
            out.append(f" It is {m.group(1)}." if self.perfect else " 1234")
        return out

    def count_tokens(self, text):
        return len(self.tokenizer(text)["input_ids"])


def test_long_qa_eval_scores_and_summarises(tmp_path, tok, docs):
    from longreach.sft.longqa import build_long_qa_eval, run_long_qa_eval, score_long_qa

    ex = build_long_qa_eval(docs, tok, [300, 600], n=5, seed=7)
    assert [e["id"] for e in ex] == [f"{L}-{i}" for L in (300, 600) for i in range(5)]
    depths = [e["gold"]["depth"] for e in ex[:5]]
    assert depths[0] < 0.1 and depths[-1] > 0.9 and depths == sorted(depths)  # evenly spread depths
    e = ex[0]
    assert score_long_qa(e, f"The code is {e['answer']}.")["score"] == 1.0
    assert score_long_qa(e, f"{e['answer'][::-1]}0")["score"] == 0.0
    import longreach.sft.longqa as lq
    lq_docs = lq.load_docs
    lq.load_docs = lambda names, split: docs  # the same documents as above, without reading the assets
    try:
        good = run_long_qa_eval(_Reader(tok, True), tmp_path / "good", [300, 600], 5, seed=7)
        bad = run_long_qa_eval(_Reader(tok, False), tmp_path / "bad", [300], 5, seed=7)
    finally:
        lq.load_docs = lq_docs
    assert good["accuracy"] == {"300": 1.0, "600": 1.0} and good["mean"] == 1.0 and good["n"]["600"] == 5
    assert bad["mean"] == 0.0
    saved = json.loads((tmp_path / "good" / "results.json").read_text())
    assert saved["accuracy"] == good["accuracy"] and len((tmp_path / "good" / "predictions.jsonl")
                                                         .read_text().splitlines()) == 10


def test_gold_depth_puts_the_asked_fact_in_its_range_and_only_changes_the_placement(tok, docs):
    cfg = SynthConfig(qa="statement", lengths=[600, 900], n=8, facts=3, seed=5, gold_depth=[0.0, 0.3])
    far = synthesize(cfg, tok, docs)
    anywhere = synthesize(SynthConfig(**{**cfg.__dict__, "gold_depth": []}), tok, docs)
    assert all(r["gold"]["depth"] <= 0.4 for r in far)  # the nearest sentence boundary: a sentence of slack
    assert sum(r["gold"]["depth"] > 0.4 for r in anywhere) >= 3  # without it the gold goes anywhere
    for r, a in zip(far, anywhere):  # the same facts and haystack; the gold moved, the rest in order
        assert (r["question"], r["answer"], r["sources"]) == (a["question"], a["answer"], a["sources"])
        assert r["context"].replace(r["answer"], "").split() == a["context"].replace(a["answer"], "").split()


@pytest.mark.parametrize("change", [{"gold_depth": [0.5]}, {"gold_depth": [0.6, 0.2]}, {"gold_depth": [0, 1.5]},
                                    {"gold_depth": [0, 0.5], "construction": "distractors"},
                                    {"gold_depth": [0, 0.5], "qa": "text"}])
def test_gold_depth_is_checked(tok, docs, change):
    with pytest.raises(InputError) as e:
        synthesize(SynthConfig(**{"qa": "statement", **change}), tok, docs)
    assert e.value.field == "gold_depth"
