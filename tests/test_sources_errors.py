"""Source errors name the exact place: the line of an invalid UTF-8 byte, the malformed record of a local JSONL."""
import json

import pytest

from negint_ds.data.sources import CorpusError, HFDatasetSource, TextFileSource


def test_invalid_utf8_names_the_exact_line_and_byte(tmp_path):
    lines = [f"line {i:03d} " + "x" * 90 for i in range(1, 201)]  # ~20 kB: past a text-mode decoder's first chunk
    data = "\n".join(lines).encode()
    bad = data.index(b"line 101 ") + 9
    (tmp_path / "c.txt").write_bytes(data[:bad] + b"\xff" + data[bad + 1:])
    with pytest.raises(CorpusError, match=rf"c\.txt: not valid UTF-8 on line 101 \(byte offset {bad} in the file"):
        list(TextFileSource(str(tmp_path / "c.txt")).documents())


def test_malformed_local_jsonl_names_file_and_line_not_the_network(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    rows = [json.dumps({"text": f"sentence {i}"}) for i in range(10)]
    rows[3] = '{"text": "broken", oops}'
    (tmp_path / "bad.jsonl").write_text("\n".join(rows) + "\n", encoding="utf-8")
    with pytest.raises(CorpusError) as e:
        list(HFDatasetSource("json", data_files=[str(tmp_path / "bad.jsonl")]).documents())
    msg = str(e.value)
    assert msg.startswith(f"{tmp_path / 'bad.jsonl'} is malformed JSON (line 4, column")
    assert "not with the network" in msg and "Without a network" not in msg
