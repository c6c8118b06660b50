"""Needle in a haystack: exact prompt lengths, needle at a sentence boundary at the asked depth, scoring
rules, results.json schema and heatmap, logprob and pass-key modes, the CLI, the resume guard."""

from __future__ import annotations

import functools
import hashlib
import json
import re

import pytest

from longreach.errors import InputError
from longreach.eval import niah
from longreach.eval.backends import render
from test_eval_backends import tiny_backend, tiny_model, tiny_tokenizer


@functools.lru_cache(maxsize=2)
def haystack(chat: bool = False) -> niah.Haystack:
    return niah.Haystack(tiny_backend(), niah.read_haystack(None), 2000, chat)


@pytest.fixture
def essays(tmp_path):
    """Four essays as one haystack file (tokenising all 49 with a 400-token vocabulary takes a while)."""
    from longreach import assets

    path = tmp_path / "essays.txt"
    path.write_text("\n\n".join(f.read_text() for f in sorted(assets.paul_graham_essays().glob("*.txt"))[:4]))
    return str(path)


@pytest.mark.parametrize("chat", [False, True])
def test_prompts_have_the_exact_length(chat):
    hay, b = haystack(chat), tiny_backend()
    for length in (260, 333, 800):
        for depth in (0.0, 50.0, 100.0):
            prompt = hay.build(length, depth, niah.DEFAULT_NEEDLE, niah.DEFAULT_QUESTION, None)
            assert b.count_tokens(prompt) == length
            assert render(b.tokenizer, prompt).count(niah.DEFAULT_NEEDLE) == 1


def test_needle_sits_after_the_period_before_depth_percent_of_the_context_tokens():
    hay, tok, needle = haystack(), tiny_tokenizer(), "\n" + niah.DEFAULT_NEEDLE + "\n"
    for n in (300, 800):
        plain = tok.decode(hay.ids[:n])
        for depth in (10.0, 25.0, 50.0, 75.0, 90.0):
            text = hay.context(n, [(niah.DEFAULT_NEEDLE, depth)])
            at = text.index(needle)
            assert text[:at] + text[at + len(needle):] == plain  # nothing lost, nothing added
            target = len(tok.decode(hay.ids[:int(n * depth / 100)]))
            assert text[:at] == plain[:plain.rfind(".", 0, target) + 1]  # the nearest preceding period
            tokens_before = len(tok(text[:at], add_special_tokens=False)["input_ids"])
            assert 100 * tokens_before / n <= depth + 1
            if n == 800 and depth >= 50:  # past the first sentences: moved back by one sentence at most
                assert 100 * tokens_before / n >= depth - 20
    assert hay.context(300, [("N.", 0)]).startswith("\nN.\n") and hay.context(300, [("N.", 100)]).endswith("\nN.\n")


def test_insert_needle_moves_back_to_the_preceding_period():
    ctx = "One two. Three four five. Six seven"
    assert niah.insert_needle(ctx, "N.", 50, ctx.index("five")) == "One two.\nN.\n Three four five. Six seven"
    assert niah.insert_needle(ctx, "N.", 10, 3) == "\nN.\nOne two. Three four five. Six seven"
    assert niah.insert_needle(ctx, "N.", 100, 3).endswith("Six seven\nN.\n")


def test_answer_scoring_rules():
    a = niah.DEFAULT_ANSWER
    assert niah.key_words(a) == ["eat", "sandwich", "sit", "dolores", "park", "sunny", "day"]
    assert niah.answer_score("Eat a sandwich and sit in Dolores Park on a sunny day.", a) == 1.0
    assert niah.answer_score("Eating sandwiches in Dolores park!", a) == pytest.approx(4 / 7)
    assert niah.answer_score("Visit the Golden Gate Bridge.", a) == 0.0
    assert niah.answer_score("The pass key is 71829.", "71829") == 1.0
    assert niah.answer_score("It is 718290", "71829") == 0.0
    assert niah.answer_score("Maybe 12, or 71829", "71829") == 0.0  # the first number counts
    assert niah.choice_score([-1.0, -2.0, -3.0])["score"] == 1.0
    assert niah.choice_score([-2.0, -1.0])["score"] == 0.0
    assert niah.choice_score([0.0, 0.0])["p_answer"] == pytest.approx(0.5)
    assert niah.lead_in(niah.DEFAULT_NEEDLE, a) == "The best thing to do in San Francisco is"


