"""Finding the checkpoints of a training run, and loading them without trusting them.

discover() lists a folder of checkpoints and gives each its training step, read from the name whenever
the name has one, so that listing a hundred large files opens none of them; only a name without a
number ("last.ckpt", "final.safetensors") is looked inside. A Hugging Face hub cache (models--ORG--NAME/, as
snapshot_download leaves it) names its snapshots by commit hash: their steps come from the refs that name them
(Pythia's refs/step3000), never from a hash's digits. select() picks the ones to estimate.

Checkpoints are untrusted input: a torch pickle can run any code when loaded. Pickles are read only with
torch.load(weights_only=True), which refuses every global beyond tensors and plain containers, and
safetensors cannot hold code at all. load_into() copies the weights into a model all or nothing, after
checking keys, shapes and finiteness. Every failure is one line that starts with the file: InputError
stops the command, CheckpointError only the checkpoint (see errors.py).
"""

from __future__ import annotations

import bisect
import hashlib
import json
import math
import pickle
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence, Union

import torch
from torch import nn

from slt_probe.errors import CheckpointError, InputError
from slt_probe.inputs import tlens

# file suffix -> format; ".ckpt" loads like any torch pickle, the name only says where it came from
SUFFIX_FORMATS = {".pt": "torch", ".pth": "torch", ".bin": "torch", ".ckpt": "lightning", ".safetensors": "safetensors"}

# Hugging Face folders (save_pretrained, the Trainer's checkpoint-N/): one weights file or an index of
# shards. safetensors first, where a folder has both: it is faster to load and holds no pickle.
HF_SINGLE = ("model.safetensors", "pytorch_model.bin")
HF_SHARDED = (
    ("model.safetensors.index.json", re.compile(r"^model-\d+-of-\d+\.safetensors$")),
    ("pytorch_model.bin.index.json", re.compile(r"^pytorch_model-\d+-of-\d+\.bin$")),
)

# How training code names checkpoints, most specific first: the first pattern that matches gives the step.
# They see the name without its suffix and without Lightning's "-v1" tag (added when a name is taken).
STEP_PATTERNS = [
    # step_1000, step-1000, step1000, global_step1000, epoch=3-step=1000 (the step, not the epoch)
    ("step", re.compile(r"(?:^|[^a-z])step[=_-]?(\d+)", re.IGNORECASE)),
    ("iteration", re.compile(r"(?:^|[^a-z])iter(?:ation)?s?[=_-]?(\d+)", re.IGNORECASE)),  # iter_500
    ("checkpoint", re.compile(r"(?:^|[^a-z])(?:checkpoint|ckpt)[=_-]?(\d+)", re.IGNORECASE)),  # checkpoint-1000/
    # Lightning's "epoch=3-val_loss=0.52": the epoch, not the 52; discovery prefers the file's global_step
    ("epoch", re.compile(r"(?:^|[^a-z])epoch[=_-]?(\d+)", re.IGNORECASE)),
    ("last integer", re.compile(r"(\d+)(?!.*\d)")),  # model_1000, 000123
]
LIGHTNING_VERSION_TAG = re.compile(r"-v\d+$")
# a commit hash (a hub snapshot's folder name, a git revision): hex with letters and digits, whose digits are no step
COMMIT_HASH = re.compile(r"^(?=.*[a-f])(?=.*\d)[0-9a-f]{7,64}$")

# keys under which training scripts keep the step: nanoGPT saves iter_num, Lightning global_step
STEP_KEYS = ("step", "global_step", "iteration", "iter_num")
# keys a checkpoint nests the model's weights under (the optimizer state beside them is never reached)
WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "module")
# what DDP (module.) and torch.compile (_orig_mod.) add to every parameter name
WRAPPER_PREFIXES = ("module.", "_orig_mod.")

CHUNK = 1 << 20  # bytes per read when hashing


@dataclass(frozen=True)
class Checkpoint:
    step: int
    path: Path  # the file, or the folder for Hugging Face checkpoints
    format: str  # "torch" (.pt/.pth/.bin), "lightning" (.ckpt), "safetensors", "hf" (folder)
    files: tuple[Path, ...]  # the files whose bytes are the weights (sorted), for hashing


# ---------------------------------------------------------------------------------------------------
# discovery


def step_from_name(name: str) -> Optional[int]:
    """The training step a checkpoint's name gives (file suffix included or not), or None."""
    return _name_step(name)[0]


