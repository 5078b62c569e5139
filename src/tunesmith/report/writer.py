"""The run report: report.md and a self-contained report.html (plots embedded) from a run directory's files."""

from __future__ import annotations

import base64
import html
import io
import platform
from pathlib import Path

from ..data.report import source_line
from ..diagnose.findings import drift_origin, figure
from ..diagnose.rules import Finding, diagnose_run
from ..errors import UserError
from ..rundir.durable import write_atomically
from ..rundir.folder import (CONFIG_FILE, GENERATION_EVAL, METRICS_FILE, REPORT_HTML, REPORT_MD, SAMPLES_FILE,
                             SUMMARY_FILE, read_data_report, read_json_object, read_metric_rows,
                             read_sample_rows)
from ..tasks import task_view
from .benchmarks import benchmark_curves, benchmark_rows, draw_benchmarks


def _figure_png(draw) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6.4, 3.2), dpi=100)
    draw(axis)
    axis.grid(alpha=0.3)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    return buffer.getvalue()


def plots(metrics: list[dict], origin: str = "the base model") -> dict[str, bytes]:
    """Loss, perplexity and learning-rate curves as PNG bytes."""
    train = [(r["step"], r["train_loss"]) for r in metrics if "train_loss" in r and r["train_loss"] == r["train_loss"]]
    evals = [(r["step"], r["val_loss"], r.get("val_ppl")) for r in metrics if "val_loss" in r]
    lrs = [(r["step"], r["lr"]) for r in metrics if "lr" in r]

    def losses(axis):
        if train:
            axis.plot(*zip(*train), label="train loss", linewidth=1)
        if evals:
            axis.plot([s for s, _, _ in evals], [v for _, v, _ in evals], "o-", label="validation loss")
        axis.set_xlabel("step")
        axis.legend()

    def perplexity(axis):
        if evals:
            axis.plot([s for s, _, p in evals if p is not None], [p for _, _, p in evals if p is not None], "o-", color="#c44e52")
        axis.set_xlabel("step")
        axis.set_ylabel("validation perplexity")

    def learning_rate(axis):
        if lrs:
            axis.plot(*zip(*lrs), color="#55a868")
        axis.set_xlabel("step")
        axis.set_ylabel("learning rate")

    scores = [(r["step"], r["accuracy"], r["macro_f1"]) for r in metrics if "macro_f1" in r]

    def classification(axis):
        axis.plot([s for s, _, _ in scores], [a for _, a, _ in scores], "o-", label="accuracy")
        axis.plot([s for s, _, _ in scores], [f for _, _, f in scores], "s-", label="macro-F1")
        axis.set_xlabel("step")
        axis.set_ylim(0, 1)
        axis.legend()

    preference = [(r["step"], r["chosen_logp"], r["rejected_logp"], r["likelihood_accuracy"]) for r in metrics if "chosen_logp" in r]

    def log_probabilities(axis):
        axis.plot([row[0] for row in preference], [row[1] for row in preference], "o-", label="chosen")
        axis.plot([row[0] for row in preference], [row[2] for row in preference], "s-", label="rejected")
        axis.set_xlabel("step")
        axis.set_ylabel("answer log-prob (validation)")
        axis.legend()

    def preference_accuracy(axis):
        axis.plot([row[0] for row in preference], [row[3] for row in preference], "o-", color="#8172b2")
        axis.set_xlabel("step")
        axis.set_ylabel("likelihood preference accuracy")
        axis.set_ylim(0, 1)

    drift = [(r["step"], r["drift_nats"], r["val_ppl"]) for r in metrics if "drift_nats" in r and "val_ppl" in r]

    def forgetting(axis):
        axis.plot([d for _, d, _ in drift], [p for _, _, p in drift], "o-", color="#dd8452")
        for step, d, p in drift:
            axis.annotate(str(step), (d, p), textcoords="offset points", xytext=(4, 4), fontsize=7)
        axis.set_xlabel(f"drift from {origin} (nats per token; step by each point)")
        axis.set_ylabel("validation perplexity")

    rewards = [(r["step"], r["reward"]) for r in metrics if "reward" in r and r["reward"] == r["reward"]]
    held_out = [(r["step"], r["val_reward"], r.get("drift_nats")) for r in metrics if "val_reward" in r]

    def reward(axis):
        if rewards:
            axis.plot(*zip(*rewards), label="training completions", linewidth=1)
        axis.plot([s for s, _, _ in held_out], [v for _, v, _ in held_out], "o-", label="held-out prompts")
        axis.set_xlabel("step")
        axis.set_ylabel("mean reward")
        axis.legend()

    def reward_and_drift(axis):
        points = [(d, v, s) for s, v, d in held_out if d is not None]
        axis.plot([d for d, _, _ in points], [v for _, v, _ in points], "o-", color="#dd8452")
        for d, v, step in points:
            axis.annotate(str(step), (d, v), textcoords="offset points", xytext=(4, 4), fontsize=7)
        axis.set_xlabel(f"drift from {origin} (nats per token; step by each point)")
        axis.set_ylabel("held-out mean reward")

    figures = {"loss": _figure_png(losses)}
    if held_out:
        figures["reward"] = _figure_png(reward)
        if sum(d is not None for _, _, d in held_out) > 1:
            figures["reward_and_drift"] = _figure_png(reward_and_drift)
    if any(p is not None for _, _, p in evals):
        figures["perplexity"] = _figure_png(perplexity)
    figures["learning_rate"] = _figure_png(learning_rate)
    if len(drift) > 1:
        figures["forgetting"] = _figure_png(forgetting)
    if curves := benchmark_curves(metrics):
        figures["benchmarks"] = _figure_png(draw_benchmarks(curves))
    if scores:
        figures["classification"] = _figure_png(classification)
    if preference:
        figures["log_probabilities"] = _figure_png(log_probabilities)
        figures["preference_accuracy"] = _figure_png(preference_accuracy)
    return figures


