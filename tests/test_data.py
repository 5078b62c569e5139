"""prepare: formats, cleaning, de-duplication, the leak-free split, bad input and the report, on small files made here."""

import gzip
import json
import os
from copy import deepcopy
from pathlib import Path

import numpy as np
import pytest
from transformers import AutoTokenizer

from tunesmith import load_config
from tunesmith.config import CleanConfig, DataConfig
from tunesmith.data import prepare_data
from tunesmith.data.formats import DecodeStats, check_text_file, read_records
from tunesmith.data.clean import mask_pii, normalize_text
from tunesmith.errors import UserError

from tunesmith.tasks import task_kind

from helpers import conversations, make_corpus, write_format, write_jsonl


NO_FILTERS = CleanConfig(boilerplate=False, dedup_near=False)


@pytest.fixture(scope="module")
def tokenizer(tiny_gpt2):
    return AutoTokenizer.from_pretrained(tiny_gpt2)


@pytest.fixture
def prep(tmp_path, tokenizer):
    def run(train, clean=NO_FILTERS, block_size=8, **data):
        paths = [str(p) for p in (train if isinstance(train, list) else [train])]
        return prepare_data(DataConfig(train=paths, block_size=block_size, **data), clean, tokenizer, tmp_path / "cache")

    return run


def texts_of(prepared, tokenizer):
    """All documents' texts, both splits, decoded from the token files."""
    docs = []
    for split in ("train", "val"):
        ids = np.fromfile(prepared.directory / f"{split}.bin", dtype=prepared.dtype)
        for chunk in np.split(ids, np.flatnonzero(ids == tokenizer.eos_token_id) + 1):
            if len(chunk):
                docs.append(tokenizer.decode(chunk[:-1]))
    return sorted(docs)


# -- formats ---------------------------------------------------------------------------------------

def test_every_format_in_one_mixed_folder(tmp_path, prep, tokenizer):
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = tmp_path / "mixed"
    folder.mkdir()
    (folder / "a.txt").write_text("plain one\n\nplain two")
    (folder / "b.md").write_text("# markdown doc")
    write_jsonl(folder / "c.jsonl", ["jsonl doc"])
    with gzip.open(folder / "d.jsonl.gz", "wt") as handle:
        handle.write(json.dumps({"text": "gzipped jsonl doc"}) + "\n")
    (folder / "e.json").write_text(json.dumps([{"text": "json array doc"}]))
    (folder / "f.csv").write_text('text,label\n"csv doc, quoted",1\n')
    (folder / "g.tsv").write_text("label\ttext\n1\ttsv doc\n")
    with gzip.open(folder / "h.csv.gz", "wt") as handle:
        handle.write("text\ngzipped csv doc\n")
    pq.write_table(pa.table({"text": ["parquet doc"], "n": [1]}), folder / "i.parquet")
    (folder / "j.html").write_text(
        "<html><head><title>Page</title><style>p{color:red}</style><script>var x=1;</script></head>"
        "<body><nav>Home | About</nav><p>html body &amp; text</p><footer>legal footer</footer></body></html>"
    )
    (folder / "ignored.bin").write_bytes(b"\x00\x01")
    prepared = prep(folder)
    docs = texts_of(prepared, tokenizer)
    for expected in ["plain one", "plain two", "# markdown doc", "jsonl doc", "gzipped jsonl doc", "json array doc", "csv doc, quoted",
                     "tsv doc", "gzipped csv doc", "parquet doc"]:
        assert expected in docs
    html = next(d for d in docs if "html body" in d)
    assert "html body & text" in html and "Page" in html
    assert "color" not in html and "var x" not in html and "Home" not in html and "legal footer" not in html


