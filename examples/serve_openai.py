"""Serve a tokenreduce-patched Hugging Face causal LM behind an OpenAI-compatible chat API.

    .venv/bin/python examples/serve_openai.py --method "snapkv:compression_ratio=0.3" --port 8000
    curl -s localhost:8000/v1/chat/completions -H 'Content-Type: application/json' \\
        -d '{"messages": [{"role": "user", "content": "Hello"}], "max_tokens": 16}'

The HTTP side is LitServe's ``OpenAISpec`` (``pip install litserve``): ``POST
/v1/chat/completions`` with the OpenAI request body, ``GET /health``. Each of ``--concurrency``
inference workers (processes) loads the model once, patches it once with ``--method`` and
decodes one request at a time, greedily: a completion is token for token what
``model.generate(..., do_sample=False)`` returns under the same patch for the chat template of
the same messages (same device, dtype and torch thread count: other thread counts may sum
floating-point numbers in another order and flip a near tie). Requests beyond
``--concurrency`` wait in LitServe's queue.

Methods (``--method``, a tokenreduce spec):

* a KV-cache method (``snapkv``, ``h2o``, ...) or a prefill method (``fastv``, ``lazyllm``)
  patches the model; each request's prompt is reduced inside the model;
* a prompt-compression method (``llmlingua``, ``longllmlingua``, ``selective_context``)
  leaves the model unpatched and rewrites the last user message first, scored by the served
  model itself: the paragraphs before its last blank line are the context (compressed), the
  last paragraph is the question (kept verbatim); a message without a blank line is refused;
* ``none`` serves the unreduced model through the same code path (a baseline).

Refused with HTTP 400, naming what is allowed: sampling (``temperature`` or ``top_p`` other
than their greedy values), ``stop`` sequences, non-text message parts, more new tokens than
``--max-tokens``, and prompts the method cannot reduce (for example shorter than SnapKV's
observation window). See docs/SERVING.md for what maps onto vLLM, SGLang and TGI.
"""

from __future__ import annotations

import argparse
import os
import signal

import litserve as ls
import torch
from fastapi import HTTPException
from litserve.specs.openai import ChatCompletionRequest, OpenAISpec

import tokenreduce
from tokenreduce import methods, prompt
from tokenreduce.assets.llm import load_lm
from tokenreduce.methods.base import kinds_text
from tokenreduce.methods.kv_base import KVCacheMethod
from tokenreduce.methods.prefill import PrefillMethod
from tokenreduce.methods.prompt_base import PromptMethod

#: the method kinds a served causal LM accepts: token-sequence methods reduce vision or
#: encoder tokens and have no site in a decoder
SERVABLE = (KVCacheMethod, PrefillMethod, PromptMethod)


def servable_method(spec: str) -> methods.Method | None:
    """The method a ``--method`` spec names (None for ``"none"``).

    Raises:
        ValueError: an unknown method, a parameter out of its range, or a kind a causal LM
            cannot serve (the message lists the methods that can).
    """
    if spec.strip().lower() == "none":
        return None
    method = methods.build(spec)
    if not isinstance(method, SERVABLE):
        raise ValueError(
            f"--method {spec!r} is a {method.kind_words} method (kind {method.kind!r}); a "
            f"served causal LM takes 'none' or {kinds_text(SERVABLE)}"
        )
    return method


class ReducedChatAPI(ls.LitAPI):
    """OpenAI chat completions from a causal LM reduced by one tokenreduce method.

    Args:
        model: a :mod:`tokenreduce.assets` language model (``"smollm2"``), a local Hugging
            Face folder or a hub id (:func:`tokenreduce.assets.llm.load_lm`).
        method: the method spec (see :func:`servable_method`).
        max_tokens: the most new tokens one request may ask for; also the default.
        threads: torch CPU threads of each worker.
    """

    def __init__(self, model: str, method: str, max_tokens: int, threads: int) -> None:
        super().__init__(spec=OpenAISpec())
        servable_method(method)  # fail in the parent process, before any worker starts
        self.model_source, self.method_spec = model, method
        self.max_tokens, self.threads = max_tokens, threads

    def setup(self, device: str) -> None:
        """Load the model once per worker and patch it for the worker's lifetime."""
        torch.set_num_threads(self.threads)
        self.model, self.tokenizer = load_lm(self.model_source)
        self.model.to(device)
        self.method = servable_method(self.method_spec)
        self.scorer = self.handle = None
        if isinstance(self.method, PromptMethod):  # rewrites the prompt; the model stays as is
            self.scorer = prompt.Scorer(self.model, self.tokenizer)
        else:  # None patches nothing but keeps the same handle and code path
            self.handle = tokenreduce.patch(self.model, self.method)

    def decode_request(self, request: ChatCompletionRequest) -> dict:
        """The request's messages as ``{"role", "content"}`` dicts and its token budget.

        Raises:
            HTTPException: 400 for a request this greedy server does not honour.
        """
        _refuse_sampling(request)
        limit = request.max_completion_tokens or request.max_tokens or self.max_tokens
        if not 1 <= limit <= self.max_tokens:
            raise HTTPException(
                400, f"max_tokens={limit}: this server generates 1 to {self.max_tokens} tokens"
            )
        messages = [{"role": m.role, "content": _text_of(m.content)} for m in request.messages]
        return {"messages": messages, "max_new_tokens": limit}

    def predict(self, request: dict):
        """Generate greedily; yields one message with the OpenAI usage counts."""
        messages = request["messages"]
        if self.scorer is not None:
            messages = compress_last_user_message(messages, self.method, self.scorer)
        inputs = self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
        ).to(self.model.device)
        prompt_tokens = inputs["input_ids"].shape[1]
        try:
            with torch.no_grad():
                out = self.model.generate(
                    **inputs, max_new_tokens=request["max_new_tokens"], do_sample=False
                )
        except ValueError as error:  # a prompt the method cannot reduce, named by tokenreduce
            raise HTTPException(400, f"{self.method_spec}: {error}") from error
        new = out[0, prompt_tokens:]
        yield {
            "role": "assistant",
            "content": self.tokenizer.decode(new, skip_special_tokens=True),
            "prompt_tokens": prompt_tokens,
            "completion_tokens": len(new),
            "total_tokens": prompt_tokens + len(new),
        }


