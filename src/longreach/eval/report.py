"""One page gathering every result in a run folder: NIAH heatmaps, perplexity curves, benchmark tables.

    longreach report runs/demo --out runs/demo/report      # writes report.md, report.html and PNGs

Results are found by shape, wherever they sit under the run folder: NIAH results.json ({"cells", "mean"}),
perplexity results.json ({"models": [{"curve"}]}), benchmark scores ({"benchmark", "task", "n", "score"},
as `longreach eval score` prints them; a .json file may hold one such object or a list, a .jsonl one per
line), training logs (a metrics.jsonl of `longreach train` / `sft`, under any name: every line has "step",
"loss" and "step_time_s"), and attention probes (`eval attention`'s results.json). Benchmark rows sit beside the
paper's numbers (RECIPE.md section 1), and suite averages are shown once every task of a suite is present.
Figures are redrawn from the data, so a missing PNG does not matter. NIAH results on one grid (the same cells and
test: `compare.same_grid`) are compared two by two, and each averaged model's result (its `model_sources`) with
its runs' results. The same numbers go to summary.json (NIAH cells, test fields and means per length, the pairs and
soups, perplexity per bucket, training summaries, probe summaries, scores), with `--meta KEY=VALUE` pairs (card,
date, command) at its top: the file docs/data/ keeps.
"""

from __future__ import annotations

import html
import json
import os
import statistics
from pathlib import Path
from typing import Any

from longreach.errors import InputError
from longreach.eval.compare import (
    TEST_FIELDS,
    TRAINING_NOISE_NOTE,
    cells_of,
    mean_interval,
    same_grid,
    same_grid_pairs,
    several,
    several_line,
)
from longreach.eval.niah import per_length
from longreach.eval.plots import niah_heatmap, ppl_curves, probe_lines, ratio_lines, short_tokens

# ChatQA 2 paper (Xu et al. 2024), per task, 0-100.
PAPER_MODELS = ["ChatQA-2-8B", "ChatQA-2-70B", "GPT-4-Turbo", "Llama3.1-70B-Instruct"]
PAPER: dict[tuple[str, str], list[float | None]] = {
    ("infinitebench", "en_sum"): [17.14, 16.08, 17.62, 30.94],
    ("infinitebench", "en_qa"): [43.51, 48.22, 19.29, 38.49],
    ("infinitebench", "en_mc"): [64.19, 80.35, 77.73, 75.55],
    ("infinitebench", "en_dia"): [17.50, 19.50, 18.00, 14.29],
}
# Suite averages from the paper: (benchmark, tasks, numbers in PAPER_MODELS order).
SUITES: dict[str, tuple[str, list[str], list[float | None]]] = {
    "InfiniteBench >100K (En.Sum, En.QA, En.MC, En.Dia)":
        ("infinitebench", ["en_sum", "en_qa", "en_mc", "en_dia"], [35.59, 41.04, 33.16, 39.81]),
    "32K suite (QMSum, Qasper, QuALITY, MuSiQue, HotpotQA, MultiFieldQA-en)":
        ("longbench", ["qmsum", "qasper", "quality", "musique", "hotpotqa", "multifieldqa_en"],
         [39.41, 48.15, 51.93, 49.92]),
    "ChatRAG Bench (9 datasets)":
        ("chatrag", ["doc2dial", "quac", "qrecc", "coqa", "doqa", "convfinqa", "sqa", "topiocqa", "inscit"],
         [52.50, 56.30, 54.72, None]),
}

Block = tuple  # ("h1"|"h2"|"h3"|"p", text) | ("img", file, alt) | ("table", header, rows)


def _is_score(x: Any) -> bool:
    return isinstance(x, dict) and {"benchmark", "task", "score"} <= set(x)


def _is_train_log(items: list[Any]) -> bool:
    return bool(items) and all(isinstance(x, dict) and {"step", "loss", "step_time_s"} <= set(x) for x in items)


