"""lm-eval's HFLM, with the model's head applied only where a continuation is scored.

lm-eval computes the head and a log-softmax over the whole vocabulary at every position of every request; on a 49k
vocabulary that is a third of a LAMBADA pass on a CPU, spent on context positions whose logits are thrown away. This loop
keeps lm-eval's order, batching, truncation and one-token cache, and asks the model (`logits_to_keep`) for the tail of
each batch that holds a continuation. Imported only when a benchmark runs: it imports lm_eval.
"""

from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F
from lm_eval.models.huggingface import HFLM
from lm_eval.models.utils import Collator
from lm_eval.models.utils_hf import pad_and_concat
from tqdm import tqdm

from ..errors import UserError
from ..models import token_reach


def keeps_logits(model: torch.nn.Module) -> bool:
    """Whether the model's forward takes `logits_to_keep` (every causal LM of transformers does; remote code may not)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "logits_to_keep" in inspect.signature(type(base).forward).parameters


def _longest_first(request) -> tuple:
    tokens = request[1] + request[2]
    return -len(tokens), tuple(tokens)


def _shared_context(request) -> list[int]:
    return request[-2] + request[-1][:-1]


class ContinuationLM(HFLM):
    """HFLM whose log-likelihoods are computed from the continuation's positions only; the same figures as HFLM's."""

    def _encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """lm-eval keeps a context's last tokens only; one longer than the model's context can spell is cut from the left
        before it is tokenized (`token_reach`): its last tokens stay the same, and a context of megabytes costs what one
        of the model's context does."""
        reach = token_reach(self.tokenizer, self.max_length)
        return super()._encode_pair(context[-reach:] if len(context) > reach else context, continuation)

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, override_bs: int | None = None):
        for _, _, continuation in requests:  # lm-eval would stop on an assert: the task file is the user's to fix
            if not continuation:
                raise UserError("a benchmark item has an empty target (nothing to score after its context); check the task's "
                                "doc_to_target and its data")
            if len(continuation) > self.max_length:
                raise UserError(f"a benchmark item's target is {len(continuation)} tokens, longer than the model's {self.max_length}-token "
                                "context: it cannot be scored; shorten the task's targets or leave the task out")
        if self.backend != "causal" or self.batch_size == "auto" or not keeps_logits(self.model):
            return super()._loglikelihood_tokens(requests, disable_tqdm, override_bs)
        ordered = Collator(requests, sort_fn=_longest_first, group_by="contexts" if self.logits_cache else None,
                           group_fn=_shared_context)
        results = []
        progress = tqdm(total=len(requests), disable=disable_tqdm or self.rank != 0, desc="Running loglikelihood requests")
        for chunk in ordered.get_batched(n=self.batch_size):
            for (request_str, context, _), logprobs, continuation in self._scored_chunk(chunk):
                greedy = logprobs.argmax(dim=-1)
                for key, cont, cont_logprobs in ordered.get_cache(req_str=request_str, cxt_toks=context, cont_toks=continuation,
                                                                  logits=logprobs):
                    cont = torch.tensor(cont, dtype=torch.long, device=self.device).unsqueeze(0)
                    exact = bool((greedy[:, -cont.shape[1]:] == cont).all())
                    answer = (float(torch.gather(cont_logprobs, 2, cont.unsqueeze(-1)).sum()), exact)
                    results.append(answer)
                    if key is not None:
                        self.cache_hook.add_partial("loglikelihood", key, answer)
                    progress.update(1)
        progress.close()
        return ordered.get_original(results)

    def _scored_chunk(self, chunk):
        """Each request with the log-probabilities at its continuation's positions ([1, continuation, vocab])."""
        inputs, spans = [], []
        for _, context, continuation in chunk:
            whole = (context + continuation)[-(self.max_length + 1):][:-1]  # too long: truncated from the left, as HFLM does
            inputs.append(torch.tensor(whole, dtype=torch.long, device=self.device))
            spans.append((len(whole) - len(continuation), len(whole)))
        width = max(end for _, end in spans)
        keep = width - min(start for start, _ in spans)
        with torch.no_grad(), torch.autocast(device_type=self.device.type, dtype=self.mixed_precision_dtype,
                                             enabled=self.mixed_precision_dtype is not None):
            logits = self.model(pad_and_concat(width, inputs, padding_side="right"), logits_to_keep=keep).logits
        offset = width - keep
        for request, row, (start, end) in zip(chunk, logits, spans, strict=True):
            scored = F.log_softmax(row[start - offset:end - offset], dim=-1, dtype=self.softmax_dtype)
            yield request, scored.unsqueeze(0), request[2]
