"""plot_results (slt_probe/analysis/plot.py) draws any results file: with or without stages and probes, step 0,
failed rows, 4 or 300 rows, or none.

The files are written through the store's writers (store.write with store.Probes, store.write_transitions), as a
walk and `slt-probe transitions` write them. What is drawn is read back two ways: the text of an SVG rendered with
text as text, and the matplotlib Figure itself (its panels, points, crosses, stage shading, boundary lines, tags,
labels and legends). plot_results returns only the path, so the `figures` fixture keeps each Figure it saves by
wrapping Figure.savefig.
"""

from pathlib import Path

import h5py
import matplotlib
import numpy as np
import pytest
from curves import make_curve
from matplotlib.colors import to_hex
from matplotlib.figure import Figure

from slt_probe import store
from slt_probe.analysis.plot import BAD, HIDDEN, STAGE_FACE, plot_results
from slt_probe.inputs.curves import read_curve
from slt_probe.runs.detect import detect_and_store

C, DRAWS, BURNIN = 2, 3, 0
ATTRS = {"schema": store.SCHEMA, "schema_version": store.SCHEMA_VERSION, "engine": "slt", "method": "loop",
         "checkpoint_dir": "/runs/tiny-transformer/checkpoints/",
         "config_resolved": {"lr": 1e-4, "nbeta": 51.2, "localization": 100.0, "chains": 4, "draws": 200}}
LLC_PANEL, LOSS_PANEL, PROBES_PANEL = r"$\hat{\lambda}$ (LLC)", "loss $L_n(w^*)$", "probes"
STAGE_LEGEND = ["stage A: λ̂ rises, loss falls", "stage B: λ̂ falls (simplifies)", "other stage",
                "hidden: λ̂ changes, loss barely does"]
ONSET_LEGEND = "onset: rises through half its final value"


def llc_curve(step):
    """Rises over steps 10-1000, falls over 3k-30k: a type A stage, then a type B one."""
    t = np.log10(np.maximum(step, 1.0))
    return 5 + 40 / (1 + np.exp(-4 * (t - 2.2))) - 15 / (1 + np.exp(-5 * (t - 3.9)))


def loss_curve(step):
    t = np.log10(np.maximum(step, 1.0))
    return 0.4 + 3.0 / (1 + np.exp(3 * (t - 2.0)))  # falls by step ~1000, then flat: the B stage is hidden


def add_transitions(path, steps, idx, confidence, types, hidden, precise=True, smooth=True):
    """Store the file's transitions through store.write_transitions: boundaries at rows idx, stages between them."""
    k = len(steps)
    boundaries = [
        store.Boundary(step=int(steps[i]), index=int(i),
                       # the precise location sits between checkpoints: where the shading and the lines must meet
                       log_step=float(np.log10(max(steps[i], 1) * (1.1 if precise else 1.0))), kind="peak",
                       confidence=float(c), tentative=bool(c < 0.8), hidden=False)
        for i, c in zip(idx, confidence)]
    edges = [0, *idx, k - 1]
    stages = [store.Stage(start_step=int(steps[a]), end_step=int(steps[b]), start_index=int(a), end_index=int(b),
                          dllc=1.0, dllc_se=0.1, dloss=0.0, type=kind, hidden=bool(hid))
              for a, b, kind, hid in zip(edges[:-1], edges[1:], types, hidden)]
    positive = steps[steps > 0]
    grid = np.linspace(np.log10(positive.min()), np.log10(positive.max()), 400 if smooth else 0)
    llc = llc_curve(10**grid)
    t = store.Transitions(boundaries=boundaries, stages=stages, config=store.TransitionConfig(k_se=3.0),
                          smoothing={"stable": True}, log_step=grid, llc_smooth=llc,
                          dllc_smooth=np.gradient(llc, grid) if smooth else np.zeros(0))
    store.write_transitions(path, t)


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
    steps = np.sort(np.asarray(steps))
    behaviour = None
    if probes:  # one value per checkpoint, keyed by step
        acc = 1 / (1 + np.exp(-3 * (np.log10(np.maximum(steps, 1)) - 3.5)))
        info = {"icl_score": ("in-context accuracy", "accuracy on the last token of held-out sequences"),
                "bigram": ("", "")}  # no label: the dataset name is the legend
        behaviour = store.Probes(info, {int(s): {"icl_score": float(a), "bigram": float(1 - 0.5 * a)}
                                        for s, a in zip(steps, acc)})
    Path(path).unlink(missing_ok=True)  # a fresh file: store.write keeps an existing file's probes
    store.write(path, ATTRS, rows, C, DRAWS, BURNIN, probes=behaviour)
    if transitions:  # A up to step ~1000 (sure), B hidden up to ~30k (tentative), then other
        idx = [int(np.argmin(np.abs(steps - b))) for b in (1000, 30000)][:boundaries]
        add_transitions(path, steps, idx, [0.93, 0.55][:boundaries], ["A", "B", "other"][: boundaries + 1],
                        [False, True, False][: boundaries + 1])
    return path