def classification_tables(summary: dict) -> dict:
    """Per-class precision/recall/F1 and the confusion matrix of a classification run's best step."""
    if "per_class" not in summary:
        return {}
    labels = summary["labels"]
    per_class = [[label, *(f"{summary['per_class'][label][k]:.3f}" for k in ("precision", "recall", "f1")),
                  str(summary["per_class"][label]["support"])] for label in labels]
    confusion = [[f"true {label}", *map(str, row)] for label, row in zip(labels, summary["confusion"])]
    return {"per_class": [["label", "precision", "recall", "F1", "support"], *per_class],
            "confusion": [["", *(f"predicted {label}" for label in labels)], *confusion]}


def samples_before_after(samples: list[dict], best_step: int | None) -> list[tuple[str, str, str]]:
    if not samples:
        return []
    steps = sorted({s["step"] for s in samples})
    after_step = best_step if best_step in steps else steps[-1]
    before = {s["prompt"]: s["text"] for s in samples if s["step"] == steps[0]}
    after = {s["prompt"]: s["text"] for s in samples if s["step"] == after_step}
    return [(prompt, before[prompt], after.get(prompt, "")) for prompt in before]


def report_sections(run_dir: Path) -> dict:
    """Everything the report shows, gathered once for both formats."""
    metrics = read_metric_rows(run_dir / METRICS_FILE)  # a line torn by a killed run is left out
    if not metrics:
        raise UserError(f"{run_dir}: no metrics in metrics.jsonl (or no such file); is it a tunesmith run directory?")
    summary = read_json_object(run_dir / SUMMARY_FILE)
    data_report = read_data_report(run_dir, summary)
    base = next((r for r in metrics if r["step"] == 0 and "val_loss" in r), {})
    best = next((r for r in metrics if r["step"] == summary.get("best_step") and "val_loss" in r), base)
    view = task_view(summary.get("task"))
    task_rows = view.comparison_rows(summary)
    origin = drift_origin(summary.get("forgetting"))
    scope = view.loss_scope
    return {
        "run": run_dir.name,
        "summary": summary,
        "findings": diagnose_run(run_dir),
        "plots": plots(metrics, origin),
        "comparison": [row for row in task_rows + [
            (f"{scope}validation loss", base.get("val_loss"), best.get("val_loss")),
            (f"{scope}validation perplexity", base.get("val_ppl"), best.get("val_ppl")),
            ("next-token accuracy" if not task_rows else "label-token accuracy", base.get("val_accuracy"), best.get("val_accuracy")),
            (f"drift from {origin} (nats per token)", base.get("drift_nats"), best.get("drift_nats")),
            ("general text perplexity", base.get("general_ppl"), best.get("general_ppl"))] + benchmark_rows(summary)
            if row[1] is not None or row[2] is not None],
        "forgetting": _forgetting_line(summary.get("forgetting")),
        "distill": distill_rows(summary.get("distill")),
        "classes": classification_tables(summary),
        "samples": samples_before_after(read_sample_rows(run_dir / SAMPLES_FILE), summary.get("best_step")),
        "generation": read_json_object(run_dir / GENERATION_EVAL),
        "data": data_report,
        "config": (run_dir / CONFIG_FILE).read_text(encoding="utf-8", errors="replace") if (run_dir / CONFIG_FILE).is_file() else "",
        "platform": f"Python {platform.python_version()}, {platform.system()} {platform.machine()}",
    }


