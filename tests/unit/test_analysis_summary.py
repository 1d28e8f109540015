"""Summary rows, the report's blocks and their renderings, from in-memory documents."""

from __future__ import annotations

import copy
import csv
import io

import pytest

from loadbench import loaders
from loadbench.analysis import frame as fr
from loadbench.analysis import html as page
from loadbench.analysis import summary as report
from tests.unit.test_analysis_frame import GB, make_doc, pods

REFERENCE = sorted(fr.reference_libraries())[0]
BASELINE = fr.baseline_library()


def _groups(docs):
    df = fr.frame(docs)
    return df, report.build(df)


def _row(g, name):
    return g.rows[g.rows["row"] == name].iloc[0]


def test_times_reference_and_which_loader_to_pick():
    docs = [*pods("tensorizer", (1.0, 1.1, 0.9, 1.0, 1.0), pod="t", ceilings={"page_cache_read": 10.0}),
            *pods(BASELINE, (2.0, 2.1, 1.9, 2.0, 2.0), pod="b"),
            *pods(REFERENCE, (0.5, 0.5, 0.5, 0.5, 0.5), pod="r", io_mode="buffered preadv")]
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
    docs = pods("tensorizer", (1.0,) * 5, ceilings={"page_cache_read": 1.5, "h2d_pinned": 50.0})
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
    _, (g,) = _groups(pods("tensorizer", (1.0,) * 5, ceilings={"page_cache_read": 1.95}))
    assert g.unreliable == {} and g.bound_gbps == pytest.approx(1.95)


def test_a_pod_that_found_pages_resident_is_reported_partial():
    docs = [*pods("tensorizer", (5.0,) * 5, mode="cold"),
            *pods("tensorizer", (3.0,) * 5, mode="cold", resident=0.4, pod="pod-b")]
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


def test_a_failed_first_load_is_counted_and_whole_messages_wrap_on_a_terminal():
    long = "the checkpoint folder is missing " * 6
    bad = make_doc(totals=(1.0, 1.0), pod="pod-b", settings={"NUM_TRIALS": 3})  # first failed, repeat ok
    bad["trials"][0].update(status="error", total_s=None, error={"type": "OSError", "message": long})
    bad["status"], bad["error"] = "error", {"type": "TrialFailed", "message": "1 of 2 trial(s) failed"}
    _, (g,) = _groups([make_doc(), bad])
    r = _row(g, "tensorizer")
    assert r["errors"] == 1 and r["verified"] == 1 and r["trials"] == 2
    text = report.terminal([g])
    assert max(len(line) for line in text.splitlines()) < 200
    assert " ".join(text.split()).count("checkpoint folder is missing") == 6


def test_one_pod_with_three_trials_is_one_headline_sample_and_two_repeats():
    df, (g,) = _groups([make_doc(totals=(3.0, 1.0, 1.2))])   # NUM_TRIALS=3 in one pod
    r = _row(g, "tensorizer")
    assert r["n"] == 1 and r["median_s"] == pytest.approx(3.0) and r["verified"] == 1
    assert len(g.ok()) == 1 and len(g.repeats) == 2
    ((title, header, rows),) = report.repeat_tables(df)
    assert title == g.title and header[:4] == ["library", "index in process", "n", "median s"]
    assert rows == [["tensorizer", "1–2", "2", "1.100", "1.010", "1.190", "2/2", "3.000", "1", "0.37"]]
    md = report.markdown(report.blocks([g], [], df=df))
    assert "## Repeat in a warm process" in md and "first-in-process trials only" in md
    assert md.index("## Repeat in a warm process") > md.index("| tensorizer |")


def test_schema_2_documents_count_their_first_trial_only():
    _, (g,) = _groups([make_doc(totals=(3.0, 1.0, 1.2), schema=2)])
    assert _row(g, "tensorizer")["n"] == 1 and _row(g, "tensorizer")["median_s"] == pytest.approx(3.0)


def test_a_pods_second_library_is_a_repeat_never_a_headline():
    first = make_doc("safetensors", (2.0,))
    second = make_doc(totals=(1.0,), first_index=1)   # same pod, loaded after safetensors
    df, (g,) = _groups([first, second])
    assert list(g.rows["row"]) == ["safetensors"]
    ((_, _, rows),) = report.repeat_tables(df)
    assert rows[0][:4] == ["tensorizer", "1", "1", "1.000"] and rows[0][-3:] == ["-", "0", "-"]
    (line,) = report.picks([g])
    assert "**safetensors**" in line