def train_summary(records: list[dict[str, Any]]) -> dict[str, Any]:
    """A training log in a few numbers: the last step and its loss, the mean loss of the last 10 logged steps,
    median step time and tokens/s (leaving out step 1's warm-up when later steps exist; a resumed run's first step
    after the resume still counts), peak GPU memory."""
    timed = [r for r in records if r["step"] > 1] or records
    out = {"steps": records[-1]["step"], "final_loss": float(records[-1]["loss"]),
           "mean_loss_last_10": statistics.fmean(float(r["loss"]) for r in records[-10:]),
           "step_time_s_median": statistics.median(float(r["step_time_s"]) for r in timed)}
    if all("tokens_per_s" in r for r in timed):
        out["tokens_per_s_median"] = statistics.median(float(r["tokens_per_s"]) for r in timed)
    mem = [float(r["peak_mem_gib"]) for r in records if "peak_mem_gib" in r]
    if mem:
        out["peak_mem_gib"] = max(mem)
    return out


def control_ratios(ppl: list[tuple[str, Any]]) -> list[dict[str, Any]]:
    """Each long perplexity curve over its own short-context control (`eval ppl --context W`: the same model
    path, text, length and sequences): the ratio overall and per bucket. Above 1, the long context makes the
    model worse than W tokens of context would; a healthy model sits at or below 1."""
    def key(r: dict[str, Any], m: dict[str, Any]) -> tuple:
        return (m.get("path") or m["model"], r.get("text"), r.get("length"), m.get("sequences"))

    controls: dict[tuple, list[tuple[str, int, dict[str, Any]]]] = {}
    for rel, r in ppl:
        for m in r["models"] if r.get("context") else []:
            controls.setdefault(key(r, m), []).append((rel, r["context"], m))
    out = []
    for rel, r in ppl:
        for m in [] if r.get("context") else r["models"]:
            for crel, ctx, c in controls.get(key(r, m), []):
                if len(c["curve"]) == len(m["curve"]):
                    out.append({"file": rel, "control": crel, "model": m["model"], "path": m.get("path"),
                                "context": ctx, "ratio": float(m["ppl"]) / float(c["ppl"]),
                                "buckets": [[b["start"], b["end"], float(b["ppl"]) / float(cb["ppl"])]
                                            for b, cb in zip(m["curve"], c["curve"])]})
    return out


def niah_pairs(found: dict[str, list[tuple[str, Any]]]) -> tuple[list[dict[str, Any]], list[str]]:
    """`eval compare` of every two NIAH results on one grid (the variants of one chain, say), and the results
    left out of the pairs (a grid with more than six)."""
    return same_grid_pairs(found["niah"])


def _path(model: Any) -> str:
    """A model path as written, made absolute and normalised (relative ones against the current folder)."""
    return os.path.normpath(os.path.abspath(str(model)))


def _compared(p: dict[str, Any]) -> list[str]:
    """The table cells of one `compare` row: both means, A - B with its interval, the cells each won, the sign test."""
    lo, hi = p["difference_ci95"]
    return [_fmt(p["a_mean"]), _fmt(p["b_mean"]), f"{p['difference']:+.2f} [{lo:+.2f}, {hi:+.2f}]",
            f"{p['a_better']} / {p['b_better']}", f"{p['sign_test_p']:.3g}"]


def niah_soups(found: dict[str, list[tuple[str, Any]]]) -> list[dict[str, Any]]:
    """Each averaged model's grid (results.json's model_sources) against the grids of the runs it averages, on
    the same grid (`same_grid`), the first such grid of each run: `several`, the soup as A."""
    out = []
    for rel, r in found["niah"]:
        runs = []
        for source in r.get("model_sources") or []:
            run = next(((irel, i) for irel, i in found["niah"] if i is not r and i.get("model") is not None
                        and _path(i["model"]) == _path(source) and same_grid(i, r)), None)
            if run is not None:
                runs.append(run)
        if runs:
            out.append({"soup": rel, "model": r.get("model"), "sources": len(r["model_sources"]),
                        **several(cells_of(r), [(irel, cells_of(i)) for irel, i in runs])})
    return out


