"""The optional groups of a results file, keyed by step: behavioural probes, and the refined λ̂ of components."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import h5py
import numpy as np

from slt_probe.store.h5 import STR, decode_attr
from slt_probe.store.parts import read_folded


@dataclass
class Probes:
    """Behavioural measurements per checkpoint, keyed by step: the file's `probes` group.

    values[step][name] is a number (a curve the plot draws) or an array (per-head scores, kept in the
    subgroup probes/heads/). info[name] = (label, description).
    """

    info: dict[str, tuple[str, str]]
    values: dict[int, dict[str, Any]]
    skipped: list[str] = field(default_factory=list)  # read: "name: why", datasets that are not one value per step

    def write(self, g: h5py.Group) -> None:
        g.attrs["description"] = "behavioural probes per checkpoint (slt-probe walk --probes), keyed by step"
        steps = sorted(self.values)
        g.create_dataset("step", data=np.array(steps, dtype=np.int64)).attrs["description"] = "checkpoint step"
        heads = None
        for name, (label, description) in self.info.items():
            column = [self.values[s].get(name) for s in steps]
            shape = next((np.shape(v) for v in column if v is not None), ())
            data = np.stack([np.full(shape, np.nan) if v is None else np.asarray(v, dtype=np.float64)
                             for v in column]) if steps else np.zeros((0, *shape))
            if shape:
                heads = heads or g.create_group("heads")
                ds = heads.create_dataset(name, data=data)
            else:
                ds = g.create_dataset(name, data=data.reshape(len(steps)))
            ds.attrs["label"], ds.attrs["description"] = label, description

    @staticmethod
    def read(path: Path) -> Optional["Probes"]:
        """The probes of results file `path`, those of its parts folded in (parts.py); None when it has none."""
        return read_folded(path, Probes.from_file, Probes.fold)

    @staticmethod
    def from_file(f: h5py.File) -> Optional["Probes"]:
        if "probes" not in f or "step" not in f["probes"]:
            return None
        g = f["probes"]
        steps = [int(s) for s in g["step"][...]]
        columns = {name: ds for name, ds in g.items() if isinstance(ds, h5py.Dataset) and name != "step"}
        if "heads" in g:
            columns.update(dict(g["heads"].items()))
        skipped = []
        for name, ds in list(columns.items()):
            if ds.shape[:1] != (len(steps),) or h5py.check_string_dtype(ds.dtype) is not None:
                skipped.append(f"{name}: not one number per probed step ({ds.shape}, {ds.dtype})")
                del columns[name]
        info = {name: (str(decode_attr(ds.attrs.get("label", name))), str(decode_attr(ds.attrs.get("description", ""))))
                for name, ds in columns.items()}
        arrays = {name: ds[...] for name, ds in columns.items()}
        values = {s: {name: (a[i].item() if a.ndim == 1 else a[i]) for name, a in arrays.items()}
                  for i, s in enumerate(steps)}
        return Probes(info, values, skipped)

    @staticmethod
    def fold(old: "Probes", new: "Probes") -> "Probes":
        """`new` (a later part) over `old`: a step's probes are measured together, so its values replace old's."""
        skipped = old.skipped + [s for s in new.skipped if s not in old.skipped]
        return Probes({**old.info, **new.info}, {**old.values, **new.values}, skipped)


REFINED_FIELDS = {  # name: description; one value per checkpoint of the component's subgroup
    "step": "checkpoint step",
    "llc_mean": "refined λ̂: only this component's parameters sampled, the rest held at w* (Wang et al. 2024)",
    "llc_se": "standard error of llc_mean across chains",
    "llc_per_chain": "refined λ̂ of each chain [checkpoint, chain]; NaN for a diverged chain",
    "verdict": "ok | warn | fail of this estimate's diagnostics (fail: it could not be computed)",
}


@dataclass
class Refined:
    """Refined LLCs per checkpoint, the file's `refined` group: one subgroup per component (walk(refine=...)).

    params[name] says what the component samples: the regular expression over parameter names that selects it, or
    a head's label ("head 1 of layer 0 (blocks.0)"); num_params[name] how many coordinates it holds; where[name]
    {"layer", "head"} (None where it is not a head or layer); values[name][step] = {"llc_mean", "llc_se",
    "llc_per_chain", "verdict"}.
    """

    params: dict[str, str]
    num_params: dict[str, int]
    values: dict[str, dict[int, dict[str, Any]]]
    where: dict[str, dict[str, Optional[int]]] = field(default_factory=dict)

    def write(self, g: h5py.Group, chains: int) -> None:
        g.attrs["description"] = ("refined LLCs: λ̂ with only one component's parameters sampled (Wang et al. 2024, "
                                  "arXiv 2410.02984), one subgroup per component, keyed by step")
        for name, pattern in self.params.items():
            sub = g.create_group(name)
            sub.attrs["params"], sub.attrs["num_params"] = pattern, int(self.num_params.get(name, 0))
            where = self.where.get(name, {})
            for key in ("layer", "head"):  # -1: not a layer's / head's component
                sub.attrs[key] = -1 if where.get(key) is None else int(where[key])
            sub.attrs["description"] = (f"refined λ̂ of {pattern}" if where.get("head") is not None else
                                        f"refined λ̂ of the parameters matching {pattern!r}")
            steps = sorted(self.values.get(name, {}))
            rows = [self.values[name][s] for s in steps]
            for column, description in REFINED_FIELDS.items():
                if column == "step":
                    data = np.array(steps, dtype=np.int64)
                elif column == "verdict":
                    data = np.array([r["verdict"] for r in rows], dtype=object)
                elif column == "llc_per_chain":
                    data = np.stack([np.asarray(r[column], dtype=np.float64) for r in rows]) if rows \
                        else np.zeros((0, chains))
                else:
                    data = np.array([r[column] for r in rows], dtype=np.float64).reshape(len(rows))
                ds = sub.create_dataset(column, data=data, dtype=STR if column == "verdict" else None)
                ds.attrs["description"] = description

    def heads(self, steps) -> Optional[dict[str, np.ndarray]]:
        """The per-head refined λ̂ as arrays along `steps`: {"llc_mean", "llc_se": [K, layers, heads]}, NaN where a
        head has no estimate (or a layer has fewer heads); None when no component is a head."""
        heads = {n: w for n, w in self.where.items() if w.get("head") is not None and n in self.values}
        if not heads:
            return None
        L = 1 + max(w["layer"] for w in heads.values())
        H = 1 + max(w["head"] for w in heads.values())
        out = {k: np.full((len(steps), L, H), np.nan) for k in ("llc_mean", "llc_se")}
        for name, w in heads.items():
            c = self.curve(name, steps)
            for k in out:
                out[k][:, w["layer"], w["head"]] = c[k]
        return out

    def curve(self, name: str, steps) -> dict[str, np.ndarray]:
        """Component `name`'s llc_mean, llc_se [K] and llc_per_chain [K, chains] along `steps`; NaN at steps
        it has no estimate for (a checkpoint that failed)."""
        values = self.values[name]
        chains = next((len(v["llc_per_chain"]) for v in values.values()), 0)
        have = [int(s) in values for s in steps]
        col = lambda k: np.array([values[int(s)][k] if h else np.nan for s, h in zip(steps, have)], dtype=float)  # noqa: E731
        per_chain = np.array([np.asarray(values[int(s)]["llc_per_chain"], dtype=float) if h else np.full(chains, np.nan)
                              for s, h in zip(steps, have)], dtype=float).reshape(len(have), chains)
        return {"llc_mean": col("llc_mean"), "llc_se": col("llc_se"), "llc_per_chain": per_chain}

    @staticmethod
    def read(path: Path) -> Optional["Refined"]:
        """The refined group of results file `path`, those of its parts folded in (parts.py); None when it has none."""
        return read_folded(path, Refined.from_file, Refined.fold)

    @staticmethod
    def from_file(f: h5py.File) -> Optional["Refined"]:
        if "refined" not in f:
            return None
        params, num_params, values, where = {}, {}, {}, {}
        for name, sub in f["refined"].items():
            params[name] = str(decode_attr(sub.attrs["params"]))
            num_params[name] = int(sub.attrs.get("num_params", 0))
            where[name] = {k: (None if int(sub.attrs.get(k, -1)) < 0 else int(sub.attrs[k])) for k in ("layer", "head")}
            cols = {k: (sub[k].asstr()[...] if k == "verdict" else sub[k][...]) for k in REFINED_FIELDS}
            values[name] = {int(s): {"llc_mean": float(cols["llc_mean"][i]), "llc_se": float(cols["llc_se"][i]),
                                     "llc_per_chain": cols["llc_per_chain"][i], "verdict": str(cols["verdict"][i])}
                            for i, s in enumerate(cols["step"])}
        return Refined(params, num_params, values, where)

    @staticmethod
    def fold(old: "Refined", new: "Refined") -> "Refined":
        """`new` (a later part) over `old`, component by component: the same component gains new's steps (replacing
        old's at the same step); one that samples something else now replaces old's whole (it started again)."""
        out = Refined(dict(old.params), dict(old.num_params), {k: dict(v) for k, v in old.values.items()},
                      dict(old.where))
        for name, pattern in new.params.items():
            same = out.params.get(name) == pattern and out.num_params.get(name) == new.num_params.get(name)
            out.params[name], out.num_params[name] = pattern, new.num_params.get(name, 0)
            out.where[name] = new.where.get(name, {})
            out.values[name] = {**out.values[name], **new.values.get(name, {})} if same else dict(new.values.get(name, {}))
        return out
