"""Turn the command line's --model / --model-config / --loss / --data / --config specs into Python objects.

Everything here runs before the first checkpoint is touched, so every failure is an InputError with one
line that names the path or spec and what is wrong: the CLI prints it and exits with code 2, no traceback.
Nothing here runs code it was not asked to run: data files are never unpickled beyond plain tensors
(torch.load(weights_only=True), np.load(allow_pickle=False)) and Hugging Face configs never pull in
custom code (trust_remote_code is always False).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import json
import re
import sys
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable, Optional

import h5py
import numpy as np
import torch
from torch import nn

from slt_probe.engine.data import Data, LossFn, as_tuple, check_lm_tokens, lm_cross_entropy, lm_targets_loss
from slt_probe.engine.sampler import SGLDConfig
from slt_probe.errors import InputError
from slt_probe.inputs import tlens
from slt_probe.inputs.checkpoints import Checkpoint, hf_config_path, stored_model_args

if sys.version_info >= (3, 11):
    import tomllib
else:  # tomllib joined the standard library in 3.11; tomli is the same parser
    import tomli as tomllib

# config attributes that bound the sequence length a model accepts, in the order they are looked up
CONTEXT_ATTRS = ("n_ctx", "max_position_embeddings", "n_positions", "block_size")


def _why(e: BaseException) -> str:
    """An exception as one short line: its type and its message with whitespace collapsed."""
    msg = " ".join(str(e).split())
    if len(msg) > 300:  # transformers lists hundreds of model types in some messages
        msg = msg[:300] + "..."
    return f"{type(e).__name__}: {msg}" if msg else type(e).__name__


# ---------------------------------------------------------------- callables: --model, --loss


def _import_file(path: Path, display: str, what: str):
    """Import a .py file by its path, as a module of its own (the repository root is not a package)."""
    resolved = path.resolve()
    # one name per file: importing the same file twice replaces the module instead of piling up copies
    mod_name = f"_slt_probe_{what}_{hashlib.sha1(str(resolved).encode()).hexdigest()[:12]}"
    spec = importlib.util.spec_from_file_location(mod_name, resolved)
    if spec is None or spec.loader is None:
        raise InputError(f"--{what} {display}: cannot be imported as a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module  # dataclasses look their module up in sys.modules
    folder = str(resolved.parent)
    sys.path.insert(0, folder)  # so the file can import its siblings
    try:
        spec.loader.exec_module(module)
    except (Exception, SystemExit) as e:
        del sys.modules[mod_name]
        raise InputError(f"--{what} {display}: importing it raised {_why(e)}") from None
    finally:
        if folder in sys.path:
            sys.path.remove(folder)
    return module


def _defined_names(module) -> list[str]:
    """Callables the module itself defines (not what it imported), else all its public names."""
    names = [k for k, v in vars(module).items()
             if not k.startswith("_") and callable(v) and getattr(v, "__module__", None) == module.__name__]
    return names or [k for k in vars(module) if not k.startswith("_")]


def load_callable(spec: str, *, what: str) -> Callable:
    """`path/to/file.py:name` (imported by path) or `package.module:name` (imported by name) -> the object."""
    target, _, name = spec.rpartition(":")  # rpartition: a Windows drive letter has a colon too
    if not target or not name.isidentifier():
        role = "factory" if what == "model" else "function"
        raise InputError(f"--{what} expects path/to/file.py:{role} or package.module:{role}, got {spec!r}")

    if target.endswith(".py") or "/" in target or "\\" in target:
        path = Path(target)
        if not path.is_file():
            raise InputError(f"--{what} {spec}: no such file {target}")
        module = _import_file(path, target, what)
    else:
        try:
            module = importlib.import_module(target)
        except ModuleNotFoundError as e:
            if e.name is not None and (target == e.name or target.startswith(e.name + ".")):
                raise InputError(f"--{what} {spec}: no module named {e.name!r} "
                                 f"(for a file, write path/to/file.py)") from None
            raise InputError(f"--{what} {spec}: importing {target} raised {_why(e)}") from None
        except (Exception, SystemExit) as e:
            raise InputError(f"--{what} {spec}: importing {target} raised {_why(e)}") from None

    if not hasattr(module, name):
        raise InputError(f"{target} has no {name!r} (it defines: {', '.join(_defined_names(module)) or 'nothing'})")
    obj = getattr(module, name)
    if not callable(obj):
        raise InputError(f"--{what} {spec}: {name} is not callable (it is of type {type(obj).__name__})")
    return obj


BUILTIN_LOSSES = {"targets": lm_targets_loss}  # --loss targets: the model's own loss from model(x, targets=y)


def load_loss(spec: str | None) -> Callable | None:
    """--loss file.py:fn, called as fn(model, batch) -> scalar, or a built-in name (BUILTIN_LOSSES); None keeps the
    default next-token loss."""
    if spec in BUILTIN_LOSSES:
        return BUILTIN_LOSSES[spec]
    return None if spec is None else load_callable(spec, what="loss")


# ---------------------------------------------------------------- models: --model, --model-config, --hf-config


def read_kwargs(path: Path | str | None, option: str = "--model-config") -> dict:
    """--model-config: the factory's keyword arguments from a .json or .toml file. None -> {}."""
    if path is None:
        return {}
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{option} {path}: no such file")
    suffix = path.suffix.lower()
    if suffix not in (".json", ".toml"):
        raise InputError(f"{option} {path}: unknown format {suffix or '(no suffix)'!r}, expected .json or .toml")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{option} {path}: cannot be read ({_why(e)})") from None
    try:
        kwargs = json.loads(text) if suffix == ".json" else tomllib.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(f"{option} {path}: invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}") from None
    except tomllib.TOMLDecodeError as e:  # its message already says "(at line L, column C)"
        raise InputError(f"{option} {path}: invalid TOML: {' '.join(str(e).split())}") from None
    if not isinstance(kwargs, dict):
        raise InputError(f"{option} {path}: the top level must be a table of keyword arguments, "
                         f"got a {type(kwargs).__name__}")
    return kwargs


