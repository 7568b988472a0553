"""Every fenced code block of README.md and docs/*.md runs here, the way a reader would run it.

* Python blocks (info string ``python``) of one file run in order in one namespace, in a
  temporary working directory. A traceback points at the Markdown file and line.
* Shell blocks (``bash``, ``sh``, ``shell``, ``console``) may hold only ``tokenreduce``
  commands; each one, and each inline code span of the prose that is a ``tokenreduce ...`` or
  ``./run bench ...`` command, runs through the real CLI up to the first expensive step
  (loading the model, opening the results store), so its options parse and its method names
  and budgets validate. ``--help`` runs in full.
* The options named in the docs' option tables exist in the CLI.
* A block that must not run says so in the Markdown, visibly: a ``<!-- not run: reason -->``
  line right above its fence, or ``no-run: reason`` after its language
  (```` ```python no-run: needs a GPU ````). Every other block fails the test (a diagram too).
  The not-run blocks are counted and listed by :func:`test_inventory`.

Substitutions, so the blocks take seconds: they load the models named in :data:`SUBSTITUTES`
through the same calls, which this module replaces (fixture ``substitutes``) by models of the
same family with random weights and a narrow width. The code of the blocks runs unchanged.
"""

from __future__ import annotations

import importlib
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

timm = pytest.importorskip("timm")
transformers = pytest.importorskip("transformers")

import tokenreduce  # noqa: E402
import tokenreduce.assets  # noqa: E402
from tokenreduce import methods  # noqa: E402

from .lmutil import byte_tokenizer, tiny_lm  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

PYTHON = {"python", "py"}
SHELL = {"bash", "sh", "shell", "console"}
FENCE = re.compile(r"^ {0,3}(?P<fence>`{3,}|~{3,})\s*(?P<info>[^`]*)$")
NOT_RUN_COMMENT = re.compile(r"^\s*<!--\s*not run:\s*(?P<reason>.*?)\s*-->\s*$")
NO_RUN_INFO = re.compile(r"\bno-run\b:?\s*(?P<reason>.*)$")
# `tokenreduce bench ...`, `./run bench ...`; not the bare package name `tokenreduce`
INLINE_COMMAND = re.compile(r"`(tokenreduce [^`]+|\./run bench(?: [^`]*)?)`")
OPTION_ROW = re.compile(r"^\|\s*(?P<cell>`--[^|]*)\|")
DOTTED_NAME = re.compile(r"(?<![\w/.-])tokenreduce(?:\.[A-Za-z_]\w*)+")  # not a path's file name

# What the docs load -> what they get here (random weights; same family, narrow width).
SUBSTITUTES = {
    "timm.create_model(name)": "the same timm architecture with embed_dim=48, num_heads=3 "
    "(depth, image size and patch grid unchanged)",
    'tokenreduce.assets.load("dinov2-small")': "Dinov2Model of the asset's config with width "
    "48 and 3 heads (12 layers, patch 14), and the asset's own image processor",
    'tokenreduce.assets.load("smollm2")': "a 2-layer Llama (tests/lmutil.tiny_lm) and an "
    "offline byte-level tokenizer",
}
NARROW_VIT = {"embed_dim": 48, "num_heads": 3}


@dataclass(frozen=True)
class Block:
    """One fenced code block: ``line`` is the 1-based line of its opening fence."""

    file: Path
    line: int
    lang: str
    code: str
    not_run: str | None  # the reason given in the Markdown, None when the block runs

    @property
    def where(self) -> str:
        return f"{self.file.relative_to(ROOT)}:{self.line}"