def test_run_writes_results_heatmap_and_records(tmp_path, essays):
    cfg = niah.NiahConfig(model="tiny", lengths=[200, 400], depths=[0, 50, 100], out=str(tmp_path / "n"),
                          max_new_tokens=8, haystack=essays)
    res = niah.run(cfg, backend=tiny_backend())
    saved = json.loads((tmp_path / "n" / "results.json").read_text())
    assert saved == res and saved["model"] == "tiny" and saved["chat"] is True
    # the haystack by its text (a report pairs only grids of one test) and no runs averaged: "tiny" is no soup
    assert saved["haystack_sha256"] == hashlib.sha256(niah.read_haystack(essays).encode()).hexdigest()
    assert saved["model_sources"] is None
    assert [(c["length"], c["depth"]) for c in saved["cells"]] == [(n, d) for n in (200, 400) for d in (0, 50, 100)]
    assert all(set(c) == {"length", "depth", "score"} and 0 <= c["score"] <= 1 for c in saved["cells"])
    assert saved["mean"] == pytest.approx(sum(c["score"] for c in saved["cells"]) / 6)
    assert (tmp_path / "n" / "heatmap.png").read_bytes()[:4] == b"\x89PNG"
    recs = [json.loads(x) for x in (tmp_path / "n" / "predictions.jsonl").read_text().splitlines()]
    assert [r["prompt_tokens"] for r in recs] == [r["length"] for r in recs]
    for r in recs:
        assert r["score"] == niah.answer_score(r["prediction"], niah.DEFAULT_ANSWER)
    again = niah.run(cfg, backend=tiny_backend())  # everything is found in predictions.jsonl
    assert again["cells"] == res["cells"] and len((tmp_path / "n" / "predictions.jsonl").read_text().splitlines()) == 6
    # Same folder, other needle: refused instead of mixing two experiments.
    with pytest.raises(InputError, match="other settings"):
        niah.run(niah.NiahConfig(**{**cfg.__dict__, "needle": "The sky is green."}), backend=tiny_backend())


def test_logprob_mode_with_pass_keys(tmp_path, essays):
    cfg = niah.NiahConfig(model="tiny", needle="The pass key of the red door is {key}. Remember it.",
                          question="What is the pass key of the red door?", answer="{key}", subject="red door",
                          distractor_subjects=["blue door", "green door", "old gate", "back door", "side gate"],
                          lengths=[400], depths=[0, 100], trials=2, mode="logprob", chat=False,
                          out=str(tmp_path / "k"), haystack=essays)
    res = niah.run(cfg, backend=tiny_backend())
    recs = [json.loads(x) for x in (tmp_path / "k" / "predictions.jsonl").read_text().splitlines()]
    keys = [r["answer"] for r in recs]
    assert len(recs) == 4 and len(set(keys)) == 4 and all(k.isdigit() and len(k) == 5 for k in keys)
    for r in recs:
        assert len(r["prediction"]) == 1 + cfg.distractors_digits
        assert r["score"] == float(r["prediction"][0] > max(r["prediction"][1:]))
    assert [c["score"] for c in res["cells"]] == [(recs[0]["score"] + recs[1]["score"]) / 2,
                                                  (recs[2]["score"] + recs[3]["score"]) / 2]
    # The prompt ends with the needle's lead-in; each choice continues it after a space.
    ex = niah.cell_examples(cfg)[0]
    hay = niah.Haystack(tiny_backend(), niah.read_haystack(essays), 400, chat=False)
    prompt = hay.build(400, 0, ex["needle"], ex["question"], niah.lead_in(ex["needle"], ex["answer"]))
    assert prompt.endswith("Question: What is the pass key of the red door?\nAnswer: The pass key of the red door is")
    assert niah.continuation(prompt, "123") == " 123" and niah.continuation("x\n", "123") == "123"