def _describe(model: nn.Module, spec: str, kwargs: dict) -> dict:
    cls = type(model)
    module = sys.modules.get(cls.__module__)
    if cls.__module__.startswith("_slt_probe_"):  # imported by path: the file says more than our module name
        where = f"{getattr(module, '__file__', cls.__module__)}:"
    else:
        where = f"{cls.__module__}."
    return {"spec": spec, "kwargs": kwargs, "class": where + cls.__qualname__,
            "num_params": sum(p.numel() for p in model.parameters())}


def build_model(spec: str, config_path: Path | str | None = None, *,
                stored: Optional[tuple[dict, str]] = None) -> tuple[nn.Module, dict]:
    """--model file.py:factory [--model-config cfg]: factory(**kwargs) -> (model, description).

    stored: (kwargs, the checkpoint they came from) when --model-config is not given and the checkpoint carries its
    model's arguments (nanoGPT's model_args). A class that takes one config object, as nanoGPT's GPT(GPTConfig) does,
    is given its module's <Name>Config(**kwargs).

    --model config.json, a TransformerLens config (a HookedTransformerConfig's fields), builds that model instead.
    """
    if spec.lower().endswith(".json"):
        if config_path is not None:
            raise InputError(f"--model-config applies to a factory; --model {spec} is a whole model's config")
        return build_config_model(spec)
    factory = load_callable(spec, what="model")
    kwargs = read_kwargs(config_path)
    if config_path is None and stored is not None:
        kwargs, config_path = stored
    try:
        model = _construct(factory, kwargs)
    except TypeError as e:
        if config_path is None:
            raise InputError(f"--model {spec}: the factory raised {_why(e)}") from None
        raise InputError(f"--model-config {config_path}: factory {spec} rejected the arguments: "
                         f"{' '.join(str(e).split())}") from None
    except Exception as e:
        with_cfg = f" (with the arguments from {config_path})" if config_path is not None else ""
        raise InputError(f"--model {spec}: the factory raised {_why(e)}{with_cfg}") from None
    if not isinstance(model, nn.Module):
        raise InputError(f"--model {spec}: the factory returned a {type(model).__name__}, not a torch.nn.Module")
    desc = _describe(model, spec, kwargs)  # the class the factory returned, before adapt subclasses it
    return tlens.adapt(model), desc


