"""The picture a researcher reads a walk from: λ̂ and the loss against training step, with the stages.

    from slt_probe.analysis.plot import plot_results
    plot_results("results.h5", "results.png")

Panels share one log-scale step axis, top to bottom:
  λ̂        λ̂ ± s.e. per checkpoint (hollow: verdict warn, red: verdict fail), the smoothed curve when the file
           has one, failed checkpoints as red crosses along the bottom;
  loss     L_n(w*) at each checkpoint: what the training curve shows;
  refined  the refined λ̂ of each component (a layer, a regex's parameters), only when the file has a `refined`
           group: λ̂ ± s.e., its smoothed curve and spurts (▲) when its transitions were detected;
  heads    the refined λ̂ of each attention head (walk --refine heads) as a heatmap, heads × checkpoints (one row
           a head, L<layer>H<head>, colour its λ̂), with its spurts (▲ ▼) where its transitions were detected;
  probes   behavioural metrics per checkpoint, only when the file has a `probes` group; a diamond marks the
           onset of each rising one (where it rises through half its final value);
  norms    the probes named "*_norm" (weight norms: LayerNorm gains, embeddings; probes.weight_norms), each
           divided by its value at the first checkpoint, on a log scale, so that norms of any size share an axis
           and a collapse reads as a fall below 1.
A curve read from a table (engine "external": `slt-probe transitions curve.csv`) is drawn the same way, titled by the
table's name; its subtitle names the table and its columns instead of sampler settings, and λ̂ has error bars only
where the table states an s.e.
Stages from the `transitions` group shade every panel by type (A blue, B orange, other grey), labelled at the top;
a hidden stage (λ̂ changes, the loss barely does) is hatched in purple and labelled "(hidden)", so the changes the
loss curve does not show stand out. Boundaries are vertical lines (dashed: tentative), their confidence printed
above the top panel.

The figure is a bare matplotlib Figure on an Agg canvas, not pyplot: no global state, no GUI backend, so it is
safe in scripts, notebooks and threads alike.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any, Optional

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter, NullLocator

from slt_probe.analysis.probes import onset
from slt_probe.engine.estimate import failed_checks
from slt_probe.store import (BOUNDARY_FIELDS, EXTERNAL_ENGINE, SPURT_FIELDS, STAGE_FIELDS, Probes, Refined, Transitions,
                             load_results, read_transitions)

# colours: λ̂ in blue, its failures in red; stage shades light enough that points stay readable on them
LLC = "#1f5fa6"
SMOOTH = "#0b2545"
BAD = "#d62728"
LOSS = "#262626"
HIDDEN = "#8e2c8e"  # hatching and labels of hidden stages: not a stage colour, so it cannot be misread as one
STAGE_FACE = {"A": "#dfeaf6", "B": "#fde3c8", "other": "#ececec"}
STAGE_TEXT = {"A": "A", "B": "B", "other": "–"}
STAGE_MEANING = {"A": "stage A: λ̂ rises, loss falls", "B": "stage B: λ̂ falls (simplifies)", "other": "other stage"}
REFINED_COLOURS = ["#6a3d9a", "#b15928", "#1b7837", "#c51b7d", "#35978f", "#8c510a"]
PROBE_COLOURS = ["#2a9d55", "#8c564b", "#e07b00", "#7f7f7f", "#17becf", "#bcbd22", "#9467bd", "#e377c2"]
# folder names that say nothing about the run: the title adds the parent folder to them
GENERIC_DIRS = {"checkpoints", "checkpoint", "ckpts", "ckpt", "models", "weights", "output", "outputs"}
ERRORBARS_UP_TO = 80  # beyond this many checkpoints, error bars merge into a thicket: a ±s.e. band instead

# ----------------------------------------------------------------------------------------------------------
# the optional groups, read through store and laid out along the rows


def _columns(items: list, names) -> dict[str, np.ndarray]:
    """Records (boundaries, stages, spurts) as one array per field, what the drawing code indexes."""
    return {name: np.array([getattr(item, name) for item in items], dtype=object if name in ("kind", "type") else None)
            for name in names}


def _transitions(t: Optional[Transitions]) -> Optional[dict]:
    """A curve's transitions as {boundaries, stages, spurts: columns; smooth: {log_step, llc}; smoothing}, or None."""
    if t is None:
        return None
    return {"boundaries": _columns(t.boundaries, BOUNDARY_FIELDS), "stages": _columns(t.stages, STAGE_FIELDS),
            "spurts": _columns(t.spurts, SPURT_FIELDS), "smoothing": t.smoothing, "noise": t.noise,
            "smooth": {"log_step": np.asarray(t.log_step, dtype=float), "llc": np.asarray(t.llc_smooth, dtype=float)}}


