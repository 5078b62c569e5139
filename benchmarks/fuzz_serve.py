"""Random OpenAI-shaped requests against `tunesmith serve` on a tiny local model: every answer must be a 200 or a 4xx.

Bodies start from a valid completions or chat completions request (streaming or not) and have some fields
replaced by junk of every type: huge and negative integers, NaN-like strings, nested lists and objects,
empty strings, unicode, lone surrogates, unknown fields; some bodies are not JSON at all. Several clients
send at once, so requests share batches. A 5xx, an SSE error event with a 5xx code, an answer slower than the
request time limit, or a `/health` that is not ok is a failure. The server listens on 127.0.0.1 only.

    python benchmarks/fuzz_serve.py --seconds 60                 # a tiny model built on the spot
    python benchmarks/fuzz_serve.py --seconds 60 --model PATH    # a model or run, as `tunesmith serve` loads it
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

HOST = "127.0.0.1"  # the fuzzer never sends anywhere else
REQUEST_SECONDS = 20.0
PATHS = ("/v1/completions", "/v1/chat/completions")
NUMBERS = [0, 1, -1, 2, 3, 7, 2**31, 2**32, 2**53 + 1, 2**63 - 1, 2**63, 2**64 - 1, 2**64, 10**30, -(2**63), -(2**64), 0.0, 0.5,
           -0.5, 1.5, 2.0, 2.5, 1e-300, 1e308, -1e308, 3.4e38]
STRINGS = ["", " ", "nan", "NaN", "-nan", "inf", "-Infinity", "Infinity", "1e999", "0x10", "1", "-1", "null", "true", "ünïcødé",
           "😀" * 20, "\u202e\u200b", "\x00", "\ud800", "a\udfffb", "x" * 300, "\n\n", "<|im_end|>", "</s>", "<s>"]
NESTED = [[], [1], [""], [None], [[[]]], {}, {"a": 1}, {"role": "user"}, [{"type": "text", "text": 5}], {"": {"": [{}]}}]
FIELDS = ["model", "prompt", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "top_k", "n", "stop", "seed",
          "frequency_penalty", "presence_penalty", "repetition_penalty", "stream", "stream_options", "user", "metadata",
          "logprobs", "tools", "echo", "best_of", "logit_bias", "response_format", "", "ü"]


def junk(rng: random.Random, depth: int = 0):
    """Any JSON value, weighted towards the ones that break parsers and bounds."""
    kind = rng.randrange(6 if depth < 3 else 4)
    if kind == 0:
        return rng.choice(NUMBERS) * rng.choice([1, 1, -1])
    if kind == 1:
        return rng.choice(STRINGS)
    if kind == 2:
        return rng.choice([None, True, False, rng.random(), rng.randint(-10, 10)])
    if kind == 3:
        return rng.choice(NESTED)
    if kind == 4:
        return [junk(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {rng.choice(FIELDS + STRINGS[:8]): junk(rng, depth + 1) for _ in range(rng.randrange(4))}


def plausible(rng: random.Random, name: str):
    """A value of the right type and mostly in range, so that many requests reach the model."""
    choices = {
        "max_tokens": lambda: rng.choice([1, 2, 4, 8, 16, 17, 0]),
        "max_completion_tokens": lambda: rng.choice([1, 3, 8, 16]),
        "temperature": lambda: rng.choice([0, 0.0, 0.7, 1, 1.3, 2, 2.0001]),
        "top_p": lambda: rng.choice([0.01, 0.5, 0.9, 1, 1.0]),
        "top_k": lambda: rng.choice([0, 1, 5, 50, 10**6, 2**40]),
        "n": lambda: rng.choice([1, 1, 2, 3, 4]),
        "seed": lambda: rng.choice([0, 1, 42, 2**32, 2**63 - 1, 2**63, 2**64 - 1, 2**64]),
        "stop": lambda: rng.choice([".", ["the", "lamp"], ["a", "b", "c", "d"], ["a"] * 5, "", [""], ["😀"]]),
        "frequency_penalty": lambda: rng.choice([-2, 0, 1.5, 2]),
        "presence_penalty": lambda: rng.choice([-2, 0, 1.5, 2]),
        "repetition_penalty": lambda: rng.choice([0.5, 1, 1.3, 2]),
        "stream_options": lambda: {"include_usage": rng.choice([True, False])},
        "prompt": lambda: rng.choice(["the lamp", "reset the hub", "", " ", "😀", "battery lasts " * rng.randrange(1, 30)]),
        "messages": lambda: [{"role": rng.choice(["user", "system", "assistant", "developer"]),
                              "content": rng.choice(["hello", "", "😀", [{"type": "text", "text": "hi"}]])}
                             for _ in range(rng.randrange(1, 4))],
    }
    return choices[name]() if name in choices else junk(rng)


def random_request(rng: random.Random) -> tuple[str, bytes, bool]:
    """(path, body bytes, whether it asks to stream)."""
    path = rng.choice(PATHS)
    body: dict = {"model": "tiny", "max_tokens": rng.choice([1, 4, 8]), "stream": rng.random() < 0.5}
    if path == PATHS[0]:
        body["prompt"] = plausible(rng, "prompt")
    else:
        body["messages"] = plausible(rng, "messages")
    for _ in range(rng.choice([0, 0, 1, 1, 2, 3, 5])):
        name = rng.choice(FIELDS)
        body[name] = plausible(rng, name) if rng.random() < 0.6 else junk(rng)
    if rng.random() < 0.05:
        body.pop(rng.choice(list(body)), None)
    if rng.random() < 0.03:
        return path, rng.choice([b"", b"{", b"[]", b"null", b'{"prompt": "x",}', b"\xff\xfe", b'{"prompt": NaN}']), False
    if rng.random() < 0.03:
        return path, json.dumps(junk(rng)).encode(), False
    if rng.random() < 0.01:  # past --max-body-bytes: 413
        body["prompt" if path == PATHS[0] else "user"] = "the lamp " * 3000
    return path, json.dumps(body, ensure_ascii=rng.random() < 0.5).encode("utf-8", "surrogatepass"), body.get("stream") is True


@dataclass
class Tally:
    statuses: Counter = field(default_factory=Counter)
    failures: list = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, outcome: str, detail: str = "") -> None:
        with self.lock:
            self.statuses[outcome] += 1
            if detail:
                self.failures.append(detail)


def send(port: int, path: str, body: bytes, timeout: float) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        connection.request("POST", path, body=body, headers={"content-type": "application/json"})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def stream_error_code(body: bytes) -> int | None:
    """The code of an SSE `error` event in a streamed answer, if there is one."""
    for line in body.decode("utf-8", "replace").splitlines():
        if line.startswith("data: {") and '"error"' in line:
            return json.loads(line[6:]).get("error", {}).get("code")
    return None


def one_request(port: int, rng: random.Random, tally: Tally) -> None:
    path, body, streaming = random_request(rng)
    started = time.monotonic()
    try:
        status, answer = send(port, path, body, REQUEST_SECONDS + 10)
    except (TimeoutError, OSError) as exc:
        return tally.add("no answer", f"{type(exc).__name__} after {time.monotonic() - started:.0f} s: {path} {body[:300]!r}")
    code = stream_error_code(answer) if streaming and status == 200 else None
    if status >= 500 or (code or 0) >= 500:
        return tally.add(str(status) if status >= 500 else f"200+sse-{code}", f"{status}/{code}: {path} {body[:300]!r} -> {answer[:300]!r}")
    tally.add(str(status) if code is None else f"200+sse-{code}")


def healthy(port: int) -> tuple[bool, str]:
    connection = http.client.HTTPConnection(HOST, port, timeout=10)
    try:
        connection.request("GET", "/health")
        response = connection.getresponse()
        text = response.read().decode()
        return response.status == 200 and json.loads(text)["status"] == "ok", text
    except (TimeoutError, OSError, ValueError) as exc:
        return False, repr(exc)
    finally:
        connection.close()


def fuzz(port: int, seconds: float, max_requests: int = 1_000_000, clients: int = 4, seed: int = 0) -> Tally:
    """Send random requests from `clients` threads until `seconds` pass or `max_requests` are sent; /health between them."""
    tally, end, sent, lock = Tally(), time.monotonic() + seconds, [0], threading.Lock()

    def client(number: int) -> None:
        rng = random.Random(seed * 1000 + number)
        while time.monotonic() < end:
            with lock:
                if sent[0] >= max_requests:
                    return
                sent[0] += 1
                check = sent[0] % 25 == 0
            one_request(port, rng, tally)
            if check:
                ok, text = healthy(port)
                tally.add("health ok" if ok else "health failed", "" if ok else f"/health: {text[:300]}")

    threads = [threading.Thread(target=client, args=(number,), daemon=True) for number in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(seconds + REQUEST_SECONDS + 30)
    ok, text = healthy(port)
    tally.add("health ok" if ok else "health failed", "" if ok else f"/health at the end: {text[:300]}")
    return tally


def tiny_served(directory: Path):
    """A 2-layer Llama with a tokenizer trained on the spot (the tests' own), with a chat template."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from conftest import build_tiny_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunesmith.serve import ServedModel
    from tunesmith.tasks.chat import ensure_chat_template

    path = build_tiny_model("llama", directory)
    tokenizer = AutoTokenizer.from_pretrained(path)
    ensure_chat_template(tokenizer)
    model = AutoModelForCausalLM.from_pretrained(path)
    model.resize_token_embeddings(len(tokenizer))
    return ServedModel(model.eval(), tokenizer, "tiny", [tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>")])


def start_server(served, limits) -> int:
    """The app under uvicorn in a thread of this process, on a free port of 127.0.0.1."""
    import socket

    import uvicorn

    from tunesmith.serve import create_app

    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(served, limits), host=HOST, port=port, log_level="error"))
    threading.Thread(target=server.run, daemon=True).start()
    for _ in range(400):
        if server.started:
            return port
        time.sleep(0.05)
    raise RuntimeError("the server did not start")


def fuzz_limits():
    from tunesmith.serve import Limits

    return Limits(max_tokens=16, max_prompt_tokens=100, max_body_bytes=20_000, max_n=3, max_batch=8, queue_size=64,
                  request_seconds=REQUEST_SECONDS)


def main() -> int:
    import tempfile

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", help="a model or run for `tunesmith serve` (default: a tiny one built on the spot)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        if args.model:
            from tunesmith.serve import load_for_serving

            served = load_for_serving(args.model, "cpu")
        else:
            served = tiny_served(Path(directory) / "tiny")
        port = start_server(served, fuzz_limits())
        started = time.monotonic()
        tally = fuzz(port, args.seconds, clients=args.clients, seed=args.seed)
        took = time.monotonic() - started
    requests = sum(count for outcome, count in tally.statuses.items() if not outcome.startswith("health"))
    print(f"{requests:,} requests in {took:.0f} s from {args.clients} clients")
    for outcome, count in sorted(tally.statuses.items()):
        print(f"  {outcome:>14}  {count:,}")
    for failure in tally.failures[:20]:
        print(f"FAILED {failure}")
    return 1 if tally.failures else 0


if __name__ == "__main__":
    sys.exit(main())
