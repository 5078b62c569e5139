"""Generation for many prompts: `tunesmith generate --input/--output`, its controls, and the one decoding engine under it."""

import csv
import json

import pytest
import torch

from tunesmith.cli import main
from tunesmith.decoding import Decoder, Job, SamplingSettings, decode_all
from tunesmith.inference.generation import SamplingOptions, encode_prompt, generate_many
from tunesmith.errors import UserError

from helpers import finished_run


@pytest.fixture(scope="module")
def loaded(tiny_models):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = tiny_models["llama"]
    return AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


def write_prompts(path, prompts, **columns):
    with path.open("w") as handle:
        for number, prompt in enumerate(prompts):
            handle.write(json.dumps({"id": f"row-{number}", "prompt": prompt, **{k: v[number] for k, v in columns.items()}}) + "\n")
    return path


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


PROMPTS = ["the lamp", "reset the hub by holding power for ten seconds then", "battery", "if the light blinks red the"]


def test_every_row_keeps_its_columns_and_order_with_n_samples(tiny_llama, tmp_path, capsys):
    source = write_prompts(tmp_path / "prompts.jsonl", PROMPTS, topic=["a", "b", "c", "d"])
    out = tmp_path / "out.jsonl"
    assert main(["generate", str(tiny_llama), "--input", str(source), "--output", str(out), "--n", "3", "--max-new-tokens", "6",
                 "--temperature", "0.9", "--max-batch", "4"]) == 0
    assert "wrote 12 completions for 4 rows" in capsys.readouterr().out
    rows = read_jsonl(out)
    assert [(r["id"], r["sample"]) for r in rows] == [(f"row-{i}", s) for i in range(4) for s in range(3)]
    assert all(r["topic"] == "abcd"[int(r["id"][-1])] and r["prompt"] == PROMPTS[int(r["id"][-1])] for r in rows)
    assert all(r["finish_reason"] in ("stop", "length") and 1 <= r["tokens"] <= 6 for r in rows)
    summary = json.loads((tmp_path / "out.jsonl.summary.json").read_text())
    assert summary["samples"] == 12 and summary["generated_tokens"] == sum(r["tokens"] for r in rows)


def test_batched_greedy_equals_one_prompt_at_a_time(loaded):
    model, tokenizer = loaded
    ids = [tokenizer(p).input_ids for p in PROMPTS]
    options = SamplingOptions(max_new_tokens=10, temperature=0)
    together = generate_many(model, tokenizer, ids, options, [tokenizer.eos_token_id], max_batch=3)
    alone = [generate_many(model, tokenizer, [one], options, [tokenizer.eos_token_id], max_batch=1)[0] for one in ids]
    assert [c[0].text for c in together] == [c[0].text for c in alone]


def test_a_stop_string_ends_the_text_before_it(loaded):
    model, tokenizer = loaded
    ids = [tokenizer(PROMPTS[1]).input_ids]
    greedy = generate_many(model, tokenizer, ids, SamplingOptions(max_new_tokens=20, temperature=0), [tokenizer.eos_token_id])[0][0]
    stop = greedy.text[4:7]
    assert len(stop) == 3
    stopped = generate_many(model, tokenizer, ids, SamplingOptions(max_new_tokens=20, temperature=0, stops=(stop,)),
                            [tokenizer.eos_token_id])[0][0]
    assert stopped.text == greedy.text[: greedy.text.index(stop)] and stopped.finish_reason == "stop"
    assert stopped.tokens < greedy.tokens


@pytest.mark.parametrize(("text", "stop", "sent"), [("ab\u3002cd", "\u3002", "ab"), ("ab\u3002cd", "b\u3002", "a"),
                                                  ("h\u00e9llo w\u00f6rld", "\u00f6", "h\u00e9llo w"), ("x\U0001f600y", "\U0001f600", "x")])
def test_a_stop_ending_in_a_character_of_several_tokens_is_found(loaded, text, stop, sent):
    """A byte-level tokenizer spells such a character in pieces: its last piece ends the stop where the text was a
    placeholder before, and no part of the stop is sent before it is known not to be one."""
    from tunesmith.decoding.text import ChoiceText

    _, tokenizer = loaded
    ids = tokenizer(text, add_special_tokens=False).input_ids
    assert len(ids) > len(text)  # some character came in more than one token
    choice = ChoiceText(tokenizer, [stop])
    pieces = []
    for token in ids:
        pieces.append(choice.add(token))
        if choice.stopped:
            break
    assert choice.stopped and "".join(pieces) + choice.rest() == sent


