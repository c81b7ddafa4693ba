"""The append-only JSONL journal (mitigation/campaign/journal.py): a cut last line is tolerated and
cut off, a corrupt line anywhere else is refused naming the file and the line."""
from __future__ import annotations

import os
import re

import pytest

from mitigation.campaign import journal as journal_module
from mitigation.campaign.journal import Journal, encode, read_entries


def write(path, entries, tail=b""):
    path.write_bytes(encode(entries) + tail)


def test_lines_are_sorted_json_objects_appended_in_order(tmp_path):
    path = tmp_path / "j.jsonl"
    with Journal(path) as j:
        assert j.recover() == [] and not path.exists()
        j.append([{"b": 1, "a": 0.5}])
        j.append([])
        j.append([{"kind": "x"}, {"kind": "y", "nan": float("nan")}])
    assert path.read_bytes() == b'{"a": 0.5, "b": 1}\n{"kind": "x"}\n{"kind": "y", "nan": NaN}\n'
    entries, valid = read_entries(path)
    assert [e.get("kind") for e in entries] == [None, "x", "y"] and valid == path.stat().st_size


def test_a_cut_last_line_is_tolerated_and_cut_off(tmp_path):
    path = tmp_path / "j.jsonl"
    write(path, [{"n": 0}, {"n": 1}], b'{"n": 2, "acc')
    entries, valid = read_entries(path)
    assert entries == [{"n": 0}, {"n": 1}] and valid == len(encode(entries)) < path.stat().st_size
    with Journal(path) as j:
        assert j.recover() == [{"n": 0}, {"n": 1}]
        assert path.read_bytes() == encode(entries)  # truncated: the next line starts fresh
        j.append([{"n": 2}])
    assert read_entries(path)[0] == [{"n": 0}, {"n": 1}, {"n": 2}]


def test_a_complete_last_line_without_its_newline_is_kept(tmp_path):
    path = tmp_path / "j.jsonl"
    write(path, [{"n": 0}], b'{"n": 1}')
    with Journal(path) as j:
        assert j.recover() == [{"n": 0}, {"n": 1}]
        j.append([{"n": 2}])
    assert path.read_bytes() == encode([{"n": 0}, {"n": 1}, {"n": 2}])


@pytest.mark.parametrize("middle", [b"garbage", b'{"n": 1, "cut', b"", b"[1, 2]", b'"text"'])
def test_a_corrupt_line_before_the_last_is_refused_naming_the_file_and_line(tmp_path, middle):
    path = tmp_path / "j.jsonl"
    path.write_bytes(b'{"n": 0}\n' + middle + b'\n{"n": 2}\n')
    before = path.read_bytes()
    message = re.escape(f"The stage journal '{path}' has a corrupt line 2 (not the last one")
    with pytest.raises(ValueError, match=message):
        read_entries(path, what="stage journal")
    with pytest.raises(ValueError, match=message):
        Journal(path, what="stage journal").recover()
    assert path.read_bytes() == before  # refused, never repaired


def test_a_line_its_check_refuses_counts_as_corrupt(tmp_path):
    path = tmp_path / "j.jsonl"

    def needs_chip(entry):
        int(entry["chip"])

    write(path, [{"chip": 0}, {"kind": "other"}, {"chip": 2}])
    with pytest.raises(ValueError, match="corrupt line 2"):
        read_entries(path, needs_chip)
    write(path, [{"chip": 0}], b'{"chip": "x"}')
    assert Journal(path, check=needs_chip).recover() == [{"chip": 0}]  # the last line: cut off
    assert path.read_bytes() == encode([{"chip": 0}])


def test_appends_are_fsynced_each_time_or_at_most_every_interval(tmp_path, monkeypatch):
    synced = []
    monkeypatch.setattr(journal_module.os, "fsync", lambda fd: synced.append(fd))
    with Journal(tmp_path / "each.jsonl") as j:
        for n in range(3):
            j.append([{"n": n}])
        assert len(synced) == 3
    synced.clear()
    with Journal(tmp_path / "grouped.jsonl", sync_interval_s=3600) as j:
        for n in range(3):
            j.append([{"n": n}])
        assert synced == []
        assert len(read_entries(tmp_path / "grouped.jsonl")[0]) == 3  # flushed: a kill loses nothing
    assert len(synced) == 1  # on close
    assert os.path.getsize(tmp_path / "grouped.jsonl") == len(encode([{"n": n} for n in range(3)]))