def test_a_parquet_file_of_latin1_text_is_read_with_replacements_and_a_damaged_page_is_named(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tunesmith.data.formats import DecodeStats, read_parquet

    latin1 = tmp_path / "latin1.parquet"
    text = pa.array([b"caf\xe9 %d" % i for i in range(3)], pa.binary()).view(pa.string())
    pq.write_table(pa.table({"text": text, "title": text.dictionary_encode(), "raw": pa.array([b"\x00"] * 3, pa.binary())}), latin1)
    stats = DecodeStats()
    rows = [record.value for record in read_parquet(latin1, stats)]
    assert [row["text"] for row in rows] == [row["title"] for row in rows] == [f"caf\ufffd {i}" for i in range(3)]
    assert rows[0]["raw"] == b"\x00" and stats.lines_with_bad_bytes == 3  # rows, not cells
    plain = tmp_path / "plain.parquet"
    pq.write_table(pa.table({"text": [f"hello world document number {i} with text" for i in range(300)]}), plain, compression="none",
                   use_dictionary=False)
    damaged = bytearray(plain.read_bytes())
    damaged[122:126] = b"\xff\xff\xff\x7f"  # a data page's length, past the footer that opens the file
    plain.write_bytes(bytes(damaged))
    with pytest.raises(UserError, match=r"plain.parquet: not a readable Parquet file, damaged or cut short"):
        list(read_parquet(plain, DecodeStats()))


def test_template_with_nested_fields(tmp_path, prep, tokenizer):
    path = tmp_path / "n.jsonl"
    path.write_text(json.dumps({"title": "Lamp", "meta": {"body": "Press twice."}}) + "\n"
                    + json.dumps({"title": "Hub", "meta": {"body": "Hold ten seconds."}}) + "\n")
    prepared = prep(path, template="{title}\\n\\n{meta.body}")
    assert texts_of(prepared, tokenizer) == ["Hub\n\nHold ten seconds.", "Lamp\n\nPress twice."]
    nested = prep(path, text_field="meta.body")
    assert texts_of(nested, tokenizer) == ["Hold ten seconds.", "Press twice."]


def test_a_field_name_with_a_dot_is_read_whole_before_as_a_path_and_values_read_as_json(tmp_path, prep, tokenizer):
    from tunesmith.data.read import lookup

    assert lookup({"a.b": 1, "a": {"b": 2}}, "a.b") == 1 and lookup({"a": {"b.c": 3}}, "a.b.c") == 3
    assert lookup({"a.b": None, "a": {"b": 2}}, "a.b") == 2
    assert lookup({"a": {"b": None}, "a.b": None}, "a.b") is None and lookup({"a": "x"}, "a.b") is None
    from datetime import date
    from decimal import Decimal

    from tunesmith.data.read import as_text

    assert [as_text(v) for v in (date(2024, 1, 2), Decimal("1.50"), b"caf\xc3\xa9", 1e-05, 3, False, {"k": [date(2024, 1, 2)]})] == [
        "2024-01-02", "1.50", "café", "1e-05", "3", "false", '{"k": ["2024-01-02"]}']
    path = tmp_path / "d.csv"
    path.write_text("text,text.1\nalpha one,beta one\nalpha two,beta two\n")  # the name a repeated blank header is given
    assert texts_of(prep(path, template="{text} {text.1}"), tokenizer) == ["alpha one beta one", "alpha two beta two"]
    rows = tmp_path / "t.jsonl"
    rows.write_text("".join(json.dumps({"title": t, "tags": ["a", "b"], "meta": {"x": 1}, "ok": True}) + "\n" for t in "LM"))
    assert texts_of(prep(rows, template="{title} {tags} {meta} {ok}"), tokenizer) == [
        'L ["a", "b"] {"x": 1} true', 'M ["a", "b"] {"x": 1} true']


def test_template_names_any_column_and_keeps_doubled_braces(tmp_path, prep, tokenizer):
    path = tmp_path / "u.csv"
    path.write_text("text,,code\nfirst row,a {code} note,x1\nsecond row,b note,x2\n")  # a blank header becomes Unnamed: 1
    prepared = prep(path, template="{text} | {Unnamed: 1} {{{code}}}")
    assert texts_of(prepared, tokenizer) == ["first row | a {code} note {x1}", "second row | b note {x2}"]  # values kept as they are
    assert texts_of(prep(path, template="  "), tokenizer) == ["first row", "second row"]  # a blank template is none
    mixed = tmp_path / "m.jsonl"
    mixed.write_text('"a plain line"\n' + "".join(json.dumps({"text": f"row {n}", "code": n}) + "\n" for n in range(3)))
    warned = prep(mixed, template="{text} {code}")
    assert "row 0 0" in texts_of(warned, tokenizer) and "a plain line" in texts_of(warned, tokenizer)
    assert any(w.startswith("data.template applies to records with fields") and w.endswith(": 1 here") for w in warned.report["warnings"])


@pytest.mark.parametrize("template, words", [("{title", "never closed"), ("{title}}", "closes no field"),
                                              ("{ti{tle}", "inside the field opened at character 1"),
                                              ("{ }", "names no field"), ("no fields", "names no field")])
def test_a_template_with_a_brace_out_of_place_is_refused_with_the_fix(template, words):
    with pytest.raises(ValueError, match=words):
        DataConfig(train=["x.txt"], template=template)


def test_text_files_split_on_blank_lines_or_per_file(tmp_path, prep):
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "a.txt").write_text("para one\n\npara two\n\n\npara three")
    (folder / "b.md").write_text("# title\n\nbody")
    assert prep(folder).meta["train"]["documents"] + prep(folder).meta["val"]["documents"] == 5
    per_file = prep(folder, txt_documents="file")
    assert per_file.meta["train"]["documents"] + per_file.meta["val"]["documents"] == 2


# -- cleaning --------------------------------------------------------------------------------------

def test_normalize_text_unicode_and_whitespace():
    assert normalize_text("Cafe\u0301  \t bar \r\n\n\n\n  next\u00a0line  ") == "Caf\u00e9 bar\n\nnext line"


def test_unicode_repair_control_characters_and_markup(tmp_path, prep, tokenizer):
    path = write_jsonl(tmp_path / "u.jsonl", ["The caf\u00c3\u00a9 opens", "bell\x07 and\x00 nul", "<b>bold</b> &amp; <i>it</i>"])
    prepared = prep(path)
    assert texts_of(prepared, tokenizer) == ["The café opens", "bell and nul", "bold & it"]
    changed = prepared.report["documents_changed"]
    assert changed["fix_unicode"] == 1 and changed["strip_control"] == 1 and changed["strip_markup"] == 1