def test_a_seeded_run_repeats_and_each_prompt_has_its_own_draws(loaded):
    model, tokenizer = loaded
    ids = [tokenizer(p).input_ids for p in PROMPTS]
    options = SamplingOptions(max_new_tokens=12, temperature=1.0, top_k=0, top_p=1.0, seed=7, n=2)
    first = generate_many(model, tokenizer, ids, options, [tokenizer.eos_token_id], max_batch=8)
    again = generate_many(model, tokenizer, ids, options, [tokenizer.eos_token_id], max_batch=8)
    other = generate_many(model, tokenizer, ids, SamplingOptions(**{**options.__dict__, "seed": 8}), [tokenizer.eos_token_id])
    texts = lambda result: [c.text for cs in result for c in cs]  # noqa: E731
    assert texts(first) == texts(again)
    assert texts(first) != texts(other)
    assert first[0][0].text != first[0][1].text  # the n samples of one prompt differ


def test_no_repeat_ngram_and_repetition_penalty_change_greedy_text(loaded):
    model, tokenizer = loaded
    prompt = tokenizer(PROMPTS[0]).input_ids
    sequence = prompt + _generated_ids(model, tokenizer, prompt, SamplingSettings(temperature=0, no_repeat_ngram=2))
    pairs = list(zip(sequence, sequence[1:]))
    assert len(pairs) == len(set(pairs)), "a bigram repeats under no_repeat_ngram=2"
    plain = prompt + _generated_ids(model, tokenizer, prompt, SamplingSettings(temperature=0))
    plain_pairs = list(zip(plain, plain[1:]))
    assert len(plain_pairs) > len(set(plain_pairs)), "the plain greedy text of an untrained model loops; nothing was tested"
    penalized = _generated_ids(model, tokenizer, prompt, SamplingSettings(temperature=0, repetition_penalty=3.0))
    assert penalized != plain[len(prompt):]


def _generated_ids(model, tokenizer, prompt, settings):
    """The generated token ids themselves (their text could re-tokenize differently)."""
    decoder = Decoder(model, tokenizer, [tokenizer.eos_token_id])
    job = Job(prompt, settings, 30, lambda event: None)
    captured = []
    original = decoder._accept
    decoder._accept = lambda choice, token: (captured.append(token), original(choice, token))[1]
    decode_all(decoder, [job])
    return [t for t in captured if t != tokenizer.eos_token_id]


def test_an_over_long_prompt_is_reported_on_its_row(tiny_llama, tmp_path, monkeypatch):
    """One past the context once tokenized, and one past what the context's tokens can spell, refused untokenized."""
    from transformers import AutoTokenizer

    from tunesmith.models import longest_token

    huge = "w" * (128 * longest_token(AutoTokenizer.from_pretrained(tiny_llama)) + 1)
    source = write_prompts(tmp_path / "prompts.jsonl", ["the lamp", "word " * 150, "battery", huge])
    out = tmp_path / "out.jsonl"
    tokenized = []
    monkeypatch.setattr("tunesmith.inference.generate_file.encode_prompt",
                        lambda tokenizer, prompt, chat, real=encode_prompt: tokenized.append(prompt) or real(tokenizer, prompt, chat))
    assert main(["generate", str(tiny_llama), "--input", str(source), "--output", str(out), "--max-new-tokens", "4",
                 "--temperature", "0"]) == 0
    rows = read_jsonl(out)
    assert [r["finish_reason"] for r in rows][1::2] == ["error", "error"] and "context of 128" in rows[1]["error"]
    assert f"{len(huge):,} characters, more than the model's context of 128 tokens can spell" in rows[3]["error"]
    assert rows[0]["finish_reason"] != "error" and rows[2]["finish_reason"] != "error" and rows[0]["generated"]
    assert huge not in tokenized and len(tokenized) == 3