def build_config_model(spec: str) -> tuple[nn.Module, dict]:
    """--model config.json: the TransformerLens model a HookedTransformerConfig saved as JSON describes
    (json.dump(cfg.to_dict(), f, default=str), or the arguments it was built with), randomly initialised: the
    checkpoints supply the weights. Nothing is downloaded."""
    d = read_kwargs(spec, option="--model")
    if "model_type" in d:
        raise InputError(f"--model {spec}: a Hugging Face config, not a TransformerLens one; a folder of Hugging Face "
                         f"checkpoints needs no --model (each holds its config.json)")
    if not tlens.is_config(d):
        missing = ", ".join(k for k in tlens.REQUIRED if k not in d)
        raise InputError(f"--model {spec}: not a TransformerLens config (it lacks {missing}); a factory is given as "
                         f"path/to/file.py:factory")
    model, cfg, builder = tlens.build(d, f"--model {spec}")
    desc = _describe(model, spec, cfg)
    desc.update({"class": builder, "transformer_lens": tlens.version()})
    return model, desc


def _construct(factory: Callable, kwargs: dict) -> Any:
    """factory(**kwargs), or factory(<Name>Config(**kwargs)) for a class whose one argument is a config object."""
    if isinstance(factory, type):
        params = [p for p in inspect.signature(factory.__init__).parameters.values() if p.name != "self"]
        config_cls = getattr(sys.modules.get(factory.__module__), f"{factory.__name__}Config", None)
        if len(params) == 1 and "config" in params[0].name and isinstance(config_cls, type) and \
                params[0].name not in kwargs:
            return factory(config_cls(**kwargs))
    return factory(**kwargs)


def build_hf_model(config_json: Path | str) -> tuple[nn.Module, dict]:
    """A Hugging Face causal LM from its config.json (or the folder holding it), randomly initialised:
    the checkpoints supply the weights. Never runs custom code from the config's repository."""
    path = Path(config_json)
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise InputError(f"--hf-config {config_json}: no such file")
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise InputError(f"--hf-config {path}: invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"--hf-config {path}: cannot be read ({_why(e)})") from None
    if not isinstance(d, dict):
        raise InputError(f"--hf-config {path}: the top level must be a JSON object, got a {type(d).__name__}")
    # checked before transformers sees the file: auto_map points at code shipped with the checkpoint
    if "auto_map" in d:
        raise InputError(f"--hf-config {path}: the config needs custom code (auto_map), which slt-probe refuses to "
                         f"run; pass --model path/to/file.py:factory instead")
    if not isinstance(d.get("model_type"), str):
        raise InputError(f"--hf-config {path}: no \"model_type\" (e.g. \"gpt2\"), so transformers cannot pick a class")
    try:
        from transformers import AutoConfig, AutoModelForCausalLM
    except ImportError:
        raise InputError(f"--hf-config {path}: transformers is not installed; pip install transformers, "
                         f"or pass --model path/to/file.py:factory") from None

    try:
        # a local file and local_files_only: no hub look-ups
        config = AutoConfig.from_pretrained(str(path), trust_remote_code=False, local_files_only=True)
    except Exception as e:
        raise InputError(f"--hf-config {path}: transformers rejected the config: {_why(e)}") from None
    try:
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=False)
    except ValueError as e:
        if "Unrecognized configuration class" in str(e):  # its message lists every causal LM transformers has
            raise InputError(f"--hf-config {path}: transformers has no causal LM for model_type "
                             f"{d['model_type']!r}") from None
        raise InputError(f"--hf-config {path}: cannot build a causal LM from it: {_why(e)}") from None
    except Exception as e:
        raise InputError(f"--hf-config {path}: cannot build a causal LM from it: {_why(e)}") from None
    desc = _describe(model, str(path), {})
    desc["model_type"] = d["model_type"]
    return model, desc


# ---------------------------------------------------------------- data: --data, --context, --tokenizer

PT_SUFFIXES = (".pt", ".pth")
H5_SUFFIXES = (".h5", ".hdf5")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):  # 1 MiB at a time: data files can be large
            h.update(chunk)
    return h.hexdigest()


def _to_long(arr: np.ndarray, where: str) -> torch.Tensor:
    """Integer token ids of any width -> torch.long, refusing negatives and values long cannot hold."""
    arr = np.asarray(arr)
    if arr.size and int(arr.min()) < 0:
        raise InputError(f"{where}: token ids must be non-negative, found {int(arr.min())}")
    if arr.dtype == np.uint64 and arr.size and int(arr.max()) > np.iinfo(np.int64).max:
        raise InputError(f"{where}: token id {int(arr.max())} does not fit in int64")
    return torch.from_numpy(arr.astype(np.int64))


