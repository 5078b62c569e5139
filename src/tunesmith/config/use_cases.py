"""The config's use-case sections: chat and instruction data, classification, preference tuning, GRPO's rewards and
distillation, each read only by the tasks (or the distillation) that use it."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from .sections import Section, not_a_switch, not_blank


class ChatConfig(Section):
    format: Literal["auto", "messages", "sharegpt", "transcript", "table", "prompt_completion", "alpaca"] = Field("auto", description="messages (OpenAI), sharegpt, transcript (\"Name: text\" lines, blank line between conversations), table (one row per turn), prompt_completion ({prompt, completion}; the prompt may be a list of messages) or alpaca ({instruction, input, output}); auto: detected")
    fields: dict[str, str] = Field(default_factory=dict, description="field names of instruction and preference records when they differ, e.g. {prompt: question, completion: answer}; the names: prompt, completion, instruction, input, output, chosen, rejected, label")
    train_on_prompt: bool = Field(False, description="instruction and chat data: put the loss on the prompts and user turns too, not only on the answers")
    roles: dict[str, Literal["system", "user", "assistant"]] = Field(default_factory=dict, description="speaker name -> role, e.g. {Customer: user, Agent: assistant}; the assistant is the one the model learns to be")
    system_prompt: str | None = Field(None, description="system message put before every conversation that has none")
    conversation_field: str = Field("conversation_id", description="format table: the column that groups rows into conversations")
    speaker_field: str = Field("speaker", description="format table: the column that names the speaker (the text is in data.text_field)")


class ClassifyConfig(Section):
    method: Literal["head", "generative"] = Field("head", description="head: a classification layer on the last token; generative: the model writes the label word")
    prompt: str = Field("{text}\nLabel:", description="generative: the prompt; {text} is the example's text")
    verbalizers: dict[str, str] = Field(default_factory=dict, description="generative: label -> the word the model writes, e.g. {0: negative, 1: positive} (default: the label itself)")
    metric: Literal["macro_f1", "accuracy", "val_loss"] = Field("macro_f1", description="the evaluation metric that picks the best checkpoint and drives early stopping")
    class_weights: bool = Field(False, description="weight the loss by inverse class frequency (for imbalanced labels)")

    @field_validator("verbalizers", mode="before")
    @classmethod
    def _string_keys(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return {str(k): str(v) for k, v in value.items()}
        return value


class PreferenceConfig(Section):
    method: Literal["dpo", "orpo", "kto"] = Field("dpo", description="dpo: chosen over rejected against a reference model; orpo: odds ratio plus the chosen answer's loss, no reference; kto: thumbs up or down on single answers (pairs are split)")
    beta: float = Field(0.1, gt=0, description="dpo, kto: strength of the pull toward the reference model (higher: stays closer); also scales the reported rewards")
    orpo_lambda: float = Field(0.1, gt=0, description="orpo: weight of the odds-ratio term beside the chosen answer's loss")
    desirable_weight: float = Field(1.0, gt=0, description="kto: weight of the loss on desirable (thumbs up) answers")
    undesirable_weight: float = Field(1.0, gt=0, description="kto: weight of the loss on undesirable (thumbs down) answers")
    precompute_reference: bool = Field(True, description="dpo, kto: compute the reference log-probabilities once before training and store them beside the token files, so no reference model is held (false: the base with the adapters switched off for lora, a frozen copy for full and freeze)")


REWARD_KINDS = ("run", "length", "regex", "avoid", "python")


class RewardSpec(Section):
    """One reward of a GRPO run: exactly one of `run`, `length`, `regex`, `avoid` or `python`, with its weight."""

    weight: float = Field(1.0, ge=-1e6, le=1e6, allow_inf_nan=False, description="the reward's weight in the sum (negative: a penalty)")
    name: str | None = Field(None, description="what the logs call it (default: from its kind)")
    run: str | None = Field(None, description="a tunesmith classifier run (with label) or reward-model run (task reward), or its final/ folder")
    label: str | None = Field(None, description="with a classifier run: the label whose probability is the reward")
    text: Literal["full", "completion"] = Field("full", description="with run: score the prompt and the completion together (full) or the completion alone")
    scale: Literal["probability", "log_odds"] = Field("probability", description="with a classifier run: the label's probability (0 to 1), or its log-odds log(p / (1 - p)) (-13.8 to 13.8), which still tells completions apart where the probability is near 1")
    length: int | None = Field(None, ge=1, description="built-in: completions near this many tokens score 1, falling linearly to 0 at none or twice as many")
    regex: str | None = Field(None, description="built-in: 1 when the completion matches this regular expression (re.search), else 0")
    must_match: bool = Field(True, description="with regex: false inverts it, 1 when the completion does not match")
    avoid: list[str] | None = Field(None, min_length=1, description="built-in: 1 minus the share of these words (case-insensitive, whole words) that the completion uses")
    python: str | None = Field(None, description="your function, file.py:name, called as name(prompts, completions) -> one number per completion")

    @field_validator("regex")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        import re

        if value == "":
            raise ValueError("an empty expression matches every completion; give one that tells completions apart")
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"not a regular expression: {exc}") from None
        return value

    @field_validator("avoid")
    @classmethod
    def _words(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and any(not word.strip() for word in value):
            raise ValueError("an empty word is found in every completion; list words that tell completions apart")
        return value

    @field_validator("python")
    @classmethod
    def _file_and_name(cls, value: str | None) -> str | None:
        if value is not None:
            file, _, name = value.rpartition(":")
            if not file.endswith(".py") or not name.isidentifier():
                raise ValueError("must be file.py:function_name, e.g. rewards.py:score")
        return value

    @property
    def kind(self) -> str:
        chosen = [kind for kind in REWARD_KINDS if getattr(self, kind) is not None]
        if len(chosen) != 1:
            raise ValueError(f"give exactly one of {', '.join(REWARD_KINDS)} (got {', '.join(chosen) or 'none'})")
        return chosen[0]

    @property
    def label_name(self) -> str:
        """What the logs call it: its name, or its kind with what it reads."""
        if self.name:
            return self.name
        if self.run is not None:
            return f"{Path(self.run).name}" + (f":{self.label}" if self.label else "")
        if self.python is not None:
            return self.python.rpartition(":")[2]
        return self.kind


class GrpoConfig(Section):
    group_size: int = Field(8, ge=2, le=512, description="completions sampled per prompt; their rewards are compared within the group")
    loss: Literal["grpo", "dr_grpo"] = Field("grpo", description="grpo: advantages scaled by the group's reward std, each completion's loss averaged over its tokens (DeepSeekMath); dr_grpo: neither, tokens summed and divided by max_new_tokens (Dr. GRPO)")
    epsilon: float = Field(0.2, gt=0, lt=1, description="clipping of the probability ratio to [1 - epsilon, 1 + epsilon]")
    iterations: int = Field(1, ge=1, description="optimizer steps taken on each batch of completions before sampling new ones")
    beta: float = Field(0.04, ge=0, le=100, allow_inf_nan=False, description="weight of the KL penalty to the base model (0: none, and no reference pass)")
    target_kl: float | None = Field(None, gt=0, allow_inf_nan=False, description="KL per completion token from the base model the penalty aims at (e.g. 0.25, about Ziegler et al.'s 6 nats over 24 tokens): after each step beta is raised when the step's KL was above it and lowered when below (their adaptive controller, as in TRL's PPO and verl), never under grpo.beta, where it starts; null: beta stays fixed")
    kl_horizon: int = Field(64, ge=1, le=10**9, description="with target_kl: completions over which beta moves by a factor of at most e^0.2: beta *= exp(clip(kl / target_kl - 1, -0.2, 0.2) * min(completions / kl_horizon, 1)) after each optimizer step (with grpo.iterations above 1, each on the same completions), kept between grpo.beta and 100 times it; the default moves it up to 10% a step of 4 prompts x 8 completions")
    max_new_tokens: int = Field(64, ge=1, description="tokens sampled per completion at most")
    temperature: float = Field(1.0, gt=0, le=5, description="sampling temperature of the completions")
    top_p: float = Field(1.0, gt=0, le=1, description="nucleus sampling of the completions (1: off)")
    top_k: int = Field(0, ge=0, description="sample from the k most likely tokens (0: all)")
    eval_completions: int = Field(2, ge=1, description="completions per held-out prompt at each evaluation (seeded, the same draws each time)")
    rewards: list[RewardSpec] = Field(default_factory=list, description="the rewards, weighted and summed, e.g. [{run: runs/sentiment, label: positive}, {length: 40, weight: 0.2}]")

    @field_validator("rewards")
    @classmethod
    def _one_kind_each(cls, value: list[RewardSpec]) -> list[RewardSpec]:
        for number, spec in enumerate(value):
            try:
                kind = spec.kind
            except ValueError as exc:
                raise ValueError(f"reward {number + 1}: {exc}") from None
            if spec.label is not None and kind != "run":
                raise ValueError(f"reward {number + 1}: label applies to a run reward only")
        names = [spec.label_name for spec in value]
        if len(set(names)) != len(names):
            raise ValueError(f"two rewards share the name {max(names, key=names.count)!r}; give one a name")
        return value

    @field_validator("target_kl", mode="before")
    @classmethod
    def _kl_not_a_switch(cls, value: Any) -> Any:
        return not_a_switch(value, "a KL in nats per token, e.g. 0.25")

    @model_validator(mode="after")
    def _target_needs_a_penalty(self) -> "GrpoConfig":
        if self.target_kl is not None and not self.beta:
            raise ValueError("target_kl adapts grpo.beta, which is 0 (no KL penalty and no reference pass); "
                             "set grpo.beta to the weight to start from, e.g. 0.04, or drop target_kl")
        return self


class FromTeacher(Section):
    """A student made from the teacher: a copy with some of its blocks kept."""

    keep_layers: int | list[int] = Field(description="how many of the teacher's blocks the student keeps (see pick), or which ones, counted from 0")
    pick: Literal["spaced", "similar", "bottom"] = Field("spaced", description="with a number of blocks: spaced keeps them evenly spaced, the first and last among them; similar removes the run of consecutive blocks whose input and output differ least on the training data (Gromov et al.'s angular distance), measured by the teacher before training; bottom keeps the first N, dropping the top of the stack (Sajjad et al.), for a classifier student")

    @field_validator("keep_layers", mode="before")
    @classmethod
    def _a_block_count_or_list(cls, value: Any) -> Any:
        if isinstance(value, bool) or (isinstance(value, list) and any(isinstance(v, bool) for v in value)):
            raise ValueError("a number of blocks, or a list of block numbers, not true or false")
        whole = isinstance(value, int) or (isinstance(value, float) and value.is_integer())
        if not whole and not (isinstance(value, list) and all(isinstance(v, int) for v in value)):
            raise ValueError("a whole number of blocks, or a list of block numbers (e.g. 10, or [0, 5, 9])")
        return value

    @field_validator("keep_layers")
    @classmethod
    def _layers(cls, value: int | list[int]) -> int | list[int]:
        if isinstance(value, int) and value < 1:
            raise ValueError("must be at least 1 block")
        if isinstance(value, list):
            if not value:
                raise ValueError("name at least one block")
            if min(value) < 0 or len(set(value)) != len(value):
                raise ValueError("blocks are counted from 0, each named once")
        return value

    @model_validator(mode="after")
    def _one_way_to_choose(self) -> "FromTeacher":
        if isinstance(self.keep_layers, list) and self.pick != "spaced":
            raise ValueError(f"pick: {self.pick} chooses the blocks itself; give keep_layers as a number of blocks, or drop pick")
        return self


class StudentConfig(Section):
    from_teacher: FromTeacher = Field(description="{keep_layers: N}: the student is the teacher with N of its blocks kept (then model.name is not used)")


class DistillConfig(Section):
    teacher: str | None = Field(None, description="tasks lm, chat, classify: a run or model whose distributions the student learns (it must share the student's tokenizer; a classifier teacher, its labels); null: no distillation")
    alpha: float = Field(0.5, ge=0, le=1, description="weight of the distillation term; the data's own loss weighs 1 - alpha")
    temperature: float = Field(1.0, gt=0, le=20, description="both models' logits are divided by it before the divergence, which is then multiplied by its square (Hinton et al.)")
    loss: Literal["forward_kl", "reverse_kl", "jsd"] = Field("forward_kl", description="forward_kl: KL(teacher || student), covers the teacher's modes; reverse_kl: KL(student || teacher), seeks its main mode; jsd: the Jensen-Shannon divergence, the two halves averaged")
    cache: Literal["none", "topk"] = Field("none", description="none: the frozen teacher runs beside the student at every step; topk: its top-k log-probabilities per trained token are computed once and stored beside the token files (language models)")
    topk: int = Field(64, ge=1, le=4096, description="with cache topk: tokens kept per position (the divergence is taken over them and the rest of the vocabulary as one outcome)")
    student: StudentConfig | None = Field(None, description="{from_teacher: {keep_layers: N}} to make the student from the teacher; null: the student is model.name")
    hidden: float = Field(0.0, ge=0, le=100, allow_inf_nan=False, description="weight of the hidden-state term, added to the loss: 1 minus the cosine similarity of each student block's output and the teacher block's it stands for (its original in a student made from the teacher), over real tokens; needs the teacher's width; 0: off")

    @field_validator("teacher")
    @classmethod
    def _named(cls, value: str | None) -> str | None:
        return not_blank(value, "name a finished run or a model, or leave distill.teacher out for no distillation")

    @model_validator(mode="after")
    def _teacher_named(self) -> "DistillConfig":
        """Settings that mean nothing without a teacher fail with the config, before any model is fetched."""
        if self.teacher is None and self.student is not None:
            raise ValueError("a student made from the teacher (distill.student) needs distill.teacher; name the teacher")
        if self.teacher is None and self.hidden:
            raise ValueError("hidden-state distillation (distill.hidden) needs distill.teacher; name the teacher, or set "
                             "distill.hidden to 0")
        return self