def test_csv_and_text_inputs_with_reference_scores(tiny_llama, tmp_path, capsys):
    source = tmp_path / "prompts.csv"
    with source.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["question", "answer"])
        writer.writerows([["the lamp", "the lamp is on"], ["battery", "battery lasts a day"]])
    out = tmp_path / "out.csv"
    assert main(["generate", str(tiny_llama), "--input", str(source), "--output", str(out), "--prompt-field", "question",
                 "--reference-field", "answer", "--max-new-tokens", "5", "--temperature", "0"]) == 0
    assert "ROUGE-L" in capsys.readouterr().out
    with out.open() as handle:
        rows = list(csv.DictReader(handle))
    assert [r["question"] for r in rows] == ["the lamp", "battery"] and all("rouge_l" in r and "chrf" in r for r in rows)
    metrics = json.loads((tmp_path / "out.csv.summary.json").read_text())["metrics"]
    assert metrics["scored"] == 2 and 0 <= metrics["rouge_l"] <= 100 and 0 <= metrics["chrf"] <= 100
    assert main(["generate", str(tiny_llama), "--input", str(source), "--output", str(tmp_path / "out.jsonl"), "--prompt-field",
                 "question", "--max-new-tokens", "2"]) == 0  # an output of the same stem has its own summary
    assert (tmp_path / "out.jsonl.summary.json").is_file() and (tmp_path / "out.csv.summary.json").is_file()

    text = tmp_path / "prompts.txt"
    text.write_text("the lamp\nis on\n\nbattery\n")
    assert main(["generate", str(tiny_llama), "--input", str(text), "--output", str(tmp_path / "t.jsonl"), "--max-new-tokens", "3"]) == 0
    assert [r["prompt"] for r in read_jsonl(tmp_path / "t.jsonl")] == ["the lamp\nis on", "battery"]


def test_bad_inputs_end_with_one_line(tiny_llama, tmp_path, capsys):
    source = write_prompts(tmp_path / "prompts.jsonl", PROMPTS)
    existing = tmp_path / "existing.jsonl"
    existing.write_text("keep me\n")
    assert main(["generate", str(tiny_llama), "--input", str(source), "--output", str(existing)]) == 2
    assert "never overwritten" in capsys.readouterr().err and existing.read_text() == "keep me\n"
    assert main(["generate", str(tiny_llama), "--input", str(source), "--output", str(tmp_path / "o.jsonl"), "--prompt-field", "q"]) == 2
    assert "no row has the field 'q'" in capsys.readouterr().err
    assert main(["generate", str(tiny_llama), "--input", str(source)]) == 2
    assert "--input needs --output" in capsys.readouterr().err
    assert main(["generate", str(tiny_llama), "--prompt", "hi", "--n", "0"]) == 2
    assert not (tmp_path / "o.jsonl").exists()


def test_chat_uses_the_same_engine_and_streams(tiny_models):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunesmith.inference.generation import ChatSession

    tokenizer = AutoTokenizer.from_pretrained(tiny_models["llama"])
    tokenizer.chat_template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                               "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    model = AutoModelForCausalLM.from_pretrained(tiny_models["llama"]).eval()
    pieces = []
    session = ChatSession(model, tokenizer, SamplingOptions(max_new_tokens=8, temperature=0))
    answer = session.reply("hello", pieces.append)
    assert answer == "".join(pieces).strip() and session.history[-1] == {"role": "assistant", "content": answer}
    with torch.no_grad():
        assert session.reply("hello again")
    before = list(session.history)
    with pytest.raises(UserError, match="past the model's context"):
        session.reply("lamp " * 400)  # too long even alone: refused, and the conversation before it kept
    assert session.history == before


def test_eval_generate_scores_a_runs_validation_continuations(tiny_gpt2, tmp_path, capsys):

    run, _ = finished_run(tiny_gpt2, tmp_path, max_steps=4)
    capsys.readouterr()
    assert main(["eval", str(run), "--generate", "3", "--max-new-tokens", "8"]) == 0
    out = capsys.readouterr().out
    assert "3 validation prompts continued greedily" in out and "ROUGE-L" in out
    assert json.loads((run / "generation_eval.json").read_text())["prompts"] == 3
    short = tmp_path / "short.jsonl"
    short.write_text("".join(json.dumps({"text": f"reset {i}"}) + "\n" for i in range(30)))
    assert main(["eval", str(run), "--data", str(short), "--generate", "2"]) == 2
    assert "no validation text to generate against" in capsys.readouterr().err