def test_pii_masking():
    text = "Mail jo.doe+x@example.co.uk or call +44 20 7946 0958, see https://ex.com/a?b=1 from 192.168.1.20."
    assert mask_pii(text, ["email", "phone", "url", "ip"]) == "Mail <EMAIL> or call <PHONE>, see <URL> from <IP>."
    assert mask_pii(text, ["email"]).startswith("Mail <EMAIL> or call +44")


def test_boilerplate_lines_that_repeat_across_documents_are_removed(tmp_path, prep, tokenizer):
    footer = "Copyright 2026 Lumora Inc. All rights reserved."
    docs = [f"Article {i} about topic {i * 7}.\n{footer}" for i in range(40)]
    prepared = prep(write_jsonl(tmp_path / "b.jsonl", docs), clean=CleanConfig(dedup_near=False))
    assert all(footer not in d for d in texts_of(prepared, tokenizer))
    report = prepared.report
    assert report["boilerplate_lines"][0] == {"line": footer, "documents": 40}
    assert report["documents_changed"]["boilerplate_lines"] == 40
    rare = prep(write_jsonl(tmp_path / "r.jsonl", docs[:5]), clean=CleanConfig(dedup_near=False))
    assert any(footer in d for d in texts_of(rare, tokenizer)), "a line in only 5 documents is below boilerplate_min_docs"


def test_length_filters_in_characters_and_tokens(tmp_path, prep):
    docs = ["tiny", "a medium sized document here", "another document of medium size", "a third medium document", "x" * 400]
    path = write_jsonl(tmp_path / "l.jsonl", docs)
    by_chars = prep(path, clean=NO_FILTERS.model_copy(update={"min_chars": 5, "max_chars": 100}))
    assert by_chars.report["steps"][0]["step"] == "too_short_chars"
    removed = {row["step"]: row["removed"] for row in by_chars.report["steps"]}
    assert removed == {"too_short_chars": 1, "too_long_chars": 1}
    by_tokens = prep(path, clean=NO_FILTERS.model_copy(update={"min_tokens": 6, "max_tokens": 50}))
    removed = {row["step"]: row["removed"] for row in by_tokens.report["steps"]}
    assert removed == {"too_short_tokens": 1, "too_long_tokens": 1}


def test_exact_and_near_duplicates(tmp_path, prep):
    base = make_corpus(30, seed=3, words_per_doc=80)
    near = base[0].replace("Article 0.", "Article 0!")
    path = write_jsonl(tmp_path / "d.jsonl", base + [base[1], base[2], near])
    prepared = prep(path, clean=CleanConfig(boilerplate=False))
    removed = {row["step"]: row["removed"] for row in prepared.report["steps"]}
    assert removed == {"exact_duplicate": 2, "near_duplicate": 1}
    assert prepared.report["steps"][-1]["examples"][0].startswith("Article 0! ")


# -- split -----------------------------------------------------------------------------------------

def test_split_is_deterministic_and_stable_when_documents_are_added(tmp_path, prep, tokenizer):
    docs = make_corpus(200, words_per_doc=24)
    first = prep(write_jsonl(tmp_path / "a.jsonl", docs))
    val_before = set(texts_of_split(first, tokenizer, "val"))
    more = prep(write_jsonl(tmp_path / "b.jsonl", docs + make_corpus(100, seed=9, words_per_doc=24)))
    assert 8 <= len(val_before) <= 35
    assert val_before <= set(texts_of_split(more, tokenizer, "val"))
    assert set(texts_of_split(first, tokenizer, "train")) <= set(texts_of_split(more, tokenizer, "train"))


def texts_of_split(prepared, tokenizer, split):
    ids = np.fromfile(prepared.directory / f"{split}.bin", dtype=prepared.dtype)
    return [tokenizer.decode(c[:-1]) for c in np.split(ids, np.flatnonzero(ids == tokenizer.eos_token_id) + 1) if len(c)]


def test_split_keeps_at_least_one_document_each_side(tmp_path, prep):
    prepared = prep(write_jsonl(tmp_path / "two.jsonl", ["only one document", "and a second one"]), val_fraction=0.001)
    assert prepared.meta["train"]["documents"] == 1 and prepared.meta["val"]["documents"] == 1


def test_near_duplicate_clusters_stay_on_one_side(tmp_path, prep, tokenizer):
    """With near-duplicate removal off, every near-copy follows its cluster: none crosses the split."""
    originals = make_corpus(60, seed=5, words_per_doc=80)
    copies = [doc.replace("Article", "Item", 1) for doc in originals]
    path = write_jsonl(tmp_path / "c.jsonl", originals + copies)
    prepared = prep(path, clean=CleanConfig(boilerplate=False, dedup_near=False), val_fraction=0.3)
    train, val = set(texts_of_split(prepared, tokenizer, "train")), set(texts_of_split(prepared, tokenizer, "val"))
    for original, copy in zip(originals, copies):
        assert (original in val) == (copy in val) and (original in train) == (copy in train)
    leakage = prepared.report["leakage"]
    assert leakage["crossing_the_split"] == 0 and leakage["kept_with_their_cluster"] > 0


