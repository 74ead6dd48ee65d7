"""The baseline of known failures (dali/known_failures.py): a file the user keeps is data,
checked key by key, and one line when it is wrong; the entries chosen by where a run ran; a
run's violations sorted into new, expected and "fixed?". The report's side of it is in
test_torture_host.py; the real run on OCFS2 in test_torture.py."""

from __future__ import annotations

import pytest

from dali import known_failures, workloads
from dali.cluster import REPO
from dali.errors import DaliError
from dali.known_failures import Known, Where
from support.cluster import unique_tag
from support.doit import one_error_line, run_doit


def entry(**values) -> Known:
    base = dict(workload="append", kinds=("lost",), fs=(), stacks=(), kernels=(), reason="why", sometimes=False)
    return Known(**{**base, **values})


@pytest.mark.parametrize("text,expected", [
    ("[[failure]\n", "not TOML"),
    ('[[expunge]]\nworkload = "append"\n', "unknown table 'expunge': the file holds [[failure]] entries only"),
    ('[[failure]]\nworkload = "append"\nreason = "x"\nkernal = ["6.1*"]\n', "failure 1: unknown key 'kernal'"),
    ('[[failure]]\nworkload = "append"\n', "failure 1: reason is missing"),
    ('[[failure]]\nworkload = "append"\nreason = "x"\nkinds = "lost"\n', "kinds must be a list of names"),
    ('[[failure]]\nworkload = "append"\nreason = "x"\nsometimes = "yes"\n', "sometimes is true or false"),
    ('[[failure]]\nworkload = "append"\nreason = "x\\u001b[2J"\n', "holds a control character"),
    ("failure = 3\n", "failure must be an array of tables"),
])
def test_a_baseline_that_is_not_as_documented_is_one_line(tmp_path, text, expected):
    path = tmp_path / "known.toml"
    path.write_text(text)
    with pytest.raises(DaliError) as e:
        known_failures.load(path)
    assert expected in str(e.value) and str(path) in str(e.value) and "\n" not in str(e.value)


def test_the_shipped_baseline_names_workloads_that_exist():
    entries = known_failures.load(REPO / "known-failures.toml")
    assert entries and all(k.workload in workloads.WORKLOADS for k in entries)
    assert all(k.fs == ("ocfs2",) and k.stacks == ("o2cb",) for k in entries), "each names where it was seen"


def test_an_entry_holds_where_every_node_matches_it():
    known = [entry(fs=("ocfs2",), stacks=("o2cb",), kernels=("6.1.0-*",))]
    on = Where("ocfs2", "o2cb", ("6.1.0-50-amd64", "6.1.0-50-amd64"))
    assert known_failures.applying(known, "append", on) == known
    assert known_failures.applying(known, "lock", on) == []
    assert known_failures.applying(known, "append", on._replace(fs="ext4")) == []
    assert known_failures.applying(known, "append", on._replace(stack="pcmk")) == []
    mixed = on._replace(kernels=("6.1.0-50-amd64", "6.12.95+bpo-amd64"))
    assert known_failures.applying(known, "append", mixed) == [], "a node on another kernel: not known there"
    assert known_failures.applying([entry()], "append", mixed) == [entry()], "no conditions: everywhere"


def test_violations_sorted_into_new_expected_and_fixed():
    known = [entry(reason="stale i_size")]
    found = known_failures.sort({"lost": 12, "torn": 1}, {}, known)
    assert found.new == {"torn": 1} and found.expected == {"lost": (12, "stale i_size")} and not found.fixed
    found = known_failures.sort({"fcntl not cluster-wide": 3}, {"fcntl not cluster-wide": "o2cb"}, [])
    assert found.expected == {"fcntl not cluster-wide": (3, "o2cb")} and not found.new
    assert known_failures.sort({}, {}, known).fixed == known
    assert known_failures.sort({}, {}, [entry(sometimes=True)]).fixed == [], "a flaky one's absence says nothing"


def test_a_bad_baseline_stops_torture_before_anything(tmp_path):
    """On libvirt's test driver: the baseline is read first, so nothing else is even asked."""
    (tmp_path / "known.toml").write_text("[[failure]]\nworkload = 3\n")
    config = tmp_path / "cluster.toml"
    config.write_text(f'uri = "test:///default"\ntag = "{unique_tag("known")}"\ndir = "{tmp_path / "data"}"\n'
                      '[torture]\nknown_failures = "known.toml"\n')
    line = one_error_line(run_doit("torture", f"config={config}"))
    assert line == f"dali: torture: {tmp_path}/known.toml: failure 1: workload is missing: give it as workload = \"...\""


def test_a_baseline_named_but_missing_is_one_line(tmp_path):
    config = tmp_path / "cluster.toml"
    config.write_text(f'uri = "test:///default"\ntag = "{unique_tag("known")}"\ndir = "{tmp_path / "data"}"\n'
                      '[torture]\nknown_failures = "nosuch.toml"\n')
    line = one_error_line(run_doit("status", f"config={config}"))
    assert "torture.known_failures = 'nosuch.toml': no such file" in line
