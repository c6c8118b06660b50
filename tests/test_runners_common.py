"""Helpers shared by the benchmark-runner tests (tests/test_runners_*.py), and tests of the shared plumbing.

- `tiny_model_dir()`: a tiny random Llama (2 layers, hidden 64) with the tiny BPE tokenizer of the backend
  tests, saved as a Hugging Face folder so the CLI loads it like any model; `mute_model_dir()`: the same model
  answering "" at once (for benchmarks with long official answers, e.g. QMSum's 512 tokens);
- `Oracle`: a backend that answers each prompt with the gold answer of the example it recognises in it
  (every stage but the model is real: prompts, truncation, files, scoring), so scores reach 100;
- `Interrupting` / `Counting`: backend wrappers that stop a run after k calls / count calls.
"""

from __future__ import annotations

import functools
import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

import longreach.cli.bench  # noqa: F401  (registers the commands until cli/__init__.py imports it)
from longreach.cli.apps import app
from longreach.eval import runners
from longreach.eval.backends import encode, render
from test_eval_backends import tiny_model, tiny_tokenizer

DATA = Path(__file__).parent / "data" / "bench"


@functools.lru_cache(maxsize=1)
def _saved_model(root: str) -> Path:
    path = Path(root) / "tiny-llama"
    tiny_model().save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return path


def tiny_model_dir(tmp_path_factory) -> Path:
    return _saved_model(str(tmp_path_factory.getbasetemp()))


@functools.lru_cache(maxsize=1)
def _saved_mute_model(root: str) -> Path:
    path = Path(root) / "tiny-llama-mute"
    model = tiny_model()
    model.generation_config.eos_token_id = list(range(len(tiny_tokenizer())))  # every token ends the answer
    model.save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return path


def mute_model_dir(tmp_path_factory) -> Path:
    """The tiny model, saved so that it answers "" at once: CLI plumbing tests without long generations."""
    return _saved_mute_model(str(tmp_path_factory.getbasetemp()))


def invoke(*args: str):
    """Run the CLI in-process; returns the click result (exit_code, stdout, stderr)."""
    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


def json_out(result) -> dict:
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def copy_data(name: str, dest: Path) -> Path:
    shutil.copytree(DATA / name, dest)
    return dest


class Oracle:
    """A backend answering `answers[marker]` for the one marker found in the (rendered) prompt."""

    def __init__(self, answers: dict[str, str], max_length: int = 4096, chat_template: bool = True):
        self.tokenizer = tiny_tokenizer()
        self.max_length, self.answers, self.prompts = max_length, answers, []
        if not chat_template:
            self.tokenizer = self.tokenizer.__class__(tokenizer_object=self.tokenizer.backend_tokenizer,
                                                      bos_token="<s>", eos_token="</s>", pad_token="<pad>")

    def generate(self, prompts, max_new_tokens, stop=None):
        out = []
        for p in prompts:
            self.prompts.append(p)
            text = render(self.tokenizer, p)
            hits = [a for m, a in self.answers.items() if m in text]
            assert len(hits) == 1, f"{len(hits)} markers in prompt ...{text[-200:]!r}"
            out.append(hits[0])
        return out

    def count_tokens(self, prompt) -> int:
        return len(encode(self.tokenizer, render(self.tokenizer, prompt)))


class Counting:
    """Counts generate calls and prompts of a wrapped backend."""

    def __init__(self, backend):
        self.inner, self.calls, self.prompts = backend, 0, 0
        self.tokenizer, self.max_length = backend.tokenizer, backend.max_length

    def generate(self, prompts, max_new_tokens, stop=None):
        self.calls += 1
        self.prompts += len(prompts)
        return self.inner.generate(prompts, max_new_tokens, stop)

    def count_tokens(self, prompt) -> int:
        return self.inner.count_tokens(prompt)


class Interrupting(Counting):
    """Raises KeyboardInterrupt (as Ctrl-C would) on generate call number k + 1."""

    def __init__(self, backend, k: int):
        super().__init__(backend)
        self.k = k

    def generate(self, prompts, max_new_tokens, stop=None):
        if self.calls == self.k:
            raise KeyboardInterrupt
        return super().generate(prompts, max_new_tokens, stop)


# ---------------------------------------------------------------------------------------------------------

def test_results_json_merges_tasks_and_replaces_reruns(tmp_path):
    a = {"benchmark": "longbench", "task": "qasper", "n": 2, "score": 10.0}
    runners.save_results(tmp_path, [a])
    assert json.loads((tmp_path / "results.json").read_text()) == a  # one task: the object itself
    b = {"benchmark": "longbench", "task": "hotpotqa", "n": 2, "score": 20.0}
    runners.save_results(tmp_path, [b, {**a, "score": 30.0}])
    got = json.loads((tmp_path / "results.json").read_text())
    assert got == [b, {**a, "score": 30.0}]
    cells = [{"benchmark": "ruler", "task": "vt", "length": n, "n": 1, "score": 0.0} for n in (256, 512)]
    runners.save_results(tmp_path, cells)
    assert len(json.loads((tmp_path / "results.json").read_text())) == 4  # lengths are separate entries


def test_table_and_suite_average_beside_the_paper():
    rows, avg = runners._suite_rows("infinitebench", {"en_sum": 10.0, "en_qa": 20.0, "en_mc": 30.0, "en_dia": 40.0})
    assert avg == 25.0
    assert rows[1][:3] == ["en_qa", 20.0, 43.51]  # ChatQA-2-8B's En.QA from the paper
    assert rows[-1][:3] == ["average (4 tasks)", 25.0, 35.59]
    assert runners._suite_rows("longbench", {"qasper": 5.0})[1] is None  # not the whole suite: no average
    text = runners.format_table(["task", "score"], [["en_qa", 20.0], ["x", None]])
    assert text.splitlines()[2].split() == ["en_qa", "20.00"]


def test_bad_input_is_an_input_error(tmp_path):
    from longreach.errors import InputError

    cfg = runners.BenchConfig(model="", out=str(tmp_path))
    with pytest.raises(InputError, match="--model"):
        runners.Session(cfg)
    with pytest.raises(InputError, match="unknown InfiniteBench task"):
        runners.infinitebench_tasks("en_xx")
    with pytest.raises(InputError, match="folder"):
        runners.run_infinitebench_tasks(cfg, ["en_qa", "en_mc"], DATA / "infinitebench" / "passkey.jsonl",
                                        backend=Oracle({}))
    assert runners.chatrag_datasets("doqa,coqa") == ["doqa_cooking", "doqa_movies", "doqa_travel", "coqa"]
    assert len(runners.chatrag_datasets("all")) == 11
