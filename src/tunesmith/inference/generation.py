"""Text generation from a model or a run: one prompt, many prompts in batches, or a conversation.

Every path goes through `decoding` (the engine `serve` runs too), so the sampling controls mean the same
everywhere: temperature 0 is greedy; a seed makes a sampled run repeat; stop strings end a text before them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from ..errors import UserError
from ..models import beyond_embeddings, context_length, load_model, load_model_config, load_tokenizer, resolve_model
from ..models.weights import scores_with_head
from ..runtime import pick_device
from ..decoding import Decoder, Job, SamplingSettings, decode_all
from ..decoding.engine import derived_seed
from ..decoding.rules import SamplingRules, checked_sampling


def flag_name(field: str) -> str:
    return "--" + field.replace("_", "-")


def check_max_batch(max_batch: int) -> None:
    if max_batch < 1:
        raise UserError(f"--max-batch {max_batch}: sequences decoded together must be at least 1; use 16, or 1 for one at a time")


@dataclass(frozen=True)
class SamplingOptions:
    max_new_tokens: int = 100
    temperature: float = 0.7  # 0 means greedy
    top_k: int = 50
    top_p: float = 0.95
    seed: int = 0
    chat: bool = False
    n: int = 1
    stops: tuple[str, ...] = ()
    repetition_penalty: float = 1.0
    no_repeat_ngram: int = 0

    def check(self) -> None:
        """Every setting within the bounds `serve` and the page use too; ConfigError names each bad one by its flag."""
        checked_sampling({key: getattr(self, key) for key in SamplingRules.model_fields}, flag_name)

    def settings(self) -> SamplingSettings:
        return SamplingSettings(self.temperature, self.top_p, self.top_k, repetition_penalty=self.repetition_penalty,
                                no_repeat_ngram=self.no_repeat_ngram)


@dataclass
class Completion:
    """One sample for one prompt."""

    text: str = ""
    finish_reason: str = "length"  # stop | length | error
    tokens: int = 0
    error: str = ""
    ids: list[int] = field(default_factory=list)  # the generated token ids, without the stop token
    stop_id: int | None = None  # the stop token that ended it; None when a stop string or the length did


@dataclass
class _Collector:
    completions: list[Completion]
    on_text: Callable[[str], None] | None = None
    on_done: Callable[[], None] | None = None

    def __call__(self, event) -> None:
        if event[0] == "text":
            self.completions[event[1]].text += event[2]
            if self.on_text is not None:
                self.on_text(event[2])
        elif event[0] == "end":
            completion = self.completions[event[1]]
            completion.finish_reason, completion.tokens, completion.ids, completion.stop_id = event[2:6]
        elif event[0] == "error":
            for completion in self.completions:
                completion.finish_reason, completion.error = "error", event[2]
        if event[0] in ("error", "done") and self.on_done is not None:
            self.on_done()


EMPTY_PROMPT = "the prompt is empty once tokenized (this tokenizer adds no start token); give some text to continue"


def load_generator(spec: str, device: str = "auto", trust_remote_code: bool = False, log=print,
                   device_setting: str = "train.device"):
    """A model and tokenizer to generate text with; a classifier or reward model (a scoring head, no token
    distributions) is refused in one line, as is a device that is not one, naming `device_setting`."""
    resolved = resolve_model(spec, trust_remote_code, log=log)
    if scores_with_head(load_model_config(resolved)):
        raise UserError(f"{spec} scores text with a head (a classifier or reward model); it does not generate text: "
                        f"score texts with `tunesmith predict {spec} --input FILE --output OUT.csv`, or give a language model")
    place = pick_device(device, device_setting)
    tokenizer = load_tokenizer(resolved)
    model = load_model(resolved).to(place).eval()
    return model, tokenizer


def encode_prompt(tokenizer, prompt: str, chat: bool) -> list[int]:
    """The prompt's token ids, through the chat template as one user turn when `chat`."""
    if not chat:
        return tokenizer(prompt).input_ids
    if not getattr(tokenizer, "chat_template", None):
        raise UserError("this model's tokenizer has no chat template; drop --chat to continue plain text")
    from ..tasks.chat import conversation_ids

    return conversation_ids(tokenizer, [{"role": "user", "content": prompt}])


def default_stop_ids(model, tokenizer, chat: bool) -> list[int]:
    """EOS, and in a chat the end-of-turn marker too."""
    if not chat:
        return [tokenizer.eos_token_id]
    from ..tasks.chat import stop_token_ids

    return stop_token_ids(tokenizer, getattr(model, "name_or_path", None))


def check_fits_context(model, prompt_tokens: int, max_new_tokens: int) -> None:
    """A prompt plus its continuation must fit the model's context; past it, positions have no embedding."""
    context = context_length(model.config)
    if context and prompt_tokens + max_new_tokens > context:
        raise UserError(f"the prompt is {prompt_tokens:,} tokens and --max-new-tokens {max_new_tokens:,}: together past the model's "
                        f"context of {context:,} tokens; shorten the prompt or lower --max-new-tokens")


