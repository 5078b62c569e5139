"""`serve` answers every request and its worker never dies: bad values are 400s before anything is queued, a failure
anywhere in decoding ends only the requests it touched, the HTTP side keeps each request's time limit whatever the
worker does, and a bounded run of the fuzzer (`benchmarks/fuzz_serve.py`) gets only 200s and 4xxs."""

import json
import logging
import sys
import threading
import time
from pathlib import Path

import httpx2 as httpx
import pytest

from tunesmith.decoding import engine
from tunesmith.serve import Limits, create_app

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import fuzz_serve  # noqa: E402

from helpers import LIMITS, load_chat_model, start

QUICK = Limits(max_tokens=8, max_prompt_tokens=100, max_n=3, max_batch=8, request_seconds=1.0)


@pytest.fixture(scope="module")
def served(tiny_llama):
    return load_chat_model(tiny_llama)


@pytest.fixture(scope="module")
def server(served):
    return start(create_app(served, LIMITS))


def post(url, body, path="/v1/completions", timeout=20):
    return httpx.post(f"{url}{path}", json=body, timeout=timeout)


def error_of(response) -> str:
    if response.headers.get("content-type", "").startswith("text/event-stream"):
        events = [json.loads(line[6:]) for line in response.text.splitlines() if line.startswith("data: {")]
        return next(event["error"]["message"] for event in events if "error" in event)
    return response.json()["error"]["message"]


def assert_serving(url):
    """The worker is alive and answers: the next request gets its tokens."""
    assert httpx.get(f"{url}/health").json()["status"] == "ok"
    answer = post(url, {"prompt": "the lamp", "max_tokens": 3, "temperature": 0})
    assert answer.status_code == 200 and answer.json()["usage"]["completion_tokens"] > 0


@pytest.mark.parametrize("path, body", [
    ("/v1/completions", {"prompt": "the lamp", "max_tokens": 5, "seed": 2**64}),
    ("/v1/completions", {"prompt": "the lamp", "max_tokens": 5, "seed": 2**64 - 1, "n": 2}),
    ("/v1/completions", {"prompt": "the lamp", "max_tokens": 5, "seed": -1, "stream": True}),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 5, "seed": 2**64}),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 5, "seed": 2**64 - 1, "n": 2,
                              "stream": True}),
])
def test_a_seed_past_its_range_is_a_400_naming_it_and_the_worker_lives(server, path, body):
    response = post(server, body, path)
    assert response.status_code == 400, response.text
    message = error_of(response)
    assert message.startswith("invalid request: seed:") and "from 0 to 2**63-1" in message
    assert_serving(server)


@pytest.mark.parametrize("field", ["temperature", "max_tokens", "top_k", "n", "seed", "max_completion_tokens"])
def test_true_is_not_a_number(server, field):
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, field: True}
    response = post(server, body, "/v1/chat/completions")
    assert response.status_code == 400 and f"{field}: a number is needed, not true or false" in error_of(response), response.text


def test_stream_takes_only_true_or_false(server):
    response = post(server, {"prompt": "the lamp", "max_tokens": 2, "stream": "yes"})
    assert response.status_code == 400 and "stream" in error_of(response)


def test_a_prompt_that_fills_the_context_says_so_without_a_made_up_max_tokens(served):
    url = start(create_app(served, Limits(max_tokens=8, max_prompt_tokens=1000)))
    response = post(url, {"prompt": "the lamp glows " * 60})  # past the tiny model's 128 positions
    assert response.status_code == 400 and "leaves no room to answer" in error_of(response) and "max_tokens (" not in error_of(response)


def test_the_largest_seed_draws_for_every_choice(server):
    answer = post(server, {"prompt": "the lamp", "max_tokens": 4, "seed": 2**63 - 1, "n": 3, "temperature": 1})
    assert answer.status_code == 200 and len(answer.json()["choices"]) == 3


@pytest.mark.parametrize("stream", [False, True])
def test_an_empty_prompt_is_a_400_before_any_output(server, stream):
    response = post(server, {"prompt": "", "max_tokens": 5, "stream": stream})
    assert response.status_code == 400 and response.headers["content-type"] == "application/json", response.text
    assert "prompt: empty once tokenized" in error_of(response)
    assert_serving(server)


def test_a_lone_surrogate_in_the_prompt_is_a_400(server):
    response = httpx.post(f"{server}/v1/completions", content=b'{"prompt": "a\\ud800b", "max_tokens": 2}',
                          headers={"content-type": "application/json"})
    assert response.status_code == 400 and "surrogate" in error_of(response)


