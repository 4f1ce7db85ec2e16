"""Checkpoint discovery, selection, hashing and safe loading (slt_probe/inputs/checkpoints.py).

Every checkpoint is built here, in each format a training run writes, from a tiny model; the malicious
ones carry a pickle that would create a marker file if it were ever run.
"""

import hashlib
import json
import math
import os
import pathlib
import pickle

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from modelfiles import load_model_file
from slt_probe.inputs.checkpoints import (
    Checkpoint,
    checkpoint_sha256,
    discover,
    hf_config_path,
    load_into,
    load_state_dict,
    revision_steps,
    select,
    step_from_name,
)
from slt_probe.errors import CheckpointError, InputError


def tiny(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))


def reference_state() -> dict:
    return {k: v.clone() for k, v in tiny(seed=1).state_dict().items()}


def assert_loaded(model: nn.Module, expected: dict) -> None:
    got = model.state_dict()
    assert got.keys() == expected.keys()
    for k, v in expected.items():
        assert torch.equal(got[k], v.to(got[k].dtype)), k


def load_only(path: pathlib.Path) -> Checkpoint:
    ckpts, _ = discover(path.parent)
    (ckpt,) = [c for c in ckpts if c.path == path]
    return ckpt


class Evil:
    """Pickles as a call to marker.touch(): loading it with plain pickle would create the marker."""

    def __init__(self, marker: pathlib.Path):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


class EvilShell:
    def __init__(self, marker: pathlib.Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


# ---------------------------------------------------------------- step names


@pytest.mark.parametrize(
    "name, step",
    [
        ("step_1000.pt", 1000),
        ("step-1000.pt", 1000),
        ("step1000.pt", 1000),
        ("checkpoint-1000", 1000),
        ("ckpt-1000.safetensors", 1000),
        ("epoch=3-step=1000.ckpt", 1000),
        ("epoch=3-step=1000-v1.ckpt", 1000),
        ("epoch=3.ckpt", 3),  # an epoch: discovery looks inside for the step (see below)
        ("epoch=3-val_loss=0.52.ckpt", 3),
        ("model_1000.pth", 1000),
        ("000123.pt", 123),
        ("iter_500.pt", 500),
        ("global_step250.bin", 250),
        ("run2_step_40.pt", 40),
        ("final.pt", None),
        ("last.ckpt", None),
        ("last-v1.ckpt", None),
        ("model.safetensors", None),
    ],
)
def test_step_from_name(name, step):
    assert step_from_name(name) == step


# ---------------------------------------------------------------- every format, discovered and loaded


def _pt(sd, tmp):
    torch.save(sd, tmp / "step_5.pt")
    return "step_5.pt", 5, "torch"


def _nested_pth(sd, tmp):
    # no step in the name: read from the file, next to an optimizer state that must not be taken for weights
    opt = {"state": {0: {"exp_avg": torch.zeros(3, 4)}}, "param_groups": [{"lr": 0.1, "params": [0]}]}
    torch.save({"model": sd, "step": 7, "optimizer": opt}, tmp / "latest.pth")
    return "latest.pth", 7, "torch"


def _model_state_dict_bin(sd, tmp):
    torch.save({"model_state_dict": sd, "epoch": 2}, tmp / "model_300.bin")
    return "model_300.bin", 300, "torch"


def _ddp(sd, tmp):
    torch.save({f"module.{k}": v for k, v in sd.items()}, tmp / "step-40.pt")
    return "step-40.pt", 40, "torch"


def _compiled(sd, tmp):
    torch.save({f"_orig_mod.{k}": v for k, v in sd.items()}, tmp / "iter_50.pt")
    return "iter_50.pt", 50, "torch"


def _ddp_compiled(sd, tmp):
    torch.save({"model": {f"module._orig_mod.{k}": v for k, v in sd.items()}}, tmp / "000060.pt")
    return "000060.pt", 60, "torch"


def _lightning_state(sd, step, prefix="model."):
    return {
        "epoch": 3,
        "global_step": step,
        "pytorch-lightning_version": "2.4.0",
        "state_dict": {prefix + k: v for k, v in sd.items()},
        "loops": {"fit_loop": {"state_dict": {}, "epoch_progress": {"total": {"ready": 4}}}},
        "callbacks": {"ModelCheckpoint{'monitor': None}": {"best_model_score": torch.tensor(0.5)}},
        "optimizer_states": [{"state": {}, "param_groups": [{"lr": 0.01, "params": [0, 1, 2, 3]}]}],
        "lr_schedulers": [],
        "hparams_name": "kwargs",
        "hyper_parameters": {"lr": 0.01, "d_model": 3},
    }


def _lightning(sd, tmp):
    torch.save(_lightning_state(sd, 1000), tmp / "epoch=3-step=1000.ckpt")
    return "epoch=3-step=1000.ckpt", 1000, "lightning"


def _lightning_compiled_last(sd, tmp):
    torch.save(_lightning_state(sd, 1200, prefix="model._orig_mod."), tmp / "last.ckpt")
    return "last.ckpt", 1200, "lightning"


def _nanogpt(sd, tmp):
    torch.save({"model": sd, "iter_num": 800, "model_args": {"n_layer": 2}, "best_val_loss": torch.tensor(2.5),
                "config": {"batch_size": 8}}, tmp / "ckpt.pt")
    return "ckpt.pt", 800, "torch"


def _legacy_pt(sd, tmp):
    # torch < 1.6 format: not a zip, so it cannot be memory-mapped
    torch.save({"state_dict": sd}, tmp / "step_8.pt", _use_new_zipfile_serialization=False)
    return "step_8.pt", 8, "torch"


def _lightning_beside_a_loss(sd, tmp):
    # a LightningModule with the network at .model and a loss with a class-weight buffer at .criterion
    state = _lightning_state(sd, 1300)
    state["state_dict"]["criterion.weight"] = torch.ones(2)
    torch.save(state, tmp / "epoch=5-step=1300.ckpt")
    return "epoch=5-step=1300.ckpt", 1300, "lightning"


def _safetensors(sd, tmp):
    save_file(sd, tmp / "ckpt-60.safetensors")
    return "ckpt-60.safetensors", 60, "safetensors"


def _safetensors_metadata_step(sd, tmp):
    save_file(sd, tmp / "final.safetensors", metadata={"global_step": "70"})
    return "final.safetensors", 70, "safetensors"


def _hf_dir(tmp, name):
    folder = tmp / name
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "tiny"}))
    (folder / "optimizer.pt").write_bytes(b"not weights")  # the Trainer saves these too: never read
    return folder


