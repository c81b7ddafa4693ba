"""The campaign directory: manifest and config hash, the journal's crash tolerance, the lock."""
from __future__ import annotations

import json

import pytest

from mitigation.campaign.store import JOURNAL, RESULTS, CampaignStore, csv_text, read_journal, read_manifest

COLUMNS = ("chip", "group", "accuracy", "critical")


def open_store(path, config=None):
    return CampaignStore.open(str(path), "grid", config or {"a": 1, "b": {"c": [1, 2]}}, COLUMNS, 4)


def rec(i, acc):
    return {"chip": i, "group": "g", "accuracy": acc, "critical": 0, "seconds": 0.5}


def test_records_survive_reopen_and_results_are_sorted(tmp_path):
    with open_store(tmp_path / "c") as st:
        st.append([rec(2, 0.25), rec(0, 1 / 3)])
        st.append([rec(2, 0.99)])  # a chip already written is never written twice
    with open_store(tmp_path / "c") as st:
        assert sorted(st.records) == [0, 2]
        st.append([rec(1, 0.5)])
        st.write_results()
    text = (tmp_path / "c" / RESULTS).read_text()
    assert text == "chip,group,accuracy,critical\n0,g,0.3333333333333333,0\n1,g,0.5,0\n2,g,0.25,0\n"
    assert (tmp_path / "c" / "timings.csv").read_text().splitlines()[1] == "0,0.5"
    assert len((tmp_path / "c" / JOURNAL).read_text().splitlines()) == 3


def test_reconcile_takes_what_the_journal_holds(tmp_path):
    """An interrupt between the journal's write and the records' update: reconciling takes the
    journal's records (the message's count and results.csv then agree with it), even while the
    last write still sits in the file's buffer."""
    with open_store(tmp_path / "c") as st:
        st.append([rec(0, 0.5)])
        st._journal.append([rec(3, 0.75)])  # written, as an interrupt would leave it: records not updated
        assert sorted(st.records) == [0]
        st.reconcile()
        assert sorted(st.records) == [0, 3]
        st.write_results()
        assert sorted(read_journal(str(tmp_path / "c" / JOURNAL))[0]) == [0, 3]
    assert (tmp_path / "c" / RESULTS).read_text().count("\n") == 3


def test_truncated_last_line_is_cut_and_a_corrupt_middle_line_refused(tmp_path):
    with open_store(tmp_path) as st:
        st.append([rec(0, 0.5), rec(1, 0.5)])
    journal = tmp_path / JOURNAL
    journal.write_bytes(journal.read_bytes() + b'{"chip": 2, "accur')
    with open_store(tmp_path) as st:
        assert sorted(st.records) == [0, 1]
        st.append([rec(2, 0.75)])
    records, _ = read_journal(str(journal))
    assert sorted(records) == [0, 1, 2] and records[2]["accuracy"] == 0.75
    lines = journal.read_bytes().splitlines()
    journal.write_bytes(b"\n".join([lines[0], b"garbage", lines[1]]) + b"\n")
    with pytest.raises(ValueError, match=r"campaign journal '.*chips\.jsonl' has a corrupt line 2 \(not the last one"):
        open_store(tmp_path)
    assert journal.read_bytes().splitlines()[1] == b"garbage"  # refused, not repaired


def test_a_complete_last_record_without_newline_is_kept(tmp_path):
    with open_store(tmp_path) as st:
        st.append([rec(0, 0.5)])
    journal = tmp_path / JOURNAL
    journal.write_bytes(journal.read_bytes() + json.dumps(rec(1, 0.5)).encode())
    with open_store(tmp_path) as st:
        assert sorted(st.records) == [0, 1]
        st.append([rec(2, 0.5)])
    assert sorted(read_journal(str(journal))[0]) == [0, 1, 2]


def test_changed_config_is_refused_naming_the_change(tmp_path):
    open_store(tmp_path).close()
    with pytest.raises(ValueError, match=r"different configuration \(changed: b.c \(\[1, 2\] -> \[1, 3\]\)\)"):
        open_store(tmp_path, {"a": 1, "b": {"c": [1, 3]}})
    manifest = read_manifest(str(tmp_path))
    assert manifest["format"] == "sysarray-campaign" and manifest["chips"] == 4 and len(manifest["config_hash"]) == 64


def test_non_campaign_directories_are_refused(tmp_path):
    (tmp_path / "data.txt").write_text("x")
    with pytest.raises(ValueError, match="not empty and is not a campaign directory"):
        open_store(tmp_path)
    with pytest.raises(ValueError, match="no manifest.json"):
        read_manifest(str(tmp_path))
    (tmp_path / "manifest.json").write_text('{"format": "something-else"}')
    with pytest.raises(ValueError, match="is not a campaign manifest"):
        read_manifest(str(tmp_path))


def test_a_second_writer_is_locked_out(tmp_path):
    with open_store(tmp_path):
        with pytest.raises(ValueError, match="Another campaign run is writing"):
            open_store(tmp_path)
    open_store(tmp_path).close()


def test_csv_formatting_is_deterministic():
    text = csv_text(("a", "b", "c", "d"), [{"a": 0.1 + 0.2, "b": True, "c": None, "d": "x,y"}, {"a": float("nan")}])
    assert text == 'a,b,c,d\n0.30000000000000004,1,,"x,y"\nnan,,,\n'