def collect(run_dir: Path, skip: Path | None = None) -> dict[str, list[tuple[str, Any]]]:
    """(relative path, data) of each result under run_dir, by kind; unreadable files under "skipped"."""
    found: dict[str, list[tuple[str, Any]]] = {"niah": [], "ppl": [], "scores": [], "train": [], "probe": [],
                                               "skipped": []}
    files = sorted(p for p in run_dir.rglob("*") if p.suffix in (".json", ".jsonl") and p.is_file())
    for f in files:
        if skip is not None and skip.resolve() in f.resolve().parents:
            continue
        rel = str(f.relative_to(run_dir))
        try:
            if f.suffix == ".jsonl":
                items = [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
            else:
                data = json.loads(f.read_text())
                items = data if isinstance(data, list) else [data]
        except (json.JSONDecodeError, UnicodeDecodeError, OSError):
            found["skipped"].append((rel, None))
            continue
        if f.suffix == ".jsonl" and _is_train_log(items):
            found["train"].append((rel, train_summary(items)))
            continue
        for item in items:
            if isinstance(item, dict) and "mean" in item and cells_of(item) is not None:
                found["niah"].append((rel, item))
            elif isinstance(item, dict) and isinstance(item.get("models"), list) and all(
                    isinstance(m, dict) and "curve" in m for m in item["models"]):
                found["ppl"].append((rel, item))
            elif _is_score(item):
                found["scores"].append((rel, item))
            elif isinstance(item, dict) and {"retrieval_heads", "summary"} <= set(item):
                found["probe"].append((rel, item))
    return found


def _fmt(x: Any) -> str:
    return "" if x is None else f"{x:.2f}" if isinstance(x, float) else str(x)


def _span(start: int, end: int) -> str:
    """A position bucket's column heading, e.g. 8K-16K."""
    return f"{short_tokens(start)}-{short_tokens(end)}"


def _slug(rel: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in rel.rsplit(".", 1)[0]).strip("_")


def blocks(run_dir: Path, out: Path, found: dict[str, list[tuple[str, Any]]] | None = None,
           numbers: dict[str, Any] | None = None) -> list[Block]:
    """The page as a list of blocks (headings, paragraphs, images, tables); figures are drawn into `out`.
    `numbers`: summary(found), when the caller has it (its bootstrap intervals and pairs are not drawn again)."""
    found = collect(run_dir, skip=out) if found is None else found
    numbers = summary(found) if numbers is None else numbers
    page: list[Block] = [("h1", f"longreach report: {run_dir}")]
    if not any(found[k] for k in ("niah", "ppl", "scores", "train", "probe")):
        page.append(("p", "No results found (results.json of eval niah / eval ppl / eval attention, eval score "
                          + "outputs, or training metrics.jsonl)."))
    if found["niah"]:
        page.append(("h2", "Needle in a haystack"))
        for (rel, r), nums in zip(found["niah"], numbers["niah"]):
            png = f"niah_{_slug(rel)}.png"
            niah_heatmap(r, out / png)
            lengths = sorted({c["length"] for c in r["cells"]})
            depths = sorted({c["depth"] for c in r["cells"]})
            score = cells_of(r)
            lo, hi = nums["mean_ci95"]
            page += [("h3", f"{rel}: {r.get('model', '')}"),
                     ("p", (f"mode {r.get('mode', '?')}, chat {r.get('chat', '?')}, mean score {_fmt(r['mean'])} "
                            f"(95% interval {lo:.2f}-{hi:.2f}: depths redrawn within each length; `longreach eval "
                            "compare` tells two results apart)")),
                     ("img", png, f"NIAH heatmap of {rel}"),
                     ("table", ["depth % \\ length"] + [short_tokens(n) for n in lengths],
                      [[f"{d:g}"] + [_fmt(score.get((n, d))) for n in lengths] for d in depths]
                      + [["mean"] + [_fmt(v) for v in per_length(r).values()]])]
        pairs = numbers["niah_pairs"]
        if pairs:
            page += [("h3", "Pairs on the same grid (longreach eval compare)"),
                     ("p", ("A - B with its 95% interval (depths redrawn within each length) and an exact sign test "
                            "on the cells that differ, for results of one test (the same cells, and the same needle, "
                            "question, mode and haystack where both record them). "
                            + TRAINING_NOISE_NOTE)),
                     ("table", ["A", "B", "mean A", "mean B", "A - B [95%]", "cells A / B better", "sign test p"],
                      [[p["a"], p["b"]] + _compared(p) for p in pairs])]
            if numbers["niah_pairs_left_out"]:
                page.append(("p", "Not paired (more than six results on one grid; `longreach eval compare` pairs "
                                  "them): " + ", ".join(numbers["niah_pairs_left_out"]) + "."))
        for soup in numbers["niah_soups"]:
            page += [("h3", f"Soup against its runs: {soup['soup']}"),
                     ("p", (f"{soup['model']} averages {soup['sources']} runs; {len(soup['pairs'])} of their grids are "
                            "here, on the same grid. With A the soup and the Bs its runs: " + several_line(soup))),
                     ("table", ["run", "mean soup", "mean run", "soup - run [95%]", "cells soup / run better",
                                "sign test p"],
                      [[p["b"]] + _compared(p) for p in soup["pairs"]])]
    if found["ppl"]:
        page.append(("h2", "Perplexity by position"))
        for rel, r in found["ppl"]:
            png = f"ppl_{_slug(rel)}.png"
            ppl_curves(r, out / png)
            edges = [_span(b["start"], b["end"]) for b in r["models"][0]["curve"]]
            ctx = f", at most {r['context']} tokens of context each" if r.get("context") else ""
            page += [("h3", f"{rel}: sequences of {r['length']} tokens{ctx}"), ("img", png, f"perplexity of {rel}"),
                     ("table", ["model", "overall"] + edges,
                      [[m["model"], _fmt(float(m["ppl"]))] + [_fmt(float(b["ppl"])) for b in m["curve"]]
                       for m in r["models"]])]
        ratios = control_ratios(found["ppl"])
        if ratios:
            ratio_lines(ratios, out / "ppl_ratio_to_control.png")
            page += [("h3", "Long context against the same model's short-context control"),
                     ("p", ("Each long curve divided by the same model's curve on the same tokens with at most "
                            "W tokens of context (eval ppl --context W). Above 1: the long context makes the "
                            "model worse than W tokens would; a healthy model stays at or below 1.")),
                     ("img", "ppl_ratio_to_control.png", "perplexity ratio to the short-context control")]
            layouts: dict[tuple[str, ...], list[dict[str, Any]]] = {}  # one table per bucket layout
            for x in ratios:
                layouts.setdefault(tuple(_span(b[0], b[1]) for b in x["buckets"]), []).append(x)
            page += [("table", ["curve", "model", "W", "overall", *cols],
                      [[x["file"], x["model"], short_tokens(x["context"]), _fmt(x["ratio"])]
                       + [_fmt(b[2]) for b in x["buckets"]] for x in rows]) for cols, rows in layouts.items()]
    if found["scores"]:
        page.append(("h2", "Benchmarks (0-100)"))
        rows, have = [], {}
        for rel, s in found["scores"]:
            key = (str(s["benchmark"]).lower(), str(s["task"]).lower())
            have[key] = float(s["score"])
            task_name = f"{s['task']} @ {s['length']}" if s.get("length") else s["task"]  # RULER: per length
            rows.append([s["benchmark"], task_name, _fmt(s.get("n")), _fmt(float(s["score"]))]
                        + [_fmt(x) for x in PAPER.get(key, [None] * len(PAPER_MODELS))] + [rel])
        page.append(("table", ["benchmark", "task", "n", "score"] + PAPER_MODELS + ["file"], rows))
        suite_rows = []
        for name, (bench, tasks, paper) in SUITES.items():
            got = [have[(bench, t)] for t in tasks if (bench, t) in have]
            if got:
                mean = _fmt(sum(got) / len(got)) if len(got) == len(tasks) else f"{len(got)}/{len(tasks)} tasks"
                suite_rows.append([name, mean] + [_fmt(x) for x in paper])
        if suite_rows:
            page += [("h3", "Suite averages"), ("table", ["suite", "this run"] + PAPER_MODELS, suite_rows)]
    if found["probe"]:
        page.append(("h2", "Attention on the needle (eval attention)"))
        cols = ["needle", "sink", "recent", "margin", "best_needle"]
        for rel, r in found["probe"]:
            png = f"probe_{_slug(rel)}.png"
            probe_lines(r, out / png)
            page += [("h3", f"{rel}: {r.get('model', '')}"),
                     ("p", f"retrieval heads (layer, head): {', '.join(map(str, map(tuple, r['retrieval_heads'])))}"),
                     ("img", png, f"attention probe of {rel}"),
                     ("table", ["length", "depth"] + cols,
                      [[short_tokens(x["length"]), f"{x['depth']:g}"] + [_fmt(x[c]) for c in cols]
                       for x in r["summary"]])]
    if found["train"]:
        page.append(("h2", "Training runs"))
        cols = ["steps", "final_loss", "mean_loss_last_10", "step_time_s_median", "tokens_per_s_median",
                "peak_mem_gib"]
        page.append(("table", ["metrics file"] + cols,
                     [[rel] + [_fmt(round(t[c]) if c == "tokens_per_s_median" and c in t else t.get(c))
                               for c in cols] for rel, t in found["train"]]))
    if found["skipped"]:
        page.append(("p", "Unreadable files skipped: " + ", ".join(rel for rel, _ in found["skipped"])))
    return page


def _md_row(cells: list[Any]) -> str:
    return "| " + " | ".join(str(x).replace("|", "\\|") for x in cells) + " |"


def to_markdown(page: list[Block]) -> str:
    lines: list[str] = []
    for b in page:
        if b[0] in ("h1", "h2", "h3"):
            lines += ["#" * int(b[0][1]) + " " + b[1], ""]
        elif b[0] == "p":
            lines += [b[1], ""]
        elif b[0] == "img":
            lines += [f"![{b[2]}]({b[1]})", ""]
        else:
            lines += [_md_row(b[1]), "|" + "---|" * len(b[1])] + [_md_row(r) for r in b[2]] + [""]
    return "\n".join(lines)


def to_html(page: list[Block]) -> str:
    e = html.escape
    body: list[str] = []
    for b in page:
        if b[0] in ("h1", "h2", "h3", "p"):
            body.append(f"<{b[0]}>{e(b[1])}</{b[0]}>")
        elif b[0] == "img":
            body.append(f'<img src="{e(b[1])}" alt="{e(b[2])}">')
        else:
            head = "".join(f"<th>{e(str(x))}</th>" for x in b[1])
            rows = "".join("<tr>" + "".join(f"<td>{e(str(x))}</td>" for x in r) + "</tr>" for r in b[2])
            body.append(f"<table><tr>{head}</tr>{rows}</table>")
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse;"
             "margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}img{max-width:100%}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>longreach report</title>"
            f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def summary(found: dict[str, list[tuple[str, Any]]], meta: dict[str, str] | None = None) -> dict[str, Any]:
    """The numbers of the page as one JSON object: NIAH means per length and the cells, perplexity overall and
    per position bucket, training summaries, benchmark scores."""
    niah = [{"file": rel, "model": r.get("model"), **{k: r[k] for k in TEST_FIELDS if k in r},
             "model_sources": r.get("model_sources"), "mode": r.get("mode"), "mean": r["mean"],
             "mean_ci95": mean_interval(cells_of(r)),
             "per_length": {str(n): v for n, v in per_length(r).items()}, "seconds": r.get("seconds"),
             "cells": [[c["length"], c["depth"], c["score"]] for c in r["cells"]]}
            for rel, r in found["niah"]]
    ppl = [{"file": rel, "length": r.get("length"), "context": r.get("context"),
            "models": [{"model": m["model"], "path": m.get("path"), "ppl": m["ppl"],
                        "buckets": [[b["start"], b["end"], b["ppl"]] for b in m["curve"]]} for m in r["models"]]}
           for rel, r in found["ppl"]]
    pairs, left_out = niah_pairs(found)
    return {"meta": dict(meta or {}), "niah": niah, "niah_pairs": pairs, "niah_pairs_left_out": left_out,
            "niah_soups": niah_soups(found), "ppl": ppl,
            "ppl_ratios": control_ratios(found["ppl"]),
            "train": [{"file": rel, **t} for rel, t in found["train"]],
            "probe": [{"file": rel, "model": r.get("model"), "retrieval_heads": r["retrieval_heads"],
                       "summary": r["summary"]} for rel, r in found["probe"]],
            "scores": [{"file": rel, **s} for rel, s in found["scores"]]}


def build(run_dir: str | Path, out: str | Path, meta: dict[str, str] | None = None) -> Path:
    """Write out/report.md, out/report.html, out/summary.json and the figures; returns the markdown path."""
    run_dir, out = Path(run_dir), Path(out)
    if not run_dir.is_dir():
        raise InputError("run folder not found", path=str(run_dir))
    out.mkdir(parents=True, exist_ok=True)
    found = collect(run_dir, skip=out)
    numbers = summary(found, meta)
    (out / "summary.json").write_text(json.dumps(numbers, indent=1) + "\n")
    page = blocks(run_dir, out, found, numbers)
    (out / "report.md").write_text(to_markdown(page))
    (out / "report.html").write_text(to_html(page))
    return out / "report.md"