def _probe_curves(path: Path, step: np.ndarray) -> list[tuple[str, str, np.ndarray]]:
    """[(name, label, values aligned with the rows)] of every probe that is one number per checkpoint (per-head arrays
    are kept in the file, not drawn); what the file holds that is not a probe is skipped with a warning."""
    probes = Probes.read(path)
    if probes is None:
        return []
    for why in probes.skipped:
        warnings.warn(f"probes/{why}, not drawn")
    row = {int(s): i for i, s in enumerate(step)}
    curves = []
    for name, (label, _) in probes.info.items():
        column = {s: v[name] for s, v in probes.values.items() if name in v}
        if any(np.ndim(v) for v in column.values()):
            continue
        values = np.full(len(step), np.nan)
        for s_, v in column.items():
            if s_ in row:
                values[row[s_]] = v
        curves.append((name, label or name, values))
    return curves


def _refined_curves(path: Path, step: np.ndarray) -> list[dict]:
    """The refined λ̂ curves: [{name, params, head, llc, se (aligned with the rows), smooth_x, smooth_y, spurts}]."""
    refined = Refined.read(path)
    if refined is None:
        return []
    out = []
    for name in refined.values:
        c = refined.curve(name, step)
        curve = {"name": name, "params": refined.params[name], "llc": c["llc_mean"], "se": c["llc_se"],
                 "head": refined.where.get(name, {}).get("head") is not None,
                 "smooth_x": None, "smooth_y": None, "spurts": {}}
        t = _transitions(read_transitions(path, refined=name))
        if t is not None and len(t["smooth"]["log_step"]):
            curve["smooth_x"], curve["smooth_y"] = 10.0 ** t["smooth"]["log_step"], t["smooth"]["llc"]
            curve["spurts"] = t["spurts"]
        out.append(curve)
    return out


# ----------------------------------------------------------------------------------------------------------
# the step axis


def _zero_position(step: np.ndarray) -> float:
    """Where step 0 is drawn on the log axis: half the smallest positive step.

    The same convention as transitions.log_steps, so the smoothed curve and the boundary positions it stores (in
    log10 step) land exactly where the points are. Symlog would be the other honest choice, but its linear stretch
    [0, smallest step] takes a full decade of width for one point and puts the stored curve off its own points.
    A break mark on the axis tells the reader the gap between 0 and the first step is not to scale.
    """
    positive = step[step > 0]
    return float(positive.min()) / 2 if positive.size else 0.5


def _step_label(v: float) -> str:
    for div, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if v >= div:
            return f"{v / div:g}{suffix}"
    return f"{v:g}"


def _step_ticks(lo: float, hi: float) -> tuple[list[float], list[float]]:
    """Major (labelled) and minor ticks in [lo, hi]: decades, or 1-2-5 / every digit when the run spans less."""
    candidates = [(m, m * 10.0**e) for e in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)
                  for m in range(1, 10)]
    inside = [(m, v) for m, v in candidates if lo * (1 - 1e-9) <= v <= hi * (1 + 1e-9)]
    for digits in ({1}, {1, 2, 5}, set(range(1, 10))):
        major = [v for m, v in inside if m in digits]
        if len(major) >= 3:
            break
    while len(major) > 9:  # a run over many decades: every other decade, so labels never crowd
        major = major[::2]
    return major, [v for _, v in inside if v not in major]


def _format_step_axis(ax, x_zero: Optional[float], first: float, lo: float, hi: float) -> None:
    """Log axis over [lo, hi]; labelled ticks from the first positive step on (none in the padding before it, where
    a '9' would crowd a '10'), and '0' at step 0's position when the run has one."""
    ax.set_xscale("log")
    ax.set_xlim(lo, hi)
    major, minor = _step_ticks(first, hi)
    if x_zero is not None:
        major = [x_zero, *major]
    ax.xaxis.set_major_locator(FixedLocator(major))
    ax.xaxis.set_minor_locator(FixedLocator(minor))
    ax.xaxis.set_major_formatter(FuncFormatter(
        lambda v, _: "0" if x_zero is not None and math.isclose(v, x_zero) else _step_label(v)))
    ax.xaxis.set_minor_formatter(NullFormatter())


def _axis_break(ax, x: float) -> None:
    """Two short slashes on the bottom spine at x: the axis is not continuous there."""
    for dx in (0.97, 1.03):
        ax.plot([x * dx], [0], marker=[(-0.5, -1), (0.5, 1)], ms=7, mew=1.1, color="0.25", clip_on=False,
                transform=ax.get_xaxis_transform(), zorder=5)


# ----------------------------------------------------------------------------------------------------------
# the panels