def test_a_second_generate_into_the_same_output_and_a_journal_not_its_own_are_refused(tiny_llama, tmp_path, capsys):
    """Two processes would share one journal, and the second would lose its work at the end."""
    import fcntl

    source = write_prompts(tmp_path / "prompts.jsonl", PROMPTS)
    out = tmp_path / "out.jsonl"
    journal = tmp_path / "out.jsonl.progress.jsonl"
    args = ["generate", str(tiny_llama), "--input", str(source), "--output", str(out), "--max-new-tokens", "2"]
    with journal.open("a") as held:  # as a live generate holds it
        fcntl.flock(held, fcntl.LOCK_EX)
        assert main(args) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "another generate is writing it now" in err
    journal.write_text(json.dumps({"identity": "another run"}) + "\n" + json.dumps({"row": 0, "completions": []}) + "\n")
    assert main(args) == 2  # a changed flag must not drop what an interrupted run finished
    assert "holds 1 rows of an interrupted generate with another model" in capsys.readouterr().err
    for other in ("my own notes\n", None):
        journal.unlink()
        if other is None:
            (tmp_path / "mine.txt").write_text("mine\n")
            journal.symlink_to(tmp_path / "mine.txt")
        else:
            journal.write_text(other)
        assert main(args) == 2
        assert "not a generate journal" in capsys.readouterr().err
    assert (tmp_path / "mine.txt").read_text() == "mine\n"


def test_an_interrupted_file_run_resumes_and_draws_what_it_would_have(tiny_llama, tmp_path, monkeypatch, capsys):
    """Stopped after two rows (Ctrl-C, or a kill), a rerun skips them and ends with the uninterrupted run's output."""
    source = write_prompts(tmp_path / "prompts.jsonl", PROMPTS)
    args = ["generate", str(tiny_llama), "--input", str(source), "--max-new-tokens", "6", "--temperature", "1.0", "--seed", "5",
            "--max-batch", "1"]
    assert main([*args, "--output", str(tmp_path / "whole.jsonl")]) == 0
    out = tmp_path / "out.jsonl"
    original, finished = Decoder.drop_finished, []

    def stop_after_two_rows(self):
        original(self)
        finished.append(not self.rows)
        if sum(finished) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(Decoder, "drop_finished", stop_after_two_rows)
    assert main([*args, "--output", str(out)]) == 130
    monkeypatch.undo()
    journal = tmp_path / "out.jsonl.progress.jsonl"
    assert not out.exists() and len(journal.read_text().splitlines()) == 3  # its identity and two rows
    capsys.readouterr()
    assert main([*args, "--output", str(out)]) == 0
    assert "resumed: 2 rows" in capsys.readouterr().out
    assert read_jsonl(out) == read_jsonl(tmp_path / "whole.jsonl") and not journal.exists()
    other = tmp_path / "fresh.jsonl.progress.jsonl"  # another run's journal (other settings) is not resumed, nor dropped
    other.write_text(json.dumps({"identity": "another run"}) + "\n" + json.dumps({"row": 0, "completions": []}) + "\n")
    assert main([*args, "--output", str(tmp_path / "fresh.jsonl")]) == 2
    assert "delete the file to start over" in capsys.readouterr().err
    other.unlink()
    assert main([*args, "--output", str(tmp_path / "fresh.jsonl")]) == 0
    assert "resumed" not in capsys.readouterr().out
    assert read_jsonl(tmp_path / "fresh.jsonl") == read_jsonl(tmp_path / "whole.jsonl")