def _windows(stream, context: int | None, where: str) -> torch.Tensor:
    """A 1-D token stream -> non-overlapping windows of context+1 tokens [N, context+1]; the ragged tail is dropped."""
    if context is None:
        raise InputError(f"{where}: a 1-D token stream needs --context T to cut it into sequences of T+1 tokens")
    width = context + 1
    n = len(stream) // width
    if n < 1:
        raise InputError(f"{where}: {len(stream)} tokens are too few for one sequence of "
                         f"--context {context} + 1 tokens")
    # slice before converting: only the tokens used leave the memory map
    return _to_long(np.asarray(stream[: n * width]), where).view(n, width)


def _token_ids(arr, context: int | None, where: str) -> torch.Tensor:
    """Token ids: 2-D [N, T+1] as is (the first context+1 of each row with --context), 1-D cut into windows."""
    dtype = np.dtype(arr.dtype)
    if dtype.kind not in "iu":
        raise InputError(f"{where}: token ids must be integers, got {dtype} {tuple(arr.shape)}; "
                         f"for other data with --loss, save a tuple of arrays (.npz or .pt)")
    if arr.ndim == 1:
        return _windows(arr, context, where)
    if arr.ndim != 2:
        raise InputError(f"{where}: token ids must be 2-D [N, T+1] or a 1-D stream, got shape {tuple(arr.shape)}")
    if arr.shape[0] == 0:
        raise InputError(f"{where}: no sequences (shape {tuple(arr.shape)})")
    width = arr.shape[1]
    if context is not None:
        if context + 1 > width:
            raise InputError(f"{where}: rows hold {width} tokens, --context {context} needs {context + 1}")
        width = context + 1  # keep the start of every sequence rather than cutting rows into pieces
    if width < 2:
        raise InputError(f"{where}: rows need at least 2 tokens (an input and its next token), got {width}")
    return _to_long(np.asarray(arr[:, :width]), where)


def _tensor_tuple(tensors: list, names: list[str] | None, where: str) -> tuple[torch.Tensor, ...]:
    """A tuple of data tensors for a custom --loss; their first dimensions must agree."""
    out = []
    for i, t in enumerate(tensors):
        label = repr(names[i]) if names else f"#{i}"
        if isinstance(t, np.ndarray):
            if t.dtype.kind not in "biufc":
                raise InputError(f"{where}: array {label} has dtype {t.dtype}, which is not numeric")
            if t.dtype.kind == "u" and t.dtype.itemsize > 1:
                t = t.astype(np.int64)  # torch has few operations for uint16/32/64
            t = torch.from_numpy(np.ascontiguousarray(t, dtype=t.dtype.newbyteorder("=")))
        if not isinstance(t, torch.Tensor):
            raise InputError(f"{where}: item {label} is a {type(t).__name__}, not a tensor")
        out.append(t)
    try:
        return as_tuple(tuple(out))
    except (TypeError, ValueError) as e:
        raise InputError(f"{where}: {e}") from None


def _read_pt(path: Path, where: str):
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        msg = str(e)
        glob = re.search(r"GLOBAL ([\w.]+)", msg)
        if glob:  # weights_only met a class or function: the pickle wants to run code
            raise InputError(f"{where}: refused to unpickle: the file holds Python objects ({glob.group(1)}), not only "
                             f"tensors; save a tensor, a tuple of tensors or a dict of tensors") from None
        detail = re.search(r"WeightsUnpickler error:\s*(.+?)\s*(Check the documentation|$)", msg, re.S)
        why = " ".join(detail.group(1).split()) if detail else _why(e)
        raise InputError(f"{where}: not a readable torch.save file ({why})") from None
    if isinstance(obj, torch.Tensor):
        return obj, None
    if isinstance(obj, (tuple, list)):
        return _tensor_tuple(list(obj), None, where), None
    if isinstance(obj, dict):
        bad = [f"{k!r} ({type(v).__name__})" for k, v in obj.items() if not isinstance(v, torch.Tensor)]
        if bad or not obj:
            raise InputError(f"{where}: a dict of data must hold only tensors (used in insertion order); "
                             f"not tensors: {', '.join(bad) or 'it is empty'}")
        names = [str(k) for k in obj]
        return _tensor_tuple(list(obj.values()), names, where), names
    raise InputError(f"{where}: holds a {type(obj).__name__}; "
                     f"expected a tensor, a tuple of tensors or a dict of tensors")