def _draw_llc(ax, x, llc, se, verdict, bad, smooth_x, smooth_y, k, headroom) -> list:
    """λ̂ points by verdict, the smoothed curve, failed checkpoints; returns legend handles."""
    ms = float(np.interp(k, [10, 300], [6.0, 3.2]))  # 300 points of size 6 would merge into a rope
    good = ~bad
    stated = bool(np.isfinite(se[good]).any())  # a curve read from a table may state no s.e.: no bars, no band
    se = np.where(np.isfinite(se), se, 0.0)
    handles = []
    bars = k <= ERRORBARS_UP_TO
    if not bars and stated and good.sum() >= 2:  # a band, unbroken over failed rows: they carry no information
        ax.fill_between(x[good], (llc - se)[good], (llc + se)[good], color=LLC, alpha=0.3, lw=0, zorder=2)
    if smooth_x is None and good.sum() >= 2:  # no smoothed curve: a faint line leads the eye between points
        ax.plot(x[good], llc[good], color=LLC, lw=0.8, alpha=0.45, zorder=2.5)
    styles = {"ok": dict(color=LLC, mfc=LLC, label="λ̂ ± s.e." if bars and stated else "λ̂"),
              "warn": dict(color=LLC, mfc="white", label="λ̂, verdict warn"),
              "fail": dict(color=BAD, mfc=BAD, label="λ̂, verdict fail")}
    for v, style in styles.items():
        rows = good & ((verdict == v) if v != "ok" else ~np.isin(verdict, ["warn", "fail"]))
        if not rows.any():
            continue
        label = style.pop("label")
        if bars:
            h = ax.errorbar(x[rows], llc[rows], yerr=se[rows] if stated else None, fmt="o", ms=ms, mew=1.2,
                            elinewidth=1.0, capsize=0, ecolor=style["color"], zorder=3, **style)
        else:
            (h,) = ax.plot(x[rows], llc[rows], "o", ms=ms, mew=1.0, ls="none", zorder=3, **style)
        handles.append((h, label))
    if not bars and stated and good.sum() >= 2:
        handles.insert(1, (Patch(color=LLC, alpha=0.3, lw=0), "± s.e."))
    if smooth_x is not None:
        (h,) = ax.plot(smooth_x, smooth_y, color=SMOOTH, lw=1.8, zorder=4)
        handles.append((h, "smoothed λ̂"))
    if bad.any():
        ax.plot(x[bad], np.full(bad.sum(), 0.035), "x", color=BAD, ms=7, mew=1.8, ls="none", clip_on=False,
                transform=ax.get_xaxis_transform(), zorder=5)
        handles.append((Line2D([], [], marker="x", color=BAD, ms=7, mew=1.8, ls="none"),
                        f"failed checkpoint ({bad.sum()})"))

    # y range: the points with their error bars, with room above for the stage labels and below for the crosses
    lo_hi = np.concatenate([(llc - se)[good], (llc + se)[good]] + ([smooth_y] if smooth_x is not None else []))
    lo_hi = lo_hi[np.isfinite(lo_hi)]
    if lo_hi.size:
        lo, hi = float(lo_hi.min()), float(lo_hi.max())
        span = hi - lo if hi > lo else max(abs(hi), 1.0) * 0.1
        ax.set_ylim(lo - span * (0.14 if bad.any() else 0.08), hi + span * headroom)
    return handles


def _draw_stages(axes, label_ax, transitions, x_of_step) -> tuple[list, list, Optional[tuple]]:
    """Shade the stages and draw the boundaries on every panel; label the stages inside the top panel and tag the
    boundaries with their confidence along its top edge.

    Returns (legend handles, stage labels, boundary tags as (top axis, [(x, confidence)]) or None).
    """
    b, s = transitions["boundaries"], transitions["stages"]
    nb = len(b.get("step", []))
    ns = len(s.get("start_step", []))
    b_x = x_of_step(b.get("step", np.zeros(nb)))
    if "log_step" in b:  # the precise location, where it is a number
        precise = 10.0 ** b["log_step"].astype(float)
        b_x = np.where(np.isfinite(precise) & (precise > 0), precise, b_x)
    tentative = b.get("tentative", np.zeros(nb)).astype(bool)
    confidence = b.get("confidence", np.full(nb, np.nan)).astype(float)
    handles, labels, seen = [], [], set()

    # stages tile the run and meet at the boundaries: with one more stage than boundaries, the shared edges are
    # the boundaries' precise positions, so shading and lines agree (the stored steps are the nearest checkpoints)
    starts = x_of_step(s["start_step"]) if ns else np.zeros(0)
    ends = x_of_step(s["end_step"]) if ns else np.zeros(0)
    if ns == nb + 1 and nb:
        starts[1:], ends[:-1] = b_x, b_x
    types = s.get("type", np.array(["other"] * ns, dtype=object))
    hidden = s.get("hidden", np.zeros(ns)).astype(bool)
    for x0, x1, kind, hid in zip(starts, ends, types, hidden):
        kind = kind if kind in STAGE_FACE else "other"
        for ax in axes:
            ax.axvspan(x0, x1, color=STAGE_FACE[kind], lw=0, zorder=0)
            if hid:
                ax.axvspan(x0, x1, facecolor="none", edgecolor=HIDDEN, hatch="///", lw=0, alpha=0.35, zorder=0.5)
        seen.add(kind)
        text = STAGE_TEXT[kind]
        # (label, font size), longest first; the stacked form is smaller, to fit narrower stages
        options = [(f"{text} (hidden)", 9), (f"{text}\nhidden", 7.5), (text, 9)] if hid else [(text, 9)]
        t = label_ax.text(math.sqrt(x0 * x1), 0.975, options[0][0], transform=label_ax.get_xaxis_transform(),
                          ha="center", va="top", fontsize=9, fontweight="bold", color=HIDDEN if hid else "0.3",
                          linespacing=1.0, zorder=6)
        labels.append((t, options, (x0, x1), bool(hid)))
    for kind in ("A", "B", "other"):
        if kind in seen:
            handles.append((Patch(color=STAGE_FACE[kind], lw=0), STAGE_MEANING[kind]))
    if hidden.any():
        handles.append((Patch(facecolor="white", edgecolor=HIDDEN, hatch="///", lw=0),
                        "hidden: λ̂ changes, loss barely does"))

    for xb, tent in zip(b_x, tentative):
        for ax in axes:
            ax.axvline(xb, color="0.35", lw=1.0, ls="--" if tent else "-", zorder=1.5)
    if nb:
        if (~tentative).any():
            handles.append((Line2D([], [], color="0.35", lw=1.0), "boundary (confidence on top)"))
        if tentative.any():
            handles.append((Line2D([], [], color="0.35", lw=1.0, ls="--"), "tentative boundary"))

    # confidences as tick labels of a top axis: outside the data, and the layout makes room for them
    tags = None
    shown = np.isfinite(confidence)
    if shown.any():
        top = label_ax.secondary_xaxis("top")
        top.tick_params(axis="x", which="both", labelsize=7.5, length=3, pad=1.5, colors="0.3")
        tags = (top, list(zip(b_x[shown].tolist(), confidence[shown].tolist())))
        _set_tags(*tags)
    return handles, labels, tags