def _name_step(name: str) -> tuple[Optional[int], str]:
    """(step, which pattern gave it) from a checkpoint's name; (None, "") when it has no integer."""
    stem = name
    if Path(name).suffix.lower() in SUFFIX_FORMATS:
        stem = name[: -len(Path(name).suffix)]
    stem = LIGHTNING_VERSION_TAG.sub("", stem)
    if COMMIT_HASH.match(stem):
        return None, ""
    for kind, pattern in STEP_PATTERNS:
        m = pattern.search(stem)
        if m:
            return int(m.group(1)), kind
    return None, ""


def discover(ckpt_dir: Union[Path, str]) -> tuple[list[Checkpoint], list[tuple[Path, str]]]:
    """The checkpoints in ckpt_dir sorted by step, and (path, reason) for every entry that is not one."""
    root = Path(ckpt_dir)
    if not root.exists():
        raise InputError(f"{root}: checkpoint folder does not exist")
    if not root.is_dir():
        raise InputError(f"{root}: not a folder (pass the folder that holds the checkpoints)")
    hub = _hub_cache(root)
    folder = root if hub is None else hub[0]
    try:
        # hidden entries (.gitkeep, .DS_Store, .ipynb_checkpoints) are nobody's checkpoints: not even listed
        entries = sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    except OSError as e:
        raise InputError(f"{folder}: cannot list the folder ({e.strerror or e})") from None

    found: list[tuple[Checkpoint, bool]] = []  # (checkpoint, whether its step was read from inside it)
    skipped: list[tuple[Path, str]] = []
    for entry in entries:
        result = _inspect(entry) if hub is None else _inspect_snapshot(entry, hub[1].get(entry.name, []))
        if isinstance(result, str):
            skipped.append((entry, result))
        else:
            found.append(result)

    ckpts = _drop_aliases(found, skipped)
    if not ckpts:
        raise InputError(_nothing_found(root, skipped))
    skipped.sort(key=lambda s: s[0].name)
    return ckpts, skipped


def _inspect(entry: Path) -> Union[tuple[Checkpoint, bool], str]:
    """One folder entry as (checkpoint, step read from the file), or the reason it is not a checkpoint."""
    if entry.is_dir():
        files = _hf_weight_files(entry)
        if files is None:
            return "folder without model weights (model.safetensors, pytorch_model.bin or a shard index)"
        fmt = "hf"
    elif entry.is_file():
        fmt = SUFFIX_FORMATS.get(entry.suffix.lower())
        if fmt is None:
            return "not a checkpoint format"
        files = (entry,)
    else:
        return "not a regular file or folder (a broken link?)"

    step, kind = _name_step(entry.name)
    if kind == "epoch":
        # steps, not epochs, are what the curve is plotted against: one small read (the pickle, not the
        # tensors) per file; an unreadable file keeps its epoch, and loading it will say what is wrong
        inside, _ = _step_inside(entry, fmt)
        return Checkpoint(step if inside is None else inside, entry, fmt, files), False
    if step is not None:
        return Checkpoint(step, entry, fmt, files), False
    step, trouble = _step_inside(entry, fmt)
    if step is None:
        return "no step in the name or the file" + (f" ({trouble})" if trouble else "")
    return Checkpoint(step, entry, fmt, files), True


def _hub_cache(root: Path) -> Optional[tuple[Path, dict[str, list[str]]]]:
    """(its snapshots/ folder, {commit hash: names of the refs that point at it}) when root is a hub cache's model
    folder (models--ORG--NAME/, holding refs/ and snapshots/) or its snapshots/ folder; None otherwise."""
    repo = root if (root / "snapshots").is_dir() else root.parent if root.name == "snapshots" else None
    if repo is None or not (repo / "refs").is_dir():
        return None
    names: dict[str, list[str]] = {}
    try:
        for ref in sorted((repo / "refs").rglob("*")):
            if ref.is_file():  # refs/step3000, refs/main, refs/pr/1: a file holding the commit hash
                names.setdefault(ref.read_text().strip(), []).append(ref.relative_to(repo / "refs").as_posix())
    except OSError as e:
        raise InputError(f"{repo / 'refs'}: cannot read the hub cache's refs ({e.strerror or e})") from None
    return repo / "snapshots", names