@pytest.mark.parametrize("flags, words", [
    (["--temperature", "nan"], "--temperature: Input should be a finite number; use a number >= 0"),
    (["--temperature", "inf"], "--temperature: Input should be a finite number"),
    (["--top-p", "nan"], "--top-p: Input should be a finite number"),
    (["--seed", "-1"], "--seed: Input should be greater than or equal to 0; use a whole number from 0 to 2**63-1"),
    (["--seed", str(2**64)], "--seed: Input should be less than or equal to"),
    (["--max-batch", "0"], "--max-batch 0: sequences decoded together must be at least 1"),
    (["--max-batch", "-3"], "--max-batch -3:"),
    (["--n", "1001"], "--n: Input should be less than or equal to 1000"),
])
def test_bad_settings_end_with_one_line_before_any_decoding(tiny_llama, tmp_path, capsys, flags, words):
    source = write_prompts(tmp_path / "prompts.jsonl", PROMPTS)
    for prompts in (["--prompt", "the lamp"], ["--input", str(source), "--output", str(tmp_path / "o.jsonl")]):
        assert main(["generate", str(tiny_llama), *prompts, "--max-new-tokens", "3", *flags]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and words in err, err
    assert not (tmp_path / "o.jsonl").exists() and not (tmp_path / "o.jsonl.progress.jsonl").exists()


def test_an_output_in_a_folder_not_made_yet_is_written_there(tiny_llama, tmp_path, capsys):
    """As write_rows makes the output's folder, so does the journal written beside it before it."""
    source = write_prompts(tmp_path / "prompts.jsonl", PROMPTS)
    out = tmp_path / "nodir" / "sub" / "o.jsonl"
    assert main(["generate", str(tiny_llama), "--input", str(source), "--output", str(out), "--max-new-tokens", "2"]) == 0
    assert len(read_jsonl(out)) == 4 and (out.parent / (out.name + ".summary.json")).is_file()


def test_rows_that_are_not_utf8_are_read_with_a_warning_naming_how_many(tmp_path):
    from tunesmith.inference.row_files import read_numbered_rows

    source = tmp_path / "latin1.csv"
    source.write_bytes("prompt\ncaf\u00e9\nplain\nna\u00efve\n".encode("latin-1"))
    said = []
    rows, lines = read_numbered_rows(source, (".csv",), log=said.append)
    assert [r["prompt"] for r in rows] == ["caf\ufffd", "plain", "na\ufffdve"] and lines == [2, 3, 4]
    assert len(said) == 1 and "2 lines are not valid UTF-8, read with replacement characters" in said[0] and str(source) in said[0], said
    source.write_text("prompt\ncaf\u00e9\n", encoding="utf-8")
    said.clear()
    assert read_numbered_rows(source, (".csv",), log=said.append)[0] == [{"prompt": "caf\u00e9"}] and not said
    source.write_text("prompt\ncaf\u00e9\n", encoding="utf-16")  # with its byte-order mark, as Excel saves it
    with pytest.raises(UserError, match="UTF-16 text .*; save it as UTF-8"):
        read_numbered_rows(source, (".csv",))
    source.write_bytes(bytes(range(256)) * 8)
    with pytest.raises(UserError, match="looks like a binary file, not text; remove it from --input"):
        read_numbered_rows(source, (".csv",))


def test_an_empty_prompt_is_refused_as_serve_refuses_it(tiny_llama, capsys):
    assert main(["generate", str(tiny_llama), "--prompt", "", "--max-new-tokens", "3"]) == 2
    assert "the prompt is empty once tokenized" in capsys.readouterr().err


CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


@pytest.fixture(scope="module")
def page(tiny_llama, tmp_path_factory):
    """The web page over a folder with one run, whose final model is the tiny Llama with a chat template."""
    import shutil

    from fastapi.testclient import TestClient
    from transformers import AutoTokenizer

    from tunesmith.rundir.folder import mark_run_dir
    from tunesmith.ui import create_app

    root = tmp_path_factory.mktemp("runs")
    mark_run_dir(root / "bot")
    shutil.copytree(tiny_llama, root / "bot" / "final")
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(root / "bot" / "final")
    return TestClient(create_app(root, port=7860), base_url="http://127.0.0.1:7860", raise_server_exceptions=False)


@pytest.mark.parametrize("action, body, words", [
    ("chat", {"text": "hi", "history": ["x"]}, "history: send a list of messages"),
    ("chat", {"text": "hi", "history": "x"}, "history: send a list of messages"),
    ("chat", {"text": "hi", "history": [{"role": "robot", "content": "x"}]}, "history: send a list of messages"),
    ("chat", {"text": "hi", "settings": "abc"}, "settings: send an object"),
    ("generate", {"prompt": "the lamp", "settings": "abc"}, "settings: send an object"),
    ("generate", {"prompt": "the lamp", "settings": {"temperature": "nan"}}, "settings.temperature: Input should be a finite number"),
    ("chat", {"text": "hi", "settings": {"temperature": "nan"}}, "settings.temperature: Input should be a finite number"),
    ("generate", {"prompt": "the lamp", "settings": {"seed": -5}}, "settings.seed: Input should be greater than or equal to 0"),
    ("chat", {"text": "hi", "settings": {"seed": -5}}, "settings.seed: Input should be greater than or equal to 0"),
    ("generate", {"prompt": "the lamp", "settings": {"top_k": "many"}}, "settings.top_k: Input should be a valid integer"),
    ("generate", {"prompt": "the lamp", "settings": {"max_new_tokens": 600}}, "settings.max_new_tokens: at most 512"),
    ("chat", {"text": "hi", "settings": {"system": ["x"]}}, "settings.system: send the system message as text"),
    ("generate", {"prompt": "the lamp", "settings": []}, "settings: send an object"),
    ("generate", {"prompt": "the lamp", "settings": {"temprature": 0.2}}, "settings.temprature: not a setting here"),
    ("generate", {"prompt": "the lamp", "settings": {"system": "be brief"}}, "settings.system: not a setting here"),
    ("chat", {"text": "hi", "settings": {"top-p": 0.5}}, "settings.top-p: not a setting here"),
    ("generate", {"prompt": None}, "prompt: send text, not NoneType"),
    ("generate", {"prompt": ["the lamp"]}, "prompt: send text, not list"),
    ("chat", {"text": {"a": 1}}, "text: send text, not dict"),
    ("classify", {"text": "hi", "settings": {"temperature": 1}}, "settings: a classifier takes none"),
])
def test_the_try_it_endpoints_answer_400_with_the_reason(page, action, body, words):
    response = page.post(f"/api/run/bot/{action}", json=body)
    assert response.status_code == 400 and words in response.json()["error"], response.text


def test_json_nested_past_any_use_is_a_400(page):
    deep = '{"prompt": ' + "[" * 50_000 + "]" * 50_000 + "}"
    answer = page.post("/api/run/bot/generate", content=deep, headers={"content-type": "application/json"})
    assert answer.status_code == 400 and "JSON object" in answer.json()["error"]


def test_the_try_it_endpoints_take_good_settings_as_the_page_sends_them(page):
    settings = {"temperature": 0.9, "max_new_tokens": 4, "seed": "3"}
    generated = page.post("/api/run/bot/generate", json={"prompt": "the lamp", "settings": settings})
    assert generated.status_code == 200 and isinstance(generated.json()["text"], str)
    history = [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "hi"}]
    replied = page.post("/api/run/bot/chat", json={"text": "the lamp", "history": history, "settings": settings})
    assert replied.status_code == 200 and isinstance(replied.json()["reply"], str)