def generate_many(model, tokenizer, prompts: list[list[int]], options: SamplingOptions, stop_ids: list[int],
                  max_batch: int = 16, on_done: Callable[[int, list[Completion]], None] | None = None,
                  keys: list[int] | None = None, on_text: Callable[[str], None] | None = None) -> list[list[Completion]]:
    """`options.n` completions for each prompt (token ids), in the prompts' order.

    Prompts run in batches ordered by length, each joining as rows free up. A prompt that leaves no room in
    the model's context gets error completions; one that leaves some is cut short there ("length").
    Prompt i draws from its own seed, derived from options.seed and its key (keys[i], by default i), so a
    seeded run repeats, and a resumed one draws what the uninterrupted run would have. `on_done(i, completions)`
    is called as each prompt finishes; `on_text(piece)` with each piece of text as it is decoded (for one prompt, a stream).
    """
    options.check()
    check_max_batch(max_batch)
    context = context_length(model.config)
    results = [[Completion() for _ in range(options.n)] for _ in prompts]
    jobs = []
    for index in sorted(range(len(prompts)), key=lambda i: len(prompts[i])):
        prompt = prompts[index]
        room = context - len(prompt) if context else options.max_new_tokens
        unknown = beyond_embeddings(model, prompt)
        if room < 1 or not prompt or unknown:
            reason = unknown or (f"the prompt is {len(prompt):,} tokens, which fills the model's context of {context:,}"
                                 if prompt else EMPTY_PROMPT)
            for completion in results[index]:
                completion.finish_reason, completion.error = "error", reason
            if on_done:
                on_done(index, results[index])
            continue
        collector = _Collector(results[index], on_text, (lambda index=index: on_done(index, results[index])) if on_done else None)
        jobs.append(Job(prompt, options.settings(), min(options.max_new_tokens, room), collector, options.n, list(options.stops),
                        derived_seed(options.seed, keys[index] if keys else index)))
    decode_all(Decoder(model, tokenizer, stop_ids), jobs, max_batch)
    return results


def generate_completions(model, tokenizer, prompt: str, options: SamplingOptions = SamplingOptions()) -> list[Completion]:
    """`options.n` continuations of `prompt` (the prompt itself is not repeated)."""
    options.check()
    ids = encode_prompt(tokenizer, prompt, options.chat)
    check_fits_context(model, len(ids), options.max_new_tokens)
    completions = generate_many(model, tokenizer, [ids], options, default_stop_ids(model, tokenizer, options.chat))[0]
    if completions[0].error:
        raise UserError(f"generation failed: {completions[0].error}")
    return completions


def generate_text(model, tokenizer, prompt: str, options: SamplingOptions = SamplingOptions()) -> str:
    return generate_completions(model, tokenizer, prompt, options)[0].text


@dataclass
class ChatSession:
    """A conversation with a model through its chat template: the history grows with each exchange."""

    model: object
    tokenizer: object
    options: SamplingOptions
    system: str | None = None
    history: list[dict] = field(default_factory=list)

    def __post_init__(self):
        if not getattr(self.tokenizer, "chat_template", None):
            raise UserError("this model has no chat template; fine-tune it with --task chat, or use `tunesmith generate`")
        self.options.check()
        context = context_length(self.model.config)
        if context and self.options.max_new_tokens >= context:  # no message would leave room for an answer
            raise UserError(f"--max-new-tokens {self.options.max_new_tokens:,}: this model's context of {context:,} tokens "
                            "holds the conversation and the answer together; ask for fewer new tokens")
        self.stop_ids = default_stop_ids(self.model, self.tokenizer, chat=True)
        self.turn = 0

    def reset(self) -> None:
        self.history = []

    def messages(self) -> list[dict]:
        return ([{"role": "system", "content": self.system}] if self.system else []) + self.history

    def reply(self, text: str, on_text: Callable[[str], None] | None = None) -> str:
        """The assistant's answer to `text`, each piece passed to `on_text` as it is decoded."""
        self.history.append({"role": "user", "content": text})
        prompt = self._prompt_ids()
        completion = generate_many(self.model, self.tokenizer, [prompt], self.options, self.stop_ids, 1, keys=[self.turn],
                                   on_text=on_text)[0][0]
        self.turn += 1
        if completion.error:
            self.history.pop()
            raise UserError(f"generation failed: {completion.error}")
        answer = completion.text.strip()
        self.history.append({"role": "assistant", "content": answer})
        return answer

    def _prompt_ids(self) -> list[int]:
        """The conversation as token ids; the oldest exchanges are dropped while it would not fit the context. A message
        that does not fit even alone is refused, and the conversation before it kept."""
        from ..tasks.chat import conversation_ids

        context = context_length(self.model.config)
        kept = list(self.history)
        try:
            while True:
                input_ids = conversation_ids(self.tokenizer, self.messages())
                if not context or len(input_ids) + self.options.max_new_tokens <= context or len(self.history) <= 1:
                    break
                del self.history[:2]
            check_fits_context(self.model, len(input_ids), self.options.max_new_tokens)
        except UserError:
            self.history = kept[:-1]
            raise
        return input_ids


def greedy_samples(model, tokenizer, prompts: list[str], max_new_tokens: int, stop_ids: list[int], rendered: bool) -> list[str]:
    """Greedy continuations of fixed prompts, all in one batch; rendered (chat) prompts already hold their special tokens."""
    ids = [tokenizer(prompt, add_special_tokens=not rendered).input_ids for prompt in prompts]
    options = SamplingOptions(max_new_tokens=max_new_tokens, temperature=0)
    return [completions[0].text for completions in generate_many(model, tokenizer, ids, options, stop_ids, max_batch=len(ids) or 1)]