def test_error_documents_never_form_a_group_and_are_listed_once_per_reason():
    config_error = make_doc(status="error", pod="p1")
    config_error.update(library="none", label="config-error", run_id="config-error", device=None,
                        model=None, error={"type": "ConfigError", "message": "LIBRARIES: unknown "
                                           "library 'tensoriser'; " + "choose one of many " * 20})
    not_installed = make_doc("safetensors", status="error", pod="p2")
    docs = [make_doc(), config_error, copy.deepcopy(config_error), not_installed]
    df, groups = _groups(docs)
    assert [g.title for g in groups] == ["gpt-j-6b on NVIDIA H200, warm"]
    assert list(groups[0].rows["row"]) == ["tensorizer"] and groups[0].rows["errors"].tolist() == [0]
    rows = report.error_table(df)
    assert [r[:2] + r[-1:] for r in rows] == [["none", "config-error", "2"],
                                              ["safetensors", "safetensors", "1"]]
    assert rows[0][3].startswith("ConfigError: LIBRARIES: unknown library 'tensoriser'")
    assert len(rows[0][3]) <= 120 and rows[0][3].endswith("...")
    md = report.markdown(report.blocks(groups, [], df=df))
    assert "## Errors" in md and "unknown on unknown" not in md
    assert "| none | config-error | config-error | ConfigError: LIBRARIES" in md
    text = report.terminal(groups, df)     # the terminal keeps the whole reason, wrapped
    assert "Errors (documents that measured nothing)" in text
    assert " ".join(text.split()).count("choose one of many") == 20
    assert report.build(fr.frame([config_error])) == []


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
    assert ["CPU model", "-"] in meta["Machine"]  # documents written before it was recorded


def test_metadata_tells_two_cpu_models_apart():
    # Two machines of one kind with different CPUs: the report counts each, not just the first.
    docs = [make_doc(pod="pod-a"), make_doc(pod="pod-b"), make_doc(pod="pod-c")]
    for doc, cpu in zip(docs, ("Xeon A", "Xeon A", "EPYC B")):
        doc["machine"] = {"cpu_model": cpu, "numa_nodes": 2}
    meta = dict(page.metadata(docs, "plot_results.py r"))
    assert ["CPU model", "Xeon A (2), EPYC B (1)"] in meta["Machine"]
    assert ["NUMA nodes", "2"] in meta["Machine"]
    # Untrusted: a CPU model that is not a string, a NUMA count that is not a number, are left out
    docs[2]["machine"] = {"cpu_model": {"x": 1}, "numa_nodes": "two"}
    meta = dict(page.metadata(docs, "plot_results.py r"))
    assert ["CPU model", "Xeon A"] in meta["Machine"] and ["NUMA nodes", "2"] in meta["Machine"]


def test_empty_and_odd_frames_build_nothing_without_error():
    assert report.build(fr.frame([])) == []
    assert report.table(fr.frame([])).empty
    assert report.episodes(fr.frame([make_doc(status="error")])) == []
    df = fr.frame([make_doc(status="error")])
    assert report.build(df) == [] and report.repeat_tables(df) == []
    md = report.markdown(report.blocks([], [], df=df))
    assert "## Errors" in md and "the checkpoint folder is missing" in md
    assert report.error_table(fr.frame([])) == [] and report.pod_overhead(fr.frame([]), {}) == []


def test_pod_overhead_counts_each_pod_once_and_subtracts_every_timed_load():
    # One pod, two libraries: startup and device init are the pod's, prepare and trials each one's.
    a = make_doc("safetensors", (2.0,))
    b = make_doc(totals=(1.0, 0.5), first_index=1)
    for doc, prepare, trials, total in ((a, 0.5, 3.0, 7.5), (b, 0.25, 2.5, 10.5)):
        doc["pod"]["phases"][2:] = [{"name": "prepare", "seconds": prepare},
                                    {"name": "trials", "seconds": trials}]
        doc["pod"]["total_s"] = total
    other = make_doc(totals=(1.0,), pod="pod-b")   # a second pod: 3 + 1 + 0.5 + 2 = 6.5 of 7
    df = fr.frame([a, b, other])
    (o,) = report.pod_overhead(df, df.attrs["phases"])
    pods_ = o.pods.set_index("pod")
    assert pods_.loc["pod-0", "total_s"] == 10.5 and pods_.loc["pod-0", "loads_s"] == pytest.approx(3.5)
    assert pods_.loc["pod-0", "outside_s"] == pytest.approx(7.0)
    assert pods_.loc["pod-0", "pod_startup_and_imports_s"] == 3.0          # once, not twice
    assert pods_.loc["pod-0", "pod_prepare_s"] == pytest.approx(0.75)      # summed over libraries
    assert pods_.loc["pod-0", "unnamed_s"] == pytest.approx(10.5 - 3 - 1 - 0.75 - 5.5)
    assert pods_.loc["pod-b", "outside_s"] == pytest.approx(6.0)
    assert o.outside_s == pytest.approx(6.5)
    header, rows = o.table()
    assert header == ["pod time", "median s", "pods"]
    assert rows[0] == ["startup and imports", "3.000", "2"]
    assert rows[-1] == ["outside the timed loads (pod total − timed loads)", "6.500", "2"]
    md = report.markdown(report.blocks(report.build(df), [], phases=df.attrs["phases"], df=df))
    assert "## Pod overhead" in md and "Median outside the timed loads: 6.500 s over 2 pod(s)." in md