def _inspect_snapshot(entry: Path, refs: list[str]) -> Union[tuple[Checkpoint, bool], str]:
    """A hub snapshot folder, its step from the refs naming it (the first whose name gives a step: step3000, not
    main); without one, what the folder itself says (trainer_state.json), or why it is skipped."""
    steps = [step for step in (step_from_name(r.rsplit("/", 1)[-1]) for r in refs) if step is not None]
    if len(set(steps)) > 1:
        return f"refs {', '.join(refs)} give it different steps"
    files = _hf_weight_files(entry) if entry.is_dir() else None
    if steps and files is not None:
        return Checkpoint(steps[0], entry, "hf", files), False
    result = _inspect(entry)
    if isinstance(result, str) and not result.startswith("folder without"):
        if refs:
            return f"its refs ({', '.join(refs)}) give no step, nor does the folder (trainer_state.json)"
        return "no ref names it (refs/<revision> holds a revision's commit hash), and the folder holds no step"
    return result


def _hf_weight_files(folder: Path) -> Optional[tuple[Path, ...]]:
    """The weight files of a Hugging Face folder, or None when it holds none."""
    for name in HF_SINGLE:
        if (folder / name).is_file():
            return (folder / name,)
    for index_name, shard_name in HF_SHARDED:
        if (folder / index_name).is_file():
            try:
                return tuple(sorted(p for p in folder.iterdir() if shard_name.match(p.name)))
            except OSError:
                return ()  # unreadable: a checkpoint still, so that loading it fails loudly, not silently
    return None


def _step_inside(entry: Path, fmt: str) -> tuple[Optional[int], str]:
    """The step stored inside a checkpoint whose name has none; (None, why) when there is none."""
    try:
        if fmt == "hf":
            state_file = entry / "trainer_state.json"
            if not state_file.is_file():
                return None, ""
            return _as_step(json.loads(state_file.read_text()).get("global_step")), ""
        if fmt == "safetensors":
            from safetensors import safe_open

            with safe_open(str(entry), framework="pt") as f:
                meta = f.metadata() or {}
            return _first_step(meta), ""
        # torch pickles: weights_only, and mmap, so the tensors' bytes are not even read
        obj = _torch_load(entry, torch.device("cpu"))
        return (_first_step(obj) if isinstance(obj, dict) else None), ""
    except CheckpointError as e:
        return None, str(e).removeprefix(f"{entry}: ")
    except Exception as e:  # unreadable JSON or safetensors header: the entry is skipped, with why
        return None, f"unreadable: {_short(e)}"


def _first_step(meta: dict) -> Optional[int]:
    for key in STEP_KEYS:
        step = _as_step(meta.get(key))
        if step is not None:
            return step
    return None