def test_user_validation_file_is_checked_for_leakage(tmp_path, prep):
    docs = make_corpus(50, seed=6, words_per_doc=80)
    train = write_jsonl(tmp_path / "train.jsonl", docs)
    val = write_jsonl(tmp_path / "val.jsonl", [docs[0], docs[1].replace("Article", "Item", 1), "a fresh validation document about lamps"])
    prepared = prep(train, val=[str(val)], clean=CleanConfig(boilerplate=False))
    assert prepared.meta["val"]["documents"] == 3 and prepared.meta["train"]["documents"] == 50
    leakage = prepared.report["leakage"]
    assert (leakage["exact_copies"], leakage["near_copies"]) == (1, 1)
    assert any("appear (nearly) in training" in w for w in prepared.report["warnings"])


# -- cache -----------------------------------------------------------------------------------------

def test_cache_hits_and_changes_with_data_tokenizer_and_settings(tmp_path, tokenizer, tiny_llama):
    path = write_jsonl(tmp_path / "d.jsonl", make_corpus(40))
    cache = tmp_path / "cache"

    def run(tok=tokenizer, block_size=16, clean=NO_FILTERS):
        return prepare_data(DataConfig(train=[str(path)], block_size=block_size), clean, tok, cache)

    first, again = run(), run()
    assert again.from_cache and again.directory == first.directory
    other_settings = run(block_size=32)
    other_clean = run(clean=CleanConfig())
    other_tokenizer = run(tok=AutoTokenizer.from_pretrained(tiny_llama))
    write_jsonl(path, make_corpus(41))
    other_data = run()
    keys = {first.directory, other_settings.directory, other_clean.directory, other_tokenizer.directory, other_data.directory}
    assert len(keys) == 5 and not other_data.from_cache


@pytest.mark.parametrize("damage", ["tokens_cut_short", "tokens_overwritten", "meta_cut_short", "offsets_missing",
                                    "classes_overwritten", "dtype_edited", "tokens_a_pipe", "folder_a_link"])