def blocks(file: Path) -> list[Block]:
    """The fenced code blocks of a Markdown file, in order."""
    lines = file.read_text().splitlines()
    found, i = [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        fence, info = m["fence"], m["info"].strip()
        end = i + 1
        close = re.compile(rf"^ {{0,3}}{fence[0]}{{{len(fence)},}}\s*$")
        while end < len(lines) and not close.match(lines[end]):
            end += 1
        found.append(
            Block(
                file=file,
                line=i + 1,
                lang=info.split()[0].lower() if info else "",
                code="\n".join(lines[i + 1 : end]) + "\n",
                not_run=_not_run_reason(lines[:i], info),
            )
        )
        i = end + 1
    return found


def _not_run_reason(before: list[str], info: str) -> str | None:
    """The reason a block is marked not to run ("" when marked without one), else None."""
    m = NO_RUN_INFO.search(info)
    if m:
        return m["reason"].strip()
    previous = next((line for line in reversed(before) if line.strip()), "")
    m = NOT_RUN_COMMENT.match(previous)
    return m["reason"] if m else None


ALL_BLOCKS = [b for doc in DOCS for b in blocks(doc)]
RUN_PYTHON = {
    doc: [b for b in ALL_BLOCKS if b.file == doc and b.lang in PYTHON and b.not_run is None]
    for doc in DOCS
}


def commands() -> list[tuple[str, list[str]]]:
    """``(where, argv)`` of every command line of the shell blocks that run, and of every
    inline code span of the prose that is a ``tokenreduce`` or ``./run bench`` command."""
    found = []
    for b in ALL_BLOCKS:
        if b.lang in SHELL and b.not_run is None:
            for k, line in enumerate(b.code.replace("\\\n", " ").splitlines(), start=1):
                if argv := _argv(line):
                    found.append((f"{b.where}+{k}", argv))
    for doc in DOCS:
        for n, line in enumerate(doc.read_text().splitlines(), start=1):
            for span in INLINE_COMMAND.findall(line):
                found.append((f"{doc.relative_to(ROOT)}:{n}", _argv(span)))
    return found


def _argv(line: str) -> list[str]:
    """A command line's words, comments dropped; ``./run bench ARGS`` is ``tokenreduce bench
    ARGS`` (the script execs exactly that once its environment is set up)."""
    argv = shlex.split(line, comments=True)
    return ["tokenreduce", *argv[1:]] if argv[:2] == ["./run", "bench"] else argv


COMMANDS = commands()
CLI_COMMANDS = [(where, argv) for where, argv in COMMANDS if argv[0] == "tokenreduce"]


# -- substitutions ---------------------------------------------------------------------------
def tiny_dinov2():
    from tokenreduce.assets import dinov2

    torch.manual_seed(0)
    config = transformers.Dinov2Config(
        **{**dinov2.CONFIG, "hidden_size": 48, "num_attention_heads": 3}
    )
    return transformers.Dinov2Model(config).eval(), dinov2.image_processor()


def tiny_smollm2():
    tokenizer = byte_tokenizer()
    model = tiny_lm("llama", vocab_size=len(tokenizer))
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model, tokenizer


TINY_ASSETS = {"dinov2-small": tiny_dinov2, "smollm2": tiny_smollm2}


@pytest.fixture
def substitutes(monkeypatch):
    """Apply :data:`SUBSTITUTES` for one test: ``timm.create_model`` builds a narrow model of
    the requested architecture and refuses pretrained weights (no network here);
    ``tokenreduce.assets.load`` returns tiny models for the slow or not-installed assets and
    loads the others (the bundled ``fmnist-vit``) for real."""
    create_model, load = timm.create_model, tokenreduce.assets.load

    def narrow_create_model(name, pretrained=False, **kwargs):
        assert not pretrained, f"a docs example asks for pretrained weights of {name!r}"
        return create_model(name, **{**NARROW_VIT, **kwargs})

    def tiny_load(name, **kwargs):
        return TINY_ASSETS[name]() if name in TINY_ASSETS else load(name, **kwargs)

    monkeypatch.setattr(timm, "create_model", narrow_create_model)
    monkeypatch.setattr(tokenreduce.assets, "load", tiny_load)


# -- Python blocks ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "doc",
    [d for d in DOCS if RUN_PYTHON[d]],
    ids=lambda d: str(d.relative_to(ROOT)),
)
def test_python_blocks_run(doc, substitutes, tmp_path, monkeypatch):
    """The file's Python blocks run in order in one namespace, like a reader's session."""
    monkeypatch.chdir(tmp_path)  # files an example writes land here
    torch.manual_seed(0)
    namespace: dict = {"__name__": "__docs__"}
    for block in RUN_PYTHON[doc]:
        # padded so that tracebacks name the Markdown file's own line numbers
        code = compile("\n" * block.line + block.code, str(block.file), "exec")
        try:
            exec(code, namespace)
        except Exception as err:
            raise AssertionError(f"the code block at {block.where} failed: {err!r}") from err


def test_quickstart_alternative_is_the_same_method():
    """The quickstart's comment offers ``tokenreduce.methods.ToMe(r=13)`` for ``"tome:r=13"``:
    both must build the same method, and so must every method's class name and spec name."""
    assert tokenreduce.methods.ToMe(r=13) == methods.build("tome:r=13")
    for name in methods.available():
        cls = methods.get(name)
        assert getattr(methods, cls.__name__) is cls, f"{name}: methods.{cls.__name__} missing"
        assert cls.__name__ in methods.__all__
        assert methods.build(name) == cls()


def test_dotted_names_resolve():
    """Every ``tokenreduce.<module>.<name>`` the docs write, in prose or in a code comment
    (``# or tokenreduce.methods.ToMe(r=13)``), exists."""
    names = {
        (name, f"{doc.relative_to(ROOT)}:{n}")
        for doc in DOCS
        for n, line in enumerate(doc.read_text().splitlines(), start=1)
        for name in DOTTED_NAME.findall(line)
    }
    assert any(name == "tokenreduce.methods.ToMe" for name, _ in names)
    missing = sorted((where, name) for name, where in names if not _resolves(name))
    assert not missing, f"names the docs use that do not exist: {missing}"