def _read_npz(path: Path, where: str):
    with open(path, "rb") as f:
        if f.read(2) != b"PK":  # np.load would otherwise try the file as a pickle
            raise InputError(f"{where}: not a .npz file (not a zip archive)")
    try:
        with np.load(path, allow_pickle=False) as z:
            names = list(z.files)  # the order the arrays were saved in
            arrays = [z[k] for k in names]
    except ValueError as e:
        if "allow_pickle" in str(e):
            raise InputError(f"{where}: refused to unpickle an object array; save numeric arrays only") from None
        raise InputError(f"{where}: not a readable .npz file ({_why(e)})") from None
    except Exception as e:
        raise InputError(f"{where}: not a readable .npz file ({_why(e)})") from None
    if not arrays:
        raise InputError(f"{where}: holds no arrays")
    return _tensor_tuple(arrays, names, where), names


def _h5_datasets(f) -> list[str]:
    names: list[str] = []
    f.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) else None)
    return names


def _read_h5(path: Path, dataset: str | None, context: int | None, where: str):
    try:
        f = h5py.File(path, "r")
    except Exception as e:
        raise InputError(f"{where}: not a readable HDF5 file ({_why(e)})") from None
    with f:
        available = _h5_datasets(f)
        if dataset is None:  # file.h5 alone is unambiguous when it holds one dataset
            if len(available) != 1:
                raise InputError(f"{where}: name the dataset as {path}:DATASET "
                                 f"(it holds: {', '.join(available) or 'none'})")
            dataset = available[0]
        if dataset not in f or not isinstance(f[dataset], h5py.Dataset):
            raise InputError(f"{path} has no dataset {dataset!r} (it holds: {', '.join(available) or 'none'})")
        try:
            return _token_ids(f[dataset], context, f"{path}:{dataset}"), dataset
        except InputError:
            raise
        except Exception as e:
            raise InputError(f"{where}: cannot read dataset {dataset!r} ({_why(e)})") from None


def _read_tokens_file(path: Path, fmt: str, context: int | None, where: str) -> torch.Tensor:
    """.npy, .bin and text: one array of token ids."""
    if fmt == "npy":
        with open(path, "rb") as f:
            if f.read(6) != b"\x93NUMPY":  # np.load would otherwise try the file as a pickle
                raise InputError(f"{where}: not a .npy file (no NUMPY header)")
        try:
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
        except ValueError as e:
            if "object" in str(e).lower() or "pickle" in str(e).lower():
                raise InputError(f"{where}: refused to unpickle an object array; save integer token ids") from None
            raise InputError(f"{where}: not a readable .npy file ({_why(e)})") from None
        except Exception as e:
            raise InputError(f"{where}: not a readable .npy file ({_why(e)})") from None
        return _token_ids(arr, context, where)
    size = path.stat().st_size
    if size == 0:
        raise InputError(f"{where}: the file is empty")
    if fmt == "bin":
        if size % 2:
            raise InputError(f"{where}: {size} bytes is not a whole number of uint16 tokens")
        if context is None:
            raise InputError(f"{where}: a .bin token stream needs --context T to cut it into sequences of T+1 tokens")
        return _windows(np.memmap(path, dtype=np.uint16, mode="r"), context, where)
    # text, byte tokenizer: the file's UTF-8 bytes are the token ids 0..255
    return _windows(np.frombuffer(path.read_bytes(), dtype=np.uint8), context, where)


DATASETS_MARKERS = ("dataset_info.json", "dataset_dict.json", "state.json")  # what save_to_disk writes