def _number(value) -> str:
    return "n/a" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)


def _finding_lines(finding: Finding) -> list[str]:
    advice = [f"set `{a.key}` to `{a.value}`: {a.why}" if a.key and a.value is not None else a.why for a in finding.advice]
    return [f"- **{finding.severity} · {finding.kind}**: {finding.message}"] + [f"  - {line}" for line in advice]


def _generation_line(generation: dict) -> str:
    return (f"{generation['prompts']:,} prompts from {generation.get('data', 'the data')}, continued greedily for up to "
            f"{generation['new_tokens']} tokens by the fine-tuned model (`tunesmith eval RUN --generate`): ROUGE-L "
            f"{generation['rouge_l']:.2f}, chrF {generation['chrf']:.2f} against the data's own text.")


def _forgetting_line(forgetting: dict | None) -> str:
    if not forgetting:
        return ""
    if "skipped" in forgetting:
        return f"Not measured: {forgetting['skipped']}."
    share = figure(forgetting.get("share_of_evaluation"))
    cost = f", {share:.0%} of the evaluation time" if share is not None else ""
    source = forgetting.get("samples_from", "the base model")
    where = "from the base on the base model's own text" if source == "the base model" else \
        f"from {source} (monitor.drift_from), on its own text" if forgetting.get("drift_from") else \
        f"from where it started, on text sampled from {source}"
    drift = figure(forgetting.get("best_drift_nats"))
    line = (f"Probe: {forgetting.get('probe', 'unrecorded')}{cost}. At the best step (step {forgetting.get('best_step', '?')}) "
            f"the model is {'an unrecorded number of' if drift is None else f'{drift:.3f}'} nats per token {where}.")
    budget = figure(forgetting.get("max_drift"))
    if budget is not None:
        line += f" The best step was held to a drift of {budget:g} (monitor.max_drift); {_over_budget(forgetting)}."
    return line


def _over_budget(forgetting: dict) -> str:
    over = forgetting.get("over_drift_steps")
    over = [step for step in over if figure(step) is not None] if isinstance(over, list) else []
    if not over:
        return "no evaluation drifted past it"
    steps = ", ".join(map(str, over)) if len(over) <= 6 else f"{over[0]}, {over[1]}, ..., {over[-1]}"
    return f"{len(over)} evaluation{'s' if len(over) > 1 else ''} drifted past it and could not be the best step (step{'s' if len(over) > 1 else ''} {steps})"


def _made_from(distill: dict) -> str:
    """How the student was made: cut from this teacher, cut from another model (trained on since), or the run's model;
    a record of another model's name has its line breaks and table bars taken out."""
    record = distill.get("student_from")
    if not record:
        return "the run's model"
    blocks = ", ".join(map(str, record["kept"]))
    source = "the teacher" if record.get("this_teacher", True) else record["teacher"]
    return f"made from {' '.join(source.replace('|', '/').split())}, blocks {blocks}"


