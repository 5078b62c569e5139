"""`tunesmith serve` under concurrent clients, beside the one-request-at-a-time design as the reference, in one run.

Both servers run in their own processes on the same model; the official `openai` client drives them at
each concurrency, streaming and not, with greedy chat requests. Printed for each: requests/s, generated
tokens/s, and p50/p95 latency to the first token and to the end; then whether every answer is whole and
the same as the one-at-a-time server's answer to the same question.

The reference is the lock design `serve` used before its generation worker: FastAPI handlers take turns
on one lock around `model.generate` (streaming through `TextIteratorStreamer`).

    python benchmarks/bench_serve.py                       # the embedded default, 1/4/16/32 clients
    python benchmarks/bench_serve.py --model PATH --clients 1 4 --max-tokens 8    # a quick run
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

TOPICS = ["the moon", "coffee", "rainy days", "a lighthouse", "trains", "the sea", "gardening", "winter", "bicycles", "owls",
          "bread", "mountains", "libraries", "jazz", "autumn leaves", "rivers"]

REFERENCE_SERVER = textwrap.dedent('''
    import sys, threading
    import torch, uvicorn
    from fastapi import FastAPI
    from fastapi.responses import StreamingResponse
    from pydantic import BaseModel
    from transformers import TextIteratorStreamer
    from tunesmith.serve import load_for_serving
    from tunesmith.tasks.chat import render
    served = load_for_serving(sys.argv[1])
    model, tokenizer, lock = served.model, served.tokenizer, threading.Lock()
    app = FastAPI()

    class Chat(BaseModel):
        model: str | None = None
        messages: list[dict]
        max_tokens: int = 64
        temperature: float = 0.0
        stream: bool = False

    def options(body, streamer=None):
        prompt = render(tokenizer, body.messages, add_generation_prompt=True)
        ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt").input_ids
        return ids, dict(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=body.max_tokens, do_sample=False,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=served.stop_ids, streamer=streamer)

    def chunk(delta, finish=None):
        import json
        return "data: " + json.dumps({"id": "x", "object": "chat.completion.chunk", "created": 0, "model": "m",
                                      "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}) + "\\n\\n"

    @app.post("/v1/chat/completions")
    def chat(body: Chat):
        if body.stream:
            streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
            ids, kwargs = options(body, streamer)
            def events():
                with lock:
                    worker = threading.Thread(target=lambda: torch.no_grad()(model.generate)(**kwargs), daemon=True)
                    worker.start()
                    yield chunk({"role": "assistant", "content": ""})
                    for piece in streamer:
                        if piece:
                            yield chunk({"content": piece})
                    worker.join()
                yield chunk({}, "stop")
                yield "data: [DONE]\\n\\n"
            return StreamingResponse(events(), media_type="text/event-stream")
        ids, kwargs = options(body)
        with lock, torch.no_grad():
            out = model.generate(**kwargs)[0, ids.shape[1]:]
        text = tokenizer.decode(out, skip_special_tokens=True)
        return {"id": "x", "object": "chat.completion", "created": 0, "model": "m",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "length"}],
                "usage": {"prompt_tokens": int(ids.shape[1]), "completion_tokens": len(out), "total_tokens": int(ids.shape[1]) + len(out)}}

    @app.get("/health")
    def health():
        return {"status": "ok"}

    print("ready", flush=True)
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[2]), log_level="warning")
''')


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_up(url: str, process: subprocess.Popen, seconds: float = 300) -> None:
    import httpx2 as httpx

    deadline = time.time() + seconds
    while time.time() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the server exited: {process.stderr.read()[-2000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"{url} did not come up")


def start_server(kind: str, model: str, max_batch: int) -> tuple[subprocess.Popen, str]:
    port = free_port()
    if kind == "tunesmith":
        command = [sys.executable, "-m", "tunesmith", "serve", model, "--port", str(port), "--max-batch", str(max_batch)]
    else:
        command = [sys.executable, "-c", REFERENCE_SERVER, model, str(port)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "HF_HUB_OFFLINE": "1"})
    url = f"http://127.0.0.1:{port}"
    wait_until_up(url, process)
    return process, url


def ask(url: str, question: str, max_tokens: int, stream: bool) -> dict:
    import openai

    api = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=900)
    messages = [{"role": "user", "content": question}]
    started = time.perf_counter()
    first = None
    if stream:
        pieces = []
        for chunk in api.chat.completions.create(model="m", messages=messages, max_tokens=max_tokens, temperature=0, stream=True):
            if chunk.choices and chunk.choices[0].delta.content:
                first = first or time.perf_counter()
                pieces.append(chunk.choices[0].delta.content)
        text = "".join(pieces)
    else:
        answer = api.chat.completions.create(model="m", messages=messages, max_tokens=max_tokens, temperature=0)
        text = answer.choices[0].message.content
    ended = time.perf_counter()
    return {"text": text, "first": (first or ended) - started, "end": ended - started}


def drive(url: str, clients: int, requests: int, max_tokens: int, stream: bool, count_tokens) -> dict:
    questions = [f"Write two sentences about {TOPICS[i % len(TOPICS)]}." for i in range(requests)]
    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(lambda q: ask(url, q, max_tokens, stream), questions))
    seconds = time.perf_counter() - started
    tokens = sum(count_tokens(r["text"]) for r in results)

    def pct(values, p):
        return statistics.quantiles(values, n=100)[p - 1] if len(values) > 1 else values[0]

    return {"questions": questions, "texts": [r["text"] for r in results], "rps": requests / seconds, "tps": tokens / seconds,
            "ttft50": pct([r["first"] for r in results], 50), "ttft95": pct([r["first"] for r in results], 95),
            "end50": pct([r["end"] for r in results], 50), "end95": pct([r["end"] for r in results], 95)}


def cpu_name() -> str:
    try:
        found = [l.split(":", 1)[1].strip() for l in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines()
                 if l.startswith("Model name")]
        return found[0] if found else "unknown"
    except OSError:
        return "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16, 32])
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2, help="requests per client at each concurrency (at least 8 in all)")
    parser.add_argument("--max-batch", type=int, default=32)
    args = parser.parse_args()

    from tunesmith.models import load_tokenizer, resolve_model

    tokenizer = load_tokenizer(resolve_model(args.model))
    count_tokens = lambda text: len(tokenizer(text, add_special_tokens=False).input_ids)  # noqa: E731
    print(f"model {args.model}; CPU: {cpu_name()}; {os.cpu_count()} cores; max_tokens {args.max_tokens}, greedy chat requests")
    results = {}
    for kind in ("reference", "tunesmith"):
        process, url = start_server(kind, args.model, args.max_batch)
        try:
            for clients in args.clients:
                for stream in (False, True):
                    requests = max(8, clients * args.rounds) if clients < 32 else clients
                    results[kind, clients, stream] = drive(url, clients, requests, args.max_tokens, stream, count_tokens)
        finally:
            process.terminate()
            process.wait(10)

    print(f"\n{'server':<10} {'clients':>7} {'stream':>6} {'req/s':>7} {'tok/s':>7} {'ttft p50':>9} {'ttft p95':>9} "
          f"{'end p50':>8} {'end p95':>8}  same answers as one at a time")
    for clients in args.clients:
        for stream in (False, True):
            reference = results["reference", clients, stream]
            for kind in ("reference", "tunesmith"):
                r = results[kind, clients, stream]
                same = sum(a == b for a, b in zip(r["texts"], reference["texts"]))
                whole = sum(bool(t.strip()) for t in r["texts"])
                print(f"{kind:<10} {clients:>7} {'yes' if stream else 'no':>6} {r['rps']:>7.2f} {r['tps']:>7.1f} {r['ttft50']:>8.2f}s "
                      f"{r['ttft95']:>8.2f}s {r['end50']:>7.2f}s {r['end95']:>7.2f}s  {same}/{len(r['texts'])} ({whole} non-empty)")
            ratio = results["tunesmith", clients, stream]["tps"] / reference["tps"]
            print(f"{'ratio':<10} {clients:>7} {'yes' if stream else 'no':>6} {'':>7} {ratio:>6.2f}x")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    main()