def _as_step(value: Any) -> Optional[int]:
    """A non-negative integer step from an int, an integral float, a digit string or a 0-dim tensor."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1 or value.dtype == torch.bool or value.is_complex():
            return None
        value = value.item()
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        value = int(value.strip()) if value.strip().isdigit() else None
    if isinstance(value, float):
        value = int(value) if value.is_integer() else None
    if isinstance(value, int) and value >= 0:
        return value
    return None


def _drop_aliases(found: list[tuple[Checkpoint, bool]], skipped: list[tuple[Path, str]]) -> list[Checkpoint]:
    """Sort by step and resolve steps held twice.

    A file whose step had to be read from inside it (Lightning's last.ckpt, a final.pt) is usually a copy of
    the newest named checkpoint: it is skipped as a duplicate. Any other pair is ambiguous: an error.
    (An "epoch=3.ckpt" whose step is read from inside it still counts as named.)
    """
    by_step: dict[int, list[tuple[Checkpoint, bool]]] = {}
    for ckpt, from_file in found:
        by_step.setdefault(ckpt.step, []).append((ckpt, from_file))
    kept = []
    for step in sorted(by_step):
        group = by_step[step]
        named = [c for c, from_file in group if not from_file]
        if len(group) > 1 and len(named) != 1:
            a, b = (named if len(named) > 1 else [c for c, _ in group])[:2]
            more = f" (and {len(group) - 2} more)" if len(group) > 2 else ""
            raise InputError(f"{a.path} and {b.path} both have step {step}{more}: keep one of them in the folder")
        keep = named[0] if named else group[0][0]
        kept.append(keep)
        skipped.extend((c.path, f"duplicate of {keep.path.name} (step {step})") for c, _ in group if c is not keep)
    return kept


def _nothing_found(root: Path, skipped: list[tuple[Path, str]]) -> str:
    if not skipped:
        return f"no checkpoints in {root} (the folder is empty)"
    n = len(skipped)
    shown = "; ".join(f"{p.name} ({why})" for p, why in skipped[:3]) + (f"; +{n - 3} more" if n > 3 else "")
    msg = f"no checkpoints in {root} ({n} {'entry' if n == 1 else 'entries'} skipped: {shown})"
    if _hf_weight_files(root) is not None:
        msg += "; it looks like one Hugging Face checkpoint: pass the folder that holds the checkpoints"
    return msg


# ---------------------------------------------------------------------------------------------------
# selection


def select(
    ckpts: list[Checkpoint],
    *,
    steps: Optional[Sequence[int]] = None,
    every: Optional[int] = None,
    max_checkpoints: Optional[int] = None,
) -> list[Checkpoint]:
    """The checkpoints to estimate, in step order. The options apply in the order steps -> every -> max."""
    chosen = sorted(ckpts, key=lambda c: c.step)
    if steps is not None:
        try:
            wanted = sorted({int(s) for s in steps})
        except (TypeError, ValueError):
            raise InputError(f"steps must be integers, got {list(steps)!r}") from None
        if not wanted:
            raise InputError("the list of steps to estimate is empty")
        have = {c.step: c for c in chosen}
        missing = [s for s in wanted if s not in have]
        if missing:
            where = f" in {chosen[0].path.parent}" if chosen else ""
            shown = _names(map(str, missing), 10)
            raise InputError(f"steps not found{where}: {shown} (have {_describe_steps(chosen)})")
        chosen = [have[s] for s in wanted]
    if every is not None:
        _check_positive("every", every)
        # every K-th, and always the last: the end of training is the checkpoint nobody wants to lose
        chosen = [c for i, c in enumerate(chosen) if i % every == 0 or i == len(chosen) - 1]
    if max_checkpoints is not None:
        _check_positive("max_checkpoints", max_checkpoints)
        chosen = _log_spaced(chosen, max_checkpoints)
    return chosen


def revision_steps(ckpt_dir: Union[Path, str], revisions: Sequence[str]) -> dict[str, int]:
    """{revision: the step of the snapshot it names}, in the order given, for a hub cache's refs (walk --revisions
    step1000,step3000 selects those steps). InputError, one line: ckpt_dir is no hub cache, a revision has no ref (the
    refs there are listed), or the snapshot a ref names is missing or is no checkpoint."""
    root = Path(ckpt_dir)
    hub = _hub_cache(root) if root.is_dir() else None
    if hub is None:
        if not root.exists():
            raise InputError(f"{root}: checkpoint folder does not exist")
        raise InputError(f"{root}: not a Hugging Face hub cache (models--ORG--NAME/ with refs/ and snapshots/), "
                         f"so --revisions has no refs to select by; select with --steps")
    snapshots, refs_of = hub
    wanted = list(dict.fromkeys(r.strip() for r in revisions if r.strip()))
    if not wanted:
        raise InputError("--revisions names no revision")
    commit_of = {ref: commit for commit, refs in refs_of.items() for ref in refs}
    unknown = [r for r in wanted if r not in commit_of]
    if unknown:
        have = _names(sorted(commit_of, key=_natural), 20) or "none"
        raise InputError(f"{snapshots.parent / 'refs'}: no ref {', '.join(unknown)} (refs: {have}); "
                         f"snapshot_download(repo_id, revision=...) fetches a revision")
    found, skipped = discover(root)
    by_commit = {c.path.name: c for c in found}
    why = {p.name: reason for p, reason in skipped}
    steps = {}
    for r in wanted:
        commit = commit_of[r]
        if commit in by_commit:
            steps[r] = by_commit[commit].step
        elif commit in why:
            raise InputError(f"{snapshots / commit}: the snapshot of revision {r} is not a checkpoint ({why[commit]})")
        else:
            raise InputError(f"{snapshots.parent / 'refs' / r}: names commit {commit}, which has no snapshot in "
                             f"{snapshots}")
    return steps


def _natural(name: str) -> list:
    """step3000 before step10000."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def _check_positive(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputError(f"{name} must be an integer >= 1, got {value!r}")


def _describe_steps(ckpts: list[Checkpoint]) -> str:
    if not ckpts:
        return "no checkpoints"
    if len(ckpts) <= 8:
        return "steps " + ", ".join(str(c.step) for c in ckpts)
    return f"{len(ckpts)} checkpoints, steps {ckpts[0].step}..{ckpts[-1].step}"


