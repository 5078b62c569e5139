import json

import numpy as np
import pytest
from transformers import AutoTokenizer

from tunesmith.config import DataConfig
from tunesmith.data import prepare_data
from tunesmith.data.clean import normalize_text
from tunesmith.data.split import split_documents
from tunesmith.errors import UserError

from conftest import make_corpus, write_jsonl


@pytest.fixture(scope="module")
def tokenizer(tiny_gpt2):
    return AutoTokenizer.from_pretrained(tiny_gpt2)


def test_normalize_text_unicode_and_whitespace():
    assert normalize_text("Cafe\u0301  \t bar \r\n\n\n\n  next\u00a0line  ") == "Caf\u00e9 bar\n\nnext line"


def test_split_is_deterministic_and_stable_when_documents_are_added():
    docs = make_corpus(300)
    train, val = split_documents(docs, 0.1)
    assert 15 <= len(val) <= 50 and len(train) + len(val) == 300
    more_train, more_val = split_documents(docs + make_corpus(100, seed=9), 0.1)
    assert set(val) <= set(more_val) and set(train) <= set(more_train)


def test_split_keeps_at_least_one_document_each_side():
    train, val = split_documents(["only one", "and two"], 0.01)
    assert len(train) == 1 and len(val) == 1


def test_prepare_counts_drops_and_packs_with_eos(tmp_path, tokenizer):
    docs = ["first doc", "first doc", "   ", "second doc"]
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs) + json.dumps({"other": "x"}) + "\n")
    prepared = prepare_data(DataConfig(train=[str(path)], block_size=8), tokenizer, tmp_path / "cache")
    counts = prepared.meta["documents"]
    assert (counts["read"], counts["kept"], counts["dropped_duplicate"], counts["dropped_empty"], counts["dropped_missing_field"]) == (5, 2, 1, 1, 1)
    assert prepared.dtype == np.uint16
    tokens = np.concatenate([np.fromfile(prepared.directory / f"{s}.bin", dtype=np.uint16) for s in ("train", "val")])
    assert (tokens == tokenizer.eos_token_id).sum() == 2
    assert prepared.meta["train"]["tokens"] + prepared.meta["val"]["tokens"] == len(tokens)


def test_text_files_split_on_blank_lines_or_per_file(tmp_path, tokenizer):
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "a.txt").write_text("para one\n\npara two\n\n\npara three")
    (folder / "b.md").write_text("# title\n\nbody")
    by_para = prepare_data(DataConfig(train=[str(folder)], block_size=8), tokenizer, tmp_path / "c")
    by_file = prepare_data(DataConfig(train=[str(folder)], block_size=8, txt_documents="file"), tokenizer, tmp_path / "c")
    assert by_para.meta["documents"]["kept"] == 5 and by_file.meta["documents"]["kept"] == 2


def test_csv_column_and_glob(tmp_path, tokenizer):
    (tmp_path / "a.csv").write_text('id,review\n1,"great lamp, works"\n2,bad battery\n3,"multi\nline"\n')
    prepared = prepare_data(DataConfig(train=[str(tmp_path / "*.csv")], text_field="review", block_size=8), tokenizer, tmp_path / "c")
    assert prepared.meta["documents"]["kept"] == 3
    with pytest.raises(UserError, match="no column 'text'"):
        prepare_data(DataConfig(train=[str(tmp_path / "a.csv")], block_size=8), tokenizer, tmp_path / "c")


def test_cache_hits_and_changes_with_data_tokenizer_and_settings(tmp_path, tokenizer, tiny_llama):
    path = write_jsonl(tmp_path / "d.jsonl", make_corpus(40))
    cache = tmp_path / "cache"
    first = prepare_data(DataConfig(train=[str(path)], block_size=16), tokenizer, cache)
    again = prepare_data(DataConfig(train=[str(path)], block_size=16), tokenizer, cache)
    assert again.from_cache and again.directory == first.directory
    other_settings = prepare_data(DataConfig(train=[str(path)], block_size=32), tokenizer, cache)
    other_tokenizer = prepare_data(DataConfig(train=[str(path)], block_size=16), AutoTokenizer.from_pretrained(tiny_llama), cache)
    write_jsonl(path, make_corpus(41))
    other_data = prepare_data(DataConfig(train=[str(path)], block_size=16), tokenizer, cache)
    keys = {first.directory, other_settings.directory, other_tokenizer.directory, other_data.directory}
    assert len(keys) == 4 and not other_data.from_cache


def test_small_validation_split_gives_a_short_block(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "d.jsonl", make_corpus(30))
    prepared = prepare_data(DataConfig(train=[str(path)], block_size=512), tokenizer, tmp_path / "c")
    val = prepared.blocks("val")
    assert 2 <= prepared.meta["val"]["tokens"] < 512
    assert len(val) == 1 and val.num_tokens == prepared.meta["val"]["tokens"]
    assert val.batch(val.batches_by_length(4)[0]).shape == (1, prepared.meta["val"]["tokens"])


def test_too_little_training_data_is_a_clear_error(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "d.jsonl", ["tiny", "text"])
    with pytest.raises(UserError, match="fewer than one block"):
        prepare_data(DataConfig(train=[str(path)], block_size=64), tokenizer, tmp_path / "c")


def test_bad_jsonl_names_the_line(tmp_path, tokenizer):
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "ok"}\nnot json\n')
    with pytest.raises(UserError, match=r"d.jsonl:2: not valid JSON"):
        prepare_data(DataConfig(train=[str(path)], block_size=8), tokenizer, tmp_path / "c")
