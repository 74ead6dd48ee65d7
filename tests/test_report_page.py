"""report.html as a developer sees it: each page (dali/report_page.py) rendered from run.json
values shaped as torture_report.py writes them, opened in a real headless Chromium, and checked
for what a user would look at: it loads with nothing in the browser's console, one lane per
node, the verdict, a node's hostile text shown as text (no element of its making), a screenshot
with something on it. Host only; Chromium as support/browser.py runs it (its own network
namespace, profile and HOME)."""

from __future__ import annotations

import random
import re
import struct
import zlib
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path

import pytest

from dali.report_page import compare_disk_page, compare_runs_page, run_page
from support import browser

HOSTILE = "<script>alert(1)</script></svg>&amp; & \x1b[2J\x1b]0;pwned\x07"  # what a node could print
HOSTILE_SHOWN = "<script>alert(1)</script></svg>&amp; & ^[[2J^[]0;pwned^G"  # as the page must show it
PLAIN = "a plain line of text"


def timeline(rng: random.Random, seconds: int, rate: int, stall=None, until=None) -> list[int]:
    """Operations completed each second: about rate, none during a stall, none after until."""
    counts = []
    for s in range(seconds if until is None else until):
        stalled = stall and stall[0] <= s < stall[0] + stall[1]
        counts.append(0 if stalled else max(0, int(rng.gauss(rate, rate / 8))))
    return counts


def realistic_run(text: str = HOSTILE, kernel_b: str = "6.1.0-50-amd64", run_id: str = "20261205-201500") -> dict:
    """A run.json as docs/torture.md's contract has it: nodes a, b, c; append (an expected
    failure) and lock (failed); c forced off at 5 s, a and b stalled after it, b's lock failing
    with text a node could print (text: in an example, b's status, a problem and the fault)."""
    rng = random.Random(29)
    seconds = 30
    a_stall, b_stall = [5.2, 12.4], [5.6, 11.9]

    def row(workload, node, status, rate, violations=None, stall=None, until=None):
        t = timeline(rng, seconds, rate, stall and [int(stall[0]), int(stall[1])], until)
        return {"workload": workload, "node": node, "status": status, "ops": sum(t),
                "violations": violations or {}, "late": 0.0, "stall": stall, "timeline": t}

    rows = [
        row("append", "a", "violations", 40, {"lost": 7}, a_stall),
        row("append", "b", "violations", 35, {"lost": 5}, b_stall),
        row("append", "c", "forced off (fault)", 38, until=5),
        row("lock", "a", "violations", 120, {"lost": 17}, a_stall),
        row("lock", "b", f"failed: OSError: {text}", 110, until=9),
        row("lock", "c", "forced off (fault)", 115, until=5),
    ]
    ops = {w: sum(r["ops"] for r in rows if r["workload"] == w) for w in ("append", "lock")}
    return {
        "run_id": run_id, "cluster": "mytag", "started": "2026-12-05T20:15:00Z", "seconds": 30.0,
        "target": "/data", "verdict": "failed",
        "properties": {"kernel": {"a": "6.1.0-50-amd64", "b": kernel_b, "c": "6.1.0-50-amd64"},
                       "fs": "ocfs2", "stack": "o2cb", "device_mode": "fsdax", "device_style": "seed",
                       "accel": "tcg", "seed": 123456, "dali_commit": "c23fa3d", "coherence": "off",
                       "count": ""},
        "workloads": [
            {"workload": "append", "ops": ops["append"], "violations": 12, "elapsed": 30.1,
             "verdict": "expected failure",
             "why": "known: OCFS2 O_APPEND overwrites acknowledged lines (docs/findings/ocfs2-append.md)"},
            {"workload": "lock", "ops": ops["lock"], "violations": 17, "elapsed": 30.2,
             "verdict": "failed", "why": "17 violation(s); b failed"},
        ],
        "rows": rows,
        "faults": [[5.0, f"c forced off {text}"]],
        "problems": ["lock: 17 violation(s)", f"lock b: failed: OSError: {text}"],
        "expected": ["append: lost 12 (known: OCFS2 O_APPEND overwrite, docs/findings/ocfs2-append.md)"],
        "examples": ["append a: 7 of its 410 acknowledged lines are missing",
                     f"lock a: counter read {text} after 17 lost increments"],
        "runs": {}, "survivors": ["a", "b"], "verdicts": {},
    }


def passing_run(run_id: str = "20261205-203000") -> dict:
    """realistic_run's cluster with every check holding and no fault."""
    run = realistic_run(PLAIN, run_id=run_id)
    run.update(verdict="passed", faults=[], problems=[], expected=[], examples=[])
    for w in run["workloads"]:
        w.update(violations=0, verdict="passed", why="")
    for r in run["rows"]:
        r.update(status="ok", violations={}, stall=None)
    return run


