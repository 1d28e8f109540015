"""Summary rows, the report's blocks and their renderings, from in-memory documents."""

from __future__ import annotations

import csv
import io

import pytest

from loadbench import loaders
from loadbench.analysis import frame as fr
from loadbench.analysis import html as page
from loadbench.analysis import summary as report
from tests.unit.test_analysis_frame import make_doc

REFERENCE = sorted(fr.reference_libraries())[0]
BASELINE = fr.baseline_library()


def _groups(docs):
    df = fr.frame(docs)
    return df, report.build(df)


def _row(g, name):
    return g.rows[g.rows["row"] == name].iloc[0]


def test_times_reference_and_which_loader_to_pick():
    docs = [make_doc("tensorizer", (1.0, 1.1, 0.9, 1.0, 1.0), ceilings={"page_cache_read": 10.0}),
            make_doc(BASELINE, (2.0, 2.1, 1.9, 2.0, 2.0)),
            make_doc(REFERENCE, (0.5, 0.5, 0.5, 0.5, 0.5), io_mode="buffered preadv")]
    _, (g,) = _groups(docs)
    assert g.reference_s == pytest.approx(0.5)
    assert _row(g, "tensorizer")["x_reference"] == pytest.approx(2.0)
    assert _row(g, BASELINE)["x_reference"] == pytest.approx(4.0)
    assert _row(g, "tensorizer")["ceiling_fraction"] == pytest.approx(0.2)
    (line,) = report.picks([g])
    assert "**tensorizer**" in line and "at 20% of the page-cache read ceiling" in line
    assert f"2.00× faster than {BASELINE}" in line and loaders.BY_NAME[BASELINE].describe in line
    assert "reference loader takes 0.500 s" in line and "runner-up" in line
    assert REFERENCE not in line.split("**")[1]  # an instrument is never the pick


def test_a_beaten_ceiling_is_unreliable_never_a_limit():
    docs = [make_doc("tensorizer", (1.0,) * 5, ceilings={"page_cache_read": 1.5, "h2d_pinned": 50.0})]
    _, (g,) = _groups(docs)
    assert g.unreliable == {"page_cache_read": pytest.approx(2.0)}
    assert g.bound_name == "page_cache_read" and g.bound_gbps is None
    r = _row(g, "tensorizer")
    assert r["ceiling_fraction"] is None or r["ceiling_fraction"] != r["ceiling_fraction"]
    assert "unreliable: beaten, best observed 2.00" in g.ceiling_note()
    md = report.markdown(report.blocks([g], []))
    assert "| tensorizer | page cache | 1.0 | 5 | 1.000 |" in md
    assert "| 2.00 | - |" in md  # GB/s shown, % of ceiling not
    (line,) = report.picks([g])
    assert "unreliable (beaten, best observed 2.00 GB/s)" in line


def test_within_three_percent_is_not_beaten():
    _, (g,) = _groups([make_doc("tensorizer", (1.0,) * 5, ceilings={"page_cache_read": 1.95})])
    assert g.unreliable == {} and g.bound_gbps == pytest.approx(1.95)


def test_a_pod_that_found_pages_resident_is_reported_partial():
    docs = [make_doc("tensorizer", (5.0,) * 5, mode="cold"),
            make_doc("tensorizer", (3.0,) * 5, mode="cold", resident=0.4, pod="pod-b")]
    _, groups = _groups(docs)
    assert [g.state for g in groups] == ["cold", "partial"]
    partial = groups[1]
    assert "5 trial(s) here (5 asked cold) found 40%–40%" in report.reclassified(partial)
    assert report.reclassified(groups[0]) == ""


def test_concurrent_pods_make_one_episode_with_aggregate_throughput():
    docs = [make_doc("tensorizer", (t,), mode="cold", resident=r, pod=p, start=0.0)
            for t, r, p in ((1.0, 0.0, "pod-a"), (1.2, 0.0, "pod-b"), (0.8, 0.6, "pod-c"))]
    docs.append(make_doc("tensorizer", (1.0,), mode="cold", pod="pod-d", start=100.0))
    df, _ = _groups(docs)
    (ep,) = report.episodes(df)
    assert ep["pods"] == 3 and ep["peak_concurrent"] == 3 and ep["loads"] == 3
    assert ep["aggregate_gbps"] == pytest.approx(3 * 2.0 / 1.2)
    assert ep["states"] == {"cold": 2, "partial": 1}
    assert "pod-c 60% (partial)" in ep["residency"]
    blocks = report.blocks(report.build(df), [], eps=[ep])
    assert ("h2", "Concurrent pods (scale-out)") in blocks