def _resolves(dotted: str) -> bool:
    """Whether ``a.b.c`` names a module or an attribute reached from the longest importable
    module prefix."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        module = ".".join(parts[:cut])
        try:
            obj = importlib.import_module(module)
        except ModuleNotFoundError as err:
            if not f"{module}.".startswith(f"{err.name}."):  # a dependency of it is missing
                raise
            continue
        for attr in parts[cut:]:
            if not hasattr(obj, attr):
                return False
            obj = getattr(obj, attr)
        return True
    return False


# -- shell commands --------------------------------------------------------------------------
class Stopped(Exception):
    """Raised where a documented command would start its expensive work."""


@pytest.fixture
def stop_before_work(monkeypatch, tmp_path):
    """``bench`` stops when it loads the model, ``report`` when it opens the store: both
    after the command line is parsed and ``bench`` has checked method names and budgets."""
    from tokenreduce.bench import models, store

    def stop(*args, **kwargs):
        raise Stopped

    monkeypatch.setattr(models, "load", stop)
    monkeypatch.setattr(store.Store, "open", classmethod(stop))
    monkeypatch.chdir(tmp_path)  # a command's relative paths (--db, --out) resolve here


def test_shell_blocks_hold_only_tokenreduce_commands():
    others = [(where, argv) for where, argv in COMMANDS if argv[0] != "tokenreduce"]
    assert not others, (
        f"shell lines that are not tokenreduce commands: {others}; mark their block "
        "`<!-- not run: reason -->`"
    )
    assert CLI_COMMANDS, "the docs name no tokenreduce command: the parser found nothing"


@pytest.mark.parametrize(
    ("where", "argv"), CLI_COMMANDS, ids=[f"{w} {' '.join(a)}" for w, a in CLI_COMMANDS]
)
def test_documented_command_parses(where, argv, stop_before_work):
    from typer.testing import CliRunner

    from tokenreduce.cli import app

    result = CliRunner().invoke(app, argv[1:])
    if "--help" in argv:
        assert result.exit_code == 0 and "Usage" in result.output, (where, result.output)
    else:
        assert isinstance(result.exception, Stopped), (
            f"{where}: {' '.join(argv)} was refused (exit {result.exit_code}):\n{result.output}"
        )


def test_documented_options_exist():
    """Every option in an option table of the docs (a row starting with ``--name``) is an
    option of a ``tokenreduce`` command."""
    import typer.main

    from tokenreduce.cli import app

    group = typer.main.get_command(app)
    known = {
        opt
        for command in group.commands.values()
        for param in command.params
        for opt in (*param.opts, *param.secondary_opts)
    }
    documented = {
        (f"{doc.relative_to(ROOT)}:{n}", opt)
        for doc in DOCS
        for n, line in enumerate(doc.read_text().splitlines(), start=1)
        if (row := OPTION_ROW.match(line))
        for opt in re.findall(r"`(--[a-z][a-z-]*)", row["cell"])
    }
    assert documented, "no option table found in the docs"
    unknown = sorted((where, opt) for where, opt in documented if opt not in known)
    assert not unknown, f"documented options the CLI does not have: {unknown}"


# -- every block accounted for ---------------------------------------------------------------
def test_inventory(request):
    """Every block runs, is checked, or is marked not to run with a reason; the counts and the
    not-run blocks are written to the terminal."""
    unmarked = [
        f"{b.where} (```{b.lang})"
        for b in ALL_BLOCKS
        if b.not_run is None and b.lang not in PYTHON | SHELL
    ]
    assert not unmarked, (
        f"code blocks that neither run nor say why: {unmarked}; give them a language this "
        "test runs, or a `<!-- not run: reason -->` line above the fence"
    )
    no_reason = [b.where for b in ALL_BLOCKS if b.not_run == ""]
    assert not no_reason, f"blocks marked not to run without a reason: {no_reason}"
    python = sum(len(v) for v in RUN_PYTHON.values())
    shell = sum(b.lang in SHELL and b.not_run is None for b in ALL_BLOCKS)
    skipped = [b for b in ALL_BLOCKS if b.not_run]
    lines = [
        f"docs code blocks: {len(ALL_BLOCKS)} in {len(DOCS)} files; {python} Python run, "
        f"{shell} shell checked ({len(CLI_COMMANDS)} tokenreduce commands, inline ones included), "
        f"{len(skipped)} not run:",
        *(f"  {b.where} ```{b.lang}: {b.not_run}" for b in skipped),
        "models substituted in the Python blocks:",
        *(f"  {call} -> {tiny}" for call, tiny in SUBSTITUTES.items()),
    ]
    plugins = request.config.pluginmanager
    reporter, capture = plugins.get_plugin("terminalreporter"), plugins.get_plugin("capturemanager")
    if reporter is not None and capture is not None:
        with capture.global_and_fixture_disabled():  # to the terminal, not the captured output
            reporter.ensure_newline()
            for line in lines:
                reporter.write_line(line)