# --- Chromium -------------------------------------------------------------------------------------

class Page:
    """What Chromium made of a page (support/browser.py): its DOM as dumped, its elements and
    text, and its console's messages."""

    def __init__(self, dom: str, console: list[str]):
        self.dom, self.console = dom, console
        self.elements = Elements(dom)


class Elements(HTMLParser):
    """The dumped DOM's elements (tag, attributes) in document order, and its text."""

    def __init__(self, dom: str):
        super().__init__(convert_charrefs=True)
        self.found: list[tuple[str, dict]] = []
        self.texts: list[str] = []
        self.feed(dom)

    def handle_starttag(self, tag, attrs):
        self.found.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.texts.append(data)

    @property
    def text(self) -> str:
        return "".join(self.texts)

    def tags(self) -> list[str]:
        return [tag for tag, _ in self.found]

    def with_class(self, name: str, tag: str = "") -> list[dict]:
        return [attrs for t, attrs in self.found
                if name in (attrs.get("class") or "").split() and tag in ("", t)]


def open_page(text: str, path: Path) -> Page:
    path.write_text(text)
    shown = browser.show(path)
    return Page(shown.dom, shown.errors)


def loads_cleanly(page: Page) -> None:
    """No message in the console (the page has no script of its own: any message is an error,
    or the Content-Security-Policy refusing something that got into it), nothing it failed to load."""
    assert page.console == []
    assert page.elements.tags()[:2] == ["html", "head"] and "body" in page.elements.tags()


def lanes(page: Page) -> Counter:
    return Counter(attrs.get("data-node") for attrs in page.elements.with_class("lane"))


def text_stays_text(page: Page) -> None:
    """HOSTILE is on the page as its characters (the escapes as ^[, BEL as ^G), and made no element."""
    assert HOSTILE_SHOWN in page.elements.text
    assert "\x1b" not in page.dom and "script" not in page.elements.tags()


# --- the pages ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def failed_run_page(tmp_path_factory) -> Page:
    """realistic_run's page, as Chromium shows it (opened once for the tests that look at it)."""
    return open_page(run_page(realistic_run()), tmp_path_factory.mktemp("failed") / "report.html")


def test_a_run_page_in_a_browser(failed_run_page):
    page = failed_run_page
    loads_cleanly(page)
    assert lanes(page) == {"a": 1, "b": 1, "c": 1}
    verdicts = page.elements.with_class("verdict")
    assert len(verdicts) == 1 and "fail" in verdicts[0]["class"].split()
    assert "FAILED" in page.elements.text
    text_stays_text(page)
    # the lanes' marks: c forced off and b's lock failed, the stalls, the fault on every lane
    states = {a["data-node"]: a["data-state"] for a in page.elements.with_class("lane")}
    assert states == {"a": "up", "b": "down", "c": "down"}
    assert len(page.elements.with_class("stall", tag="rect")) == 3  # append and lock on a, append on b
    assert len(page.elements.with_class("fault", tag="g")) == 3
    assert "expected failure" in page.elements.text and "O_APPEND overwrites" in page.elements.text


def test_hostile_text_changes_no_element(failed_run_page, tmp_path):
    """The same run with plain text where the hostile one was: the very same elements."""
    plain = open_page(run_page(realistic_run(PLAIN)), tmp_path / "plain.html")
    assert failed_run_page.elements.found == plain.elements.found
    assert PLAIN in plain.elements.text


def test_a_passing_run_says_so(tmp_path):
    page = open_page(run_page(passing_run()), tmp_path / "report.html")
    loads_cleanly(page)
    verdict = page.elements.with_class("verdict")[0]
    assert "pass" in verdict["class"].split() and "FAILED" not in page.elements.text
    assert lanes(page) == {"a": 1, "b": 1, "c": 1}
    assert page.elements.with_class("fault") == [] and page.elements.with_class("stall") == []


def test_compare_disk_page(tmp_path):
    nvdimm, disk = realistic_run(), passing_run(run_id="20261205-201500")  # one run, two devices
    page = open_page(compare_disk_page(nvdimm, disk), tmp_path / "compare.html")
    loads_cleanly(page)
    assert lanes(page) == {"a": 2, "b": 2, "c": 2}
    assert Counter(a["data-run"] for a in page.elements.with_class("lane")) == {"NVDIMM": 3, "shared disk": 3}
    heads = [re.sub(r"\s+", " ", h) for h in cells_of(page.dom, "th", "group")]
    assert heads == ["NVDIMM FAILED 20261205-201500 6.1.0-50-amd64",
                     "shared disk passed 20261205-201500 6.1.0-50-amd64"]
    assert "fail" in page.elements.with_class("verdict")[0]["class"].split()  # so the comparison failed
    text_stays_text(page)