def test_a_damaged_cache_is_prepared_again(tmp_path, tokenizer, damage):
    from tunesmith.tasks.chat import ensure_chat_template

    cache = tmp_path / "cache"
    if damage in ("offsets_missing", "classes_overwritten"):  # the examples' layout: tokens, their mask and where each example ends
        chat_tokenizer = deepcopy(tokenizer)
        ensure_chat_template(chat_tokenizer)
        path = write_format("messages", tmp_path, conversations(30))
        cfg = load_config(None, [("task", "chat"), ("data.train", [str(path)]), ("data.block_size", 64)])

        def run():
            return prepare_data(cfg.data, NO_FILTERS, chat_tokenizer, cache, task=task_kind(cfg).preparer(cfg))
    else:
        path = write_jsonl(tmp_path / "d.jsonl", make_corpus(40))

        def run():
            return prepare_data(DataConfig(train=[str(path)], block_size=16), NO_FILTERS, tokenizer, cache)

    first = run()
    written = (first.directory / "train.bin").read_bytes()
    if damage == "tokens_cut_short":
        (first.directory / "train.bin").write_bytes(written[: len(written) // 2 + 1])
    elif damage == "tokens_overwritten":  # the same size, other bytes: ids past the vocabulary
        (first.directory / "train.bin").write_bytes(b"\xff" * len(written))
    elif damage == "classes_overwritten":
        classes = np.load(first.directory / "train.classes.npy")
        np.save(first.directory / "train.classes.npy", np.full_like(classes, 7))
    elif damage == "dtype_edited":  # the files as written, meta.json's record of them not
        meta = json.loads((first.directory / "meta.json").read_text())
        (first.directory / "meta.json").write_text(json.dumps({**meta, "dtype": "uint8"}))
    elif damage == "tokens_a_pipe":  # read, it would wait for a writer for good
        (first.directory / "train.bin").unlink()
        os.mkfifo(first.directory / "train.bin")
    elif damage == "folder_a_link":  # a link in the cache's place, to a damaged copy: replaced, the copy left alone
        copy = tmp_path / "elsewhere"
        first.directory.rename(copy)
        (copy / "train.bin").write_bytes(b"")
        first.directory.symlink_to(copy)
    elif damage == "meta_cut_short":
        (first.directory / "meta.json").write_text((first.directory / "meta.json").read_text()[:100])
    else:
        (first.directory / "val.offsets.npy").unlink()
    again = run()
    assert not again.from_cache and again.directory == first.directory and again.meta == first.meta
    assert not again.directory.is_symlink() and (damage != "folder_a_link" or (tmp_path / "elsewhere" / "meta.json").is_file())
    assert (again.directory / "train.bin").read_bytes() == written and run().from_cache


def test_a_cache_folder_a_killed_prepare_left_half_written_is_removed_by_the_next(tmp_path, tokenizer):
    """Only this machine's, and only once its process is gone: a cache shared over the network keeps another's."""
    import subprocess

    from tunesmith.rundir.durable import own_partial

    gone = subprocess.Popen(["true"])
    gone.wait()
    cache = tmp_path / "cache" / "data"
    ours = own_partial(cache / "0123").name
    mark = ours.rpartition("-")[0]
    left, alive = cache / f"{mark}-{gone.pid}", cache / f"{mark}-1"  # pid 1 runs
    elsewhere = cache / f"0123.partial-another-host-{gone.pid}"
    other_pids = cache / f"{mark.rpartition('.')[0]}.1234-{gone.pid}"  # this hostname, another container's pid namespace
    for folder in (left, alive, elsewhere, other_pids):
        folder.mkdir(parents=True)
        (folder / "train.bin").write_bytes(b"\0" * 64)
    path = write_jsonl(tmp_path / "d.jsonl", make_corpus(40))
    prepare_data(DataConfig(train=[str(path)], block_size=16), NO_FILTERS, tokenizer, tmp_path / "cache")
    assert not left.exists() and alive.is_dir() and elsewhere.is_dir() and other_pids.is_dir()


def test_packing_uses_uint16_and_eos_separators(tmp_path, prep, tokenizer):
    prepared = prep(write_jsonl(tmp_path / "d.jsonl", ["first doc", "second doc", "third doc"]))
    assert prepared.dtype == np.uint16
    tokens = np.concatenate([np.fromfile(prepared.directory / f"{s}.bin", dtype=np.uint16) for s in ("train", "val")])
    assert (tokens == tokenizer.eos_token_id).sum() == 3 and tokens[-1] == tokenizer.eos_token_id


def test_small_validation_split_gives_a_short_block(tmp_path, prep):
    prepared = prep(write_jsonl(tmp_path / "d.jsonl", make_corpus(30)), block_size=512)
    val = prepared.split("val")
    assert 2 <= prepared.meta["val"]["tokens"] < 512
    assert len(val) == 1 and val.num_tokens == prepared.meta["val"]["tokens"]
    assert val.batch(val.batches_by_length(4)[0]).input_ids.shape == (1, prepared.meta["val"]["tokens"])



def test_a_data_summary_prepared_before_format_4_still_reads(tmp_path, prep):
    """Runs keep their prepared data's meta (data_meta.json); an older one named its counts documents and blocks."""
    from tunesmith.data.report import summary_lines

    prepared = prep(write_jsonl(tmp_path / "d.jsonl", make_corpus(30)), block_size=64)
    old = {**prepared.meta, **{side: {"documents": prepared.meta[side]["documents"], "tokens": prepared.meta[side]["tokens"],
                                      "blocks": prepared.meta[side]["rows"]} for side in ("train", "val")}}
    assert summary_lines(prepared.report, old) == summary_lines(prepared.report, prepared.meta)

# -- bad input -------------------------------------------------------------------------------------

def test_json_nested_past_reading_is_a_malformed_row_and_nan_is_no_text(tmp_path, prep):
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": ' + "[" * 100_000 + "]" * 100_000 + '}\n{"text": NaN}\n{"text": "a document"}\n')
    with pytest.raises(UserError, match=r"d.jsonl:1: not valid JSON \(nested too deeply to read\)"):
        prep(path)
    assert [r.value for r in read_records(path, False, DecodeStats()) if hasattr(r, "value")] == [{"text": None}, {"text": "a document"}]
    whole = tmp_path / "d.json"
    whole.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(UserError, match=r"d.json: not valid JSON \(nested too deeply"):
        prep(whole)


def test_links_that_loop_are_followed_once_and_special_files_are_named(tmp_path, prep):
    """A recursive glob does not descend into linked folders (a link to a parent would match without end); a file
    reached by two names is read once; a FIFO or a device is named as what it is."""
    import os

    from tunesmith.data.read import expand_paths

    (tmp_path / "loop" / "sub").mkdir(parents=True)
    write_jsonl(tmp_path / "loop" / "d.jsonl", make_corpus(20))
    (tmp_path / "loop" / "sub" / "up").symlink_to("..", target_is_directory=True)
    (tmp_path / "loop" / "self").symlink_to(tmp_path / "loop", target_is_directory=True)
    assert expand_paths([str(tmp_path / "loop" / "**" / "*")], "data.train") == [tmp_path / "loop" / "d.jsonl"]
    assert expand_paths([str(tmp_path / "loop"), str(tmp_path / "loop" / "self" / "d.jsonl")], "data.train") == \
        [tmp_path / "loop" / "d.jsonl"]
    (tmp_path / "loop" / ".hidden").mkdir()
    write_jsonl(tmp_path / "loop" / ".hidden" / "h.jsonl", make_corpus(5))  # as glob.glob reads globs: hidden only when named
    (tmp_path / "loop" / ".DS_Store").write_text("")
    matched = {pattern: expand_paths([str(tmp_path / "loop" / pattern)], "data.train")
               for pattern in ("**", "**.jsonl", "d**", "*", "**/*.jsonl", ".hidden/*")}
    assert matched == {**dict.fromkeys(("**", "**.jsonl", "d**", "*", "**/*.jsonl"), [tmp_path / "loop" / "d.jsonl"]),
                       ".hidden/*": [tmp_path / "loop" / ".hidden" / "h.jsonl"]}
    os.mkfifo(tmp_path / "fifo.jsonl")
    for special in (tmp_path / "fifo.jsonl", "/dev/zero"):
        with pytest.raises(UserError, match="is not a regular file"):
            expand_paths([str(special)], "data.train")


def test_a_full_disk_while_writing_tokens_names_the_file():
    from tunesmith.data.tokens import write_array

    with open("/dev/full", "wb") as handle, pytest.raises(OSError) as failed:
        write_array(handle, np.zeros(1 << 20, dtype=np.uint16), Path("/cache/train.bin"))
    assert failed.value.filename == "/cache/train.bin" and failed.value.errno == 28


def test_a_special_tokens_text_in_a_document_is_text(tmp_path, prep, tokenizer):
    """`<|endoftext|>` written in a document is encoded as the characters it is: documents end where tunesmith says."""
    from tunesmith.data.pipeline import encode_batch

    text = f"one document {tokenizer.eos_token} that names the end"
    assert tokenizer.eos_token_id not in encode_batch(tokenizer, [text])[0]
    assert tokenizer.decode(encode_batch(tokenizer, [text])[0]) == text
    assert tokenizer.eos_token_id in tokenizer(text, add_special_tokens=False)["input_ids"]  # as it is read by default


def test_malformed_jsonl_names_the_line_or_is_skipped(tmp_path, prep):
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "the first line is fine"}\nnot json\n{"text": "the third line is fine too"}\n')
    with pytest.raises(UserError, match=r"d.jsonl:2: not valid JSON"):
        prep(path)
    skipped = prep(path, on_error="skip")
    assert {r["step"]: r["removed"] for r in skipped.report["steps"]} == {"malformed_row": 1}


def test_malformed_csv_and_json(tmp_path, prep):
    csv_path = tmp_path / "d.csv"
    csv_path.write_text('text,label\n"a fine row of text",1\n"too",many,fields\n"a second fine row",0\n')
    with pytest.raises(UserError, match=r"d.csv:3: 3 fields where the header has 2"):
        prep(csv_path)
    assert prep(csv_path, on_error="skip").report["documents_kept"] == 2
    csv_path.write_text('text,label\n"a row whose text\nruns over\nthree lines",1\n"too\nmany",many,fields\n')
    with pytest.raises(UserError, match=r"d.csv:5: 3 fields"):  # a row is named by the line it begins on, not the one it ends on
        prep(csv_path)
    records = list(read_records(csv_path, False, DecodeStats()))
    assert records[0].line == 2 and records[0].value["text"] == "a row whose text\nruns over\nthree lines"
    csv_path.write_text('text,label\n"a fine row",1\n\n  \n,\n"",""\n,,\n"the last row",0\n')
    assert [r.line for r in read_records(csv_path, False, DecodeStats())] == [2, 8]  # nothing in a row: not a document
    kept = list(read_records(csv_path, False, DecodeStats(), empty_rows=True))  # as predict reads it, one output row per
    assert [r.line for r in kept] == [2, 5, 6, 7, 8]  # input row, whatever its number of cells; a blank line is no row
    assert [r.value for r in kept[1:4]] == [{"text": "", "label": ""}] * 3
    assert prep(csv_path).report["documents_kept"] == 2
    single = tmp_path / "one.csv"
    single.write_text('text\r\na\r\n""\r\n\r\nb\r\n')  # csv.writer's empty cell of a one-column table
    assert [r.line for r in read_records(single, False, DecodeStats(), empty_rows=True)] == [2, 3, 5]
    json_path = tmp_path / "d.json"
    json_path.write_text('[{"text": "a"},\n {"text": "b"')
    with pytest.raises(UserError, match=r"d.json:2: not valid JSON"):
        prep(json_path)


def test_csv_that_a_spreadsheet_would_misread_is_named_with_its_fix(tmp_path, prep):
    """A repeated column name, a quote never closed and lines that end in a lone carriage return would each lose text
    without a word (the last column of a name wins; the rest of the file becomes one field; the file is one line)."""
    path = tmp_path / "d.csv"
    path.write_text('text,label,text\n"a row",1,"another"\n')
    with pytest.raises(UserError, match=r"d.csv:1: the header names 'text' more than once \(only the last"):
        prep(path)
    path.write_text('text,label,,\n"a row of text",1,note,\n')  # unnamed columns, as spreadsheets save them, are kept apart
    assert [r.value for r in read_records(path, False, DecodeStats())] == [
        {"text": "a row of text", "label": "1", "Unnamed: 2": "note", "Unnamed: 3": ""}]
    path.write_text(',Unnamed: 0,text\n0,0,"a row of text"\n')  # pandas' index column, saved twice
    assert list(read_records(path, False, DecodeStats()))[0].value == {"Unnamed: 0.1": "0", "Unnamed: 0": "0", "text": "a row of text"}
    path.write_text('text,label\n"a fine row of text",1\n"a quote never closed,0\na row it would swallow,1\n')
    with pytest.raises(UserError, match=r"d.csv:3: malformed row \(a quote opened in it is never closed"):
        prep(path)
    path.write_text('text,label\n"a quote never closed,0\n"a row of text",1\n"the last row of text",1\n')
    with pytest.raises(UserError, match=r"d.csv:2: malformed row \(text follows the quote .* a quote left open on an earlier line"):
        prep(path)
    path.write_text('text,label\n"a fine row of text",1\n"quoted" then not,0\n"the last row of text",1\n')
    with pytest.raises(UserError, match=r"d.csv:3: malformed row \(text follows the quote that closes a quoted cell: in CSV a cell that"):
        prep(path)
    assert prep(path, on_error="skip").report["documents_kept"] == 2
    for lines in (b'text,label\r"a fine row of text",1\r"another row of text",0\r',
                  b'text,label\r"a cell with a line\nbreak",1\r"another row of text",0\r'):  # Excel for Mac's rows
        path.write_bytes(lines)
        with pytest.raises(UserError, match=r"d.csv:1: cannot read the header row \(a carriage return alone .*line endings"):
            prep(path)
    path.write_bytes(b'text,label\r\n"a fine row of text",1\r\n"a row\rwith a stray return in it",0\r\n'
                     + b'"paragraphs\rin\rone\rcell\rof\ra\rfile\rof\rlines",0\n')  # returns inside quotes are text
    assert len(list(read_records(path, False, DecodeStats()))) == 3
    path.write_text('label, text\n1, "hello, there"\n0,  bye now\n')  # hand-typed: a space after each comma
    assert [r.value for r in read_records(path, False, DecodeStats())] == [{"label": "1", "text": "hello, there"},
                                                                          {"label": "0", "text": "bye now"}]
    path.write_text('"name, full",text\n"Ann Lee",  an indented quote\n')  # a machine-written header, its cells as they are
    assert list(read_records(path, False, DecodeStats()))[0].value["text"] == "  an indented quote"
    tsv = tmp_path / "d.tsv"
    tsv.write_text('label\ttext\n1\t    indented code\n')  # a tab-separated cell keeps its leading spaces
    assert list(read_records(tsv, False, DecodeStats()))[0].value["text"] == "    indented code"
    text = tmp_path / "d.txt"
    text.write_bytes(b"one document of text\r\rand another one\r")
    with pytest.raises(UserError, match=r"d.txt: its lines end with a carriage return alone"):
        prep(text)
    check_text_file(text, whole=True)  # one document per file: its line endings do not matter
    text.write_bytes(b"\x00\x01\r\x02\r\x03" * 100)
    with pytest.raises(UserError, match=r"d.txt: looks like a binary file"):
        check_text_file(text)
    path.write_bytes(b'text,label\r"a fine row of text",1\r' * 20)
    with pytest.raises(UserError, match=r"d.csv:1: the header row is too long to read; check the file's line endings"):
        list(read_records(path, False, DecodeStats(), max_bytes=100))
    whole = tmp_path / "d.json"
    whole.write_bytes(b'[{"text": "a record"},\r{"text": "another"}]\r')  # read whole: its line endings do not matter
    check_text_file(whole)
    assert len(list(read_records(whole, False, DecodeStats()))) == 2
    path.write_text('"name, full",text\n"Ann Lee",  an indented quote\n')  # a machine-written header, its cells as they are
    assert list(read_records(path, False, DecodeStats()))[0].value["text"] == "  an indented quote"
    tsv = tmp_path / "d.tsv"
    tsv.write_text('text\tlabel\n"Hello," she said.\t1\n"a fine row of text"\t0\n')
    with pytest.raises(UserError, match=r"d.tsv:2: malformed row \(text follows .*: in TSV a cell that begins with a quote"):
        prep(tsv)
    tsv.write_text('text\tlabel\n"""Hello,"" she said."\t1\n"a fine row of text"\t0\n')
    assert [r.value["text"] for r in read_records(tsv, False, DecodeStats())] == ['"Hello," she said.', "a fine row of text"]


def test_a_byte_order_mark_is_not_part_of_the_first_field(tmp_path):
    """Excel's "CSV UTF-8" and Notepad start the file with a BOM; the header's first name is still `text`."""
    from tunesmith.data.formats import DecodeStats, read_records
    for name, content in (("d.csv", 'text,label\n"a row",1\n'), ("d.jsonl", '{"text": "a row", "label": 1}\n')):
        path = tmp_path / name
        path.write_bytes(b"\xef\xbb\xbf" + content.encode())
        (record,) = read_records(path, False, DecodeStats())
        assert record.value == {"text": "a row", "label": "1" if name.endswith(".csv") else 1}
    path = tmp_path / "d.txt"
    path.write_bytes(b"\xef\xbb\xbfa line of text\n")
    assert [r.value for r in read_records(path, False, DecodeStats())] == ["a line of text\n"]


def test_invalid_utf8_is_replaced_and_counted(tmp_path, prep):
    path = tmp_path / "latin.txt"
    path.write_bytes("caf\u00e9 ok\n\n".encode() + b"na\xefve bytes\n")
    prepared = prep(path)
    assert prepared.report["lines_with_invalid_utf8"] == 1
    assert any("not valid UTF-8" in w for w in prepared.report["warnings"])


def test_binary_file_is_refused_by_name(tmp_path, prep):
    path = tmp_path / "image.txt"
    path.write_bytes(bytes(range(256)) * 40)
    with pytest.raises(UserError, match="image.txt: looks like a binary file"):
        prep(path)


def test_missing_field_lists_the_fields_that_exist(tmp_path, prep):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"body": "x", "title": "y"}) + "\n")
    with pytest.raises(UserError, match=r"no record has the field text \(fields found: body, title\)"):
        prep(path)