STEPS = np.unique(np.round(np.logspace(1, 5, 30)).astype(int))
LOW = 60  # dpi for the tests that only need a picture, not a sharp one: quicker


def check_png(path, dpi=150):
    from matplotlib.image import imread

    image = imread(path)
    assert image.ndim == 3 and image.shape[1] >= 10 * dpi and image.shape[0] >= 6 * dpi  # 11 in wide, 7+ in tall
    assert image[..., :3].std() > 0.05  # something was drawn, not a blank page


# ----------------------------------------------------------------------------------------------------------
# reading the Figure


@pytest.fixture()
def figures(monkeypatch):
    """Every Figure saved during the test, in order (plot_results returns only the path it wrote)."""
    saved = []
    savefig = Figure.savefig

    def keep(fig, *args, **kwargs):
        saved.append(fig)
        return savefig(fig, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", keep)
    return saved


def panels(fig) -> dict:
    """The stacked panels, top to bottom, by their y label."""
    return {ax.get_ylabel(): ax for ax in fig.axes}


def legend(ax) -> list[str]:
    leg = ax.get_legend()
    return [t.get_text() for t in leg.get_texts()] if leg is not None else []


def markers(ax, marker) -> list:
    """The lines of markers `marker` that hold data, unconnected or connected."""
    return [line for line in ax.lines if line.get_marker() == marker and len(line.get_xdata())]


def llc_points(ax) -> dict[str, list[float]]:
    """The λ̂ points by how they are drawn: filled blue (ok), hollow (verdict warn), red (verdict fail)."""
    out = {"ok": [], "warn": [], "fail": []}
    for line in markers(ax, "o"):
        kind = "fail" if to_hex(line.get_color()) == BAD else "warn" if line.get_mfc() == "white" else "ok"
        out[kind] += [float(x) for x in line.get_xdata()]
    return out


def crosses(ax) -> list[float]:
    """The steps (positions) of the red crosses that mark failed checkpoints."""
    return [float(x) for line in markers(ax, "x") if to_hex(line.get_color()) == BAD for x in line.get_xdata()]


def vlines(ax) -> list[tuple[float, str]]:
    """The boundaries: vertical lines across the panel, as (position, line style)."""
    return [(float(line.get_xdata()[0]), line.get_linestyle()) for line in ax.lines
            if len(line.get_xdata()) == 2 and line.get_xdata()[0] == line.get_xdata()[1]
            and list(line.get_ydata()) == [0, 1]]


def spans(ax) -> list[tuple[float, float, str]]:
    """The stage shading: (start, end, A | B | other), and (start, end, 'hidden') for the hatching of a hidden one."""
    faces = {colour: kind for kind, colour in STAGE_FACE.items()}
    out = []
    for p in ax.patches:
        kind = "hidden" if p.get_hatch() == "///" and to_hex(p.get_edgecolor()) == HIDDEN else \
            faces[to_hex(p.get_facecolor())]
        out.append((float(p.get_x()), float(p.get_x() + p.get_width()), kind))
    return out


def labels(ax) -> list[str]:
    """The texts drawn inside the panel and left visible (stage labels, notes)."""
    return [t.get_text() for t in ax.texts if t.get_visible()]


def tags(ax) -> list[tuple[float, str]]:
    """The boundary confidences printed along the top of the panel: (position, text)."""
    return [(float(loc), label.get_text()) for child in ax.child_axes
            for loc, label in zip(child.xaxis.get_majorticklocs(), child.xaxis.get_majorticklabels())
            if label.get_text()]


def approx(values, rel=1e-9):
    return pytest.approx(values, rel=rel)


# ----------------------------------------------------------------------------------------------------------
# the drawings


def test_full_file_with_stages_probes_and_a_failed_row(tmp_path, figures):
    src = write_results(tmp_path / "r.h5", STEPS, failed={STEPS[7]}, warn={STEPS[3], STEPS[20]}, fail={STEPS[25]})
    out = plot_results(src, tmp_path / "r.png")
    assert out == tmp_path / "r.png"
    check_png(out)

    (fig,) = figures
    ax = panels(fig)
    assert list(ax) == [LLC_PANEL, LOSS_PANEL, PROBES_PANEL]
    llc = ax[LLC_PANEL]
    # every checkpoint with a λ̂ is a point, drawn by its verdict; the failed one is a red cross along the bottom
    points = llc_points(llc)
    assert sorted(points["warn"]) == [STEPS[3], STEPS[20]] and points["fail"] == [STEPS[25]]
    assert sorted(points["ok"] + points["warn"] + points["fail"]) == sorted(set(STEPS) - {STEPS[7]})
    assert crosses(llc) == [STEPS[7]]
    # the loss at every checkpoint that has one, the smoothed λ̂ over the stored grid
    (loss,) = [line for line in ax[LOSS_PANEL].lines if len(line.get_xdata()) > 2]
    assert list(loss.get_xdata()) == [s for s in STEPS if s != STEPS[7]]
    assert any(len(line.get_xdata()) == 400 and line.get_marker() == "None" for line in llc.lines)
    # three stages shade every panel, meeting at the boundaries' precise positions (1.1 x the nearest checkpoint);
    # the hidden B is hatched; the sure boundary is a solid line, the tentative one dashed
    b1, b2 = 853 * 1.1, 28072 * 1.1
    assert [STEPS[i] for i in (14, 25)] == [853, 28072]
    for a in ax.values():
        assert [(x0, x1, kind) for x0, x1, kind in spans(a)] == [
            (approx(10.0), approx(b1), "A"), (approx(b1), approx(b2), "B"), (approx(b1), approx(b2), "hidden"),
            (approx(b2), approx(1e5), "other")]
        assert vlines(a) == [(approx(b1), "-"), (approx(b2), "--")]
    assert labels(llc) == ["A", "B (hidden)", "–"]
    assert tags(llc) == [(approx(b1), "0.93"), (approx(b2), "0.55")]
    assert legend(llc) == ["λ̂ ± s.e.", "λ̂, verdict warn", "λ̂, verdict fail", "smoothed λ̂", "failed checkpoint (1)",
                           *STAGE_LEGEND, "boundary (confidence on top)", "tentative boundary"]
    # both probes, the unlabelled one by its name; the rising one's onset (half its final value) a diamond
    probes = ax[PROBES_PANEL]
    assert legend(probes) == ["bigram", "in-context accuracy", ONSET_LEGEND]
    assert [list(line.get_xdata()) for line in markers(probes, "D")] == [[4175]]
    assert fig.get_suptitle() == r"$\hat{\lambda}$ over training: tiny-transformer/checkpoints"
    assert llc.get_title(loc="left").endswith("4 chains × 200 draws   ·   30 checkpoints (1 failed)")


def test_weight_norms_get_their_own_panel_relative_to_the_first_checkpoint(tmp_path, figures):
    src = write_results(tmp_path / "r.h5", STEPS, transitions=False, probes=False)
    gain = np.linspace(8.0, 4.0, len(STEPS))  # a LayerNorm gain that collapses to half
    info = {"prev_token": ("best previous-token head", ""), "ln_f_gain_norm": ("‖γ‖ ln_f", "L2 norm"),
            "embed_norm": ("‖W‖ embed", "Frobenius norm")}
    values = {int(s): {"prev_token": 0.1, "ln_f_gain_norm": float(g), "embed_norm": 2.5} for s, g in zip(STEPS, gain)}
    with h5py.File(src, "a") as f:
        store.Probes(info, values).write(f.create_group("probes"))
    plot_results(src, tmp_path / "r.png", dpi=LOW)
    (fig,) = figures
    ax = panels(fig)
    assert list(ax) == [LLC_PANEL, LOSS_PANEL, PROBES_PANEL, "norm ÷ first"]
    assert legend(ax[PROBES_PANEL]) == ["best previous-token head"]
    norms = ax["norm ÷ first"]
    assert legend(norms) == ["‖W‖ embed / 2.5", "‖γ‖ ln_f / 8"]  # HDF5 keeps the datasets in name order
    embed_line, gain_line = [line for line in norms.lines if len(line.get_xdata()) == len(STEPS)]
    np.testing.assert_allclose(gain_line.get_ydata(), gain / 8.0)
    np.testing.assert_allclose(embed_line.get_ydata(), 1.0)
    assert norms.get_yscale() == "log"


def test_without_the_optional_groups(tmp_path, figures):
    src = write_results(tmp_path / "r.h5", STEPS, transitions=False, probes=False)
    check_png(plot_results(src, tmp_path / "r.png", title="my run", dpi=LOW), LOW)
    (fig,) = figures
    ax = panels(fig)
    assert list(ax) == [LLC_PANEL, LOSS_PANEL]  # no probes panel
    assert fig.get_suptitle() == "my run"
    llc = ax[LLC_PANEL]
    assert sorted(llc_points(llc)["ok"]) == list(STEPS) and not crosses(llc)
    for a in ax.values():  # no stages, no boundaries, no confidences
        assert spans(a) == [] and vlines(a) == [] and tags(a) == [] and labels(a) == []
    assert legend(llc) == ["λ̂ ± s.e."]


def test_zero_boundaries(tmp_path, figures):
    src = write_results(tmp_path / "r.h5", STEPS, boundaries=0)
    with h5py.File(src, "r") as f:
        assert f["transitions/boundaries/step"].shape == (0,) and f["transitions/stages/type"].shape == (1,)
    check_png(plot_results(src, tmp_path / "r.png", dpi=LOW), LOW)
    (fig,) = figures
    for a in fig.axes:  # one stage over the whole run, no boundary line
        assert spans(a) == [(approx(10.0), approx(1e5), "A")] and vlines(a) == []
    llc = panels(fig)[LLC_PANEL]
    assert labels(llc) == ["A"] and tags(llc) == []
    assert legend(llc) == ["λ̂ ± s.e.", "smoothed λ̂", STAGE_LEGEND[0]]


def test_step_zero_and_a_failed_first_checkpoint(tmp_path, figures):  # step 0 with stages: the svg test below
    src = write_results(tmp_path / "r.h5", np.r_[0, STEPS], failed={0}, transitions=False)
    check_png(plot_results(src, tmp_path / "r.png", dpi=LOW), LOW)
    (fig,) = figures
    ax = panels(fig)
    zero = STEPS[0] / 2  # step 0 sits half the first step to the left of it, labelled "0"
    bottom = ax[PROBES_PANEL]
    assert bottom.xaxis.get_majorticklocs()[0] == zero
    assert [t.get_text() for t in bottom.xaxis.get_majorticklabels()][:3] == ["0", "10", "100"]
    assert crosses(ax[LLC_PANEL]) == [zero]  # the failed step 0 is a cross there
    assert sorted(llc_points(ax[LLC_PANEL])["ok"]) == list(STEPS)
    for a in ax.values():  # and a break mark on each panel's axis between 0 and the first step
        breaks = [float(line.get_xdata()[0]) for line in a.lines if isinstance(line.get_marker(), list)]
        assert breaks == approx([zero * np.sqrt(2) * 0.97, zero * np.sqrt(2) * 1.03])
    assert legend(ax[LLC_PANEL]) == ["λ̂ ± s.e.", "failed checkpoint (1)"]


def test_svg_and_pdf_and_what_the_text_says(tmp_path):
    src = write_results(tmp_path / "r.h5", np.r_[0, STEPS], failed={STEPS[4]})
    with matplotlib.rc_context({"svg.fonttype": "none"}):  # text as text, so the test can read it
        svg = plot_results(src, tmp_path / "r.svg", dpi=LOW).read_text()
    assert svg.lstrip().startswith("<?xml") and "<svg" in svg
    for text in ("tiny-transformer/checkpoints", "nβ 51.2", "4 chains × 200 draws", "31 checkpoints (1 failed)",
                 "B (hidden)", ">A<", ">0.93<", ">0.55<", ">0<", ">1k<", "in-context accuracy", "bigram",
                 "failed checkpoint (1)", "tentative boundary"):
        assert text in svg, text
    for text in ("hidden: λ̂ changes, loss barely does", "boundary (confidence on top)", ">" + ONSET_LEGEND + "<",
                 "stage B: λ̂ falls (simplifies)", ">smoothed λ̂<", ">probes<"):
        assert text in svg, text
    assert plot_results(src, tmp_path / "r.pdf", dpi=LOW).read_bytes().startswith(b"%PDF")


@pytest.mark.parametrize("steps", [np.array([0, 100, 1000, 10000]), np.array([500]), np.array([], dtype=int),
                                   np.arange(0, 30000, 100)])
def test_few_many_and_no_checkpoints(tmp_path, steps, figures):
    src = write_results(tmp_path / "r.h5", steps, transitions=len(steps) >= 4, probes=len(steps) > 0)
    check_png(plot_results(src, tmp_path / "r.png", dpi=LOW), LOW)
    (fig,) = figures
    ax = panels(fig)
    assert list(ax) == [LLC_PANEL, LOSS_PANEL] + ([PROBES_PANEL] if len(steps) else [])
    llc = ax[LLC_PANEL]
    x = np.where(steps > 0, steps, steps[steps > 0].min() / 2 if (steps > 0).any() else 0.5)
    if not len(steps):  # an empty file says so instead of an empty panel
        assert labels(llc) == ["no checkpoints in this file"] and llc_points(llc)["ok"] == []
        return
    assert sorted(llc_points(llc)["ok"]) == sorted(x.tolist())  # every checkpoint, step 0 included
    if len(steps) > 80:  # too many for error bars: a ±s.e. band, and the loss without dots
        assert legend(llc)[:2] == ["λ̂", "± s.e."] and len(llc.collections) == 1
        assert not markers(ax[LOSS_PANEL], "o")
    else:
        assert legend(llc)[0] == "λ̂ ± s.e." and "± s.e." not in legend(llc)
        assert [len(line.get_xdata()) for line in markers(ax[LOSS_PANEL], "o")] == [len(steps)]
    if len(steps) >= 4:  # the boundaries: nearest checkpoints to 1000 (sure) and 30000 (tentative), 1.1 x
        b = [1.1 * steps[np.argmin(np.abs(steps - s))] for s in (1000, 30000)]
        assert vlines(llc) == [(approx(b[0]), "-"), (approx(b[1]), "--")]
        assert tags(llc) == [(approx(b[0]), "0.93"), (approx(b[1]), "0.55")]
        assert [kind for _, _, kind in spans(llc)] == ["A", "B", "hidden", "other"]


def test_every_checkpoint_failed(tmp_path, figures):
    src = write_results(tmp_path / "r.h5", STEPS[:5], failed=set(STEPS[:5]), transitions=False, probes=False)
    check_png(plot_results(src, tmp_path / "r.png", dpi=LOW), LOW)
    (fig,) = figures
    llc = panels(fig)[LLC_PANEL]
    assert labels(llc) == ["no λ̂: all 5 checkpoints failed"]
    assert crosses(llc) == list(STEPS[:5]) and llc_points(llc) == {"ok": [], "warn": [], "fail": []}
    assert legend(llc) == ["failed checkpoint (5)"] and list(llc.get_yticks()) == []


@pytest.mark.parametrize("se, loss", [(True, True), (False, False)])
def test_a_curve_read_from_a_table(tmp_path, figures, se, loss):
    """engine "external" (slt-probe transitions curve.csv): titled by the table, whose columns the subtitle names in
    place of sampler settings it does not have; error bars only with an s.e.; the table's loss, or none."""
    csv = tmp_path / "published.csv"
    csv.write_text("step,llc,se,loss\n" + "".join(f"{s},{llc_curve(s):.4f},0.5,{loss_curve(s):.4f}\n" for s in STEPS))
    src = store.write_curve(tmp_path / "c.h5", read_curve(csv, se="se" if se else None, loss="loss" if loss else None))
    add_transitions(src, STEPS, [14], [0.93], ["A", "B"], [False, True])
    check_png(plot_results(src, tmp_path / "c.png", dpi=LOW), LOW)
    (fig,) = figures
    ax = panels(fig)
    assert list(ax) == [LLC_PANEL, "loss"]
    llc = ax[LLC_PANEL]
    assert fig.get_suptitle() == r"$\hat{\lambda}$ over training: published.csv"
    columns = "step 'step', λ̂ 'llc', s.e. 'se', loss 'loss'" if se else "step 'step', λ̂ 'llc'"
    assert llc.get_title(loc="left") == f"curve read from published.csv (columns: {columns})   ·   30 checkpoints"
    assert sorted(llc_points(llc)["ok"]) == list(STEPS) and not crosses(llc)
    assert legend(llc)[0] == ("λ̂ ± s.e." if se else "λ̂") and len(llc.collections) == (1 if se else 0)
    if loss:
        assert [len(line.get_xdata()) for line in markers(ax["loss"], "o")] == [len(STEPS)]
    else:
        assert labels(ax["loss"]) == ["no loss column in the table"] and not markers(ax["loss"], "o")


@pytest.mark.parametrize("scale, says", [(None, "no s.e. given: stages judged by the curve's own scatter"),
                                         (40.0, "stages judged by the curve's scatter, 0.0"), (1.0, None)])
def test_the_subtitle_says_when_the_stages_were_judged_by_another_noise_scale(tmp_path, figures, scale, says):
    """No s.e., or one the curve's scatter disagrees with (rescaled): the error bars drawn are not what the stages
    were judged by, and the subtitle says so; a confirmed s.e. needs no word."""
    c = make_curve([(2.0, 25.0, 0.1), (3.5, -12.0, 0.1)], np.random.default_rng(7), rel=0.05)
    se = c.per_chain.std(1, ddof=1) / 2 * (scale or 1.0)
    csv = tmp_path / "curve.csv"
    csv.write_text("step,llc,se\n" + "".join(f"{s},{m},{e}\n" for s, m, e in zip(c.step, c.per_chain.mean(1), se)))
    src = store.write_curve(tmp_path / "c.h5", read_curve(csv, se="se" if scale else None))
    detect_and_store(src, store.TransitionConfig(resamples=10))
    plot_results(src, tmp_path / "c.png", dpi=LOW)
    title = panels(figures[0])[LLC_PANEL].get_title(loc="left")
    assert (says in title) if says else ("judged" not in title), title


def test_a_misshapen_probe_is_skipped_with_a_warning(tmp_path, figures):
    src = write_results(tmp_path / "r.h5", STEPS, transitions=False)
    with h5py.File(src, "a") as f:
        f["probes/wrong"] = np.zeros(3)  # not one number per probed step
    assert store.Probes.read(src).skipped == ["wrong: not one number per probed step ((3,), float64)"]
    with pytest.warns(UserWarning, match="probes/wrong"):
        check_png(plot_results(src, tmp_path / "r.png", dpi=LOW), LOW)
    (fig,) = figures
    assert legend(panels(fig)[PROBES_PANEL]) == ["bigram", "in-context accuracy", ONSET_LEGEND]  # the rest is drawn


def test_crowded_stages_keep_hidden_labels_and_the_surest_boundary_tags(tmp_path, figures):
    steps = np.r_[0, np.unique(np.round(np.logspace(1, 5, 60)).astype(int))]
    src = write_results(tmp_path / "r.h5", steps, transitions=False, probes=False)
    # 0.42 sits right next to 0.81: one tag must go. The hidden B between them is too narrow for a word (a purple
    # "B"); the hidden A at the end has room for "A / hidden" stacked, not for "A (hidden)".
    where = np.searchsorted(steps, [30, 200, 240, 9000, 50000])
    add_transitions(src, steps, where, [0.99, 0.81, 0.42, 0.95, 0.88], ["other", "A", "B", "A", "B", "A"],
                    [0, 0, 1, 0, 0, 1], precise=False, smooth=False)
    with matplotlib.rc_context({"svg.fonttype": "none"}):  # text as text, so the test can read it
        svg = plot_results(src, tmp_path / "r.svg", dpi=LOW).read_text()
    for text in (">0.99<", ">0.81<", ">0.95<", ">0.88<", ">hidden<", ">B<"):
        assert text in svg, text
    assert ">0.42<" not in svg
    (fig,) = figures
    llc = panels(fig)[LLC_PANEL]
    assert [text for _, text in tags(llc)] == ["0.99", "0.81", "0.95", "0.88"]  # the tags kept, left to right
    assert [x for x, _ in tags(llc)] == approx([float(steps[i]) for i in where[[0, 1, 3, 4]]])
    assert vlines(llc) == [(approx(float(steps[i])), "-" if c >= 0.8 else "--")
                           for i, c in zip(where, [0.99, 0.81, 0.42, 0.95, 0.88])]  # every boundary is drawn
    shown = labels(llc)
    assert "A\nhidden" in shown and "B" in shown and "B (hidden)" not in shown and "A (hidden)" not in shown
    hidden_b = next(t for t in llc.texts if t.get_text() == "B" and t.get_visible())
    assert to_hex(hidden_b.get_color()) == HIDDEN  # the narrow hidden B: the bare letter, in the hidden colour


def test_step_axis_helpers():
    from slt_probe.analysis.plot import _run_name, _step_ticks

    assert _step_ticks(10, 1e5)[0] == [10, 100, 1000, 1e4, 1e5]
    assert _step_ticks(100, 400)[0] == [100, 200, 300, 400]  # less than a decade: every digit
    assert _step_ticks(100, 3000)[0] == [100, 200, 500, 1000, 2000]
    assert len(_step_ticks(1, 1e12)[0]) <= 9
    assert _run_name("/runs/gpt-tiny/checkpoints/", Path("r.h5")) == "gpt-tiny/checkpoints"
    assert _run_name("/runs/gpt-tiny", Path("r.h5")) == "gpt-tiny"
    assert _run_name(None, Path("/x/results.h5")) == "results"