def _draw_spurts(ax, spurts: dict, smooth_x, smooth_y, colour: str = SMOOTH) -> list:
    """A triangle on the smoothed λ̂ where it changes fastest (▲ rising, ▼ falling; hollow: tentative)."""
    if not len(spurts.get("log_step", [])):
        return []
    handles = []
    for log_step, rate, tentative in zip(spurts["log_step"], spurts["rate"], spurts["tentative"]):
        xs = 10.0 ** float(log_step)
        y = float(np.interp(float(log_step), np.log10(smooth_x), smooth_y))
        marker = "^" if rate > 0 else "v"
        ax.plot([xs], [y], marker=marker, ms=9, mec=colour, mew=1.4, mfc="white" if tentative else colour,
                ls="none", zorder=5)
    handles.append((Line2D([], [], marker="^", ms=8, mec=SMOOTH, mfc=SMOOTH, ls="none"),
                    "spurt: λ̂ changes fastest (hollow: tentative)"))
    return handles


def _draw_loss(ax, x, loss, dots, label: str = "loss $L_n(w^*)$", missing: str = "") -> None:
    """L_n(w*) at each checkpoint: what the training curve shows (log scale when it spans orders of magnitude).
    `missing` says why the panel is empty when there is no loss."""
    finite = np.isfinite(loss)
    if finite.any():
        ax.plot(x[finite], loss[finite], color=LOSS, lw=1.2, marker=dots, ms=2.5, zorder=3)
        positive = loss[finite] > 0
        if positive.all() and loss[finite].max() / loss[finite].min() > 30:
            ax.set_yscale("log")
    else:
        ax.set_yticks([])
        if missing:
            ax.text(0.5, 0.5, missing, transform=ax.transAxes, ha="center", va="center", color="0.4", fontsize=9)
    ax.set_ylabel(label, fontsize=10)


def _draw_refined(ax, x, refined: list[dict]) -> None:
    """The refined λ̂ of each component ± s.e., with its smoothed curve and spurts (▲)."""
    for i, c in enumerate(refined):
        colour = REFINED_COLOURS[i % len(REFINED_COLOURS)]
        ok = np.isfinite(c["llc"])
        ax.errorbar(x[ok], c["llc"][ok], yerr=np.nan_to_num(c["se"][ok]), fmt="o", ms=3, color=colour,
                    elinewidth=0.8, capsize=0, label=f"{c['name']} ({c['params']})", zorder=3)
        if c["smooth_x"] is not None:
            ax.plot(c["smooth_x"], c["smooth_y"], color=colour, lw=1.4, zorder=4)
            _draw_spurts(ax, c["spurts"], c["smooth_x"], c["smooth_y"], colour=colour)
    ax.set_ylabel("refined λ̂", fontsize=10)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0, fontsize=8, frameon=False)


