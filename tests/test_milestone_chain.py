"""scripts/gpu/milestone_b.sh refuses a malformed chain before any work: each bad entry of its variant, recipe and
soup settings exits 2 with a message naming the entry, and leaves its work folder without a model or a log of a
step (a hold's minutes are not spent on a chain that would fail half-way); and a chain whose every step fails still
reaches its end marker, saying why, rather than waiting for checkpoints that never come."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu" / "milestone_b.sh"
TWO = {"NGPU": "2", "CPT128_VARIANTS": "v1;v2"}


def run_chain(tmp_path: Path, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess:
    """The chain in a session of its own: on a timeout its background jobs are killed with it, not left behind."""
    full = {**os.environ, "WORK": str(tmp_path / "w"), "MB_OUT": str(tmp_path / "o"), "STAGE": str(tmp_path / "s"),
            "PY": sys.executable, **env}
    with subprocess.Popen(["bash", str(SCRIPT)], env=full, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, start_new_session=True) as proc:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.mark.parametrize("env,message", [
    ({"CPT_SOUPS": "c12=v1"}, "CPT_SOUPS entry 'c12=v1'"),  # a soup of one
    ({"CPT_SOUPS": "c13=v1+v3"}, "CPT_SOUPS names v3, not a variant of CPT128_VARIANTS"),
    ({"CPT_SOUPS": "v1=v1+v2"}, "CPT_SOUPS name v1 is taken"),  # its outputs would be the variant's
    ({"CPT_SOUPS": "c12=v1+v2;c12=v2+v1"}, "CPT_SOUPS name c12 is taken"),
    ({"CPT_SOUPS": "c 12=v1+v2"}, "CPT_SOUPS entry 'c 12=v1+v2'"),
    ({"VARIANT_RECIPES": "v1"}, "VARIANT_RECIPES entry 'v1'"),
    ({"VARIANT_RECIPES": "v3=configs/smollm2-135m-128k-sft-replay.yaml"}, "VARIANT_RECIPES names v3"),
    ({"SOUPS": "s12=smollm2-135m-128k-sft-replay-v1+smollm2-135m-128k-sft-replay-v3"},
     "SOUPS names smollm2-135m-128k-sft-replay-v3, not an SFT run"),
    ({"SOUPS": "s=smollm2-135m-128k-sft-replay-v1+smollm2-135m-128k-sft-replay-v2;s=smollm2-135m-128k-sft-replay-v1"
               "+smollm2-135m-128k-sft-replay-v2"}, "SOUPS name s is taken"),
    ({"VARIANT_RECIPES": "v1=", "SOUPS": "s12=smollm2-135m-128k-sft-replay-v1+smollm2-135m-128k-sft-replay-v2"},
     "SOUPS names smollm2-135m-128k-sft-replay-v1, not an SFT run"),  # v1 trains none
    ({"CPT128_VARIANTS": "v1::--set seed=1;v2"}, "CPT128_VARIANTS entry 'v1': --set among its extend flags"),
    ({"CPT128_VARIANTS": "v1;v2;v3"}, "CPT128_VARIANTS has 3 variants for NGPU=2"),
])
def test_a_malformed_chain_is_refused_before_any_work(tmp_path, env, message):
    done = run_chain(tmp_path, {**TWO, **env})
    assert done.returncode == 2, done.stderr
    assert message in done.stderr
    assert not (tmp_path / "o" / "gpu.txt").exists() and not list((tmp_path / "w").glob("*.log"))


def test_a_cpt_soup_may_name_the_runs_it_trains_in_soups(tmp_path):
    """The checks accept what the next hold runs: variants without SFT, CPT soups, and a SOUPS entry over the SFT runs
    that the CPT soups train (the chain then starts: stopped here by an NGPU the 32K config cannot split)."""
    good = {"VARIANT_RECIPES": "v1=", "CPT_SOUPS": "c12=v1+v2",
            "SOUPS": "s=smollm2-135m-128k-sft-replay-c12+smollm2-135m-128k-sft-replay-v2"}
    done = run_chain(tmp_path, {**good, "NGPU": "3", "CPT128_VARIANTS": "v1;v2"})
    assert done.returncode == 2 and "not divisible by NGPU=3" in done.stderr, done.stderr
    assert "beside the SFT" not in done.stderr  # c12 has GPU 0, whose variant v1 trains no SFT
    good["VARIANT_RECIPES"] = ""  # now v1 trains the recipe on GPU 0 too: said, not refused
    done = run_chain(tmp_path, {**good, "NGPU": "3", "CPT128_VARIANTS": "v1;v2", "SOUPS": ""})
    assert "note: CPT soup c12 trains on GPU 0 beside the SFT of variant v1" in done.stderr, done.stderr


def test_a_chain_whose_steps_all_fail_still_ends_and_says_why(tmp_path):
    """Every command failing (a python that exits 1): each 128K stage writes an empty marker, the CPT soup cannot
    average and writes its SFT run's marker empty, so the SOUPS entry naming that run gives up too; the chain reaches
    `.done` instead of waiting for checkpoints that will never come (the hang a review found in session 27)."""
    env = {**TWO, "PY": "false", "VARIANT_RECIPES": "v1=", "CPT_SOUPS": "c12=v1+v2",
           "SOUPS": "s=smollm2-135m-128k-sft-replay-c12+smollm2-135m-128k-sft-replay-v2"}
    done = run_chain(tmp_path, env)
    assert done.returncode == 0, done.stderr
    out = tmp_path / "o"
    assert (out / ".done").exists()
    said = (out / "gpu.txt").read_text()
    assert "cpt soup c12: cpt-128k-v1.final names no final checkpoint" in said
    assert "soup s: smollm2-135m-128k-sft-replay-c12.final names no final checkpoint" in said


FAKE_PY = '''#!{real}
import json, os, sys
from pathlib import Path

args = sys.argv[1:]
if args[:2] not in (["-m", "longreach.cli"], ["-m", "torch.distributed.run"]):
    os.execv({real!r}, [{real!r}, *args])  # the chain's one-liners (-c, -): the real interpreter
cli = args[args.index("longreach.cli") + 1:]  # torchrun's own flags come before it
with open({log!r}, "a") as f:
    f.write(json.dumps(cli) + "\\n")
sets = [cli[k + 1] for k, a in enumerate(cli[:-1]) if a == "--set"]
out = cli[cli.index("--out") + 1] if "--out" in cli else next((s[4:] for s in sets if s.startswith("out=")), None)
if cli[0] == "sft" and "--prepare-only" in cli:
    Path(out).mkdir(parents=True, exist_ok=True)  # the pipeline touches OUT/.done itself
elif cli[0] in ("train", "sft", "average"):  # a final checkpoint where the next step looks for one (need_ckpt)
    ckpt = Path(out)  # average: --out is the checkpoint itself
    if cli[0] != "average":
        ckpt = ckpt / ("sft3" if cli[0] == "sft" else "") / "checkpoints" / "step-000072"
    ckpt.mkdir(parents=True, exist_ok=True)
    (ckpt / "config.json").write_text(json.dumps({{"rope_theta": 1e9, "max_position_embeddings": 131072}}))
'''


def logged_chain(tmp_path: Path, env: dict[str, str]) -> tuple[list[list[str]], Path]:
    """The whole chain with a python whose `longreach` commands only log their arguments and leave the checkpoints
    the next step looks for: every command's arguments, and the work folder."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    log = tmp_path / "argv.jsonl"
    fake = tmp_path / "python"
    fake.write_text(FAKE_PY.format(real=sys.executable, log=str(log)))
    fake.chmod(0o755)
    base = {"NGPU": "2", "PY": str(fake), "SFT_RECIPES": "configs/smollm2-135m-128k-sft-replay.yaml:72",
            "CPT_PPL": "0", "PPL_CONTEXT": "", "PROBE_LENGTHS": "", "SFT_EXTRA": "0"}
    done = run_chain(tmp_path, {**base, **env}, timeout=120)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "o" / ".done").exists()
    return [json.loads(line) for line in log.read_text().splitlines()], tmp_path / "w"