def _hf_safetensors(sd, tmp):
    save_file(sd, _hf_dir(tmp, "checkpoint-100") / "model.safetensors")
    return "checkpoint-100", 100, "hf"


def _hf_sharded(sd, tmp, ext="safetensors", index="model.safetensors.index.json", stem="model"):
    folder = _hf_dir(tmp, "checkpoint-200")
    keys = sorted(sd)
    halves = [keys[: len(keys) // 2], keys[len(keys) // 2:]]
    weight_map = {}
    for i, half in enumerate(halves, 1):
        shard = f"{stem}-0000{i}-of-00002.{ext}"
        part = {k: sd[k] for k in half}
        save_file(part, folder / shard) if ext == "safetensors" else torch.save(part, folder / shard)
        weight_map.update({k: shard for k in half})
    (folder / index).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return "checkpoint-200", 200, "hf"


def _hf_sharded_bin(sd, tmp):
    return _hf_sharded(sd, tmp, ext="bin", index="pytorch_model.bin.index.json", stem="pytorch_model")


def _hf_bin(sd, tmp):
    torch.save(sd, _hf_dir(tmp, "checkpoint-300") / "pytorch_model.bin")
    return "checkpoint-300", 300, "hf"


def _hf_trainer_state(sd, tmp):
    folder = _hf_dir(tmp, "final")
    save_file(sd, folder / "model.safetensors")
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": 500, "log_history": []}))
    return "final", 500, "hf"


def _bf16(sd, tmp):
    torch.save({k: v.to(torch.bfloat16) for k, v in sd.items()}, tmp / "step_9.pt")
    return "step_9.pt", 9, "torch"


def _fp16_safetensors(sd, tmp):
    save_file({k: v.to(torch.float16) for k, v in sd.items()}, tmp / "step_11.safetensors")
    return "step_11.safetensors", 11, "safetensors"


BUILDERS = [
    _pt, _nested_pth, _model_state_dict_bin, _ddp, _compiled, _ddp_compiled, _legacy_pt, _nanogpt,
    _lightning, _lightning_compiled_last, _lightning_beside_a_loss,
    _safetensors, _safetensors_metadata_step,
    _hf_safetensors, _hf_sharded, _hf_sharded_bin, _hf_bin, _hf_trainer_state,
    _bf16, _fp16_safetensors,
]
HALF = {_bf16: torch.bfloat16, _fp16_safetensors: torch.float16}  # the dtype these builders store


@pytest.mark.parametrize("build", BUILDERS, ids=lambda b: b.__name__.strip("_"))
def test_format_discovered_and_loaded(build, tmp_path):
    sd = reference_state()
    name, step, fmt = build(sd, tmp_path)
    ckpts, skipped = discover(tmp_path)
    assert [(c.path.name, c.step, c.format) for c in ckpts] == [(name, step, fmt)]
    assert skipped == []
    assert all(f.is_file() for f in ckpts[0].files) and list(ckpts[0].files) == sorted(ckpts[0].files)
    if fmt == "hf":
        assert hf_config_path(ckpts[0]) == tmp_path / name / "config.json"
        assert all(f.parent == tmp_path / name and "optimizer" not in f.name for f in ckpts[0].files)
    else:
        assert hf_config_path(ckpts[0]) is None and ckpts[0].files == (tmp_path / name,)

    model = tiny(seed=0)
    load_into(model, load_state_dict(ckpts[0]), source=name)
    # bf16/fp16 files hold rounded values: the model must hold exactly those, cast up
    assert_loaded(model, {k: v.to(HALF.get(build, v.dtype)) for k, v in sd.items()})
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_hf_folder_without_config(tmp_path):
    folder = tmp_path / "checkpoint-7"
    folder.mkdir()
    save_file(reference_state(), folder / "model.safetensors")
    (ckpt,), _ = discover(tmp_path)
    assert (ckpt.step, ckpt.format, hf_config_path(ckpt)) == (7, "hf", None)


def test_attn_only_with_stale_mask_and_transformer_prefix(tmp_path):
    """A real model: a checkpoint that still carries its (now non-persistent) causal masks loads."""
    mod = load_model_file("attn_only")
    cfg = dict(vocab_size=8, n_ctx=4, d_model=8, n_heads=2, n_layers=1)
    torch.manual_seed(3)
    source = mod.attn_only(**cfg)
    sd = dict(source.state_dict())
    sd["blocks.0.mask"] = torch.ones(4, 4, dtype=torch.bool)
    torch.save({"model": {f"module.{k}": v for k, v in sd.items()}, "step": 3}, tmp_path / "final.pt")
    (ckpt,), _ = discover(tmp_path)
    torch.manual_seed(4)
    model = mod.attn_only(**cfg)
    load_into(model, load_state_dict(ckpt), source="final.pt")
    for k, v in source.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k
    assert torch.equal(model.blocks[0].mask, torch.tril(torch.ones(4, 4, dtype=torch.bool)))


class Wrapper(nn.Module):
    """Its own attribute is named `module`, which load_state_dict strips as a DDP prefix."""

    def __init__(self):
        super().__init__()
        self.module = nn.Linear(2, 2)


def test_model_whose_keys_start_with_module(tmp_path):
    torch.manual_seed(0)
    src = Wrapper()
    torch.save(src.state_dict(), tmp_path / "step_1.pt")
    (ckpt,), _ = discover(tmp_path)
    model = Wrapper()
    load_into(model, load_state_dict(ckpt), source="step_1.pt")
    assert torch.equal(model.module.weight, src.module.weight)


class TiedLM(nn.Module):
    def __init__(self):
        super().__init__()
        self.wte = nn.Embedding(5, 3)
        self.lm_head = nn.Linear(3, 5, bias=False)
        self.lm_head.weight = self.wte.weight  # tied, as GPT-2's
        self.register_buffer("scale", torch.tensor(2.0))


def test_tied_weight_and_buffer_may_be_absent():
    torch.manual_seed(0)
    w = torch.randn(5, 3)
    model = TiedLM()
    load_into(model, {"wte.weight": w}, source="tied.safetensors")  # no lm_head.weight, no scale buffer
    assert torch.equal(model.lm_head.weight, w) and model.scale.item() == 2.0


def test_missing_untied_parameter_is_an_error():
    sd = reference_state()
    del sd["1.bias"]
    with pytest.raises(CheckpointError, match=r"^x\.pt: missing keys: 1\.bias$"):
        load_into(tiny(), sd, source="x.pt")


# ---------------------------------------------------------------- discovery rules


def test_sorted_by_step_not_by_name(tmp_path):
    sd = reference_state()
    for name in ("step_100.pt", "step_20.pt", "step_3.pt", "step_0.pt"):
        torch.save(sd, tmp_path / name)
    ckpts, _ = discover(str(tmp_path))
    assert [c.step for c in ckpts] == [0, 3, 20, 100]


def test_duplicate_step_names_both(tmp_path):
    sd = reference_state()
    torch.save(sd, tmp_path / "step_10.pt")
    save_file(sd, tmp_path / "ckpt-10.safetensors")
    with pytest.raises(InputError) as e:
        discover(tmp_path)
    msg = str(e.value)
    assert "step_10.pt" in msg and "ckpt-10.safetensors" in msg and "step 10" in msg and "\n" not in msg


def test_last_ckpt_duplicating_a_step_is_skipped(tmp_path):
    sd = reference_state()
    torch.save(_lightning_state(sd, 10), tmp_path / "epoch=0-step=10.ckpt")
    torch.save(_lightning_state(sd, 10), tmp_path / "last.ckpt")
    torch.save(_lightning_state(sd, 5), tmp_path / "epoch=0-step=5.ckpt")
    ckpts, skipped = discover(tmp_path)
    assert [c.path.name for c in ckpts] == ["epoch=0-step=5.ckpt", "epoch=0-step=10.ckpt"]
    assert skipped == [(tmp_path / "last.ckpt", "duplicate of epoch=0-step=10.ckpt (step 10)")]


def test_epoch_named_files_take_the_step_inside(tmp_path):
    sd = reference_state()
    torch.save(_lightning_state(sd, 400), tmp_path / "epoch=3.ckpt")
    torch.save(_lightning_state(sd, 400), tmp_path / "last.ckpt")
    torch.save({"model": sd, "epoch": 2}, tmp_path / "epoch_2.pt")  # no step inside: the epoch it is
    ckpts, skipped = discover(tmp_path)
    assert [(c.path.name, c.step) for c in ckpts] == [("epoch_2.pt", 2), ("epoch=3.ckpt", 400)]
    assert skipped == [(tmp_path / "last.ckpt", "duplicate of epoch=3.ckpt (step 400)")]


def test_two_unnamed_files_with_one_step_is_an_error(tmp_path):
    sd = reference_state()
    torch.save({"model": sd, "step": 4}, tmp_path / "final.pt")
    torch.save({"model": sd, "step": 4}, tmp_path / "latest.pt")
    with pytest.raises(InputError, match="final.pt and .*latest.pt both have step 4"):
        discover(tmp_path)


def test_skipped_entries_listed_and_hidden_ones_not(tmp_path):
    torch.save(reference_state(), tmp_path / "step_1.pt")
    (tmp_path / "notes.txt").write_text("hi")
    (tmp_path / "logs").mkdir()
    torch.save({"model": reference_state()}, tmp_path / "final.pt")  # no step anywhere
    (tmp_path / ".gitkeep").write_text("")
    (tmp_path / ".DS_Store").write_bytes(b"\0")
    (tmp_path / ".ipynb_checkpoints").mkdir()
    ckpts, skipped = discover(tmp_path)
    assert [c.path.name for c in ckpts] == ["step_1.pt"]
    assert [(p.name, why.split(" (")[0]) for p, why in skipped] == [
        ("final.pt", "no step in the name or the file"),
        ("logs", "folder without model weights"),
        ("notes.txt", "not a checkpoint format"),
    ]


def test_missing_dir(tmp_path):
    with pytest.raises(InputError, match=r"nope: checkpoint folder does not exist"):
        discover(tmp_path / "nope")
    (tmp_path / "f.pt").write_bytes(b"")
    with pytest.raises(InputError, match=r"f\.pt: not a folder"):
        discover(tmp_path / "f.pt")


def test_empty_dir(tmp_path):
    (tmp_path / ".gitkeep").write_text("")
    with pytest.raises(InputError, match=r"^no checkpoints in .* \(the folder is empty\)$"):
        discover(tmp_path)


def test_only_non_checkpoints(tmp_path):
    for name in ("a.txt", "b.json", "c.csv", "d.log"):
        (tmp_path / name).write_text("x")
    with pytest.raises(InputError) as e:
        discover(tmp_path)
    msg = str(e.value)
    assert msg.startswith(f"no checkpoints in {tmp_path} (4 entries skipped: a.txt (not a checkpoint format);")
    assert msg.endswith("; +1 more)") and "\n" not in msg


def test_single_hf_checkpoint_passed_as_the_folder(tmp_path):
    save_file(reference_state(), tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(InputError, match="looks like one Hugging Face checkpoint"):
        discover(tmp_path)


def test_discovery_reads_no_file_with_a_step_in_its_name(tmp_path):
    # garbage with a step in the name is listed as found: only loading it may fail
    (tmp_path / "step_1.pt").write_bytes(b"garbage")
    (ckpt,), _ = discover(tmp_path)
    assert ckpt.step == 1
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_state_dict(ckpt)


def hub_cache(root: pathlib.Path, revisions: dict[str, str]) -> pathlib.Path:
    """A model folder as huggingface_hub's snapshot_download leaves it: blobs/ holding the files by content hash,
    snapshots/<commit>/ of links into blobs/, refs/<revision> holding the commit hash. revisions: {ref: commit}."""
    repo = root / "models--EleutherAI--pythia-tiny"
    (repo / "blobs").mkdir(parents=True)
    for i, (ref, commit) in enumerate(revisions.items()):
        (repo / "refs" / ref).parent.mkdir(parents=True, exist_ok=True)
        (repo / "refs" / ref).write_text(commit)
        snap = repo / "snapshots" / commit
        if snap.exists():
            continue
        snap.mkdir(parents=True)
        blob = repo / "blobs" / f"blob{i}"
        save_file({k: v + i for k, v in reference_state().items()}, blob)
        (snap / "model.safetensors").symlink_to(os.path.relpath(blob, snap))
        (snap / "config.json").write_text("{}")
    return repo


# Pythia's revisions are named stepN; their commit hashes end in digits that are no step (7, 45, 99 here, in the
# reverse order of the steps)
PYTHIA = {"step1000": "a9c1e" * 7 + "0ff99", "step2000": "b3d2f" * 7 + "1ee45", "step3000": "c4e3a" * 7 + "2dd07",
          "main": "c4e3a" * 7 + "2dd07"}


@pytest.mark.parametrize("where", ["the model folder", "its snapshots folder"])
def test_a_hub_cache_takes_each_snapshots_step_from_its_ref(tmp_path, where):
    repo = hub_cache(tmp_path, PYTHIA)
    ckpts, skipped = discover(repo if where == "the model folder" else repo / "snapshots")
    assert [(c.step, c.path.name) for c in ckpts] == [(1000, PYTHIA["step1000"]), (2000, PYTHIA["step2000"]),
                                                      (3000, PYTHIA["step3000"])]
    assert skipped == [] and all(c.format == "hf" for c in ckpts)
    model = tiny()
    load_into(model, load_state_dict(ckpts[1]), source=str(ckpts[1].path))  # through the blob link
    assert_loaded(model, {k: v + 1 for k, v in reference_state().items()})


def test_a_snapshot_no_ref_names_with_a_step_is_skipped_with_why(tmp_path):
    repo = hub_cache(tmp_path, {"step1000": PYTHIA["step1000"], "main": PYTHIA["step2000"]})
    (repo / "snapshots" / PYTHIA["step3000"]).mkdir()  # a snapshot no ref names, without weights
    ckpts, skipped = discover(repo)
    assert [c.step for c in ckpts] == [1000]
    why = dict((p.name, reason) for p, reason in skipped)
    assert why[PYTHIA["step2000"]] == "its refs (main) give no step, nor does the folder (trainer_state.json)"
    assert why[PYTHIA["step3000"]].startswith("folder without model weights")


def test_revisions_name_the_steps_of_the_snapshots_their_refs_point_at(tmp_path):
    repo = hub_cache(tmp_path, PYTHIA)
    assert revision_steps(repo, ["step3000", "step1000"]) == {"step3000": 3000, "step1000": 1000}
    assert revision_steps(repo / "snapshots", ["main", " step2000"]) == {"main": 3000, "step2000": 2000}
    (repo / "refs" / "step10000").write_text("e" * 40)  # listed in step order, not as text
    with pytest.raises(InputError, match=r"refs: no ref step5000, v1 \(refs: main, step1000, step2000, step3000, "
                                         r"step10000\); snapshot_download"):
        revision_steps(repo, ["step1000", "step5000", "v1"])


def test_revisions_outside_a_hub_cache_or_without_a_snapshot_are_one_line_errors(tmp_path):
    torch.save(reference_state(), tmp_path / "step_1.pt")
    with pytest.raises(InputError, match=r"not a Hugging Face hub cache .* select with --steps$"):
        revision_steps(tmp_path, ["step1000"])
    repo = hub_cache(tmp_path / "hub", {"step1000": PYTHIA["step1000"], "main": PYTHIA["step2000"]})
    (repo / "refs" / "step4000").write_text("d" * 40)  # a ref left behind by a snapshot since deleted
    with pytest.raises(InputError, match=r"refs/step4000: names commit d{40}, which has no snapshot in "):
        revision_steps(repo, ["step4000"])
    with pytest.raises(InputError, match=r"the snapshot of revision main is not a checkpoint \(its refs \(main\) "
                                         r"give no step"):
        revision_steps(repo, ["main"])
    with pytest.raises(InputError, match="names no revision"):
        revision_steps(repo, [" "])


def test_a_commit_hash_outside_a_cache_gives_no_step(tmp_path):
    assert step_from_name(PYTHIA["step1000"]) is None and step_from_name("a1b2c3d") is None
    assert step_from_name("model_1000") == 1000 and step_from_name("1000") == 1000 and step_from_name("ffff12") == 12
    save_file(reference_state(), tmp_path / f"{PYTHIA['step1000']}.safetensors")
    with pytest.raises(InputError, match="no step in the name or the file"):
        discover(tmp_path)


# ---------------------------------------------------------------- select


def ckpts_at(steps):
    return [Checkpoint(s, pathlib.Path(f"runs/step_{s}.pt"), "torch", (pathlib.Path(f"runs/step_{s}.pt"),))
            for s in steps]


def test_select_steps():
    cs = ckpts_at([0, 10, 20, 30])
    assert [c.step for c in select(cs, steps=[30, 10, 10])] == [10, 30]
    with pytest.raises(InputError, match=r"steps not found in runs: 5, 15 \(have steps 0, 10, 20, 30\)"):
        select(cs, steps=[5, 10, 15])
    with pytest.raises(InputError):
        select(cs, steps=[])
    with pytest.raises(InputError, match="steps must be integers"):
        select(cs, steps=["ten"])


def test_select_every_keeps_the_last():
    cs = ckpts_at(range(0, 100, 10))  # 10 checkpoints
    assert [c.step for c in select(cs, every=3)] == [0, 30, 60, 90]
    assert [c.step for c in select(cs, every=4)] == [0, 40, 80, 90]
    assert select(cs, every=1) == cs
    assert [c.step for c in select(cs, every=100)] == [0, 90]


def test_select_max_is_log_spaced():
    cs = ckpts_at(range(0, 10001))
    chosen = [c.step for c in select(cs, max_checkpoints=5)]
    assert chosen[0] == 0 and chosen[-1] == 10000 and len(chosen) == 5
    gaps = [math.log1p(b) - math.log1p(a) for a, b in zip(chosen, chosen[1:])]
    assert max(gaps) - min(gaps) < 0.01  # even in log(1 + step): 0, 9, 99, 999, 10000
    assert chosen == [0, 9, 99, 999, 10000]
    assert select(cs[:4], max_checkpoints=10) == cs[:4]
    assert [c.step for c in select(cs, max_checkpoints=1)] == [10000]
    assert [c.step for c in select(cs, max_checkpoints=2)] == [0, 10000]


def test_select_max_on_a_coarse_grid_still_gives_n():
    cs = ckpts_at(range(0, 1001, 100))  # 0, 100, ..., 1000: the early log targets all fall near 0 or 100
    chosen = [c.step for c in select(cs, max_checkpoints=5)]
    assert len(set(chosen)) == 5 and chosen == sorted(chosen) and chosen[0] == 0 and chosen[-1] == 1000


def test_select_combines_in_order():
    cs = ckpts_at(range(0, 200, 10))
    # steps -> every -> max
    got = select(cs, steps=[0, 10, 20, 30, 40, 50, 60, 70, 80], every=2, max_checkpoints=3)
    assert [c.step for c in got] == [0, 20, 80]  # every=2 of 9 -> 0,20,40,60,80; log-spaced 3 of those


@pytest.mark.parametrize("kw", [dict(every=0), dict(every=-2), dict(max_checkpoints=0), dict(every=True),
                                dict(max_checkpoints=2.5)])
def test_select_validates(kw):
    with pytest.raises(InputError, match="must be an integer >= 1"):
        select(ckpts_at([0, 1]), **kw)


# ---------------------------------------------------------------- sha256


def test_sha256_single_file(tmp_path):
    torch.save(reference_state(), tmp_path / "step_1.pt")
    (ckpt,), _ = discover(tmp_path)
    digest = checkpoint_sha256(ckpt)
    assert digest == checkpoint_sha256(ckpt) == hashlib.sha256((tmp_path / "step_1.pt").read_bytes()).hexdigest()
    sd = reference_state()
    sd["0.bias"][0] += 1
    torch.save(sd, tmp_path / "step_1.pt")
    assert checkpoint_sha256(ckpt) != digest


def test_sha256_sharded_folder(tmp_path):
    _hf_sharded(reference_state(), tmp_path)
    (ckpt,), _ = discover(tmp_path)
    assert len(ckpt.files) == 2
    digest = checkpoint_sha256(ckpt)
    (tmp_path / "checkpoint-200" / "config.json").write_text("{}")  # not weights: same hash
    assert checkpoint_sha256(ckpt) == digest
    shard = ckpt.files[1]
    shard.write_bytes(shard.read_bytes()[:-1] + b"\1")
    assert checkpoint_sha256(ckpt) != digest


# ---------------------------------------------------------------- bad checkpoints


def test_truncated_pt(tmp_path):
    torch.save(reference_state(), tmp_path / "full.pt")
    data = (tmp_path / "full.pt").read_bytes()
    (tmp_path / "step_1.pt").write_bytes(data[: len(data) // 2])
    ckpt = load_only(tmp_path / "step_1.pt")
    with pytest.raises(CheckpointError) as e:
        load_state_dict(ckpt)
    msg = str(e.value)
    assert msg.startswith(f"{tmp_path / 'step_1.pt'}: not a readable torch checkpoint (truncated or corrupt:")
    assert "\n" not in msg and len(msg) < 400


def test_truncated_safetensors(tmp_path):
    save_file(reference_state(), tmp_path / "full.safetensors")
    data = (tmp_path / "full.safetensors").read_bytes()
    (tmp_path / "step_2.safetensors").write_bytes(data[: len(data) - 8])
    with pytest.raises(CheckpointError, match=r"step_2\.safetensors: not a readable safetensors file"):
        load_state_dict(load_only(tmp_path / "step_2.safetensors"))


def test_no_weights_found(tmp_path):
    torch.save({"epoch": 3, "config": {"lr": 1}}, tmp_path / "step_3.pt")
    with pytest.raises(CheckpointError, match=r"step_3\.pt: no weights found \(top-level keys: epoch, config\)"):
        load_state_dict(load_only(tmp_path / "step_3.pt"))


def test_wrong_keys():
    sd = reference_state()
    sd["2.weight"] = sd.pop("1.weight")
    with pytest.raises(CheckpointError, match=r"^s\.pt: missing keys: 1\.weight; unexpected keys: 2\.weight$"):
        load_into(tiny(), sd, source="s.pt")
    expected = r"^s\.pt: missing keys: 0\.weight, .*; unexpected keys: a\.b \(no checkpoint key matches"
    with pytest.raises(CheckpointError, match=expected):
        load_into(tiny(), {"a.b": torch.zeros(1)}, source="s.pt")


def test_wrong_shapes_leave_model_untouched():
    sd = reference_state()
    sd["1.weight"] = torch.zeros(5, 3)
    model = tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    expected = r"^s\.pt: shape mismatch for 1\.weight: checkpoint \[5, 3\], model \[2, 3\]$"
    with pytest.raises(CheckpointError, match=expected):
        load_into(model, sd, source="s.pt")
    assert_loaded(model, before)


def test_nan_weights_leave_model_untouched(tmp_path):
    sd = reference_state()
    sd["1.weight"][0, :2] = float("nan")
    sd["1.weight"][1, 0] = float("inf")
    torch.save(sd, tmp_path / "step_4.pt")
    model = tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError, match=r"^step_4\.pt: non-finite weights in 1\.weight \(2 NaN, 1 Inf\)$"):
        load_into(model, load_state_dict(load_only(tmp_path / "step_4.pt")), source="step_4.pt")
    assert_loaded(model, before)  # 0.weight, checked first and valid, was not copied either


def test_overflow_when_cast_down():
    sd = reference_state()
    sd["0.bias"][0] = 1e6  # finite in float32, inf in float16
    with pytest.raises(CheckpointError, match=r"non-finite weights in 0\.bias once cast to float16 \(0 NaN, 1 Inf\)"):
        load_into(tiny().half(), sd, source="s.pt")


def test_hf_index_naming_a_missing_or_outside_shard(tmp_path):
    _hf_sharded(reference_state(), tmp_path)
    folder = tmp_path / "checkpoint-200"
    index = folder / "model.safetensors.index.json"
    (ckpt,), _ = discover(tmp_path)
    weight_map = json.loads(index.read_text())["weight_map"]
    index.write_text(json.dumps({"weight_map": {**weight_map, "0.weight": "model-00003-of-00003.safetensors"}}))
    with pytest.raises(CheckpointError, match="shard model-00003-of-00003.safetensors named in .* is missing"):
        load_state_dict(ckpt)
    index.write_text(json.dumps({"weight_map": {**weight_map, "0.weight": "../../elsewhere.safetensors"}}))
    with pytest.raises(CheckpointError, match="is not a file name in the same folder"):
        load_state_dict(ckpt)


# ---------------------------------------------------------------- malicious pickles


def test_the_payload_is_live(tmp_path):
    # without this, the tests below could pass because the payload never worked
    marker = tmp_path / "pwned"
    pickle.loads(pickle.dumps(Evil(marker)))
    assert marker.exists()


@pytest.mark.parametrize("payload", [Evil, EvilShell])
@pytest.mark.parametrize("name", ["step_1.pt", "epoch=0-step=1.ckpt"])
def test_malicious_pickle_is_refused(tmp_path, payload, name):
    marker = tmp_path / "pwned"
    torch.save(payload(marker), tmp_path / name)
    with pytest.raises(CheckpointError) as e:
        load_state_dict(load_only(tmp_path / name))
    msg = str(e.value)
    assert msg.startswith(f"{tmp_path / name}: refused to unpickle: it contains Python objects beyond tensors")
    assert "unsupported global" in msg and "\n" not in msg
    assert not marker.exists()


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # torch's, about protocol 4
@pytest.mark.parametrize("protocol", [0, 2, 4])
def test_malicious_raw_pickle_is_rejected(tmp_path, protocol):
    # not written by torch.save at all: a bare pickle, which the legacy (non-zip) loader reads first
    marker = tmp_path / "pwned"
    (tmp_path / "step_1.pt").write_bytes(pickle.dumps(EvilShell(marker), protocol=protocol))
    with pytest.raises(CheckpointError, match=r"step_1\.pt: (refused to unpickle|not a readable torch checkpoint)"):
        load_state_dict(load_only(tmp_path / "step_1.pt"))
    assert not marker.exists()


def test_malicious_object_beside_real_weights(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"state_dict": reference_state(), "callbacks": {"x": Evil(marker)}, "global_step": 2},
               tmp_path / "epoch=0-step=2.ckpt")
    with pytest.raises(CheckpointError, match="refused to unpickle"):
        load_state_dict(load_only(tmp_path / "epoch=0-step=2.ckpt"))
    assert not marker.exists()


def test_malicious_hf_bin(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"w": Evil(marker)}, _hf_dir(tmp_path, "checkpoint-5") / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match=r"pytorch_model\.bin: refused to unpickle"):
        load_state_dict(load_only(tmp_path / "checkpoint-5"))
    assert not marker.exists()


def test_discovery_does_not_run_a_stepless_malicious_file(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"step": 3, "model": reference_state(), "x": EvilShell(marker)}, tmp_path / "last.ckpt")
    torch.save(reference_state(), tmp_path / "step_1.pt")
    ckpts, skipped = discover(tmp_path)
    assert [c.step for c in ckpts] == [1]
    ((path, why),) = skipped
    assert path.name == "last.ckpt" and why.startswith("no step in the name or the file (refused to unpickle")
    assert not marker.exists()
