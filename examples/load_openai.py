"""Load-test an OpenAI-compatible chat server (examples/serve_openai.py or any other) with a
bounded number of requests in flight, and print throughput and latency.

    .venv/bin/python examples/load_openai.py --url http://127.0.0.1:8000 --requests 16 \\
        --concurrency 4 --max-tokens 16 --context 40

Every request asks the same question about a different made-up list of lockers (``--context``
facts, so the prompt length is fixed while no two prompts share more than the chat template's
prefix). Prints one line: requests/s over the whole run, and the median and 90th-percentile
latency of a request in seconds. Standard library only.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor


def lockers_prompt(seed: int, facts: int) -> str:
    """A prompt of ``facts`` locker facts (about 7 tokens each) and one question about them."""
    items = [f"Locker {i} holds item {(i * 7 + seed * 13) % 97}." for i in range(facts)]
    return " ".join(items) + f"\n\nWhich item is in locker {seed % facts}?"


def timed_request(url: str, prompt: str, max_tokens: int) -> float:
    """Seconds from sending one chat request to reading its whole answer.

    Raises:
        urllib.error.HTTPError: the server answered with an error status.
    """
    body = {"messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens}
    request = urllib.request.Request(
        url.rstrip("/") + "/v1/chat/completions", data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    start = time.perf_counter()
    with urllib.request.urlopen(request, timeout=600) as response:
        json.loads(response.read())
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--requests", type=int, default=16, help="requests sent in all")
    parser.add_argument("--concurrency", type=int, default=4, help="requests in flight at once")
    parser.add_argument("--max-tokens", type=int, default=16, help="new tokens per request")
    parser.add_argument("--context", type=int, default=40, help="locker facts per prompt")
    args = parser.parse_args()
    if min(args.requests, args.concurrency, args.max_tokens, args.context) < 1:
        parser.error("--requests, --concurrency, --max-tokens and --context must be at least 1")
    prompts = [lockers_prompt(i, args.context) for i in range(args.requests)]
    start = time.perf_counter()
    with ThreadPoolExecutor(args.concurrency) as pool:
        latencies = list(pool.map(lambda p: timed_request(args.url, p, args.max_tokens), prompts))
    wall = time.perf_counter() - start
    p90 = statistics.quantiles(latencies, n=10)[-1] if len(latencies) > 1 else latencies[0]
    print(f"concurrency {args.concurrency}: {args.requests} requests in {wall:.1f} s, "
          f"{args.requests / wall:.2f} requests/s, latency median {statistics.median(latencies):.2f} s, "
          f"p90 {p90:.2f} s")


if __name__ == "__main__":
    main()
