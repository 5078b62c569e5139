"""Generated text scored against references: ROUGE-L with `rouge-score` (Google's implementation, F1, Porter
stemming) and chrF with `sacrebleu` (character n-grams, so it also scores words the stemmer does not know).
Both are on a 0-100 scale."""

from __future__ import annotations


def _rouge():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def sentence_scores(hypotheses: list[str], references: list[str]) -> list[dict]:
    """ROUGE-L F1 and chrF of each hypothesis against its reference."""
    from sacrebleu.metrics import CHRF

    rouge, chrf = _rouge(), CHRF()
    return [{"rouge_l": round(100 * rouge.score(ref, hyp)["rougeL"].fmeasure, 2), "chrf": round(chrf.sentence_score(hyp, [ref]).score, 2)}
            for hyp, ref in zip(hypotheses, references)]


def corpus_scores(hypotheses: list[str], references: list[str]) -> dict:
    """Mean ROUGE-L F1 over the pairs, and corpus chrF (statistics summed over all pairs, as sacrebleu reports it)."""
    from sacrebleu.metrics import CHRF

    if not hypotheses:
        return {}
    rouge = _rouge()
    rouge_l = sum(rouge.score(ref, hyp)["rougeL"].fmeasure for hyp, ref in zip(hypotheses, references)) / len(hypotheses)
    return {"rouge_l": round(100 * rouge_l, 2), "chrf": round(CHRF().corpus_score(hypotheses, [references]).score, 2),
            "scored": len(hypotheses)}