def test_logprob_distractors_are_needles_in_the_context(tmp_path):
    """Every wrong answer sits in the prompt as a needle about another subject; only the subject tells them
    apart, so a model that merely notices which words occur in the context is at chance."""
    cfg = niah.NiahConfig(model="tiny", mode="logprob", lengths=[400], depths=[30.0], chat=False, out=str(tmp_path))
    ex = niah.cell_examples(cfg)[0]
    assert [n for n, _ in ex["distractor_needles"]] == [
        f"The best thing to do in {c} is {d}." for c, d in zip(niah.DEFAULT_DISTRACTOR_SUBJECTS, ex["distractors"])]
    assert all(abs(at - 30.0) >= 5 for _, at in ex["distractor_needles"])
    assert niah.cell_examples(cfg) == [ex]  # seeded: a resumed run builds the same prompt
    hay = haystack()
    prompt = hay.build(400, 30.0, ex["needle"], ex["question"], niah.lead_in(ex["needle"], ex["answer"]),
                       [tuple(x) for x in ex["distractor_needles"]])
    assert tiny_backend().count_tokens(prompt) == 400
    for needle in [ex["needle"], *(n for n, _ in ex["distractor_needles"])]:
        assert prompt.count("\n" + needle + "\n") == 1
    # Depth order holds: the needle at 30% comes after every distractor placed below 25%.
    for n, at in ex["distractor_needles"]:
        assert (prompt.index(n) < prompt.index(ex["needle"])) == (at < 30.0)


def test_logprob_distractor_needles_need_a_subject(tmp_path):
    base = {"model": "tiny", "mode": "logprob", "lengths": [150], "depths": [50], "out": str(tmp_path), "chat": False}
    passkey = {"needle": "The pass key is {key}.", "question": "What is the pass key?", "answer": "{key}"}
    with pytest.raises(InputError, match="subject"):
        niah.run(niah.NiahConfig(**base, **passkey), backend=tiny_backend())
    with pytest.raises(InputError, match="distractor subjects"):
        niah.run(niah.NiahConfig(**base, distractor_subjects=["Paris", "Paris", "Rome", "Oslo", "Bern"]),
                 backend=tiny_backend())
    # The lenient form stays available when asked for by name.
    res = niah.run(niah.NiahConfig(**base, **passkey, distractors_in_context=False), backend=tiny_backend())
    assert res["distractors_in_context"] is False and len(res["cells"]) == 1


def test_logprob_custom_text_needle_needs_distractors(tmp_path):
    cfg = niah.NiahConfig(model="tiny", needle="Bob likes green tea.", question="What does Bob like?",
                          answer="green tea", mode="logprob", lengths=[150], depths=[50], out=str(tmp_path))
    with pytest.raises(InputError, match="distractor"):
        niah.run(cfg, backend=tiny_backend())