def call(calls: list[list[str]], command: str, out: Path) -> list[str]:
    """The one `longreach COMMAND` (not a --prepare-only) that writes OUT (`--out OUT` or `--set out=OUT`)."""
    found = [c for c in calls if c[0] == command and "--prepare-only" not in c
             and (f"out={out}" in c or ["--out", str(out)] in [c[k:k + 2] for k in range(len(c))])]
    assert len(found) == 1, (command, out, calls)
    return found[0]


def sft_is_deterministic(sft: list[str]) -> bool:
    return any(a == "--set" and b == "train.deterministic=true" for a, b in itertools.pairwise(sft))


@pytest.mark.parametrize("flags,deterministic", [
    ("--set deterministic=true --set seed=5", True),
    ("--set deterministic=1 --set seed=5", True),  # as TrainConfig reads it (yaml): 1, yes, on, True count
    ("--set deterministic=true --set deterministic=false --set seed=5", False),  # the last flag wins, as in training
])
def test_a_deterministic_variant_trains_its_sfts_deterministic_the_other_not(tmp_path, flags, deterministic):
    """Two variants of one seed, one recipe: the variant whose training flags make its 128K stage deterministic
    passes `--set train.deterministic=true` to its SFT too (a deterministic variant is one from the shared 32K model
    on, so two such runs of one seed can repeat each other), and the variant without it does not (the flag is that
    variant's, not the chain's: variant() sets it for its own SFTs only)."""
    calls, w = logged_chain(tmp_path, {"CPT128_VARIANTS": f"d:::{flags};m:::--set seed=5"})
    assert "deterministic=true" not in call(calls, "train", w / "cpt-128k-m")
    assert sft_is_deterministic(call(calls, "sft", w / "smollm2-135m-128k-sft-replay-d")) is deterministic
    assert not sft_is_deterministic(call(calls, "sft", w / "smollm2-135m-128k-sft-replay-m"))


def test_a_cpt_soup_of_deterministic_variants_trains_a_deterministic_sft(tmp_path):
    """A CPT soup's SFT is deterministic when every variant it averages is, not when one of them is not."""
    det = "--set deterministic=true --set seed=5"
    calls, w = logged_chain(tmp_path, {"CPT128_VARIANTS": f"d1:::{det};d2:::{det}", "VARIANT_RECIPES": "d1=;d2=",
                                       "CPT_SOUPS": "c12=d1+d2"})
    assert sft_is_deterministic(call(calls, "sft", w / "smollm2-135m-128k-sft-replay-c12"))
    calls, w = logged_chain(tmp_path / "mixed", {"CPT128_VARIANTS": f"d1:::{det};m2:::--set seed=5",
                                                  "VARIANT_RECIPES": "d1=;m2=", "CPT_SOUPS": "c12=d1+m2"})
    assert not sft_is_deterministic(call(calls, "sft", w / "smollm2-135m-128k-sft-replay-c12"))