def distill_rows(distill: dict | None) -> list[tuple[str, object, object]]:
    """A distilled run's teacher and student side by side (the student at its best step): (name, teacher, student)."""
    if not distill:
        return []
    teacher, student = distill["teacher_val"], distill["student_val"]
    rows = [("model", distill["teacher"], _made_from(distill)),
            ("parameters", distill["teacher_parameters"], distill["student_parameters"]),
            ("validation loss", teacher.get("val_loss"), student.get("val_loss")),
            ("validation perplexity", teacher.get("val_ppl"), student.get("val_ppl"))]
    rows += [(name, teacher[name], student[name]) for name in ("accuracy", "macro_f1") if name in teacher and name in student]
    return rows


def _timing(summary: dict) -> list[tuple[str, str]]:
    keys = ["device", "precision", "processes", "method", "steps", "tokens_seen", "train_seconds", "eval_seconds", "tokens_per_s",
            "stopped_because", "best_step"]
    return [(key, _number(summary.get(key))) for key in keys if key in summary]


def render_markdown(sections: dict, image_dir: Path) -> str:
    lines = [f"# tunesmith run report: {sections['run']}", "", "## Base against fine-tuned", "",
             "| metric | base | fine-tuned |", "| --- | --- | --- |"]
    lines += [f"| {name} | {_number(a)} | {_number(b)} |" for name, a, b in sections["comparison"]]
    for title, table in sections["classes"].items():
        lines += ["", f"### {'Per class' if title == 'per_class' else 'Confusion matrix'}", "",
                  "| " + " | ".join(table[0]) + " |", "|" + " --- |" * len(table[0])]
        lines += ["| " + " | ".join(row) + " |" for row in table[1:]]
    lines += ["", "## Curves", ""]
    for name, png in sections["plots"].items():
        write_atomically(image_dir / f"{name}.png", png)
        lines.append(f"![{name}]({image_dir.name}/{name}.png)")
    if sections["distill"]:
        lines += ["", "## Teacher and student", "", "| | teacher | student |", "| --- | --- | --- |"]
        lines += [f"| {name} | {_number(a)} | {_number(b)} |" for name, a, b in sections["distill"]]
    if sections["forgetting"]:
        lines += ["", "## Forgetting", "", sections["forgetting"]]
    lines += ["", "## Findings", ""]
    lines += [line for finding in sections["findings"] for line in _finding_lines(finding)] or ["No findings."]
    generation = sections["generation"]
    if generation:
        lines += ["", "## Generation against the data", "", _generation_line(generation), ""]
        lines += [f"- **{g['prompt'].strip()[-120:]}** -> {g['generated'].strip()} (data: {g['reference'].strip()})"
                  for g in generation.get("examples", [])]
    if sections["samples"]:
        lines += ["", "## Samples, before and after", ""]
        for prompt, before, after in sections["samples"]:
            lines += [f"**{prompt}**", "", f"- before: {before.strip()}", f"- after: {after.strip()}", ""]
    data = sections["data"]
    if data:
        lines += ["", "## Data", "", f"{data['documents_read']:,} documents read, {data['documents_kept']:,} kept."]
        lines += [f"- {row['removed']:,} removed as {row['step'].replace('_', ' ')}" for row in data.get("steps", [])]
        lines += [f"- {source_line(row, 'documents')}" for row in data.get("mix", [])]
        lines += [f"- warning: {w}" for w in data.get("warnings", [])]
    lines += ["", "## Hardware and timing", "", sections["platform"], ""]
    lines += [f"- {key}: {value}" for key, value in _timing(sections["summary"])]
    lines += ["", "## Config", "", "```yaml", sections["config"].rstrip(), "```", ""]
    return "\n".join(lines)