def test_settings_that_differ_are_reported_and_kept_apart():
    docs = [make_doc(settings={"NUM_TRIALS": 3}), make_doc(settings={"NUM_TRIALS": 5}, pod="pod-b")]
    _, (g,) = _groups(docs)
    assert sorted(g.rows["row"]) == ["tensorizer [NUM_TRIALS=3]", "tensorizer [NUM_TRIALS=5]"]
    (line,) = report.kept_apart([g])
    assert "documents differ in NUM_TRIALS: 3, 5" in line
    md = report.markdown(report.blocks([g], []))
    assert "## Runs kept apart" in md


def test_pooled_run_ids_are_named():
    docs = [make_doc(run_id="run-a"), make_doc(run_id="run-b", pod="pod-b")]
    _, (g,) = _groups(docs)
    assert len(g.rows) == 1 and _row(g, "tensorizer")["run_ids"] == "run-a, run-b"
    assert "pooled from run ids run-a, run-b" in report.markdown(report.blocks([g], []))


def test_errors_are_counted_and_whole_messages_wrap_on_a_terminal():
    long = "the checkpoint folder is missing " * 6
    bad = make_doc(status="error")
    bad["error"]["message"] = long.strip()
    _, (g,) = _groups([make_doc(), bad])
    r = _row(g, "tensorizer")
    assert r["errors"] == 1 and r["verified"] == 3 and r["trials"] == 3
    text = report.terminal([g])
    assert max(len(line) for line in text.splitlines()) < 200
    assert " ".join(text.split()).count("checkpoint folder is missing") == 6


def test_pod_time_table_has_every_phase_and_the_total():
    _, (g,) = _groups([make_doc(), make_doc(pod="pod-b")])
    header, rows = report.pod_times(g, fr.frame([make_doc()]).attrs["phases"])
    assert header[:3] == ["library", "documents", "startup and imports"] and header[-1] == "pod total"
    assert rows == [["tensorizer", "2", "3.000", "1.000", "0.500", "4.000", "0.500", "9.000"]]


def test_csv_keeps_the_published_columns_first():
    _, groups = _groups([make_doc(), make_doc(REFERENCE, (0.5,) * 3)])
    rows = list(csv.reader(io.StringIO(report.csv_text(groups))))
    assert tuple(rows[0][:16]) == ("model", "device", "cache_mode") + report.OLD_COLUMNS
    assert tuple(rows[0][16:]) == report.NEW_COLUMNS
    assert rows[2][3] == "tensorizer" and rows[2][rows[0].index("× reference")] == "2.00"


def test_markdown_and_html_escape_what_documents_say():
    doc = make_doc(label="tensorizer|<script>", io_mode="<b>x</b>")
    _, groups = _groups([doc])
    blocks = report.blocks(groups, [("/r/bad.json", "schema: <odd>")], title="T & <t>")
    assert "tensorizer\\|<script>" in report.markdown(blocks)
    html = page.page(blocks, {groups[0].slug: [("caption <c>", b"\x89PNG")]}, [("Run", [["a", "<b>"]])])
    assert "<script>" not in html and "&lt;script&gt;" in html and "&lt;b&gt;x&lt;/b&gt;" in html
    assert "data:image/png;base64,iVBORw==" in html and "<title>T &amp; &lt;t&gt;</title>" in html


def test_metadata_lists_machine_versions_and_settings():
    docs = [make_doc(), make_doc(settings={"NUM_TRIALS": 5}, pod="pod-b")]
    meta = dict(page.metadata(docs, "plot_results.py r"))
    assert ["device", "NVIDIA H200"] in meta["Machine"]
    assert ["torch", "2.11.0"] in meta["Versions"]
    assert ["MODEL_ID", '"random/gpt-j-6b"'] in meta["Settings shared by every document"]
    assert any(k == "NUM_TRIALS" for k, _ in meta["Settings that differ"])
    assert meta["Commands"] == [["this report", "plot_results.py r"]]


def test_empty_and_odd_frames_build_nothing_without_error():
    assert report.build(fr.frame([])) == []
    assert report.table(fr.frame([])).empty
    assert report.episodes(fr.frame([make_doc(status="error")])) == []
    (g,) = report.build(fr.frame([make_doc(status="error")]))
    assert report.picks([g]) == [] and "error document" in report.markdown(report.blocks([g], []))
