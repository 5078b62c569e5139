"""The bounds of every sampling setting, in one place: `generate`, `chat`, the web page's try-it and `serve` all check
a setting against these types, so a value one of them refuses, every one refuses, before anything is decoded
(`serve` adds OpenAI's own tighter caps on top: temperature and repetition penalty at most 2).

A value past these bounds does not just sample badly, it breaks the decoding: NaN makes the probabilities NaN,
a seed past 64 bits overflows `torch.Generator.manual_seed`, a negative seed `numpy.random.SeedSequence`.
"""

from __future__ import annotations

from typing import Annotated, Callable

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError
from pydantic_core import PydanticCustomError

from ..errors import ConfigError

SEED_MAX = 2**63 - 1  # seed + choice index stays within the 64 bits a torch.Generator takes
NGRAM_MAX = 1024
N_MAX = 1000  # choices per prompt: each is a sequence held in memory until its prompt is done; more, with another seed


def _not_a_bool(value):
    """JSON's true is not the number 1 here: a client that sends it has mixed up its fields."""
    if isinstance(value, bool):
        raise PydanticCustomError("bool_is_not_a_number", "a number is needed, not true or false")
    return value


NotBool = BeforeValidator(_not_a_bool)
Temperature = Annotated[float, Field(ge=0, allow_inf_nan=False), NotBool]
TopP = Annotated[float, Field(gt=0, le=1, allow_inf_nan=False), NotBool]
TopK = Annotated[int, Field(ge=0), NotBool]
OpenAIPenalty = Annotated[float, Field(ge=-2, le=2, allow_inf_nan=False), NotBool]
RepetitionPenalty = Annotated[float, Field(gt=0, allow_inf_nan=False), NotBool]
NoRepeatNgram = Annotated[int, Field(ge=0, le=NGRAM_MAX), NotBool]
Seed = Annotated[int, Field(ge=0, le=SEED_MAX), NotBool]
Positive = Annotated[int, Field(ge=1), NotBool]

ALLOWED = {
    "temperature": "a number >= 0 (0 is greedy)",
    "top_p": "a number above 0 and at most 1",
    "top_k": "a whole number >= 0 (0 keeps every token)",
    "repetition_penalty": "a number above 0 (1 is off)",
    "no_repeat_ngram": f"a whole number from 0 to {NGRAM_MAX:,}",
    "seed": f"a whole number from 0 to 2**63-1 ({SEED_MAX})",
    "max_new_tokens": "a whole number >= 1",
    "n": f"a whole number from 1 to {N_MAX:,} (for more, run again with another --seed)",
    "frequency_penalty": "a number from -2 to 2",
    "presence_penalty": "a number from -2 to 2",
}


class SamplingRules(BaseModel):
    """The settings `generate`, `chat` and the page take; only the fields a caller sets are used, never these defaults."""

    model_config = ConfigDict(extra="ignore")

    max_new_tokens: Positive = 1
    temperature: Temperature = 1.0
    top_k: TopK = 0
    top_p: TopP = 1.0
    seed: Seed = 0
    n: Annotated[int, Field(ge=1, le=N_MAX), NotBool] = 1
    repetition_penalty: RepetitionPenalty = 1.0
    no_repeat_ngram: NoRepeatNgram = 0


def problem(field: str, message: str, name: str | None = None) -> str:
    """One line for one refused value: the name the user typed, what was wrong, and what is allowed."""
    allowed = ALLOWED.get(field)
    return f"{name or field}: {message}" + (f"; use {allowed}" if allowed else "")


def checked_sampling(values: dict, spell: Callable[[str], str] = str) -> dict:
    """`values` (loosely typed: a web form, a JSON body, flags) converted and checked; only the keys given come back.

    Raises ConfigError with one line per bad value, each named as `spell(field)` names it to the user.
    """
    try:
        rules = SamplingRules.model_validate(values)
    except ValidationError as exc:
        raise ConfigError([problem(str(error["loc"][0]), error["msg"], spell(str(error["loc"][0]))) for error in exc.errors()])
    return rules.model_dump(exclude_unset=True)
