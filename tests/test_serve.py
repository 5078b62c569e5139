"""The OpenAI-compatible server, driven by the official openai client against a tiny chat model."""

import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx2 as httpx
import openai
import pytest

from tunesmith.serve import Generator, Limits, create_app


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start(app) -> str:
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    threading.Thread(target=server.run, daemon=True).start()
    for _ in range(200):
        if server.started:
            return f"http://127.0.0.1:{port}"
        time.sleep(0.05)
    raise RuntimeError("server did not start")


@pytest.fixture(scope="module")
def generator(tiny_llama):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunesmith.tasks.chat import ensure_chat_template

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    ensure_chat_template(tokenizer)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    model.resize_token_embeddings(len(tokenizer))
    stop = [tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>")]
    return Generator(model.eval(), tokenizer, "tiny", Limits(max_tokens=32, max_prompt_tokens=100, max_body_bytes=4000), stop)


@pytest.fixture(scope="module")
def server(generator):
    return start(create_app(generator))


def client(url, key="unused"):
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0)


def test_completions_chat_streaming_and_models(server):
    api = client(server)
    done = api.completions.create(model="tiny", prompt="reset the hub", max_tokens=8, temperature=0)
    assert done.choices[0].finish_reason in ("stop", "length") and done.usage.completion_tokens <= 8
    chat = api.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hello"}], max_tokens=8, temperature=0)
    assert chat.choices[0].message.role == "assistant"
    pieces = [c.choices[0].delta.content or "" for c in api.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "hello"}], max_tokens=8, temperature=0, stream=True)]
    assert "".join(pieces).strip() == chat.choices[0].message.content
    assert [m.id for m in api.models.list().data] == ["tiny"]
    assert httpx.get(f"{server}/health").json()["status"] == "ok"


def test_bad_requests_get_a_4xx_with_a_message_and_the_server_stays_up(server):
    api = client(server)
    cases = [
        (lambda: httpx.post(f"{server}/v1/completions", content=b"{not json", headers={"content-type": "application/json"}), 400),
        (lambda: httpx.post(f"{server}/v1/completions", json={"prompt": "x", "max_tokens": "many"}), 400),
        (lambda: httpx.post(f"{server}/v1/chat/completions", json={"messages": "hello"}), 400),
        (lambda: httpx.post(f"{server}/v1/completions", json={"prompt": "x", "max_tokens": 1000}), 400),
        (lambda: httpx.post(f"{server}/v1/completions", json={"prompt": "reset the hub " * 50}), 400),
        (lambda: httpx.post(f"{server}/v1/completions", json={"prompt": "x" * 5000}), 413),
    ]
    for send, status in cases:
        response = send()
        assert response.status_code == status, response.text
        assert response.json()["error"]["message"]
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        api.completions.create(model="tiny", prompt="x", max_tokens=1000)
    assert api.completions.create(model="tiny", prompt="still up", max_tokens=2).choices


def test_twenty_concurrent_clients_all_get_answers(server):
    def ask(number):
        api = client(server)
        return api.chat.completions.create(model="tiny", messages=[{"role": "user", "content": f"question {number}"}],
                                           max_tokens=6, temperature=0).choices[0].message.content

    with ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(ask, range(20)))
    assert len(answers) == 20 and all(isinstance(a, str) for a in answers)


def test_an_api_key_is_required_when_set(generator):
    url = start(create_app(generator, api_key="sesame"))
    with pytest.raises(openai.AuthenticationError):
        client(url, "wrong").models.list()
    assert httpx.get(f"{url}/health").status_code == 401
    assert [m.id for m in client(url, "sesame").models.list().data] == ["tiny"]