def test_compare_runs_page(tmp_path):
    """The same torture on two kernels: a column group per run, headed by its id and kernels."""
    runs = [realistic_run(), realistic_run(PLAIN, kernel_b="6.1.0-51-amd64", run_id="20261206-090000")]
    page = open_page(compare_runs_page(runs), tmp_path / "runs.html")
    loads_cleanly(page)
    assert lanes(page) == {"a": 2, "b": 2, "c": 2}
    heads = [re.sub(r"\s+", " ", h) for h in cells_of(page.dom, "th", "group")]
    assert heads == ["20261205-201500 FAILED 6.1.0-50-amd64",
                     "20261206-090000 FAILED 6.1.0-50-amd64, 6.1.0-51-amd64"]
    assert re.findall(r"<tr><td>(\w+)</td>", page.dom) == ["append", "lock"]  # one row per workload


def test_older_and_emptier_run_json_show_what_there_is(tmp_path):
    """A run.json from before "rows" (its nodes' raw results), one with nothing at all, a node
    that returned nothing (an empty timeline), a node known only by its kernel, values of the
    wrong types: each page renders; side by side, Chromium shows what there is."""
    old = {"runs": {"append a": {"node": "a", "workload": "append", "started": 0.0, "status": "ok",
                                 "result": {"ops": 12, "violations": {}}},
                    "append b": {"node": "b", "workload": "append", "started": 0.0, "status": "failed: gone",
                                 "result": None}},
           "faults": [[3.0, "b forced off"]], "survivors": ["a"], "verdicts": {}}
    sparse = realistic_run(PLAIN)
    sparse["rows"][0].update(timeline=[], ops=0)  # a node that returned nothing
    sparse["rows"][1]["timeline"] = []  # operations counted, but no timeline (an older run)
    sparse["properties"]["kernel"]["d"] = "6.1.0-50-amd64"  # no rows: a lane only when no node has any
    del sparse["faults"], sparse["workloads"]
    odd = {"run_id": 7, "rows": None, "faults": "x", "seconds": 10 ** 400, "properties": {"kernel": {"a": None}},
           "workloads": [{"workload": None, "ops": "many", "elapsed": float("nan")}],
           "examples": [None, 3, "x"]}
    runs = [old, {}, sparse, odd]
    for run in runs:
        assert "</html>" in run_page(run)
    assert "</html>" in compare_disk_page(old, {}) and "</html>" in compare_runs_page([])
    page = open_page(compare_runs_page(runs), tmp_path / "odd.html")
    loads_cleanly(page)
    by_run = Counter((a["data-run"], a["data-node"]) for a in page.elements.with_class("lane"))
    assert by_run == {("", "a"): 1, ("", "b"): 1, **{(sparse["run_id"], n): 1 for n in "abc"},
                      ("7", "a"): 1}  # odd: no rows, its nodes from its kernels
    assert "nothing returned" in page.elements.text and "no timeline recorded" in page.elements.text


@pytest.mark.parametrize("where", ["run", "row", "workload", "properties"])
def test_any_key_missing_or_of_another_type_still_renders(where):
    """Each key of the contract, at each level, gone or holding a value of the wrong type."""
    run = realistic_run()
    holder = {"run": run, "row": run["rows"][0], "workload": run["workloads"][0],
              "properties": run["properties"]}[where]
    for key in list(holder):
        kept = holder.pop(key)
        assert "</html>" in run_page(run)
        for other in (None, "x", -3, 1e308, [], {}, [None], {"x": None}):
            holder[key] = other
            assert "</html>" in run_page(run), (key, other)
        holder[key] = kept


def test_each_verdict_in_its_words_and_colour():
    """A workload's verdict in either spelling torture_report has written (the contract's, and
    ok / FAILED / expected / fixed?), and one the page does not know: shown as it came, grey."""
    run = realistic_run(PLAIN)
    said = ["passed", "failed", "expected failure", "not cluster-wide", "passed (expected to fail: fixed?)",
            "ok", "FAILED", "expected", "fixed?", "flaky <b>"]
    run["workloads"] = [{"workload": f"w{n}", "ops": 1, "violations": 0, "elapsed": 1.0, "verdict": v, "why": ""}
                        for n, v in enumerate(said)]
    cells = re.findall(r'<td class="verdict-cell (\w+)">([^<]*)', run_page(run))
    assert cells == [("pass", "passed"), ("fail", "FAILED"), ("expected", "expected failure"),
                     ("expected", "not cluster-wide"), ("fixed", "passed (expected to fail: fixed?)"),
                     ("pass", "passed"), ("fail", "FAILED"), ("expected", "expected failure"),
                     ("fixed", "passed (expected to fail: fixed?)"), ("other", "flaky &lt;b&gt;")]