@pytest.mark.parametrize("where", ["prefill", "step"])
def test_a_failed_draw_ends_only_its_requests_and_the_worker_goes_on(served, monkeypatch, where):
    url = start(create_app(served, LIMITS))
    calls, original = {"n": 0}, engine.RowSampler.choose

    def fails_once(self, logits):
        calls["n"] += 1
        if calls["n"] == (1 if where == "prefill" else 2):
            raise ValueError("Overflow when unpacking long long")
        return original(self, logits)

    monkeypatch.setattr(engine.RowSampler, "choose", fails_once)
    failed = post(url, {"prompt": "the lamp", "max_tokens": 5, "temperature": 1})
    assert failed.status_code == 500 and "Overflow" in error_of(failed)
    assert_serving(url)


def test_a_failure_outside_any_request_restarts_the_loop_and_is_logged(served, monkeypatch, caplog):
    app = create_app(served, LIMITS)
    url = start(app)
    original, calls = app.worker._admit, {"n": 0}

    def breaks_once():
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("injected failure in the loop")
        return original()

    with caplog.at_level(logging.ERROR, logger="tunesmith.serve"):
        monkeypatch.setattr(app.worker, "_admit", breaks_once)
        for _ in range(100):
            if app.worker.restarts:
                break
            time.sleep(0.02)
    assert app.worker.restarts == 1 and "starts again" in caplog.text
    assert app.worker.thread.is_alive() and httpx.get(f"{url}/health").json()["restarts"] == 1
    assert_serving(url)


def test_a_failure_that_repeats_backs_off_logs_sparingly_and_makes_health_unavailable(served, monkeypatch, caplog):
    from tunesmith.serve import worker as worker_module

    monkeypatch.setattr(worker_module, "FAILING_WINDOW", 1.5)
    app = create_app(served, LIMITS)
    url = start(app)
    original = app.worker._admit

    def always_fails():
        raise RuntimeError("injected failure that repeats")

    with caplog.at_level(logging.ERROR, logger="tunesmith.serve"):
        monkeypatch.setattr(app.worker, "_admit", always_fails)
        time.sleep(1.2)
        failures, logged = app.worker.restarts, sum("in a row" in record.getMessage() for record in caplog.records)
        health = httpx.get(f"{url}/health")
    assert 3 <= failures <= 6  # waits of 0.05, 0.1, 0.2, 0.4, 0.8 s: not one failure per 50 ms
    assert logged == failures.bit_length()  # the 1st, 2nd, 4th... of a run
    assert health.status_code == 503 and health.json()["failing"] and health.json()["worker_alive"]
    monkeypatch.setattr(app.worker, "_admit", original)
    time.sleep(1.6 + 0.8)  # past the last backoff and the window
    assert httpx.get(f"{url}/health").json()["ok"]
    assert_serving(url)


def test_a_failure_of_the_loop_mid_admission_ends_the_requests_it_held(served, monkeypatch):
    app = create_app(served, LIMITS)
    url = start(app)
    original, calls = app.worker.decoder.prefill, {"n": 0}

    def breaks_once(jobs):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("injected failure between admission and the batch")
        return original(jobs)

    monkeypatch.setattr(app.worker.decoder, "prefill", breaks_once)
    failed = post(url, {"prompt": "the lamp", "max_tokens": 4})
    assert failed.status_code == 500 and "internal error in the generation worker" in error_of(failed)
    assert app.worker.restarts == 1
    assert_serving(url)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_the_http_side_keeps_the_time_limit_when_the_worker_hangs_then_dies(served, monkeypatch):
    app = create_app(served, QUICK)
    url = start(app)
    release = threading.Event()

    def hangs_then_dies():
        release.wait(30)
        raise SystemExit  # not an Exception: the one way left to end the thread, standing in for anything unforeseen

    monkeypatch.setattr(app.worker, "_admit", hangs_then_dies)
    time.sleep(0.5)  # past the worker's idle wait, so the patched admission is the one running
    started = time.monotonic()
    plain = post(url, {"prompt": "the lamp", "max_tokens": 4}, timeout=10)
    streamed = post(url, {"prompt": "the lamp", "max_tokens": 4, "stream": True}, timeout=10)
    assert time.monotonic() - started < 5
    assert plain.status_code == 504 and "time limit" in error_of(plain)
    assert streamed.status_code == 200 and "time limit" in error_of(streamed)
    release.set()
    app.worker.thread.join(5)
    refused = post(url, {"prompt": "the lamp", "max_tokens": 4}, timeout=10)
    assert refused.status_code == 503 and "worker has stopped" in error_of(refused)
    assert httpx.get(f"{url}/health").status_code == 503


def test_random_openai_requests_get_200_or_4xx_and_health_stays_ok(served):
    port = fuzz_serve.start_server(served, fuzz_serve.fuzz_limits())
    tally = fuzz_serve.fuzz(port, seconds=60, max_requests=300, clients=3, seed=7)
    assert not tally.failures, tally.failures[:5]
    requests = sum(count for outcome, count in tally.statuses.items() if not outcome.startswith("health"))
    assert requests == 300 and tally.statuses["200"] > 30 and tally.statuses["400"] > 30
    assert tally.statuses["health ok"] > 0 and not tally.statuses["health failed"]