def _draw_heads(fig, ax, x, heads: list[dict]) -> None:
    """Each head's refined λ̂ as one row of a heatmap over the checkpoints, with its spurts (▲ rising, ▼ falling)."""
    values = np.array([c["llc"] for c in heads])  # [heads, checkpoints]
    # cell edges halfway between checkpoints on the log axis, the outer ones as far out again
    lx = np.log10(x)
    mid = (lx[1:] + lx[:-1]) / 2 if len(lx) > 1 else np.array([])
    half = (lx[1] - lx[0]) / 2 if len(lx) > 1 else 0.1
    edges = 10.0 ** np.concatenate([[lx[0] - half], mid, [lx[-1] + (lx[-1] - lx[-2]) / 2 if len(lx) > 1 else 0.1]])
    mesh = ax.pcolormesh(edges, np.arange(len(heads) + 1), np.ma.masked_invalid(values), cmap="viridis",
                         shading="flat", zorder=1)
    fig.colorbar(mesh, ax=ax, pad=0.01, fraction=0.03).set_label("refined λ̂ of a head", fontsize=9)
    for row, c in enumerate(heads):
        sp = c["spurts"]
        for log_step, rate, tentative in zip(sp.get("log_step", []), sp.get("rate", []), sp.get("tentative", [])):
            ax.plot([10.0 ** float(log_step)], [row + 0.5], marker="^" if rate > 0 else "v", ms=6, mec="white",
                    mew=1.0, mfc="none" if tentative else "white", ls="none", zorder=5)
    every = max(1, len(heads) // 24)  # at most ~24 labels: a Pythia has 48 heads or more
    ax.set_yticks(np.arange(0, len(heads), every) + 0.5, [c["name"] for c in heads[::every]], fontsize=7)
    ax.set_ylim(len(heads), 0)  # L0H0 at the top
    ax.grid(False)
    ax.set_ylabel("heads", fontsize=10)


def _draw_probes(ax, x, step, probes: list[tuple[str, np.ndarray]], dots) -> None:
    """Each probe against step, with a diamond at its onset (where it rises through half its final value)."""
    marked = False
    for i, (label, values) in enumerate(probes):
        ok = np.isfinite(values)
        colour = PROBE_COLOURS[i % len(PROBE_COLOURS)]
        ax.plot(x[ok], values[ok], color=colour, lw=1.2, marker=dots, ms=2.5, label=label, zorder=3)
        at = onset(step[ok], values[ok])
        if at is not None:
            j = int(np.nonzero(step == at)[0][0])
            ax.plot([x[j]], [values[j]], marker="D", ms=6.5, mfc=colour, mec="black", mew=0.8, ls="none", zorder=4)
            marked = True
    if marked:
        ax.plot([], [], marker="D", ms=6.5, mfc="white", mec="black", mew=0.8, ls="none",
                label="onset: rises through half its final value")
    ax.set_ylabel("probes", fontsize=10)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0, fontsize=8, frameon=False)


def _draw_norms(ax, x, norms: list[tuple[str, np.ndarray]], dots) -> None:
    """Each weight norm divided by its first finite value: 1 at the first checkpoint, a collapse falls below."""
    for i, (label, values) in enumerate(norms):
        ok = np.isfinite(values) & (values != 0)
        if not ok.any():
            continue
        colour = PROBE_COLOURS[i % len(PROBE_COLOURS)]
        first = values[ok][0]
        ax.plot(x[ok], values[ok] / first, color=colour, lw=1.2, marker=dots, ms=2.5, label=f"{label} / {first:.3g}",
                zorder=3)
    ax.axhline(1.0, color="0.6", lw=0.6, ls=":")
    # log scale: an unembedding that grows 40-fold and a LayerNorm gain that falls to 0.4 both stay readable
    ax.set_yscale("log")
    ax.set_ylabel("norm ÷ first", fontsize=10)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0, fontsize=8, frameon=False)


def _set_tags(top, boundaries) -> None:
    """Ticks of the top axis at the boundaries, labelled with their confidence."""
    where = np.log10([x for x, _ in boundaries]) if boundaries else np.zeros(0)
    top.xaxis.set_major_locator(FixedLocator([x for x, _ in boundaries]))
    top.xaxis.set_minor_locator(NullLocator())
    top.xaxis.set_major_formatter(FuncFormatter(
        lambda v, _: f"{boundaries[int(np.argmin(np.abs(where - math.log10(v))))][1]:.2f}" if v > 0 else ""))


def _shift_inside(t, renderer):
    """Move a label (x in data, y in axes units) sideways until it is inside its axes; return its extent."""
    ax, box = t.axes, t.get_window_extent(renderer)
    shift = max(ax.bbox.x0 + 2 - box.x0, 0) or min(ax.bbox.x1 - 2 - box.x1, 0)
    if shift:
        centre = ax.transData.transform((t.get_position()[0], 0))[0] + shift
        t.set_x(ax.transData.inverted().transform((centre, 0))[0])
        box = t.get_window_extent(renderer)
    return box


