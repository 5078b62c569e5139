from pathlib import Path

import pytest

from tunesmith.cli import main
from tunesmith.config import RunConfig, load_config, parse_override
from tunesmith.config.reference import reference_markdown, starter_yaml
from tunesmith.tasks import task_summaries
from tunesmith.errors import ConfigError

from helpers import BILLION_LAUGHS, make_corpus, write_jsonl


def test_starter_config_loads_to_the_defaults(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(starter_yaml(task_summaries()))
    assert load_config(path) == RunConfig()


def test_flags_override_the_file_and_set_reads_yaml_values(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("train:\n  lr: 0.001\n  epochs: 2\n")
    cfg = load_config(path, [("train.lr", 0.01), parse_override("train.grad_accum=4"), parse_override("train.max_steps=null")])
    assert cfg.train.lr == 0.01 and cfg.train.epochs == 2 and cfg.train.grad_accum == 4 and cfg.train.max_steps is None


def test_set_reaches_nested_keys_and_keeps_the_file_s_other_keys(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("distill:\n  teacher: runs/t\n  student:\n    from_teacher:\n      keep_layers: 10\n")
    cfg = load_config(path, [parse_override("distill.student.from_teacher.pick=bottom"), parse_override("chat.roles.Agent=assistant")])
    assert cfg.distill.student.from_teacher.keep_layers == 10 and cfg.distill.student.from_teacher.pick == "bottom"
    assert cfg.chat.roles == {"Agent": "assistant"}
    made = load_config(None, [parse_override("distill.teacher=runs/t"), parse_override("distill.student.from_teacher.keep_layers=4")])
    assert made.distill.student.from_teacher.keep_layers == 4
    with pytest.raises(ConfigError, match="distill.teacher: must be a mapping of keys to set distill.teacher.x"):
        load_config(path, [parse_override("distill.teacher.x=1")])
    aliased = tmp_path / "aliased.yaml"
    aliased.write_text("chat:\n  roles: &r {Customer: user}\n  fields: *r\n")
    cfg = load_config(aliased, [parse_override("chat.roles.Agent=assistant")])
    assert cfg.chat.roles == {"Customer": "user", "Agent": "assistant"} and cfg.chat.fields == {"Customer": "user"}
    for key in ("train..lr", "train.lr.", ".lr"):
        with pytest.raises(ConfigError, match=f"{key}: a part of the key is empty"):
            load_config(None, [parse_override(f"{key}=1")])


def test_set_reads_a_setting_that_is_only_text_as_typed(capsys):
    assert parse_override("data.template={title}: {body}") == ("data.template", "{title}: {body}")  # not a YAML mapping
    assert parse_override("model.name=[x]") == ("model.name", "[x]")
    assert parse_override("data.text_field=2020") == ("data.text_field", "2020")  # a column named by a year
    assert parse_override("data.template=null") == ("data.template", None)
    assert parse_override("chat.system_prompt=Be brief # no lists") == ("chat.system_prompt", "Be brief # no lists")
    assert parse_override("chat.system_prompt=#1 rule: be brief") == ("chat.system_prompt", "#1 rule: be brief")
    assert parse_override('data.template="{a}: {b}"') == ("data.template", "{a}: {b}")  # quoted as YAML, as before
    assert parse_override("data.train=[a.txt, b.txt]") == ("data.train", ["a.txt", "b.txt"])  # a list is allowed there
    assert parse_override("chat.roles={Agent: assistant}") == ("chat.roles", {"Agent": "assistant"})
    assert main(["prepare", "--data", "x.jsonl", "--set", "data.template={title"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: data.template: the '{' at character 1 is never closed; write '{{'")


def test_every_problem_is_reported_with_its_key():
    with pytest.raises(ConfigError) as err:
        load_config(None, [("train.lr", -1), ("train.nope", 1), ("data.block_size", "big"), ("train.precision", "fp8")])
    problems = err.value.lines()
    assert len(problems) == 4
    assert any(p.startswith("train.lr:") and "greater than 0" in p for p in problems)
    assert any(p.startswith("train.nope: unknown key") and "grad_accum" in p for p in problems)
    assert any(p.startswith("data.block_size:") for p in problems)
    assert any(p.startswith("train.precision:") and "'bf16'" in p for p in problems)


def test_a_yaml_tag_that_builds_python_objects_is_named_and_init_dash_writes_to_stdout(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text('model: !!python/object/apply:os.system ["echo hi"]\n')
    with pytest.raises(ConfigError, match="a YAML tag at line 1 that builds something other than plain values"):
        load_config(path)
    capsys.readouterr()
    assert main(["init", "-"]) == 0
    assert "train:" in capsys.readouterr().out and not (Path.cwd() / "-").exists()
    with pytest.raises(ConfigError, match=r"train.betas.1: must be less than 1"):
        load_config(None, [("train.betas", [0.9, 1.5])])
    with pytest.raises(ConfigError, match=r"train.warmup_steps: a number is needed, not true or false"):
        load_config(None, [("train.warmup_steps", True)])  # pydantic alone would take it as 1
    assert load_config(None, [("monitor.tensorboard", True)]).monitor.tensorboard is True


def test_cli_config_errors_exit_2_with_one_line_each(tmp_path, capsys):
    code = main(["train", "--data", "x.jsonl", "--lr", "-1", "--set", "train.bogus=1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err == [
        "error: train.lr: must be greater than 0 (got -1.0)",
        err[1],
    ] and err[1].startswith("error: train.bogus: unknown key")


def test_bad_yaml_and_missing_file_are_user_errors(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    assert main(["prepare", str(bad)]) == 2
    assert main(["prepare", str(tmp_path / "missing.yaml")]) == 2
    err = capsys.readouterr().err
    assert "not valid YAML" in err and "not found" in err and "Traceback" not in err
    for tagged in ("train:\n  lr: !!float abc\n", "train:\n  lr: !!timestamp notadate\n", "train:\n  lr: !!bool maybe\n",
                   "train:\n  lr: !!int ''\n"):  # a tag YAML cannot build
        bad.write_text(tagged)
        assert main(["prepare", str(bad)]) == 2
        assert "a value is not what its YAML tag says" in capsys.readouterr().err
    assert main(["prepare", "--set", "train.lr=!!float abc"]) == 2  # read as the text itself, which train.lr refuses
    assert "train.lr" in capsys.readouterr().err
    bad.write_text(BILLION_LAUGHS)
    assert main(["prepare", str(bad)]) == 2
    assert "its YAML aliases (*name) expand to more than 100,000 values, or it nests deeper" in capsys.readouterr().err


def test_init_writes_a_commented_starter(tmp_path, capsys):
    target = tmp_path / "t.yaml"
    assert main(["init", str(target)]) == 0
    text = target.read_text()
    assert "# peak learning rate of AdamW" in text and "block_size: 256" in text
    assert main(["init", str(target)]) == 2  # refuses to overwrite
    elsewhere = tmp_path / "elsewhere.yaml"
    (tmp_path / "linked.yaml").symlink_to(elsewhere)  # a link that leads nowhere yet is a name taken too
    assert main(["init", str(tmp_path / "linked.yaml")]) == 2 and not elsewhere.exists()
    assert main(["init", str(tmp_path / "linked.yaml"), "--force"]) == 0  # the link is replaced, not written through
    assert not elsewhere.exists() and not (tmp_path / "linked.yaml").is_symlink()


def test_docs_document_every_config_key():
    page = (Path(__file__).parents[1] / "docs" / "configuration.md").read_text()
    assert reference_markdown(task_summaries()) in page, "docs/configuration.md's config table is stale: run `python scripts/sync_config_reference.py`"


@pytest.mark.parametrize("weights, problem", [
    ((".inf", "1"), "data.train.0.weight: must be a finite number"),
    ((".nan", "1"), "data.train.0.weight: must be a finite number"),
    (("1e308", "1e308"), "data.train: the weights add up past the largest number; give shares such as 0.8 and 0.2"),
])
def test_weights_that_are_not_finite_or_overflow_are_refused_in_one_line(weights, problem, tmp_path, capsys):

    sources = [write_jsonl(tmp_path / f"{name}.jsonl", make_corpus(30, seed=seed)) for seed, name in enumerate("ab")]
    path = tmp_path / "run.yaml"
    path.write_text("data:\n  train:\n" + "".join(f"    - {{path: {s}, weight: {w}}}\n" for s, w in zip(sources, weights)))
    assert main(["prepare", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {problem}")


def test_a_task_the_registry_does_not_hold_is_refused_in_one_line_with_the_names(tmp_path, capsys):
    from tunesmith.cli import main

    assert main(["train", "--task", "sentiment", "--data", str(tmp_path / "notes.txt"), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "task: 'sentiment' is not a task tunesmith has; use one of lm, chat, classify, preference" in err
    assert not (tmp_path / "run").exists()
