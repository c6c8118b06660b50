"""`longreach eval ruler`: RULER tasks generated from the Paul Graham essays at given lengths, scored by string
match, a task x length table.

Proves: an answer holding every reference (the echoed prompt) scores 100 in every cell; every prompt plus the
task's answer budget fits the requested length, chat template included; results.json has one entry per task
and length; a rerun resumes every cell without generating again; other settings are refused.
"""

from __future__ import annotations

import json

import pytest

from longreach.errors import InputError
from longreach.eval import ruler, runners
from longreach.eval.backends import render
from test_eval_backends import tiny_backend
from test_runners_common import Counting, invoke, json_out, mute_model_dir


class Echo(Counting):
    """Answers with the prompt itself: it contains every needle value, variable and word asked for."""

    def generate(self, prompts, max_new_tokens, stop=None):
        self.calls += 1
        self.prompts += len(prompts)
        self.seen = getattr(self, "seen", []) + list(prompts)
        return [render(self.tokenizer, p) for p in prompts]


def test_echo_scores_100_and_prompts_fit_the_lengths(tmp_path, capsys):
    echo = Echo(tiny_backend())
    tasks, lengths = ["niah_single_1", "niah_multikey_1", "vt", "fwe"], [1600, 2048]
    cfg = runners.BenchConfig(model="tiny", out=str(tmp_path))
    got = runners.run_ruler(cfg, tasks, lengths, samples=2, backend=echo)
    assert got["average"] == {1600: 100.0, 2048: 100.0}
    assert [(c["task"], c["length"], c["n"], c["score"]) for c in got["cells"]] == [
        (t, n, 2, 100.0) for n in lengths for t in tasks]
    assert json.loads((tmp_path / "results.json").read_text()) == got["cells"]
    # Chat prompts (the tiny tokenizer has a template): the user turn, then the answer prefix as the reply's start.
    assert all(p[0]["role"] == "user" and p[1]["role"] == "assistant" for p in echo.seen)
    records = [json.loads(x) for f in sorted((tmp_path / "records").glob("ruler_*.jsonl"))
               for x in f.read_text().splitlines()]
    assert len(records) == 16
    for r in records:  # templated prompt + the task's answer budget within the length, and close to it
        total = r["prompt_tokens"] + ruler.TOKENS_TO_GENERATE[r["task"]]
        assert 0.9 * r["length"] <= total <= r["length"]
    table = capsys.readouterr().err
    assert "task \\ length" in table and "niah_multikey_1" in table

    again = Echo(tiny_backend())
    assert runners.run_ruler(cfg, tasks, lengths, samples=2, backend=again) == got
    assert again.calls == 0  # every cell resumed from its records
    with pytest.raises(InputError, match="other settings"):
        runners.run_ruler(runners.BenchConfig(model="tiny", out=str(tmp_path)), tasks, lengths, samples=2,
                          seed=1, backend=again)


def test_cli_runs_the_table(tmp_path, tmp_path_factory):
    result = invoke("eval", "ruler", "--model", mute_model_dir(tmp_path_factory), "--tasks", "niah_single_2,fwe",
                    "--lengths", "400,600", "--samples", "1", "--out", tmp_path, "--no-chat")
    got = json_out(result)
    assert [(c["task"], c["length"]) for c in got["cells"]] == [
        ("niah_single_2", 400), ("fwe", 400), ("niah_single_2", 600), ("fwe", 600)]
    assert got["average"] == {"400": 0.0, "600": 0.0}  # an empty answer finds nothing
    assert "average" in result.stderr
    with pytest.raises(InputError, match="unknown RULER task"):
        invoke("eval", "ruler", "--model", mute_model_dir(tmp_path_factory), "--tasks", "qa_9", "--out", tmp_path)