def render_html(sections: dict) -> str:
    def esc(value) -> str:
        return html.escape(str(value))

    parts = [f"<h1>tunesmith run report: {esc(sections['run'])}</h1>", "<h2>Base against fine-tuned</h2>",
             "<table><tr><th>metric</th><th>base</th><th>fine-tuned</th></tr>"]
    parts += [f"<tr><td>{esc(n)}</td><td>{_number(a)}</td><td>{_number(b)}</td></tr>" for n, a, b in sections["comparison"]]
    parts.append("</table>")
    for title, table in sections["classes"].items():
        parts.append(f"<h3>{'Per class' if title == 'per_class' else 'Confusion matrix'}</h3><table id='{title}'>")
        parts.append("<tr>" + "".join(f"<th>{esc(c)}</th>" for c in table[0]) + "</tr>")
        parts += ["<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in table[1:]]
        parts.append("</table>")
    parts.append("<h2>Curves</h2>")
    for name, png in sections["plots"].items():
        parts.append(f'<img class="plot" id="plot-{name}" alt="{name}" src="data:image/png;base64,{base64.b64encode(png).decode()}">')
    if sections["distill"]:
        parts.append("<h2>Teacher and student</h2><table id='distill'><tr><th></th><th>teacher</th><th>student</th></tr>")
        parts += [f"<tr><td>{esc(n)}</td><td>{esc(_number(a))}</td><td>{esc(_number(b))}</td></tr>" for n, a, b in sections["distill"]]
        parts.append("</table>")
    if sections["forgetting"]:
        parts.append(f"<h2>Forgetting</h2><p id='forgetting'>{esc(sections['forgetting'])}</p>")
    parts.append('<h2>Findings</h2><ul id="findings">')
    for finding in sections["findings"]:
        advice = "".join(f"<li>{esc(line)}</li>" for line in (
            f"set {a.key} to {a.value}: {a.why}" if a.key and a.value is not None else a.why for a in finding.advice))
        parts.append(f'<li class="finding {esc(finding.severity)}" data-kind="{esc(finding.kind)}"><b>{esc(finding.severity)} · '
                     f"{esc(finding.kind)}</b>: {esc(finding.message)}<ul>{advice}</ul></li>")
    parts.append("</ul>")
    generation = sections["generation"]
    if generation:
        parts.append(f"<h2>Generation against the data</h2><p id='generation'>{esc(_generation_line(generation))}</p>"
                     "<table><tr><th>prompt</th><th>generated</th><th>data</th></tr>")
        parts += [f"<tr><td>{esc(g['prompt'][-300:])}</td><td>{esc(g['generated'])}</td><td>{esc(g['reference'])}</td></tr>"
                  for g in generation.get("examples", [])]
        parts.append("</table>")
    if sections["samples"]:
        parts.append("<h2>Samples, before and after</h2><table><tr><th>prompt</th><th>before</th><th>after</th></tr>")
        parts += [f"<tr><td>{esc(p)}</td><td>{esc(b)}</td><td>{esc(a)}</td></tr>" for p, b, a in sections["samples"]]
        parts.append("</table>")
    data = sections["data"]
    if data:
        parts.append(f"<h2>Data</h2><p>{data['documents_read']:,} documents read, {data['documents_kept']:,} kept.</p><ul>")
        parts += [f"<li>{row['removed']:,} removed as {esc(row['step'].replace('_', ' '))}</li>" for row in data.get("steps", [])]
        parts += [f"<li>{esc(source_line(row, 'documents'))}</li>" for row in data.get("mix", [])]
        parts += [f"<li>warning: {esc(w)}</li>" for w in data.get("warnings", [])]
        parts.append("</ul>")
    parts.append(f"<h2>Hardware and timing</h2><p>{esc(sections['platform'])}</p><table>")
    parts += [f"<tr><td>{esc(k)}</td><td>{esc(v)}</td></tr>" for k, v in _timing(sections["summary"])]
    parts.append(f"</table><h2>Config</h2><pre>{esc(sections['config'])}</pre>")
    style = ("body{font-family:system-ui,sans-serif;max-width:960px;margin:2em auto;padding:0 1em;color:#222}"
             "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}"
             "img.plot{display:block;max-width:100%;margin:1em 0}li.warning b{color:#b35c00}li.error b{color:#c00}"
             "pre{background:#f6f6f6;padding:1em;overflow:auto}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>tunesmith report: {esc(sections['run'])}</title>"
            f"<style>{style}</style></head><body>{''.join(parts)}</body></html>")


def write_report(run_dir: Path) -> tuple[Path, Path]:
    sections = report_sections(run_dir)
    markdown = run_dir / REPORT_MD
    images = run_dir / "report_files"
    if images.is_symlink() or (images.exists() and not images.is_dir()):
        images.unlink()  # the run's own name: a link there would have the plots written wherever it leads
    images.mkdir(exist_ok=True)
    write_atomically(markdown, render_markdown(sections, images))
    page = run_dir / REPORT_HTML
    write_atomically(page, render_html(sections))
    return markdown, page