def _log_spaced(ckpts: list[Checkpoint], n: int) -> list[Checkpoint]:
    """n checkpoints spread evenly in log(1 + step), always the first and the last; all of them if <= n.

    Development happens early and fast, then slows: even spacing in log step spends the budget where the
    model changes. Each of n evenly spaced targets takes its nearest checkpoint; where two targets take the
    same one (a coarse early grid), the rest are filled with the checkpoints farthest from those chosen.
    """
    if len(ckpts) <= n:
        return list(ckpts)
    if n == 1:
        return [ckpts[-1]]
    x = [math.log1p(max(c.step, 0)) for c in ckpts]
    lo, hi = x[0], x[-1]
    picked = {0, len(x) - 1}
    for k in range(1, n - 1):
        target = lo + (hi - lo) * k / (n - 1)
        i = bisect.bisect_left(x, target)
        nearest = min((j for j in (i - 1, i) if 0 <= j < len(x)), key=lambda j: abs(x[j] - target))
        picked.add(nearest)
    while len(picked) < n:
        order = sorted(picked)
        xs = [x[j] for j in order]

        def gap(i: int) -> float:  # log distance from checkpoint i to the nearest picked one
            k = bisect.bisect_left(xs, x[i])
            return min(abs(x[i] - xs[j]) for j in (k - 1, k) if 0 <= j < len(xs))

        picked.add(max((i for i in range(len(x)) if i not in picked), key=lambda i: (gap(i), -i)))
    return [ckpts[i] for i in sorted(picked)]


# ---------------------------------------------------------------------------------------------------
# hashing


def checkpoint_sha256(ckpt: Checkpoint) -> str:
    """sha256 of the weights' bytes: a single file hashes as `sha256sum` would; a folder's files are hashed
    in sorted order, each as its name relative to the folder, its size and its bytes."""
    h = hashlib.sha256()
    single = len(ckpt.files) == 1 and ckpt.files[0] == ckpt.path
    for path in sorted(ckpt.files):
        try:
            with open(path, "rb") as f:
                if not single:
                    # name and size first, so that moving bytes between two files changes the hash
                    h.update(path.relative_to(ckpt.path).as_posix().encode() + b"\0")
                    h.update(path.stat().st_size.to_bytes(8, "little"))
                while chunk := f.read(CHUNK):
                    h.update(chunk)
        except OSError as e:
            raise CheckpointError(f"{path}: cannot read the file ({e.strerror or e})") from None
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------------
# loading


def hf_config_path(ckpt: Checkpoint) -> Optional[Path]:
    """config.json of a Hugging Face checkpoint, where it has one."""
    if ckpt.format != "hf":
        return None
    config = ckpt.path / "config.json"
    return config if config.is_file() else None


def load_state_dict(ckpt: Checkpoint, device: Union[str, torch.device] = "cpu") -> dict[str, torch.Tensor]:
    """The checkpoint's weights as a flat {name: tensor}, without the DDP and torch.compile prefixes."""
    device = torch.device(device)
    if ckpt.format in ("torch", "lightning", "safetensors"):
        state = _load_weights_file(ckpt.path, device, safetensors=ckpt.format == "safetensors")
    elif ckpt.format == "hf":
        state = _load_hf_folder(ckpt.path, device)
    else:
        raise CheckpointError(f"{ckpt.path}: unknown checkpoint format {ckpt.format!r}")
    return _strip_wrapper_prefixes(state, ckpt.path)


def _load_weights_file(path: Path, device: torch.device, safetensors: bool) -> dict[str, torch.Tensor]:
    if safetensors:
        from safetensors.torch import load_file

        try:
            state = load_file(str(path), device=str(device))
        except Exception as e:
            raise CheckpointError(f"{path}: not a readable safetensors file ({_short(e)})") from None
        if not state:
            raise CheckpointError(f"{path}: no weights found (the file holds no tensors)")
        return state
    return _find_weights(_torch_load(path, device), path)


def stored_model_args(ckpt: Checkpoint) -> Optional[dict]:
    """The model's constructor arguments a torch checkpoint carries beside its weights (nanoGPT's "model_args"),
    or None. Read with the same safe loader as the weights; an unreadable file is the walk's to report."""
    if ckpt.format not in ("torch", "lightning"):
        return None
    try:
        obj = _torch_load(ckpt.path, torch.device("cpu"))
    except CheckpointError:
        return None
    args = obj.get("model_args") if isinstance(obj, dict) else None
    return dict(args) if isinstance(args, dict) else None