def test_cli_niah_on_a_saved_model(tmp_path):
    from typer.testing import CliRunner

    from longreach.cli import app

    tiny_model().save_pretrained(tmp_path / "m")
    tiny_tokenizer().save_pretrained(tmp_path / "m")
    hay = tmp_path / "hay.txt"
    hay.write_text(" ".join(f"Sentence {i} says something about essays." for i in range(300)))
    out = tmp_path / "out"
    args = ["eval", "niah", "--model", str(tmp_path / "m"), "--haystack", str(hay), "--lengths", "120,240",
            "--depths", "0,50,100", "--out", str(out), "--max-new-tokens", "4", "--no-chat"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    printed = json.loads(r.stdout.strip().splitlines()[-1])
    saved = json.loads((out / "results.json").read_text())
    assert printed["mean"] == saved["mean"] and saved["chat"] is False and len(saved["cells"]) == 6
    assert (out / "heatmap.png").exists() and (out / "config.yaml").exists()


def test_distractor_needle_swaps_the_subject_outside_the_answer_only():
    cfg = niah.NiahConfig(model="tiny", mode="logprob", needle="At the Paris office Ann takes the train from Paris.",
                          question="What does Ann do at the Paris office?", answer="takes the train from Paris",
                          subject="Paris office", distractor_subjects=["Rome office"],
                          distractors=["walks to the Louvre"])
    ex = {"needle": cfg.needle, "answer": cfg.answer}
    assert niah.distractor_needle(cfg, ex, "walks to the Louvre", "Rome office") == \
        "At the Rome office Ann walks to the Louvre."
    with pytest.raises(InputError, match="part of the answer"):  # a distractor inside the answer
        niah._check_subjects(niah.NiahConfig(**{**cfg.__dict__, "distractors": ["takes the train"]}))
    with pytest.raises(InputError, match="containing or contained"):
        niah._check_subjects(niah.NiahConfig(**{**cfg.__dict__, "distractor_subjects": ["Paris office annex"]}))


def test_generate_runs_resume_across_logprob_only_settings(tmp_path):
    base = {"model": "tiny", "lengths": [150], "depths": [50], "out": str(tmp_path / "g"), "chat": False,
            "max_new_tokens": 2}
    niah.run(niah.NiahConfig(**base), backend=tiny_backend())
    again = niah.run(niah.NiahConfig(**base, subject="Rome", distractors=["x y z"] * 5), backend=tiny_backend())
    assert len(again["cells"]) == 1
    # A log-prob folder saved before distractors went into the context reads as the lenient form.
    lp = {**base, "out": str(tmp_path / "l"), "mode": "logprob"}
    niah.run(niah.NiahConfig(**lp, distractors_in_context=False), backend=tiny_backend())
    saved = tmp_path / "l" / "config.yaml"
    saved.write_text("".join(x for x in saved.read_text().splitlines(keepends=True)
                             if not x.startswith("distractors_in_context")))
    with pytest.raises(InputError, match="distractors_in_context"):
        niah.run(niah.NiahConfig(**lp), backend=tiny_backend())


def test_trials_read_the_haystack_from_seeded_paragraphs(essays):
    text = niah.read_haystack(essays)
    assert niah.haystack_start(text, 0, 0) == 0  # trial 0: the classic grid
    starts = [niah.haystack_start(text, 0, t) for t in range(1, 6)]
    assert starts == [niah.haystack_start(text, 0, t) for t in range(1, 6)]  # seeded
    assert len(set(starts)) == 5 and starts != [niah.haystack_start(text, 1, t) for t in range(1, 6)]
    for at in starts:
        assert 0 < at < len(text) and re.search(r"\n\s*\n\s*$", text[:at]) and not text[at].isspace()
    b = tiny_backend()
    hay = niah.Haystack(b, text, 500, True, start=starts[0])
    first = text[starts[0]:].split("\n")[0]
    assert b.tokenizer.decode(hay.ids[:200]).startswith(first[:40])  # read from that paragraph on
    for length in (300, 500):  # still exactly the asked length, the needle once
        prompt = hay.build(length, 50.0, niah.DEFAULT_NEEDLE, niah.DEFAULT_QUESTION, None)
        assert b.count_tokens(prompt) == length and render(b.tokenizer, prompt).count(niah.DEFAULT_NEEDLE) == 1


def recording_backend(seen: list[str]):
    """The tiny backend, rendering each prompt it is asked to answer into `seen`."""
    class Recording(type(tiny_backend())):
        def generate(self, prompts, *a, **k):
            seen.extend(render(self.tokenizer, p) for p in prompts)
            return super().generate(prompts, *a, **k)

    b = tiny_backend()
    return Recording(b.model, b.tokenizer, device="cpu", batch_size=4)


def test_run_with_trials_gives_each_trial_its_own_haystack(tmp_path, essays):
    seen: list[str] = []
    rec = recording_backend(seen)
    one = niah.run(niah.NiahConfig(model="tiny", lengths=[300], depths=[50], out=str(tmp_path / "a"),
                                   max_new_tokens=4, haystack=essays), backend=rec)
    single = list(seen)
    seen.clear()
    three = niah.run(niah.NiahConfig(model="tiny", lengths=[300], depths=[50], trials=3, out=str(tmp_path / "b"),
                                     max_new_tokens=4, haystack=essays), backend=rec)
    assert len(single) == 1 and len(seen) == 3 and seen[0] == single[0]  # trial 0 is the one-trial prompt
    assert len(set(seen)) == 3 and all(niah.DEFAULT_NEEDLE in p for p in seen)
    assert one["haystack_starts"] == [0]
    assert three["haystack_starts"][0] == 0 and len(set(three["haystack_starts"])) == 3
    seen.clear()
    niah.run(niah.NiahConfig(model="tiny", lengths=[300], depths=[50], trials=2, rotate_haystack=False,
                             out=str(tmp_path / "c"), max_new_tokens=4, haystack=essays), backend=rec)
    assert seen == [single[0]] * 2  # without rotation a text needle asks the same prompt twice
    # a folder from before the field existed (trials read the haystack from its start) is not resumed with it,
    # unless it ran one trial per cell (the same prompts either way)
    for folder, trials in (("b", 3), ("a", 1)):
        saved = tmp_path / folder / "config.yaml"
        saved.write_text("\n".join(x for x in saved.read_text().splitlines() if not x.startswith("rotate_haystack")))
        cfg = niah.NiahConfig(model="tiny", lengths=[300], depths=[50], trials=trials, out=str(tmp_path / folder),
                              max_new_tokens=4, haystack=essays)
        if trials > 1:
            with pytest.raises(InputError, match="rotate_haystack"):
                niah.run(cfg, backend=rec)
        else:
            seen.clear()
            assert niah.run(cfg, backend=rec)["cells"] == one["cells"] and not seen  # resumed: nothing asked


def test_drop_sentences_leaves_out_the_matching_sentences_and_keeps_the_paragraphs():
    text = "A cat sat. San Francisco is far. Dogs bark.\n\nThe best thing is tea. End."
    assert niah.drop_sentences(text, "San Francisco|best thing") == ("A cat sat. Dogs bark.\n\nEnd.", 2)
    assert niah.drop_sentences(text, "Gotham") == (text, 0)
    assert niah.drop_sentences(text, "cat") == ("San Francisco is far. Dogs bark.\n\nThe best thing is tea. End.", 1)
    assert niah.drop_sentences(text, "Dogs") == ("A cat sat. San Francisco is far.\n\nThe best thing is tea. End.", 1)
    assert niah.drop_sentences(text, "cat|Francisco|Dogs") == ("The best thing is tea. End.", 3)
    assert niah.drop_sentences(text, "End")[0].endswith("is tea. ")
    assert niah.drop_sentences(text, ".") == ("", 5)


def test_run_drops_haystack_sentences_but_never_the_needle(tmp_path):
    seen: list[str] = []
    rec = recording_backend(seen)
    hay = tmp_path / "hay.txt"
    hay.write_text(" ".join(f"Sentence {i} is about {'Gotham' if i % 7 == 0 else 'essays'}." for i in range(400)))
    cfg = {"model": "tiny", "lengths": [300], "depths": [0, 100], "max_new_tokens": 4, "haystack": str(hay)}
    niah.run(niah.NiahConfig(**cfg, out=str(tmp_path / "a")), backend=rec)
    assert all("Gotham" in p for p in seen)
    seen.clear()
    res = niah.run(niah.NiahConfig(**cfg, out=str(tmp_path / "b"), drop_sentences="Gotham|San Francisco"),
                   backend=rec)
    assert len(seen) == 2 and not any("Gotham" in p for p in seen)
    assert all(niah.DEFAULT_NEEDLE in p for p in seen)  # the needle names San Francisco and stays
    assert res["drop_sentences"] == "Gotham|San Francisco" and res["sentences_dropped"] == 58
    with pytest.raises(InputError) as e:
        niah.run(niah.NiahConfig(**cfg, out=str(tmp_path / "c"), drop_sentences="(unclosed"), backend=rec)
    assert e.value.field == "drop_sentences"
    with pytest.raises(InputError) as e:  # nothing left to put the needle in
        niah.run(niah.NiahConfig(**cfg, out=str(tmp_path / "d"), drop_sentences="Sentence"), backend=rec)
    assert e.value.field == "drop_sentences"