def _read_datasets_folder(path: Path, context: int | None, where: str) -> torch.Tensor:
    """A datasets folder's input_ids: equal rows as [N, L] (as .npy), ragged rows as one stream cut with --context."""
    try:
        import datasets
    except ImportError:
        raise InputError(f"{where}: reading a datasets folder needs the datasets package; "
                         f"pip install 'slt-probe[datasets]'") from None
    ds = datasets.load_from_disk(str(path))
    if isinstance(ds, datasets.DatasetDict):
        if "train" not in ds:
            raise InputError(f"{where}: a DatasetDict without a train split (has {', '.join(ds)}); pass that split's "
                             f"folder, e.g. {path / next(iter(ds))}")
        ds = ds["train"]
    if "input_ids" not in ds.column_names:
        raise InputError(f"{where}: no input_ids column (has {', '.join(ds.column_names)}); tokenize it first")
    rows = ds.with_format("numpy")[:]["input_ids"]  # [N, L] when the rows have one length, else arrays of each
    if isinstance(rows, np.ndarray) and rows.ndim == 2 and rows.dtype != object:
        return _token_ids(rows, context, where)
    return _windows(np.concatenate([np.asarray(r).reshape(-1) for r in rows]), context, where)


def _tokenize(path: Path, tokenizer: str) -> np.ndarray:
    """A text file's token ids [n] by a local tokenizer: a tokenizers JSON file or a Hugging Face tokenizer folder
    (never downloaded, never custom code)."""
    where = Path(tokenizer)
    if not where.exists():
        raise InputError(f"--tokenizer {tokenizer}: no such file or folder (byte, a tokenizer.json, or a tokenizer "
                         f"folder; nothing is downloaded)")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"--data {path}: not UTF-8 text ({_why(e)})") from None
    try:
        if where.is_file():
            from tokenizers import Tokenizer
            ids = Tokenizer.from_file(str(where)).encode(text).ids
        else:
            from transformers import AutoTokenizer
            tok = AutoTokenizer.from_pretrained(str(where), local_files_only=True, trust_remote_code=False)
            ids = tok(text)["input_ids"]
    except ImportError as e:
        if e.name is None:  # a module the tokenizer needs said so itself (sentencepiece, say)
            raise InputError(f"--tokenizer {tokenizer}: cannot be loaded ({_why(e)})") from None
        extra = "'slt-probe[datasets]'" if e.name.split(".")[0] == "tokenizers" else e.name.split(".")[0]
        raise InputError(f"--tokenizer {tokenizer}: needs {e.name}; pip install {extra}") from None
    except Exception as e:  # noqa: BLE001 - a broken tokenizer file or folder, in one line
        raise InputError(f"--tokenizer {tokenizer}: cannot be loaded ({_why(e)})") from None
    return np.asarray(ids, dtype=np.int64)


def _sha256_folder(path: Path) -> str:
    """One hash over a folder's files, by relative name and content, in sorted order."""
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(f.relative_to(path).as_posix().encode() + b"\0" + _sha256(f).encode())
    return h.hexdigest()


def _dtype_name(t: torch.Tensor) -> str:
    return str(t.dtype).removeprefix("torch.")