def _refuse_sampling(request: ChatCompletionRequest) -> None:
    # LitServe's request model defaults temperature to 0.7; only a value the client sent
    # counts, so a plain OpenAI request without sampling options is served greedily.
    sent = request.model_fields_set
    if "temperature" in sent and request.temperature not in (None, 0):
        raise HTTPException(400, f"temperature={request.temperature}: this server decodes "
                                 "greedily; send temperature=0 or omit it")
    if "top_p" in sent and request.top_p not in (None, 1):
        raise HTTPException(400, f"top_p={request.top_p}: this server decodes greedily; "
                                 "send top_p=1 or omit it")
    if request.stop:
        raise HTTPException(400, "stop sequences are not supported; omit 'stop'")


def _text_of(content) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    if all(getattr(part, "type", None) == "text" for part in content):
        return "".join(part.text for part in content)
    kinds = sorted({getattr(part, "type", "?") for part in content})
    raise HTTPException(400, f"message parts of type {kinds}: this server reads text only")


def compress_last_user_message(messages: list[dict], method, scorer) -> list[dict]:
    """``messages`` with the last user message's context compressed by a prompt method.

    The context is the text before the message's last blank line, the question the paragraph
    after it (kept verbatim, as prompt compression never compresses the question).

    Raises:
        HTTPException: 400 when no user message has a blank line to split at.
    """
    last = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=None)
    text = messages[last]["content"] if last is not None else ""
    context, blank, question = text.rpartition("\n\n")
    if not blank or not context.strip():
        raise HTTPException(
            400, "prompt compression needs the last user message as context, a blank line, "
                 "then the question"
        )
    compressed = prompt.compress(context, method, question=question, scorer=scorer)
    return [*messages[:last], {"role": "user", "content": compressed.text}, *messages[last + 1:]]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2", help="asset name, HF folder or hub id")
    parser.add_argument("--method", default="snapkv:compression_ratio=0.3",
                        help="tokenreduce method spec, or 'none' for the unreduced model")
    parser.add_argument("--host", default="127.0.0.1", choices=["127.0.0.1", "0.0.0.0", "::"])
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--concurrency", type=int, default=1,
                        help="requests decoded at once: one worker process (model copy) each")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads per worker (default: CPU cores / concurrency)")
    parser.add_argument("--max-tokens", type=int, default=64,
                        help="most new tokens per request, and the default")
    parser.add_argument("--timeout", type=float, default=300,
                        help="seconds a request may wait and run before a 504")
    args = parser.parse_args(argv)
    if args.concurrency < 1 or args.max_tokens < 1:
        parser.error("--concurrency and --max-tokens must be at least 1")
    if args.threads is None:
        args.threads = max(1, (os.cpu_count() or 1) // args.concurrency)
    return args


def _stop_on_sigterm(main_pid: int):
    """A SIGTERM handler that makes the server process shut down as on Ctrl-C."""

    def handler(signum, frame) -> None:
        # LitServe stops its workers on KeyboardInterrupt only, but service managers,
        # containers and a backgrounded shell (where SIGINT is ignored) send SIGTERM. The HTTP
        # process forked from this one inherits the handler and re-raises the signal once
        # uvicorn has shut down: there it only has to exit.
        if os.getpid() != main_pid:
            raise SystemExit(0)
        raise KeyboardInterrupt(f"signal {signum}")

    return handler


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _stop_on_sigterm(os.getpid()))
    api = ReducedChatAPI(args.model, args.method, args.max_tokens, args.threads)
    server = ls.LitServer(api, workers_per_device=args.concurrency, timeout=args.timeout,
                          devices=1)
    server.run(host=args.host, port=args.port, num_api_servers=1, generate_client_file=False)


if __name__ == "__main__":
    main()