def test_a_script_that_got_into_the_page_is_refused_and_reported(tmp_path):
    """The check of the console above is worth something: a script smuggled into a real page
    neither runs (the page's Content-Security-Policy) nor goes unnoticed."""
    text = run_page(passing_run()).replace("</body>", "<script>document.title = 'ran'; nosuch();</script></body>")
    page = open_page(text, tmp_path / "smuggled.html")
    assert len(page.console) == 1 and "Content Security Policy" in page.console[0]
    assert "<title>ran</title>" not in page.dom


def test_the_page_is_whole_by_itself():
    """Nothing to fetch: no link, no source, no URL, in any page."""
    for text in (run_page(realistic_run()), compare_disk_page(realistic_run(), passing_run()),
                 compare_runs_page([realistic_run(), passing_run()])):
        assert not re.search(r"\b(src|href)=|url\(|@import|https?:", text)
        assert "<script" not in text.replace("&lt;script&gt;", "")


def test_a_week_long_run_stays_a_page():
    """604800 seconds of timeline per row: averaged into at most a few hundred steps."""
    run = passing_run()
    run["seconds"], run["rows"] = 604800.0, run["rows"][:2]
    for r in run["rows"]:
        r["timeline"] = [r["ops"] // 30] * 604800
    assert len(run_page(run)) < 400_000


def test_a_screenshot_is_not_blank(tmp_path):
    page = tmp_path / "report.html"
    page.write_text(run_page(realistic_run()))
    shot = tmp_path / "report.png"
    browser.screenshot(page, shot, 1200, 2000)
    width, height, pixels = png_rows(shot.read_bytes())
    assert (width, height) == (1200, 2000)
    colours = Counter(pixels)
    assert len(colours) > 50  # text, charts, the verdict's colour: not one flat colour
    assert colours.most_common(1)[0][1] < 0.97 * len(pixels)


def png_rows(png: bytes) -> tuple[int, int, list[bytes]]:
    """A PNG's size and its pixels of every 7th row and column (enough to tell a page from a
    blank one, and quick in Python), unfiltered as the PNG spec says (filters 0-4)."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks = 8, {}
    while pos < len(png):
        length, kind = struct.unpack(">I4s", png[pos:pos + 8])
        chunks.setdefault(kind, []).append(png[pos + 8:pos + 8 + length])
        pos += 12 + length
    width, height, depth, colour = struct.unpack(">IIBB", chunks[b"IHDR"][0][:10])
    assert depth == 8 and colour in (2, 6)  # RGB or RGBA, as Chromium writes them
    bpp = 3 if colour == 2 else 4
    raw = zlib.decompress(b"".join(chunks[b"IDAT"]))
    stride = width * bpp
    prev, pixels = bytearray(stride), []
    for y in range(height):
        kind, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        unfilter(kind, line, prev, bpp)
        if y % 7 == 0:
            pixels += [bytes(line[x:x + bpp]) for x in range(0, stride, 7 * bpp)]
        prev = line
    return width, height, pixels


def unfilter(kind: int, line: bytearray, prev: bytearray, bpp: int) -> None:
    if kind == 1:
        for i in range(bpp, len(line)):
            line[i] = (line[i] + line[i - bpp]) & 0xFF
    elif kind == 2:
        line[:] = bytes((a + b) & 0xFF for a, b in zip(line, prev))
    elif kind == 3:
        for i in range(len(line)):
            left = line[i - bpp] if i >= bpp else 0
            line[i] = (line[i] + (left + prev[i]) // 2) & 0xFF
    elif kind == 4:
        for i in range(len(line)):
            a = line[i - bpp] if i >= bpp else 0
            b, c = prev[i], prev[i - bpp] if i >= bpp else 0
            p = a + b - c
            pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
            line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 0xFF


def cells_of(dom: str, tag: str, cls: str) -> list[str]:
    """The text of each <tag class="cls"> of the DOM."""
    found = []
    for m in re.finditer(rf'<{tag} [^>]*class="{cls}"[^>]*>(.*?)</{tag}>', dom, re.S):
        found.append(re.sub(r"<[^>]+>", " ", m.group(1)).strip())
    return found