def test_pod_overhead_names_what_each_phase_imported_in_most_pods_and_drops_hostile_names():
    docs = [make_doc(totals=(1.0,), pod=f"pod-{i}") for i in range(3)]
    for i, doc in enumerate(docs):
        doc["pod"]["phases"][0]["packages"] = ["numpy", "torch"]
        doc["pod"]["phases"].append({"name": "modeling imports", "seconds": 2.0,
                                     "packages": ["transformers"] + (["torchvision"] if i else [])
                                     + (["scipy", "<script>", "a b", 7] if i == 2 else [])})
    # A hostile pod: 40 phases of 600 names each; only the phases the report keeps count, and
    # a bounded number of names of each.
    many = [f"p{j}" for j in range(600)]
    docs[0]["pod"]["phases"] += [{"name": f"<b>{i}", "seconds": 0.1, "packages": many} for i in range(40)]
    df = fr.frame(docs)
    assert max(len(t) for t in df["pod_packages"]) <= 2 + 1 + fr.MAX_PHASES * fr.MAX_PACKAGES_READ
    assert {c for t in df["pod_packages"] for c, _ in t} <= set(df.attrs["phases"])
    (o,) = report.pod_overhead(df, df.attrs["phases"])
    # torchvision in 2 pods of 3 is named, scipy in 1 is not, the hostile names never
    assert o.packages == {"pod_startup_and_imports_s": ["numpy", "torch"],
                          "pod_modeling_imports_s": ["torchvision", "transformers"]}
    md = report.markdown(report.blocks(report.build(df), [], phases=df.attrs["phases"], df=df))
    assert ("in at least half of the pods): startup and imports: numpy, torch; modeling imports: "
            "torchvision, transformers.") in md
    assert "<script>" not in md and "scipy" not in md
    # Documents that name no packages (every published one before this field) add no line.
    plain = fr.frame([make_doc(totals=(1.0,), pod="pod-x")])
    assert "What the imports were" not in report.markdown(
        report.blocks(report.build(plain), [], phases=plain.attrs["phases"], df=plain))


def _tp_doc(library: str, size: int, total: float, pod: str, read: float, share: float,
            mode: str = "warm") -> dict:
    doc = make_doc(library, (total,), pod=pod, mode=mode, settings={"TP_SIZE": size}, nbytes=2 * GB)
    doc["tp_size"] = size
    if size > 1:
        doc["trials"][0]["ranks"] = [{"rank": r, "status": "ok", "bytes": int(share * GB),
                                      "storage_read_bytes": int(read * GB), "cache_read_bytes": 0,
                                      "total_s": total} for r in range(size)]
    doc["trials"][0].update(storage_read_bytes=int(read * GB * size), cache_read_bytes=0)
    return doc


def test_tp_reports_bytes_per_rank_and_scaling():
    docs = [_tp_doc("tensorizer", 1, 2.0, "a", 2.0, 2.0), _tp_doc("tensorizer", 1, 2.2, "b", 2.0, 2.0),
            _tp_doc("tensorizer", 2, 1.2, "c", 1.0, 1.0), _tp_doc("tensorizer", 2, 1.4, "d", 1.0, 1.0),
            _tp_doc("safetensors", 2, 1.5, "e", 2.0, 1.0)]     # no TP=1 run: no scaling row
    df, (g,) = _groups(docs)
    assert sorted(g.rows["row"]) == ["safetensors", "tensorizer [TP_SIZE=1]", "tensorizer [TP_SIZE=2]"]
    lines = report.rank_lines(g)
    assert lines == ["safetensors: rank 0 read 2.00 GB of storage for a 1.00 GB share; rank 1 read "
                     "2.00 GB of storage for a 1.00 GB share (median of 1 load(s))",
                     "tensorizer [TP_SIZE=2]: rank 0 read 1.00 GB of storage for a 1.00 GB share; "
                     "rank 1 read 1.00 GB of storage for a 1.00 GB share (median of 2 load(s))"]
    (row,) = report.scaling([g])
    assert row == [g.title, "tensorizer", "2", "2.100", "2", "1.300", "2", "0.62", "2.00 + 0.00",
                   "1.00 + 0.00", "1.00"]
    md = report.markdown(report.blocks([g], [], df=df))
    assert "## Tensor parallel scaling" in md and "### Bytes read per rank (tensor parallel)" in md


def test_without_tp_documents_there_is_no_tp_view():
    df, (g,) = _groups([make_doc()])
    assert report.rank_lines(g) == [] and report.scaling([g]) == []
    md = report.markdown(report.blocks([g], [], df=df))
    assert "Tensor parallel" not in md and "## Repeat in a warm process" in md and "## Errors" not in md