def test_empty_result_names_the_step_that_removed_everything(tmp_path, prep):
    path = write_jsonl(tmp_path / "d.jsonl", ["short", "tiny"])
    with pytest.raises(UserError, match="removed as too short chars"):
        prep(path, clean=NO_FILTERS.model_copy(update={"min_chars": 50}))


def test_empty_and_missing_files(tmp_path, prep):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(UserError, match=r"holds no documents \(.*empty.jsonl has none\); give files with text"):
        prep(empty)
    many = [tmp_path / f"e{i}.txt" for i in range(5)]
    for path in many:
        path.write_text("")
    with pytest.raises(UserError, match=r"e0.txt, .*e1.txt, .*e2.txt and 2 more have none\)"):
        prep(many)
    blank = {"blank.txt": "\n  \n\t\n", "header.csv": "text,label\n", "blank.jsonl": "\n\n", "blank.csv": "\n\n  \n",
             "spaces.tsv": " \n\t\n"}
    for name, content in blank.items():
        (tmp_path / name).write_text(content)
    with pytest.raises(UserError, match=r"blank.txt, .*header.csv, .*blank.jsonl and 2 more have none\)"):
        prep([tmp_path / name for name in blank])
    with pytest.raises(UserError, match=r"no validation documents in data.val \(.*header.csv: empty"):
        prep(write_jsonl(tmp_path / "d.jsonl", make_corpus(20)), val=[str(tmp_path / "header.csv")])
    (tmp_path / "late.csv").write_text('\n \ntext,label\n"a row of text after blank lines",1\n\n')
    from tunesmith.data.formats import DecodeStats, read_records
    assert [r.value for r in read_records(tmp_path / "late.csv", False, DecodeStats())] == [
        {"text": "a row of text after blank lines", "label": "1"}]
    (tmp_path / "wide.csv").write_text("text," + "x" * 100 + "\na,b\n")  # a header past the byte limit
    with pytest.raises(UserError, match="wide.csv:1: the header row is too long"):
        list(read_records(tmp_path / "wide.csv", False, DecodeStats(), max_bytes=50))
    with pytest.raises(UserError, match="no file matches"):
        prep(tmp_path / "absent.jsonl")


