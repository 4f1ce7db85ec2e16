"""plot_results draws any results file: with or without stages and probes, step 0, failed rows, 4 or 300 rows."""

from pathlib import Path

import h5py
import numpy as np
import pytest

from slt_probe import store
from slt_probe.plot import plot_results

matplotlib = pytest.importorskip("matplotlib")

C, DRAWS, BURNIN = 2, 3, 0
ATTRS = {"schema": store.SCHEMA, "schema_version": store.SCHEMA_VERSION, "engine": "slt", "method": "loop",
         "checkpoint_dir": "/runs/tiny-transformer/checkpoints/",
         "config_resolved": {"lr": 1e-4, "nbeta": 51.2, "localization": 100.0, "chains": 4, "draws": 200}}


def llc_curve(step):
    """Rises over steps 10-1000, falls over 3k-30k: a type A stage, then a type B one."""
    t = np.log10(np.maximum(step, 1.0))
    return 5 + 40 / (1 + np.exp(-4 * (t - 2.2))) - 15 / (1 + np.exp(-5 * (t - 3.9)))


def loss_curve(step):
    t = np.log10(np.maximum(step, 1.0))
    return 0.4 + 3.0 / (1 + np.exp(3 * (t - 2.0)))  # falls by step ~1000, then flat: the B stage is hidden


def add_transitions(f, steps, idx, confidence, types, hidden, precise=True, smooth=True):
    """A `transitions` group in the layout slt_probe.store.write_transitions writes, boundaries at rows idx."""
    k, nb, ns, S = len(steps), len(idx), len(types), h5py.string_dtype()
    t = f.create_group("transitions")
    t.attrs["description"] = "stages of the λ̂ curve"
    t.attrs["params"] = '{"k_se": 3.0}'
    t.attrs["smoothing"] = '{"stable": true}'
    t.attrs["created"] = store.utc_now()
    b = t.create_group("boundaries")
    b["step"] = steps[idx].astype(np.int64).reshape(nb)
    # the precise location sits between checkpoints: where the shading and the lines must meet
    b["log_step"] = np.log10(np.maximum(steps[idx], 1) * (1.1 if precise else 1.0)).reshape(nb)
    b["index"] = np.asarray(idx, dtype=np.int64).reshape(nb)
    b["confidence"] = np.asarray(confidence, dtype=np.float64).reshape(nb)
    b["tentative"] = b["confidence"][...] < 0.8
    b.create_dataset("kind", data=np.array(["peak"] * nb, dtype=object), dtype=S)
    b["hidden"] = np.zeros(nb, dtype=bool)
    edges = [0, *idx, k - 1]
    s = t.create_group("stages")
    s["start_step"], s["end_step"] = steps[edges[:-1]].astype(np.int64), steps[edges[1:]].astype(np.int64)
    s["start_index"], s["end_index"] = np.array(edges[:-1], dtype=np.int64), np.array(edges[1:], dtype=np.int64)
    s["dllc"], s["dllc_se"], s["dloss"] = np.ones(ns), np.full(ns, 0.1), np.zeros(ns)
    s.create_dataset("type", data=np.array(types, dtype=object), dtype=S)
    s["hidden"] = np.asarray(hidden, dtype=bool)
    g = t.create_group("smooth")
    positive = steps[steps > 0]
    g["log_step"] = np.linspace(np.log10(positive.min()), np.log10(positive.max()), 400 if smooth else 0)
    g["llc"] = llc_curve(10 ** g["log_step"][...])
    g["dllc"] = np.gradient(g["llc"][...], g["log_step"][...]) if smooth else np.zeros(0)


def write_results(path, steps, failed=(), warn=(), fail=(), transitions=True, probes=True, boundaries=2):
    rng = np.random.default_rng(0)
    rows = []
    for s in steps:
        row = store.empty_row(C, DRAWS, BURNIN)
        row.update(step=int(s), path=f"step_{s}.pt", format="torch", sha256=f"{s:064x}", finished=store.utc_now())
        if s in failed:
            row.update(status="failed", message="truncated", verdict="fail")
        else:
            se = 0.6 + 0.02 * llc_curve(s)
            row.update(status="ok", init_loss=float(loss_curve(s)) + 0.01 * rng.normal(),
                       llc_mean=float(llc_curve(s) + se * rng.normal()), llc_se=se, chains_ok=C,
                       verdict="fail" if s in fail else "warn" if s in warn else "ok")
        rows.append(row)
    Path(path).unlink(missing_ok=True)  # a fresh file: store.write keeps an existing file's probes
    store.write(path, ATTRS, rows, C, DRAWS, BURNIN)
    steps = np.sort(np.asarray(steps))
    with h5py.File(path, "a") as f:
        if transitions:  # A up to step ~1000 (sure), B hidden up to ~30k (tentative), then other
            idx = [int(np.argmin(np.abs(steps - b))) for b in (1000, 30000)][:boundaries]
            add_transitions(f, steps, idx, [0.93, 0.55][:boundaries], ["A", "B", "other"][: boundaries + 1],
                            [False, True, False][: boundaries + 1])
        if probes:
            p = f.create_group("probes")
            acc = 1 / (1 + np.exp(-3 * (np.log10(np.maximum(steps, 1)) - 3.5)))
            p["icl_score"] = acc
            p["icl_score"].attrs["label"] = "in-context accuracy"
            p["icl_score"].attrs["description"] = "accuracy on the last token of held-out sequences"
            p["bigram"] = 1 - 0.5 * acc  # no label attribute: the dataset name is the legend
    return path


STEPS = np.unique(np.round(np.logspace(1, 5, 30)).astype(int))
LOW = 60  # dpi for the tests that only need a picture, not a sharp one: quicker