def test_one_admission_rule_joins_jobs_that_fit_and_runs_one_larger_than_the_batch_alone():
    from collections import deque
    from types import SimpleNamespace

    from tunesmith.decoding import take_fitting

    def job(n):
        return SimpleNamespace(n=n)

    waiting = deque([job(5), job(1)])
    assert [j.n for j in take_fitting(waiting, SimpleNamespace(rows=[], can_join=lambda: True), 4)] == [5] and len(waiting) == 1
    assert [j.n for j in take_fitting(deque([job(1), job(1)]), SimpleNamespace(rows=[0, 1, 2], can_join=lambda: True), 4)] == [1]
    assert take_fitting(deque([job(1)]), SimpleNamespace(rows=[0], can_join=lambda: False), 4) == []


@pytest.fixture
def scoring_model(tiny_llama, tmp_path):
    """A classifier's folder: the tiny Llama with a two-label head, as a classify run's final/ holds it."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    folder = tmp_path / "classifier"
    AutoModelForSequenceClassification.from_pretrained(tiny_llama, num_labels=2).save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_llama).save_pretrained(folder)
    (folder / "tunesmith_task.json").write_text(json.dumps({"task": "classify", "method": "head", "labels": ["no", "yes"]}))
    return folder


def test_a_model_that_scores_with_a_head_is_refused_by_generate_chat_and_serve(scoring_model, capsys):
    from tunesmith.errors import UserError
    from tunesmith.serve import load_for_serving

    for argv in (["generate", str(scoring_model), "--prompt", "the lamp"], ["chat", str(scoring_model)]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "scores text with a head" in err[0] and "tunesmith predict" in err[0], err
    with pytest.raises(UserError, match="scores text with a head"):
        load_for_serving(str(scoring_model))


def test_an_unreadable_task_file_says_so(scoring_model, monkeypatch):
    from pathlib import Path

    from tunesmith.errors import UserError
    from tunesmith.tasks import read_task

    def refuse(self):
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr(Path, "read_bytes", refuse)
    with pytest.raises(UserError, match="tunesmith_task.json: cannot be read \\(Permission denied\\); check its permissions"):
        read_task(scoring_model)


@pytest.mark.parametrize("damage", [b'{"task": "classify", "labels": ', b'["classify"]', b'\xff\xfe\x00'])
def test_a_damaged_task_file_is_one_line_naming_it(scoring_model, tmp_path, capsys, damage):
    (scoring_model / "tunesmith_task.json").write_bytes(damage)
    rows = write_prompts(tmp_path / "rows.jsonl", PROMPTS)
    for argv in (["predict", str(scoring_model), "--input", str(rows), "--output", str(tmp_path / "out.csv")], ["eval", str(scoring_model), "--data", str(rows)]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert "tunesmith_task.json: damaged" in err[-1] and "Traceback" not in "\n".join(err), err