def _declutter(fig, labels, tags) -> None:
    """Keep the labels that do not collide.

    Stage labels: hidden stages first (they are the news), then the others, widest stage first. A label must fit
    in its stage, or it would be read as the next stage's: a hidden stage falls back to "B / hidden", then to a bare
    "B" in the hidden colour; an ordinary label that does not fit is left out. Boundary tags: most confident first.
    """
    renderer = fig.canvas.get_renderer()
    kept = []
    order = sorted(labels, key=lambda item: (not item[3], -math.log(item[2][1] / item[2][0])))
    for t, options, (x0, x1), hid in order:
        ax = t.axes
        left, right = ax.transData.transform([(x0, 0), (x1, 0)])[:, 0]
        for i, (option, size) in enumerate(options):
            t.set_text(option)
            t.set_fontsize(size)
            t.set_x(math.sqrt(x0 * x1))
            box = _shift_inside(t, renderer)
            # the bare letter of a hidden stage may overhang its stage: the hatching says the rest
            fits = box.width <= right - left - 4 or (hid and i == len(options) - 1)
            if fits and not any(box.expanded(1.2, 1.0).overlaps(o) for o in kept):
                kept.append(box.expanded(1.2, 1.0))
                break
        else:
            t.set_visible(False)

    if tags is not None:
        top, boundaries = tags
        ticks = top.xaxis.get_major_ticks()
        kept_tags, boxes = [], []
        for x, conf in sorted(boundaries, key=lambda item: -item[1]):
            # the top axis hands its positions back through its own transform: match them, not compare them
            label = next((tick.label2 for tick in ticks if math.isclose(tick.get_loc(), x, rel_tol=1e-9)), None)
            if label is None or not label.get_visible() or not label.get_text():
                continue
            box = label.get_window_extent(renderer).expanded(1.3, 1.0)
            if not any(box.overlaps(o) for o in boxes):
                boxes.append(box)
                kept_tags.append((x, conf))
        _set_tags(top, sorted(kept_tags))


# ----------------------------------------------------------------------------------------------------------
# the figure


def _run_name(checkpoint_dir: Any, path: Path) -> str:
    """The checkpoint folder's name; with its parent when the name alone says nothing ('run7/checkpoints')."""
    parts = Path(str(checkpoint_dir or "")).parts
    if not parts or parts[-1] in ("/", "\\"):
        return path.stem
    if parts[-1].lower() in GENERIC_DIRS and len(parts) >= 2 and parts[-2] not in ("/", "\\"):
        return f"{parts[-2]}/{parts[-1]}"
    return parts[-1]


def _source(attrs: dict) -> Optional[dict]:
    """The table a curve was read from ({csv, sha256, columns}), when the file holds one (engine "external")."""
    source = attrs.get("source")
    return source if attrs.get("engine") == EXTERNAL_ENGINE and isinstance(source, dict) else None


def _source_line(source: dict) -> str:
    """'curve read from curve.csv (step '_step', λ̂ 'llc', s.e. 'se')': where a curve from elsewhere came from."""
    columns = source.get("columns") if isinstance(source.get("columns"), dict) else {}
    named = [f"{label} {columns[role]!r}" for role, label in (("step", "step"), ("llc", "λ̂"), ("se", "s.e."),
                                                              ("loss", "loss")) if columns.get(role)]
    name = Path(str(source.get("csv", ""))).name or "a table"
    return f"curve read from {name}" + (f" (columns: {', '.join(named)})" if named else "")


def _noise_line(noise: Optional[dict]) -> Optional[str]:
    """How the detection's noise scale departs from the error bars drawn, if it does."""
    if not isinstance(noise, dict):
        return None
    if noise.get("source") == "curve":
        return "no s.e. given: stages judged by the curve's own scatter"
    if noise.get("rescaled"):
        return f"stages judged by the curve's scatter, {noise.get('scatter_ratio', float('nan')):.2g} × the s.e. drawn"
    return None


def _subtitle(attrs: dict, k: int, n_bad: int, smoothing: Optional[dict], noise: Optional[dict] = None) -> str:
    cfg = attrs.get("config_resolved") or {}
    if not isinstance(cfg, dict):
        cfg = {}
    parts = []
    source = _source(attrs)
    if source is not None:  # computed elsewhere: no sampler settings to show, only where the curve came from
        cfg = {}
        parts.append(_source_line(source))
    for key, name in (("nbeta", "nβ"), ("lr", "lr"), ("localization", "γ")):
        if isinstance(cfg.get(key), (int, float)):
            parts.append(f"{name} {cfg[key]:.3g}")
    if "chains" in cfg and "draws" in cfg:
        parts.append(f"{cfg['chains']} chains × {cfg['draws']} draws")
    parts.append(f"{k} checkpoints" + (f" ({n_bad} failed)" if n_bad else ""))
    if isinstance(smoothing, dict) and smoothing.get("stable") is False:
        parts.append("stage boundaries move with the smoothing: read them with care")
    if _noise_line(noise):
        parts.append(_noise_line(noise))
    return "   ·   ".join(parts)


def plot_results(path: str | Path, out: str | Path, *, title: str | None = None, dpi: int = 150) -> Path:
    """Draw a results file (λ̂, loss, stages, probes against training step) and save it to `out`.

    The format follows the suffix of `out` (.png, .pdf, .svg: anything matplotlib writes; none means PNG).
    Returns `out`.
    """
    out = Path(out)
    results_figure(path, title=title, dpi=dpi).savefig(out, format=out.suffix[1:].lower() or "png", dpi=dpi)
    return out