def check_png(path, dpi=150):
    from matplotlib.image import imread

    image = imread(path)
    assert image.ndim == 3 and image.shape[1] >= 10 * dpi and image.shape[0] >= 6 * dpi  # 11 in wide, 7+ in tall
    assert image[..., :3].std() > 0.05  # something was drawn, not a blank page


def test_full_file_with_stages_probes_and_a_failed_row(tmp_path):
    src = write_results(tmp_path / "r.h5", STEPS, failed={STEPS[7]}, warn={STEPS[3], STEPS[20]}, fail={STEPS[25]})
    out = plot_results(src, tmp_path / "r.png")
    assert out == tmp_path / "r.png"
    check_png(out)


def test_without_the_optional_groups(tmp_path):
    src = write_results(tmp_path / "r.h5", STEPS, transitions=False, probes=False)
    check_png(plot_results(src, tmp_path / "r.png", title="my run", dpi=LOW), LOW)


def test_zero_boundaries(tmp_path):
    src = write_results(tmp_path / "r.h5", STEPS, boundaries=0)
    with h5py.File(src, "r") as f:
        assert f["transitions/boundaries/step"].shape == (0,) and f["transitions/stages/type"].shape == (1,)
    check_png(plot_results(src, tmp_path / "r.png", dpi=LOW), LOW)


def test_step_zero_and_a_failed_first_checkpoint(tmp_path):  # step 0 with stages: the svg test below
    src = write_results(tmp_path / "r.h5", np.r_[0, STEPS], failed={0}, transitions=False)
    check_png(plot_results(src, tmp_path / "r.png", dpi=LOW), LOW)


def test_svg_and_pdf_and_what_the_text_says(tmp_path):
    src = write_results(tmp_path / "r.h5", np.r_[0, STEPS], failed={STEPS[4]})
    with matplotlib.rc_context({"svg.fonttype": "none"}):  # text as text, so the test can read it
        svg = plot_results(src, tmp_path / "r.svg", dpi=LOW).read_text()
    assert svg.lstrip().startswith("<?xml") and "<svg" in svg
    for text in ("tiny-transformer/checkpoints", "nβ 51.2", "4 chains × 200 draws", "31 checkpoints (1 failed)",
                 "B (hidden)", ">A<", ">0.93<", ">0.55<", ">0<", ">1k<", "in-context accuracy", "bigram",
                 "failed checkpoint (1)", "tentative boundary"):
        assert text in svg, text
    assert plot_results(src, tmp_path / "r.pdf", dpi=LOW).read_bytes().startswith(b"%PDF")


@pytest.mark.parametrize("steps", [np.array([0, 100, 1000, 10000]), np.array([500]), np.array([], dtype=int),
                                   np.arange(0, 30000, 100)])
def test_few_many_and_no_checkpoints(tmp_path, steps):
    src = write_results(tmp_path / "r.h5", steps, transitions=len(steps) >= 4, probes=len(steps) > 0)
    check_png(plot_results(src, tmp_path / "r.png", dpi=LOW), LOW)


def test_every_checkpoint_failed(tmp_path):
    src = write_results(tmp_path / "r.h5", STEPS[:5], failed=set(STEPS[:5]), transitions=False, probes=False)
    check_png(plot_results(src, tmp_path / "r.png", dpi=LOW), LOW)


def test_a_misshapen_probe_is_skipped_with_a_warning(tmp_path):
    src = write_results(tmp_path / "r.h5", STEPS, transitions=False)
    with h5py.File(src, "a") as f:
        f["probes/wrong"] = np.zeros(3)
    with pytest.warns(UserWarning, match="probes/wrong"):
        check_png(plot_results(src, tmp_path / "r.png", dpi=LOW), LOW)


def test_crowded_stages_keep_hidden_labels_and_the_surest_boundary_tags(tmp_path):
    steps = np.r_[0, np.unique(np.round(np.logspace(1, 5, 60)).astype(int))]
    src = write_results(tmp_path / "r.h5", steps, transitions=False, probes=False)
    with h5py.File(src, "a") as f:
        # 0.42 sits right next to 0.81: one tag must go. The hidden B between them is too narrow for a word (a purple
        # "B"); the hidden A at the end has room for "A / hidden" stacked, not for "A (hidden)".
        add_transitions(f, steps, np.searchsorted(steps, [30, 200, 240, 9000, 50000]), [0.99, 0.81, 0.42, 0.95, 0.88],
                        ["other", "A", "B", "A", "B", "A"], [0, 0, 1, 0, 0, 1], precise=False, smooth=False)
    with matplotlib.rc_context({"svg.fonttype": "none"}):  # text as text, so the test can read it
        svg = plot_results(src, tmp_path / "r.svg", dpi=LOW).read_text()
    for text in (">0.99<", ">0.81<", ">0.95<", ">0.88<", ">hidden<", ">B<"):
        assert text in svg, text
    assert ">0.42<" not in svg


def test_step_axis_helpers():
    from slt_probe.plot import _run_name, _step_ticks

    assert _step_ticks(10, 1e5)[0] == [10, 100, 1000, 1e4, 1e5]
    assert _step_ticks(100, 400)[0] == [100, 200, 300, 400]  # less than a decade: every digit
    assert _step_ticks(100, 3000)[0] == [100, 200, 500, 1000, 2000]
    assert len(_step_ticks(1, 1e12)[0]) <= 9
    assert _run_name("/runs/gpt-tiny/checkpoints/", Path("r.h5")) == "gpt-tiny/checkpoints"
    assert _run_name("/runs/gpt-tiny", Path("r.h5")) == "gpt-tiny"
    assert _run_name(None, Path("/x/results.h5")) == "results"
