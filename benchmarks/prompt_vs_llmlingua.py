"""Prompt compression side by side with the ``llmlingua`` package (LLMLingua, LongLLMLingua).

Both sides compress the same prompts with the same scorer, SmolLM2-135M-Instruct (the folder
``tokenreduce.assets.llm.smollm2_folder()``), on the CPU with the same torch thread count,
and SmolLM2 answers every compressed prompt greedily.

The llmlingua side. ``llmlingua==0.2.2`` indexes the model's ``past_key_values`` as tuples
of tensors and hands lists back to the model, which transformers accepts up to 4.46 (later
releases need a ``Cache`` object), so it lives in its own virtual environment,
``.venv-llmlingua``, with ``transformers==4.46.3`` and the project environment's torch (a
``.pth`` line puts the project's site-packages after its own). ``--setup`` builds it (once):

    .venv/bin/python benchmarks/prompt_vs_llmlingua.py --setup --quick

It is driven by ``llmlingua_runner.py``, run by that environment's python (JSON in and out),
so the project's environment never imports llmlingua. transformers 4.46 cannot read the
project's SmolLM2 folder as written by transformers 5 (the tokenizer class
``TokenizersBackend``, the RoPE base under ``rope_parameters``), so llmlingua reads a view of
it: the same weight and tokenizer files (symbolic links) with both JSON files written in 4.x
terms (:func:`transformers4_config`). Before compressing, the per-token losses both sides
give a probe text are compared (:func:`check_same_scorer`): the run stops if they differ.

The prompts: the long-context samples of :mod:`tokenreduce.lmtasks` (``niah``, ``multikey``,
``vt``; Jargon File prose, ``$TOKENREDUCE_JARGON``) at about ``--context`` tokens, needle
depths spread evenly. The prose is cut into sentences after ``.``, ``!`` or ``?`` and each
``--sentences`` consecutive sentences form one document; the question is given as the
question (never compressed). The model reads ``instruction, documents joined by blank lines,
question`` in the chat template of :mod:`tokenreduce.bench.tasks.longcontext`, after which
the answer's prefix is given; the uncompressed baseline is the same prompt uncompressed.

Budgets: both sides keep the same number of context tokens, ``round(rate * tokens of the
documents)`` (SmolLM2 tokens). llmlingua's own ``rate`` also counts the question and the
instruction, so it is given as ``target_token``. LLMLingua runs with llmlingua's defaults;
LongLLMLingua with its README's settings (``llmlingua_runner.LONGLLMLINGUA``); ours with
``llmlingua:rate=R`` and ``longllmlingua:rate=R,dynamic_ratio=0.3`` (the same spread of
per-document ratios), and ``selective_context:rate=R`` for reference.

Measured per method and rate: the achieved rate (SmolLM2 tokens of the compressed context,
documents joined by blank lines, over those of the original, mean over samples), the
accuracy (``Sample.is_correct`` of the greedy answer), the accuracy kept (accuracy / the
baseline's), and the median wall-clock seconds of one prompt's compression (ours:
``Compressed.seconds``; theirs: ``compress_prompt``), after one untimed compression per
method. For each rate the llmlingua side runs first, then ours, so slow drifts of the
machine's load do not favour one side.

Run: ``TOKENREDUCE_JARGON=... .venv/bin/python benchmarks/prompt_vs_llmlingua.py``
(``--quick``: one short niah sample at one rate, about a minute).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shlex
import statistics
import subprocess
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import torch

from tokenreduce import lmtasks, prompt
from tokenreduce.assets import llm
from tokenreduce.methods import build

ROOT = Path(__file__).resolve().parents[1]
RUNNER = Path(__file__).with_name("llmlingua_runner.py")
VENV = ROOT / ".venv-llmlingua"
#: what the llmlingua environment installs (see the module docstring for the transformers pin)
PINS = ("llmlingua==0.2.2", "transformers==4.46.3")
RATES = (0.5, 0.25, 0.1)
TASKS = ("niah", "multikey", "vt")
#: our methods by name, as spec templates; the first two have a counterpart in llmlingua
OURS = {
    "llmlingua": "llmlingua:rate={rate}",
    "longllmlingua": "longllmlingua:rate={rate},dynamic_ratio=0.3",
    "selective_context": "selective_context:rate={rate}",
}
THEIRS = ("llmlingua", "longllmlingua")
PROBE = "The Jargon File is a glossary of hacker slang. It was started in 1975 at Stanford."
#: largest per-token loss difference (nats) allowed between the two sides' scorers
SAME_SCORER_NATS = 1e-3
MAX_NEW_TOKENS = 8  # the answer is a four-digit number, as in the long-context bench tasks


@dataclass(frozen=True)
class Case:
    """One prompt to compress: its sample, the instruction, documents and question."""

    id: str
    sample: lmtasks.Sample
    instruction: str
    docs: list[str]
    question: str


def split_prompt(sample: lmtasks.Sample) -> tuple[str, str, str]:
    """(instruction, context, question) of a :mod:`tokenreduce.lmtasks` sample, whose user
    turn is ``instruction \\n\\n context \\n\\n Question: question``."""
    content = sample.messages[0]["content"]
    instruction, _, rest = content.partition("\n\n")
    context, marker, question = rest.rpartition("\n\nQuestion: ")
    if not marker or not context:
        raise ValueError(f"{sample.task} sample: no context and 'Question:' in {content[:80]!r}")
    return instruction, context, question


def documents(text: str, sentences_per_doc: int) -> list[str]:
    """``text`` cut into sentences (after ``.``, ``!`` or ``?`` and whitespace), each
    ``sentences_per_doc`` consecutive ones joined into one document."""
    if sentences_per_doc < 1:
        raise ValueError(f"sentences_per_doc must be at least 1; got {sentences_per_doc}")
    sentences = [s for s in re.split(r"(?<=[.!?])\s+", text.strip()) if s]
    step = sentences_per_doc
    return [" ".join(sentences[i : i + step]) for i in range(0, len(sentences), step)]


def make_cases(tokenizer, tasks, per_task: int, context: int, sentences: int) -> list[Case]:
    """``per_task`` samples of each task at about ``context`` tokens, depths spread evenly."""
    prose = lmtasks.jargon_sentences()
    cases = []
    for task in tasks:
        for i in range(per_task):
            sample = lmtasks.make_sample(task, tokenizer, context, (i + 0.5) / per_task, i, prose)
            instruction, text, question = split_prompt(sample)
            docs = documents(text, sentences)
            cases.append(Case(f"{task}-{i}", sample, instruction, docs, question))
    return cases


def warmup_case(case: Case) -> Case:
    """A short prompt (``case``'s first two documents) compressed untimed before the timed
    ones, so that one-time costs (allocations, lazy imports) are not timed."""
    return dataclasses.replace(case, id="warmup", docs=case.docs[:2])


def as_read(case: Case, context: str) -> lmtasks.Sample:
    """``case``'s sample with ``context`` as the text the model reads."""
    content = f"{case.instruction}\n\n{context}\n\nQuestion: {case.question}"
    return dataclasses.replace(case.sample, messages=[{"role": "user", "content": content}])


# -- the llmlingua environment and its view of the model ---------------------------------------
def setup_venv(venv: Path) -> None:
    """Create ``venv`` with :data:`PINS`, reading torch and the rest from this environment."""
    if not (venv / "bin" / "python").exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    purelib = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    # appended after the venv's own site-packages: its transformers 4.x shadows ours
    Path(purelib, "tokenreduce-venv.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([python, "-m", "pip", "install", "--no-cache-dir", *PINS], check=True)


def check_venv(venv: Path) -> Path:
    """The llmlingua environment's python, or SystemExit saying how to build it."""
    python = venv / "bin" / "python"
    found = python.exists() and subprocess.run(
        [str(python), "-c", "import llmlingua"], capture_output=True
    ).returncode == 0  # fmt: skip
    if not found:
        raise SystemExit(
            f"no llmlingua environment at {venv}: build it with "
            f"{sys.executable} {Path(__file__).name} --setup (installs {' '.join(PINS)})"
        )
    return python


def transformers4_config(config: dict) -> dict:
    """A transformers 5 ``config.json`` of a Llama model in transformers 4 terms: the RoPE
    base as ``rope_theta``, the dtype as ``torch_dtype``, no GGUF ``quantization_config``
    (the weights are already plain). Raises ValueError for RoPE scaling (not translated)."""
    out = dict(config)
    rope = out.pop("rope_parameters", None)
    if rope is not None:
        if rope.get("rope_type", "default") != "default":
            raise ValueError(f"RoPE scaling {rope} is not translated to transformers 4 terms")
        out["rope_theta"] = rope["rope_theta"]
    out.pop("quantization_config", None)
    if "dtype" in out:
        out["torch_dtype"] = out.pop("dtype")
    return out


def transformers4_tokenizer_config(config: dict) -> dict:
    """A transformers 5 ``tokenizer_config.json`` for transformers 4: the fast tokenizer
    read from ``tokenizer.json`` (``PreTrainedTokenizerFast``) instead of 5's
    ``TokenizersBackend``."""
    out = {k: v for k, v in config.items() if k not in ("backend", "is_local", "local_files_only")}
    out["tokenizer_class"] = "PreTrainedTokenizerFast"
    return out


def transformers4_view(folder: Path, dest: Path) -> Path:
    """``dest``: links to ``folder``'s files, with its two JSON configs in 4.x terms."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("model.safetensors", "tokenizer.json", "chat_template.jinja",
                 "generation_config.json"):  # fmt: skip
        link = dest / name
        link.unlink(missing_ok=True)  # it may point at another transformers release's folder
        if (folder / name).exists():
            link.symlink_to(folder / name)
    for name, translate in (("config.json", transformers4_config),
                            ("tokenizer_config.json", transformers4_tokenizer_config)):  # fmt: skip
        config = json.loads((folder / name).read_text())
        (dest / name).write_text(json.dumps(translate(config), indent=2))
    return dest


# -- compression ------------------------------------------------------------------------------
def context_target(case: Case, rate: float, scorer: prompt.Scorer) -> int:
    """Context tokens both sides keep of ``case`` at ``rate`` (as our methods count them)."""
    return build(f"llmlingua:rate={rate}").target(sum(scorer.count(d) for d in case.docs))


def run_theirs(python: Path, view: Path, cases, targets, threads) -> tuple[dict, list]:
    """{(mode, case id): (context, seconds)} of llmlingua, keeping ``targets[case id]``
    context tokens of each case, and its probe losses; :func:`warmup_case` first, untimed."""
    jobs = [
        {"id": f"{mode}|{c.id}", "mode": mode, "docs": c.docs, "question": c.question,
         "target_token": targets[c.id]}
        for mode in THEIRS for c in [warmup_case(cases[0]), *cases]
    ]  # fmt: skip
    request = {"model": str(view), "threads": threads, "probe": PROBE, "jobs": jobs}
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([str(python), str(RUNNER)], input=json.dumps(request),
                          stdout=subprocess.PIPE, text=True, env=env)  # fmt: skip
    if done.returncode != 0:
        raise SystemExit(f"the llmlingua runner failed (exit {done.returncode}); see above")
    reply = json.loads(done.stdout)
    out = {}
    for result in reply["results"]:
        mode, case_id = result["id"].split("|")
        out[(mode, case_id)] = (result["context"], result["seconds"])
    return out, reply["probe"]


def run_ours(scorer: prompt.Scorer, cases, rate) -> dict:
    """{(method, case id): (context, seconds)} of our methods at ``rate``, one prompt per
    call; :func:`warmup_case` first, untimed."""
    out = {}
    warm = warmup_case(cases[0])
    for name, template in OURS.items():
        spec = template.format(rate=rate)
        prompt.compress(warm.docs, spec, question=warm.question, scorer=scorer)
        for c in cases:
            done = prompt.compress(c.docs, spec, question=c.question, scorer=scorer)
            out[(name, c.id)] = ("\n\n".join(done.context), done.seconds)
        print(f"tokenreduce {spec}: {len(cases)} prompts", file=sys.stderr, flush=True)
    return out


def check_same_scorer(scorer: prompt.Scorer, their_losses: list[float]) -> float:
    """The largest difference (nats) between the per-token losses of :data:`PROBE` by our
    scorer and by llmlingua's; SystemExit above :data:`SAME_SCORER_NATS`."""
    ids = scorer.tokenize(PROBE).ids
    (ours,) = scorer.self_information([ids[1:]], prefixes=[ids[:1]])
    theirs = torch.tensor(their_losses)
    if ours.shape != theirs.shape:
        raise SystemExit(f"the scorers read the probe as {len(ours)} and {len(theirs)} tokens")
    gap = float((ours - theirs).abs().max())
    if gap > SAME_SCORER_NATS:
        raise SystemExit(f"the two sides' scorers differ by {gap:.2e} nats on the probe text")
    return gap


# -- answering and the table ------------------------------------------------------------------
@torch.inference_mode()
def is_answered(model, tokenizer, sample: lmtasks.Sample) -> bool:
    """Whether SmolLM2's greedy answer to ``sample`` is correct (``Sample.is_correct``); the
    prompt is encoded as the long-context bench tasks encode it."""
    text = tokenizer.apply_chat_template(
        sample.messages, add_generation_prompt=True, tokenize=False
    )
    ids = tokenizer(text + sample.answer_prefix, add_special_tokens=False, return_tensors="pt")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    out = model.generate(**ids, max_new_tokens=MAX_NEW_TOKENS, do_sample=False, pad_token_id=pad)
    answer = tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)
    return sample.is_correct(answer)


def row(side, method, rate, cases, compressed, model, tokenizer, scorer) -> dict:
    """The measurements of one method at one rate: ``compressed`` maps a case id to its
    (compressed context, seconds)."""
    correct, rates, seconds = [], [], []
    for c in cases:
        context, spent = compressed[c.id]
        correct.append(is_answered(model, tokenizer, as_read(c, context)))
        rates.append(scorer.count(context) / scorer.count("\n\n".join(c.docs)))
        seconds.append(spent)
    return {
        "side": side, "method": method, "rate": rate,
        "achieved": statistics.mean(rates),
        "accuracy": 100.0 * sum(correct) / len(correct),
        "seconds": statistics.median(seconds) if seconds else None,
        "correct": correct, "rates": rates, "all_seconds": seconds,
    }  # fmt: skip


def baseline_row(cases, model, tokenizer) -> dict:
    """The uncompressed prompts (documents joined by blank lines, as the compressed ones)."""
    compressed = {c.id: ("\n\n".join(c.docs), None) for c in cases}
    correct = [is_answered(model, tokenizer, as_read(c, compressed[c.id][0])) for c in cases]
    return {"side": "none", "method": "uncompressed", "rate": 1.0, "achieved": 1.0,
            "accuracy": 100.0 * sum(correct) / len(correct), "seconds": None,
            "correct": correct}  # fmt: skip


def counterpart(rows: list[dict], r: dict) -> dict | None:
    """llmlingua's row for the method and rate of our row ``r``; None where it has none."""
    if r["side"] != "tokenreduce" or r["method"] not in THEIRS:
        return None
    return next(o for o in rows if o["side"] == "llmlingua" and o["method"] == r["method"]
                and o["rate"] == r["rate"])  # fmt: skip


def speed_ratio(rows: list[dict], r: dict) -> float | None:
    """llmlingua's median seconds / ours for the same method and rate (> 1: ours faster)."""
    theirs = counterpart(rows, r)
    return None if theirs is None else theirs["seconds"] / r["seconds"]


def table(rows: list[dict]) -> str:
    """The Markdown table of ``rows`` (the baseline first)."""
    base = rows[0]["accuracy"]
    lines = [
        "| method | rate asked | rate achieved | accuracy % | accuracy kept % | "
        "median compression s | speed ×llmlingua |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        kept = f"{100.0 * r['accuracy'] / base:.0f}" if base else "–"
        secs = "–" if r["seconds"] is None else f"{r['seconds']:.2f}"
        ratio = speed_ratio(rows, r)
        name = r["method"] if r["side"] == "none" else f"{r['method']} ({r['side']})"
        lines.append(
            f"| {name} | {r['rate']:g} | {r['achieved']:.3f} | {r['accuracy']:.1f} | "
            f"{kept} | {secs} | {'–' if ratio is None else f'{ratio:.2f}x'} |"
        )
    return "\n".join(lines)


def goal(rows: list[dict]) -> str:
    """Whether ours keeps at least llmlingua's accuracy at each rate and compresses >= 3x
    faster, per method."""
    verdicts = []
    for r in rows:
        theirs = counterpart(rows, r)
        if theirs is None:
            continue
        ratio = speed_ratio(rows, r)
        ok = r["accuracy"] >= theirs["accuracy"] and ratio >= 3
        verdicts.append(
            f"{r['method']} at {r['rate']:g}: accuracy {r['accuracy']:.0f} vs "
            f"{theirs['accuracy']:.0f}, {ratio:.1f}x faster: {'met' if ok else 'missed'}"
        )
    return "; ".join(verdicts)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", nargs="+", default=list(TASKS), choices=lmtasks.TASKS)
    p.add_argument("--samples", type=int, default=3, help="samples per task")
    p.add_argument("--context", type=int, default=1000, help="tokens of prose per prompt")
    p.add_argument("--sentences", type=int, default=4, help="sentences per document")
    p.add_argument("--rates", type=float, nargs="+", default=list(RATES))
    p.add_argument("--threads", type=int, default=1, help="torch threads, both sides")
    p.add_argument("--venv", type=Path, default=VENV, help="the llmlingua environment")
    p.add_argument("--setup", action="store_true", help="build the llmlingua environment first")
    p.add_argument("--quick", action="store_true", help="one 300-token niah sample at rate 0.5")
    p.add_argument("--out", type=Path, default=ROOT / "results" / "prompt_vs_llmlingua.json")
    args = p.parse_args(argv)
    if args.quick:
        args.tasks, args.samples, args.context, args.rates = ["niah"], 1, 300, [0.5]
    if args.samples < 1 or args.threads < 1 or not all(0 < r <= 1 for r in args.rates):
        p.error("--samples and --threads must be at least 1 and every rate in (0, 1]")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.setup:
        setup_venv(args.venv)
    python = check_venv(args.venv)
    view = transformers4_view(llm.smollm2_folder(), args.venv / "smollm2-transformers4")
    model, tokenizer = llm.load_lm("smollm2")
    scorer = prompt.Scorer(model, tokenizer)
    cases = make_cases(tokenizer, args.tasks, args.samples, args.context, args.sentences)
    rows = [baseline_row(cases, model, tokenizer)]
    for rate in args.rates:
        every = [warmup_case(cases[0]), *cases]
        targets = {c.id: context_target(c, rate, scorer) for c in every}
        theirs, probe = run_theirs(python, view, cases, targets, args.threads)
        gap = check_same_scorer(scorer, probe)
        ours = run_ours(scorer, cases, rate)
        for side, found, names in (("llmlingua", theirs, THEIRS), ("tokenreduce", ours, OURS)):
            for name in names:
                compressed = {c.id: found[(name, c.id)] for c in cases}
                rows.append(row(side, name, rate, cases, compressed, model, tokenizer, scorer))
    docs = statistics.mean(len(c.docs) for c in cases)
    print(f"command: {shlex.join([os.path.relpath(sys.executable, ROOT), *sys.argv])}")
    print(f"SmolLM2-135M-Instruct, CPU, {args.threads} thread(s), torch {torch.__version__}; "
          f"{len(cases)} prompts ({', '.join(args.tasks)} x {args.samples}), about "
          f"{args.context} tokens of prose in {docs:.1f} documents of {args.sentences} "
          f"sentences; scorers agree within {gap:.1e} nats\n")  # fmt: skip
    print(table(rows))
    print(f"\ngoal (accuracy >= llmlingua's at the same rate, >= 3x faster): {goal(rows)}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"args": sys.argv[1:], "rows": rows}, indent=1, default=str))


if __name__ == "__main__":
    main()