def results_figure(path: str | Path, *, title: str | None = None, dpi: int = 150) -> Figure:
    """The figure plot_results saves, laid out and decluttered: its axes are, top to bottom, λ̂, the loss, and the
    refined λ̂ and probes panels when the file has them."""
    path = Path(path)
    res = load_results(path)
    t = res.table
    k = len(t)
    transitions = _transitions(res.transitions)
    probes = _probe_curves(path, t["step"].to_numpy(dtype=np.int64))
    norms = [(label, values) for name, label, values in probes if name.endswith("_norm")]
    probes = [(label, values) for name, label, values in probes if not name.endswith("_norm")]
    refined = _refined_curves(path, t["step"].to_numpy(dtype=np.int64))
    heads = [c for c in refined if c["head"]]
    refined = [c for c in refined if not c["head"]]

    step = t["step"].to_numpy(dtype=np.int64)
    llc = t["llc_mean"].to_numpy(dtype=np.float64)
    se = t["llc_se"].to_numpy(dtype=np.float64)
    loss = t["init_loss"].to_numpy(dtype=np.float64)
    verdict = t["verdict"].to_numpy(dtype=object)
    bad = (t["status"].to_numpy(dtype=object) != "ok") | ~np.isfinite(llc)

    x_zero = _zero_position(step)
    has_zero = bool((step <= 0).any())

    def x_of_step(s):
        s = np.asarray(s, dtype=np.float64)
        return np.where(s > 0, s, x_zero)

    x = x_of_step(step)
    smooth = (transitions or {}).get("smooth") or {}
    smooth_x = smooth_y = None
    if smooth.get("log_step") is not None and smooth.get("llc") is not None and len(smooth["log_step"]):
        smooth_x, smooth_y = 10.0 ** smooth["log_step"].astype(float), smooth["llc"].astype(float)

    # -- layout: λ̂ gets the most height; loss and probes are context for it
    panels = (["llc", "loss"] + (["refined"] if refined else []) + (["heads"] if heads else [])
              + (["probes"] if probes else []) + (["norms"] if norms else []))
    heights = {"llc": 3.0, "loss": 1.5, "refined": 2.0, "heads": min(4.0, max(1.5, 0.2 * len(heads))), "probes": 1.5,
               "norms": 1.5}
    fig = Figure(figsize=(11, 1.3 + sum(heights[p] for p in panels) * 1.15), dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    axs = fig.subplots(len(panels), 1, sharex=True, height_ratios=[heights[p] for p in panels])
    ax = dict(zip(panels, np.atleast_1d(axs)))

    # x range: every checkpoint and the smoothed curve, with a little air on both sides (in log units)
    xs = np.concatenate([x, smooth_x if smooth_x is not None else []])
    if xs.size:
        lo, hi = math.log10(xs.min()), math.log10(xs.max())
    else:
        lo, hi = 0.0, 3.0
    pad = 0.03 * (hi - lo) + 0.05
    x_lo, x_hi = 10 ** (lo - pad), 10 ** (hi + pad)
    for a in ax.values():
        a.grid(True, which="major", color="0.85", lw=0.6)
        a.tick_params(labelsize=8.5)
    first = float(x[step > 0].min()) if (step > 0).any() else x_lo
    _format_step_axis(ax["llc"], x_zero if has_zero else None, first, x_lo, x_hi)

    # -- λ̂
    handles = _draw_llc(ax["llc"], x, llc, se, verdict, bad, smooth_x, smooth_y, k,
                        headroom=0.2 if transitions is not None else 0.08)
    ax["llc"].set_ylabel(r"$\hat{\lambda}$ (LLC)", fontsize=10)
    if bad.all():  # nothing to scale the axis by: say why the panel is empty instead
        ax["llc"].set_yticks([])
        ax["llc"].text(0.5, 0.5, f"no λ̂: all {k} checkpoints failed" if k else "no checkpoints in this file",
                       transform=ax["llc"].transAxes, ha="center", va="center", color="0.4")

    # -- loss (dots mark the checkpoints while there are few enough to tell apart; beyond that they are a rope)
    dots = "o" if k <= ERRORBARS_UP_TO else None
    source = _source(res.attrs)
    if source is None:
        _draw_loss(ax["loss"], x, loss, dots)
    else:  # a table's loss: whatever its loss column held, not necessarily L_n(w*)
        _draw_loss(ax["loss"], x, loss, dots, label="loss", missing="no loss column in the table")
    if refined:
        _draw_refined(ax["refined"], x, refined)
    if heads:
        _draw_heads(fig, ax["heads"], x, heads)
    if probes:
        _draw_probes(ax["probes"], x, step, probes, dots)
    if norms:
        _draw_norms(ax["norms"], x, norms, dots)

    # -- stages, over the λ̂ and loss panels (and the probes: behaviour is read against the same stages)
    labels, tags = [], None
    if transitions is not None:
        stage_handles, labels, tags = _draw_stages(list(ax.values()), ax["llc"], transitions, x_of_step)
        handles += stage_handles
        if smooth_x is not None:
            handles += _draw_spurts(ax["llc"], transitions.get("spurts") or {}, smooth_x, smooth_y)

    if has_zero:
        for a in ax.values():
            _axis_break(a, x_zero * math.sqrt(2))  # halfway, on the log axis, between 0 and the first step
    ax[panels[-1]].set_xlabel("training step (log scale)", fontsize=10)
    if handles:
        ax["llc"].legend([h for h, _ in handles], [lab for _, lab in handles], loc="upper left",
                         bbox_to_anchor=(1.01, 1.0), borderaxespad=0, fontsize=8, frameon=False)

    # -- title: what run, and the sampler settings that decide what λ̂ means
    if source is not None:  # a curve read from a table: the table's name
        name = Path(str(source.get("csv", path))).name
    else:
        name = _run_name(res.attrs.get("checkpoint_dir"), path)
    fig.suptitle(title or rf"$\hat{{\lambda}}$ over training: {name}", fontsize=13, x=0.01, ha="left")
    smoothing = transitions.get("smoothing") if transitions else None
    noise = transitions.get("noise") if transitions else None
    ax["llc"].set_title(_subtitle(res.attrs, k, int(bad.sum()), smoothing, noise), fontsize=8.5, color="0.35",
                        loc="left")

    if labels or tags is not None:
        fig.draw_without_rendering()  # lay out first: whether labels collide depends on the final axes size
        _declutter(fig, labels, tags)
    return fig


# ----------------------------------------------------------------------------------------------------------
# calibration sweeps


def plot_calibration(cal, out: str | Path, *, dpi: int = 130) -> Path:
    """λ̂ against lr for each localization (one panel per probed checkpoint), and the loss traces of every
    grid point at the last probed checkpoint: what `slt-probe calibrate` decided from, in one picture."""
    out = Path(out)
    P = len(cal.steps)
    series = sorted({(p["localization"], p["nbeta"]) for p in cal.points})
    lrs = sorted({p["lr"] for p in cal.points})
    llc, se = cal.llc(), cal.llc_se()
    fig = Figure(figsize=(max(8, 3.6 * P), 3.2 + 1.5 * len(series)), layout="constrained")
    FigureCanvasAgg(fig)
    top, bottom = fig.subfigures(2, 1, height_ratios=[1.0, 0.5 * len(series) + 0.4])
    axes = top.subplots(1, P, squeeze=False)[0]
    colours = [f"C{i}" for i in range(10)]
    for j, ax in enumerate(axes):
        for k, (gamma, nbeta) in enumerate(series):
            members = sorted((g for g, p in enumerate(cal.points) if (p["localization"], p["nbeta"]) == (gamma, nbeta)),
                             key=lambda g: cal.points[g]["lr"])
            x = np.array([cal.points[g]["lr"] for g in members])
            y, e = llc[members, j], se[members, j]
            label = f"γ {gamma:g}" + (f", nβ {nbeta:.3g}" if len({s[1] for s in series}) > 1 else "")
            ax.plot(x, y, color=colours[k % 10], lw=1, alpha=0.6)
            for g, xv, yv, ev in zip(members, x, y, e):
                ok = cal.passed[g]
                ax.errorbar([xv], [yv], yerr=[ev] if np.isfinite(ev) else None, fmt="o" if ok else "x",
                            color=colours[k % 10], mfc=colours[k % 10] if ok else "none", ms=6)
                if g == cal.recommended:
                    ax.plot([xv], [yv], marker="*", ms=16, color="gold", mec="black", zorder=5)
            ax.plot([], [], color=colours[k % 10], marker="o", label=label)
        ax.set_xscale("log")
        ax.set_xlabel("lr (ε)")
        ax.set_title(f"checkpoint step {cal.steps[j]}", fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("λ̂ ± s.e.")
    axes[0].plot([], [], "x", color="grey", label="failed a diagnostic")
    axes[0].plot([], [], "*", ms=12, color="gold", mec="black", label="recommended")
    axes[-1].legend(fontsize=8, loc="best")
    top.suptitle("calibration: λ̂ against step size (a good lr sits where λ̂ stops changing)", fontsize=11)

    grid_axes = bottom.subplots(len(series), len(lrs), squeeze=False, sharex=True)
    j = P - 1
    for r, (gamma, nbeta) in enumerate(series):
        for c, lr in enumerate(lrs):
            ax = grid_axes[r][c]
            g = next((g for g, p in enumerate(cal.points)
                      if (p["localization"], p["nbeta"], p["lr"]) == (gamma, nbeta, lr)), None)
            if g is None:
                ax.axis("off")
                continue
            res = cal.results[g][j]
            for chain in np.asarray(res.loss_trace):
                ax.plot(chain, lw=0.6, alpha=0.8)
            ax.axhline(res.init_loss, color="black", lw=0.8, ls="--")
            status = "ok" if cal.passed[g] else ",".join(failed_checks(res)) or res.verdict
            ax.set_title(f"lr {lr:g} · γ {gamma:g}: {status}", fontsize=7, color="black" if cal.passed[g] else "red")
            ax.tick_params(labelsize=6)
    bottom.suptitle(f"loss traces at step {cal.steps[j]} (dashed: L_n(w*))", fontsize=10)
    fig.savefig(out, dpi=dpi)
    return out