def _torch_load(path: Path, device: torch.device) -> Any:
    """torch.load that can only build tensors and plain containers, with one-line errors."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read the file ({e.strerror or e})") from None
    if not head:
        raise CheckpointError(f"{path}: not a readable torch checkpoint (the file is empty)")
    is_zip = head == b"PK\x03\x04"  # mmap needs the zip format of torch >= 1.6
    try:
        # never weights_only=False: that runs whatever code the pickle names
        return torch.load(path, map_location=device, weights_only=True, mmap=is_zip)
    except pickle.UnpicklingError as e:
        # the weights-only unpickler reports every failure this way; a global it refused is named in it
        m = re.search(r"GLOBAL ([\w.]+)", str(e))
        if m:
            raise CheckpointError(
                f"{path}: refused to unpickle: it contains Python objects beyond tensors "
                f"(weights_only load failed: unsupported global {m.group(1)[:120]})"
            ) from None
        detail = _unpickler_detail(str(e))[:200]
        raise CheckpointError(f"{path}: not a readable torch checkpoint (truncated or corrupt: {detail})") from None
    except Exception as e:
        raise CheckpointError(f"{path}: not a readable torch checkpoint (truncated or corrupt: {_short(e)})") from None


def _find_weights(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    """The flat {name: tensor} inside a loaded checkpoint, looking under the usual wrapper keys first."""

    def search(node: Any, depth: int) -> Optional[dict[str, torch.Tensor]]:
        if not isinstance(node, dict) or depth > 8:  # a pickle can hold a dict that contains itself
            return None
        for key in WRAPPER_KEYS:
            found = search(node.get(key), depth + 1)
            if found:
                return found
        # non-tensor entries (an epoch counter, a config dict) are not weights
        tensors = {k: v for k, v in node.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
        return tensors or None

    state = search(obj, 0)
    if state is None:
        if isinstance(obj, dict):
            keys = _names((str(k) for k in obj), 8)
            raise CheckpointError(f"{path}: no weights found (top-level keys: {keys or 'none'})")
        raise CheckpointError(f"{path}: no weights found (the file holds a {type(obj).__name__}, not a dict)")
    return state


def _load_hf_folder(folder: Path, device: torch.device) -> dict[str, torch.Tensor]:
    for name in HF_SINGLE:
        if (folder / name).is_file():
            return _load_weights_file(folder / name, device, safetensors=name.endswith(".safetensors"))
    for index_name, _ in HF_SHARDED:
        index = folder / index_name
        if index.is_file():
            return _load_shards(index, device)
    raise CheckpointError(f"{folder}: no model weights (model.safetensors, pytorch_model.bin or a shard index)")


def _load_shards(index: Path, device: torch.device) -> dict[str, torch.Tensor]:
    """Every shard an index names, merged; the index is untrusted too, so shards must lie beside it."""
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
        if not isinstance(weight_map, dict) or not all(isinstance(s, str) for s in weight_map.values()):
            raise ValueError("weight_map is not a {name: file} mapping")
    except Exception as e:
        raise CheckpointError(f"{index}: not a readable shard index ({_short(e)})") from None
    state: dict[str, torch.Tensor] = {}
    for shard in sorted(set(weight_map.values())):
        if Path(shard).name != shard or shard in ("", ".", ".."):
            raise CheckpointError(f"{index}: shard {shard!r} is not a file name in the same folder")
        path = index.parent / shard
        if not path.is_file():
            raise CheckpointError(f"{index.parent}: shard {shard} named in {index.name} is missing")
        state.update(_load_weights_file(path, device, safetensors=shard.endswith(".safetensors")))
    absent = [k for k in weight_map if k not in state]
    if absent:
        raise CheckpointError(f"{index.parent}: tensors listed in {index.name} are in no shard: {_names(absent)}")
    return state


def _strip_wrapper_prefixes(state: dict[str, torch.Tensor], path: Path) -> dict[str, torch.Tensor]:
    """Names as the bare model has them: DDP adds "module." in front, torch.compile "_orig_mod." anywhere
    (a compiled submodule of a Lightning module is "model._orig_mod.x")."""
    clean: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        name = key
        while name.startswith(WRAPPER_PREFIXES):
            name = name.split(".", 1)[1]
        while "._orig_mod." in name:
            name = name.replace("._orig_mod.", ".")
        if name in clean:
            raise CheckpointError(f"{path}: two weights are both named {name} once DDP/compile prefixes are removed")
        clean[name] = value
    return clean


def load_into(model: nn.Module, state: dict[str, torch.Tensor], *, source: str) -> None:
    """Copy the checkpoint's weights into the model, in place, all or nothing.

    Buffers missing from the checkpoint keep the model's values (causal masks, position indices), and so
    do parameters tied to one that is loaded (a language model's head tied to its embedding). Everything
    is checked (keys, shapes, finiteness) before the first byte is copied: a model is never left half loaded.
    """
    # persistent parameters and buffers, sharing storage with the model (not a module's _extra_state), named as
    # named_parameters() names them: a TransformerLens bridge's state_dict() renames them, its parameters are its
    # wrapped model's
    named = model.original_model if tlens.is_bridge(model) else model
    own = {k: v for k, v in named.state_dict().items() if isinstance(v, torch.Tensor)}
    params = dict(model.named_parameters(remove_duplicate=False))
    buffers = dict(model.named_buffers(remove_duplicate=False))
    state = _library_names(model, _align_prefix(state, own), own, source)

    # an old checkpoint may carry what the model now keeps as a non-persistent buffer (a causal mask)
    unexpected = [k for k in state if k not in own and k not in buffers]
    loaded_storage = {own[k].data_ptr() for k in own if k in state and own[k].numel() > 0}
    missing = [
        k for k in own
        if k not in state and k in params and not (own[k].numel() > 0 and own[k].data_ptr() in loaded_storage)
    ]
    if missing or unexpected:
        problems = ([f"missing keys: {_names(missing)}"] if missing else []) + (
            [f"unexpected keys: {_names(unexpected)}"] if unexpected else []
        )
        # none in common: most likely the wrong model for this run, not a damaged checkpoint
        hint = "" if any(k in own for k in state) else " (no checkpoint key matches the model: the wrong model?)"
        raise CheckpointError(f"{source}: " + "; ".join(problems) + hint)

    pairs = [(k, state[k], own[k]) for k in own if k in state]
    bad_type = [k for k, src, _ in pairs if not isinstance(src, torch.Tensor)]
    if bad_type:
        raise CheckpointError(f"{source}: entries that are not tensors: {_names(bad_type)}")
    bad_shape = [(k, src, dst) for k, src, dst in pairs if src.shape != dst.shape]
    if bad_shape:
        k, src, dst = bad_shape[0]
        more = f" (+{len(bad_shape) - 1} more)" if len(bad_shape) > 1 else ""
        raise CheckpointError(
            f"{source}: shape mismatch for {k}: checkpoint {list(src.shape)}, model {list(dst.shape)}{more}"
        )
    # parameters only: a buffer may hold -inf on purpose (an additive attention mask)
    bad_values = [(k, counts) for k, src, dst in pairs if k in params and (counts := _non_finite(src, dst.dtype))]
    if bad_values:
        k, (nan, inf, cast) = bad_values[0]
        more = f" (+{len(bad_values) - 1} more tensors)" if len(bad_values) > 1 else ""
        raise CheckpointError(f"{source}: non-finite weights in {k}{cast} ({nan} NaN, {inf} Inf){more}")

    with torch.no_grad():
        for _, src, dst in pairs:
            dst.copy_(src)  # casts to the model's dtype and device (bf16 checkpoint -> float32 model)


def _library_names(model: nn.Module, state: dict[str, torch.Tensor], own: dict[str, torch.Tensor],
                   source: str) -> dict[str, torch.Tensor]:
    """A transformers model's checkpoint under the names the model has now. transformers 5 renames keys on load
    and back on save (its conversion mapping: GPT-NeoX saves lm_head as embed_out); the renaming is the library's
    own, asked of it, never a copy. A key the library would split or merge (a WeightConverter: fused experts) stays
    as it is, so that the key check below names it. A TransformerLens bridge's checkpoint: _bridge_names. Other
    models, and names that already match, pass unchanged."""
    if tlens.is_hooked(model):  # before the names are compared: its derived buffers have the same names
        state = tlens.without_derived(state)
    if all(k in own for k in state):
        return state
    if tlens.is_bridge(model):
        return _bridge_names(model, state, own, source)
    transformers = sys.modules.get("transformers")  # a transformers model means transformers is imported
    if transformers is None or not isinstance(model, transformers.PreTrainedModel):
        return state
    try:
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import WeightConverter, WeightRenaming, rename_source_key
    except ImportError:  # transformers 4 renames nothing on load
        return state
    transforms = get_model_conversion_mapping(model)
    renamings = [t for t in transforms if isinstance(t, WeightRenaming)]
    converters = [t for t in transforms if isinstance(t, WeightConverter)]
    renamed = {}
    for key, value in state.items():
        new, converter = rename_source_key(key, renamings, converters, model.base_model_prefix, own)
        renamed[key if converter is not None else new] = value
    return renamed if len(renamed) == len(state) else state  # two keys onto one name: leave it to the key check


def _bridge_names(bridge: nn.Module, state: dict[str, torch.Tensor], own: dict[str, torch.Tensor],
                  source: str) -> dict[str, torch.Tensor]:
    """A checkpoint of a HookedTransformer (blocks.0.attn.W_Q, converted by TransformerLens itself) or of a bridge
    (its state_dict(): blocks.0.attn.q.weight) under the names of the bridge's parameters (layers.0._original_component
    ...), matched through the storage the bridge's state_dict() shares with them."""
    state = tlens.from_hooked_names(bridge, state, source)
    names = bridge.state_dict()
    state = _align_prefix(state, names)  # a Lightning module's "model." prefix, say
    raw = {(t.data_ptr(), t.shape): k for k, t in own.items() if t.numel() > 0}
    renamed = {raw.get((names[k].data_ptr(), names[k].shape), k) if k in names else k: v for k, v in state.items()}
    return renamed if len(renamed) == len(state) else state  # two keys onto one name: leave it to the key check