def load_data(spec: str, *, context: int | None = None, tokenizer: str | None = None) -> tuple[Data, dict]:
    """--data: a tensor of token ids [N, T+1] (or a tuple of tensors for --loss) and a description of it.

    .npy / .h5:DATASET  integer ids, 2-D [N, T+1] as is, or a 1-D stream cut into windows with --context
    .bin                nanoGPT's raw uint16 token stream, cut into windows with --context
    .pt                 a tensor (as .npy), or a tuple / list / dict of tensors for --loss
    .npz                a tuple of arrays, in the file's order, for --loss
    a datasets folder   datasets' save_to_disk, column input_ids: rows of one length as [N, T+1], ragged rows
                        joined into one stream and cut with --context (a DatasetDict: its "train" split)
    anything else       text, with --tokenizer: byte (its UTF-8 bytes are the ids), a tokenizer.json, or a
                        Hugging Face tokenizer folder; the ids are cut into windows with --context
    A stream is cut into non-overlapping windows of context+1 tokens (stride context+1); the ragged tail is dropped.
    """
    if context is not None and (not isinstance(context, int) or context < 1):
        raise InputError(f"--context must be a positive integer, got {context!r}")

    target, dataset = spec, None
    head, sep, tail = spec.rpartition(":")
    if sep and Path(head).suffix.lower() in H5_SUFFIXES:
        target, dataset = head, tail
    path = Path(target)
    suffix = path.suffix.lower()
    fmt = {".npy": "npy", ".bin": "bin", ".npz": "npz"}.get(suffix) or (
        "pt" if suffix in PT_SUFFIXES else "h5" if suffix in H5_SUFFIXES else "text")

    if not path.exists():
        raise InputError(f"--data {spec}: no such file")
    if path.is_dir() and any((path / marker).is_file() for marker in DATASETS_MARKERS):
        fmt = "datasets"
    elif not path.is_file():
        raise InputError(f"--data {spec}: not a file (nor a datasets folder written by save_to_disk)")
    if fmt == "text":
        if tokenizer is None:
            raise InputError(f"--data {spec}: not a known data format (.npy .bin .pt .npz .h5, a datasets folder); "
                             f"to read it as text, pass --tokenizer byte | tokenizer.json | a tokenizer folder")
    elif tokenizer is not None:
        raise InputError(f"--tokenizer applies to text files only; {spec} is read as {fmt}")

    names = None
    try:
        if fmt == "pt":
            data, names = _read_pt(path, spec)
        elif fmt == "npz":
            data, names = _read_npz(path, spec)
        elif fmt == "h5":
            data, dataset = _read_h5(path, dataset or None, context, spec)
        elif fmt == "datasets":
            data = _read_datasets_folder(path, context, spec)
        elif fmt == "text" and tokenizer != "byte":
            data = _windows(_tokenize(path, tokenizer), context, spec)
        else:
            data = _read_tokens_file(path, fmt, context, spec)
        if isinstance(data, torch.Tensor) and fmt == "pt":  # a lone tensor is token ids, as in .npy
            if data.is_floating_point() or data.is_complex() or data.dtype == torch.bool:
                raise InputError(f"{spec}: token ids must be integers, got {data.dtype} {tuple(data.shape)}; "
                                 f"for other data with --loss, save a tuple of tensors")
            data = _token_ids(data.detach().numpy(), context, spec)
        elif isinstance(data, tuple) and context is not None:
            raise InputError(f"--context applies to token ids; {spec} holds a tuple of {len(data)} tensors for --loss")
    except InputError:
        raise
    except (OSError, ValueError, RuntimeError, TypeError) as e:  # unreadable or corrupt files not caught above
        raise InputError(f"--data {spec}: cannot be read ({_why(e)})") from None

    tokens = isinstance(data, torch.Tensor)
    desc = {
        "path": str(path),
        "format": fmt,
        "sha256": _sha256_folder(path) if fmt == "datasets" else _sha256(path),
        "shape": list(data.shape) if tokens else [list(t.shape) for t in data],
        "dtype": _dtype_name(data) if tokens else [_dtype_name(t) for t in data],
        "context": data.shape[1] - 1 if tokens else None,  # T, what the model sees
        "tokenizer": tokenizer,
        "dataset": dataset,
        "names": names,  # keys of a .pt dict / arrays of an .npz, in the order of the tuple
    }
    return data, desc


# ---------------------------------------------------------------- model and data together


def _config_int(config: Any, name: str) -> int | None:
    value = config.get(name) if isinstance(config, dict) else getattr(config, name, None)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _model_config(model: nn.Module) -> Any:
    """Hugging Face's (and models/attn_only.py's) model.config, else TransformerLens' model.cfg, else None."""
    config = getattr(model, "config", None)
    return config if config is not None else getattr(model, "cfg", None)


def model_vocab_size(model: nn.Module) -> int | None:
    """config.vocab_size (Hugging Face models, models/attn_only.py) or cfg.d_vocab (TransformerLens), else the input
    embedding's size, else None."""
    config = _model_config(model)
    vocab = _config_int(config, "vocab_size")
    if vocab is None:
        vocab = _config_int(config, "d_vocab")
    if vocab is not None and vocab > 0:  # TransformerLens' d_vocab -1: not set
        return vocab
    get_emb = getattr(model, "get_input_embeddings", None)
    if callable(get_emb):
        try:
            emb = get_emb()
        except Exception:  # a model that only has the method's name
            emb = None
        if isinstance(emb, nn.Embedding):
            return emb.num_embeddings
    # the first embedding: token embeddings are usually declared before positional ones
    return next((m.num_embeddings for m in model.modules() if isinstance(m, nn.Embedding)), None)