def test_a_100mb_line_is_dropped_with_a_reason_not_a_crash(tmp_path, prep):
    path = tmp_path / "huge.txt"
    with path.open("w") as handle:
        handle.write("a small first document\n\nand a second small one\n\n")
        handle.write("word " * 20_000_000 + "\n")
    prepared = prep(path, clean=CleanConfig(boilerplate=False, dedup_near=False))
    removed = {r["step"]: r["removed"] for r in prepared.report["steps"]}
    assert removed == {"too_long_chars": 1}


def test_too_little_training_data_is_a_clear_error(tmp_path, prep):
    with pytest.raises(UserError, match="fewer than one block") as caught:
        prep(write_jsonl(tmp_path / "d.jsonl", ["tiny", "text"]), block_size=64)
    assert caught.value.lines()[0].endswith("; add more text")  # no block size would do: 8 is the least
    with pytest.raises(UserError, match=r"add more text or lower data.block_size to at most \d+$"):
        prep(write_jsonl(tmp_path / "e.jsonl", make_corpus(12, words_per_doc=3)), block_size=100_000)


# -- report ----------------------------------------------------------------------------------------

def test_report_json_histogram_and_summary(tmp_path, prep):
    docs = make_corpus(80, words_per_doc=40)
    prepared = prep(write_jsonl(tmp_path / "d.jsonl", docs + docs[:5]), clean=CleanConfig(boilerplate=False))
    report = json.loads((prepared.directory / "data_report.json").read_text())
    assert report["documents_read"] == 85 and report["steps"][0]["step"] == "exact_duplicate"
    assert report["steps"][0]["examples"] and report["document_tokens"]["histogram"]["counts"]
    assert (prepared.directory / "doc_lengths.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    lines = prepared.summary_lines()
    assert lines[0] == "documents: 85 read, 80 kept, 5 dropped" and "5 exact duplicate" in lines[1]
    assert any(line.startswith("leakage check: no near-duplicate crosses the split") for line in lines)


def test_small_data_warns_with_numbers(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "d.jsonl", make_corpus(40))
    prepared = prepare_data(DataConfig(train=[str(path)], block_size=16), NO_FILTERS, tokenizer, tmp_path / "c", model_params=135_000_000)
    warning = next(w for w in prepared.report["warnings"] if "memorize" in w)
    assert f"train has {prepared.meta['train']['tokens']:,} tokens; a 135M-parameter model" in warning


def test_a_conversation_with_an_unknown_speaker_is_one_malformed_row_with_on_error_skip(tiny_llama, tmp_path):
    from tunesmith.api import prepare
    from tunesmith.config import load_config

    rows = [{"messages": [{"role": "user", "content": f"question {i} about the lamp"},
                          {"role": "assistant", "content": f"answer {i}: press the button twice"}]} for i in range(20)]
    rows.append({"messages": [{"role": "narrator", "content": "once upon a time"}, {"role": "assistant", "content": "the end"}]})
    path = tmp_path / "chats.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    settings = [("task", "chat"), ("model.name", str(tiny_llama)), ("data.train", str(path)), ("data.block_size", 128)]
    skipped = prepare(load_config(None, settings + [("data.on_error", "skip")]))
    report = json.loads((skipped.directory / "data_report.json").read_text())
    assert {r["step"]: r["removed"] for r in report["steps"]}["malformed_row"] == 1
    with pytest.raises(UserError, match="chats.jsonl:21: speaker 'narrator' has no role; map it with chat.roles.*data.on_error=skip"):
        prepare(load_config(None, settings))