def _align_prefix(state: dict[str, torch.Tensor], own: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The checkpoint's names, with a leading prefix that they all share and the model lacks removed
    (a LightningModule saves its network as "model.x"), or one that every model key has added; whichever
    matches the most of the model's keys, the names as they are on a tie."""
    best, best_hits = state, len(state.keys() & own.keys())
    if best_hits == len(state):
        return state
    candidates = []
    stripped = state
    for _ in range(3):
        prefix = _shared_prefix(stripped)
        if prefix is None:
            break
        stripped = {k[len(prefix):]: v for k, v in stripped.items()}
        candidates.append(stripped)
    prefix = _shared_prefix(own)
    if prefix is not None:
        candidates.append({prefix + k: v for k, v in state.items()})
    for candidate in candidates:
        hits = len(candidate.keys() & own.keys())
        if hits > best_hits:
            best, best_hits = candidate, hits
    if best_hits < len(own):
        # a LightningModule that holds the network beside other modules (a loss with a class-weight buffer,
        # a frozen teacher): one prefix's subtree that is exactly the model's keys, and the rest left out
        for prefix in sorted({k.split(".", 1)[0] + "." for k in state if "." in k}):
            subtree = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
            if subtree.keys() == own.keys():
                return subtree
    return best


def _shared_prefix(keys: Iterable[str]) -> Optional[str]:
    """"a." when every key is "a.something", else None."""
    firsts = {k.split(".", 1)[0] + "." if "." in k else None for k in keys}
    return firsts.pop() if len(firsts) == 1 and None not in firsts else None


def _non_finite(src: torch.Tensor, dtype: torch.dtype) -> Optional[tuple[int, int, str]]:
    """(NaN count, Inf count, note) when the tensor, as the model will hold it, is not all finite."""
    if not src.is_floating_point():
        return None
    values, cast = src, ""
    if dtype.is_floating_point and torch.finfo(dtype).max < torch.finfo(src.dtype).max:
        values, cast = src.to(dtype), f" once cast to {str(dtype).removeprefix('torch.')}"  # fp32 -> fp16 overflows
    if bool(torch.isfinite(values).all()):
        return None
    return int(torch.isnan(values).sum()), int(torch.isinf(values).sum()), cast


# ---------------------------------------------------------------------------------------------------
# one-line messages


def _unpickler_detail(text: str) -> str:
    """What the weights-only unpickler objected to, without the paragraphs of advice around it."""
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1]
    advice = ("Weights only load failed", "Check the documentation", "Please file an issue")
    for line in text.splitlines():
        if line.strip() and not line.strip().startswith(advice):
            return line.strip()
    return "weights-only unpickler error"


def _names(keys: Iterable[str], limit: int = 5) -> str:
    keys = list(keys)
    shown = ", ".join(keys[:limit])
    return shown + (f" (+{len(keys) - limit} more)" if len(keys) > limit else "")


def _short(e: BaseException) -> str:
    """An exception as one short line: torch's messages run to paragraphs of advice."""
    text = " ".join(str(e).split())
    if len(text) < 30:  # "101", "": say what kind of failure it was
        return f"{type(e).__name__}: {text}" if text else type(e).__name__
    if len(text) > 200:
        text = text.split(". ")[0]
    return text if len(text) <= 200 else text[:199] + "…"