def check_tokens_fit(data: Data, model: nn.Module, *, data_path: str) -> None:
    """Token ids below the model's vocabulary size, sequences no longer than its context (where it has one).

    Only for one tensor of integer ids: a tuple of tensors goes to a custom --loss that knows its own data.
    """
    if not isinstance(data, torch.Tensor) or data.dtype.is_floating_point or data.dtype == torch.bool:
        return
    if data.dim() != 2 or data.numel() == 0:
        return
    vocab = model_vocab_size(model)
    if vocab is not None:
        top = int(data.max())
        if top >= vocab:
            raise InputError(f"{data_path}: token id {top} >= the model's vocabulary size {vocab}")
    config = _model_config(model)
    n_ctx = next((v for v in (_config_int(config, a) for a in CONTEXT_ATTRS) if v is not None), None)
    T = data.shape[1] - 1  # the model sees the first T tokens of a row and predicts the last T
    if n_ctx is not None and T > n_ctx:
        raise InputError(f"{data_path}: sequences of {T} tokens exceed the model's context of {n_ctx}; "
                         f"pass --context {n_ctx}")


# ---------------------------------------------------------------- everything a walk or a calibration is given


@dataclass
class RunSpec:
    """What the command line says the checkpoints are and what λ̂ is measured on (walk and calibrate)."""

    model: Optional[str] = None  # path/to/file.py:factory or package.module:factory; None: a Hugging Face folder
    model_config: Optional[str] = None  # JSON/TOML of the factory's keyword arguments
    data: Optional[str] = None  # load_data's spec
    context: Optional[int] = None
    tokenizer: Optional[str] = None
    loss: Optional[str] = None  # file.py:fn; None: next-token cross-entropy


@dataclass
class RunInputs:
    model: nn.Module
    model_desc: dict  # stored in the results file's `model` attribute
    data: Data
    data_desc: dict  # ... and `data`
    loss_fn: Optional[LossFn]  # None: next-token cross-entropy


def load_inputs(spec: RunSpec, first: Checkpoint, engine: str = "slt") -> RunInputs:
    """Model, data and loss from the specs, checked against each other; `first` is the first checkpoint (a Hugging
    Face folder supplies the model's config when --model is not given). InputError, one line, when anything is bad."""
    if spec.model is not None:
        args = stored_model_args(first) if spec.model_config is None else None
        net, model_desc = build_model(spec.model, spec.model_config,
                                      stored=None if args is None else (args, f"{first.path} (model_args)"))
    else:
        hf = hf_config_path(first)
        if hf is None:
            raise InputError(f"{first.path}: not a Hugging Face folder with config.json; pass --model")
        net, model_desc = build_hf_model(hf)
    if spec.data is None:
        raise InputError("--data is required: the samples λ̂ is measured on")
    dataset, data_desc = load_data(spec.data, context=spec.context, tokenizer=spec.tokenizer)
    loss_fn = load_loss(spec.loss)
    if loss_fn is None or loss_fn is lm_targets_loss:
        try:
            check_lm_tokens(dataset)
        except ValueError as e:
            raise InputError(f"{spec.data}: {e}") from None
        check_tokens_fit(dataset, net, data_path=spec.data)
        if loss_fn is None:
            check_default_loss(net, dataset, model_path=spec.model or str(first.path))
    return RunInputs(net, model_desc, dataset, data_desc, loss_fn)


def check_default_loss(model: nn.Module, data: torch.Tensor, *, model_path: str) -> None:
    """The default next-token loss on two rows, before any checkpoint: a model whose output it cannot score (a
    nanoGPT GPT returns the last position's logits only) is one InputError, not a failed row per checkpoint."""
    with torch.no_grad():
        try:
            lm_cross_entropy(model.eval(), data[:2])
        except Exception as e:  # noqa: BLE001 - anything else (the initial weights, a device) is for the rows to say
            if isinstance(e, ValueError) and "the default next-token loss" in str(e):
                raise InputError(f"{model_path}: {e}") from None


def sgld_config(config_file: Optional[str], options: dict[str, Any]) -> SGLDConfig:
    """SGLDConfig from --config (TOML/JSON: an [sgld] table or top-level keys, SGLDConfig's fields), overridden by
    the options that are not None (the command line's)."""
    values = read_kwargs(config_file) if config_file else {}
    values = values.get("sgld", values)
    known = {f.name for f in fields(SGLDConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise InputError(f"{config_file}: unknown setting(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})")
    values.update({k: v for k, v in options.items() if v is not None})
    try:
        return SGLDConfig(**values)
    except (TypeError, ValueError) as e:
        raise InputError(f"{config_file or 'config'}: {e}") from None
