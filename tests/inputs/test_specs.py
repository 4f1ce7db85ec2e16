"""The command line's model / data / loss specs (slt_probe/inputs/specs.py): loading a callable from a file or a
module, keyword-argument files, building a model (from a factory or a Hugging Face config), every data format,
the token-fit check, and their one-line errors."""

import hashlib
import json
import pickle
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from modelfiles import MODELS_DIR, REPO
from torch import nn

from slt_probe.engine.data import lm_cross_entropy
from slt_probe.errors import InputError
from slt_probe.inputs.specs import (build_hf_model, build_model, check_tokens_fit, load_callable, load_data,
                                    load_loss, model_vocab_size, read_kwargs)

ATTN_ONLY = MODELS_DIR / "attn_only.py"
SMALL = dict(vocab_size=16, n_ctx=8, d_model=16, n_heads=2, n_layers=1)


def one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg, msg
    return msg


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# ---------------------------------------------------------------- load_callable


def test_load_callable_relative_and_absolute_path(monkeypatch):
    monkeypatch.chdir(REPO)
    rel = load_callable("models/attn_only.py:attn_only", what="model")
    absolute = load_callable(f"{ATTN_ONLY}:attn_only", what="model")
    for factory in (rel, absolute):
        model = factory(**SMALL)  # the dataclass config works: the module is registered in sys.modules
        assert isinstance(model, nn.Module) and model.config.vocab_size == 16


def test_load_callable_package_module():
    assert load_callable("slt_probe.engine.data:lm_cross_entropy", what="loss") is lm_cross_entropy


def test_load_callable_sibling_import(tmp_path):
    write(tmp_path / "helper_for_inputs_test.py", "WIDTH = 3\n")
    write(tmp_path / "m.py", "import helper_for_inputs_test\ndef f():\n    return helper_for_inputs_test.WIDTH\n")
    assert load_callable(f"{tmp_path / 'm.py'}:f", what="model")() == 3


def test_load_callable_no_colon():
    with pytest.raises(InputError) as e:
        load_callable("x", what="model")
    assert one_line(e) == "--model expects path/to/file.py:factory or package.module:factory, got 'x'"


def test_load_callable_missing_file(tmp_path):
    with pytest.raises(InputError, match="no such file") as e:
        load_callable(f"{tmp_path}/nope.py:f", what="model")
    assert "nope.py" in one_line(e)


def test_load_callable_file_raises_on_import(tmp_path):
    bad = write(tmp_path / "bad.py", "raise RuntimeError('boom on import\\nsecond line')\n")
    with pytest.raises(InputError) as e:
        load_callable(f"{bad}:f", what="loss")
    msg = one_line(e)
    assert msg.startswith("--loss ") and "bad.py" in msg and "RuntimeError: boom on import" in msg


def test_load_callable_syntax_error(tmp_path):
    bad = write(tmp_path / "syntax.py", "def f(:\n")
    with pytest.raises(InputError, match="SyntaxError") as e:
        load_callable(f"{bad}:f", what="model")
    one_line(e)


def test_load_callable_missing_attribute_lists_names(tmp_path):
    f = write(tmp_path / "x.py", "import math\nA = 1\ndef a(): pass\ndef b(): pass\nclass C: pass\n")
    with pytest.raises(InputError) as e:
        load_callable(f"{f}:fooo", what="model")
    assert one_line(e) == f"{f} has no 'fooo' (it defines: a, b, C)"  # not the imported `math`


def test_load_callable_missing_module():
    with pytest.raises(InputError, match="no module named 'no_such_pkg_xyz'"):
        load_callable("no_such_pkg_xyz.mod:f", what="model")


def test_load_callable_not_callable(tmp_path):
    f = write(tmp_path / "c.py", "VALUE = 3\n")
    with pytest.raises(InputError, match="VALUE is not callable") as e:
        load_callable(f"{f}:VALUE", what="model")
    one_line(e)


def test_load_loss():
    assert load_loss(None) is None
    assert load_loss("slt_probe.engine.data:lm_cross_entropy") is lm_cross_entropy


# ---------------------------------------------------------------- read_kwargs


def test_read_kwargs_json_and_toml(tmp_path):
    assert read_kwargs(None) == {}
    kwargs = read_kwargs(write(tmp_path / "c.json", '{"d_model": 16, "widths": [1, 2]}'))
    assert kwargs == {"d_model": 16, "widths": [1, 2]}
    assert read_kwargs(str(write(tmp_path / "c.toml", 'd_model = 16\nlayer_norm = true\n'))) == \
        {"d_model": 16, "layer_norm": True}


def test_read_kwargs_bad_json_names_line(tmp_path):
    with pytest.raises(InputError, match="line 3") as e:
        read_kwargs(write(tmp_path / "c.json", '{\n  "a": 1,\n  "b": ?\n}'))
    assert "c.json" in one_line(e)


def test_read_kwargs_bad_toml_names_line(tmp_path):
    with pytest.raises(InputError, match="line 2") as e:
        read_kwargs(write(tmp_path / "c.toml", 'a = 1\nb = = 2\n'))
    one_line(e)


@pytest.mark.parametrize("name, text, match", [
    ("list.json", "[1, 2]", "top level must be a table"),
    ("c.yaml", "a: 1", "unknown format '.yaml'"),
])
def test_read_kwargs_errors(tmp_path, name, text, match):
    with pytest.raises(InputError, match=match):
        read_kwargs(write(tmp_path / name, text))


def test_read_kwargs_missing_file(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        read_kwargs(tmp_path / "none.json")


# ---------------------------------------------------------------- build_model


def test_build_model_with_config(tmp_path):
    cfg = write(tmp_path / "cfg.json", json.dumps(SMALL))
    model, desc = build_model(f"{ATTN_ONLY}:attn_only", cfg)
    assert model.config.n_ctx == 8
    assert desc["kwargs"] == SMALL and desc["spec"] == f"{ATTN_ONLY}:attn_only"
    # models/attn_only.py points at the package's model: the class says where it is defined
    assert desc["class"] == "slt_probe.demo.model.AttnOnlyTransformer"
    assert desc["num_params"] == sum(p.numel() for p in model.parameters())
    # a class defined in a file imported by its path is named by that file
    _, desc = build_model(f"{MODELS_DIR / 'dln.py'}:dln")
    assert desc["class"].endswith("dln.py:DLN")


def test_build_model_bad_kwargs(tmp_path):
    cfg = write(tmp_path / "cfg.json", '{"d_modle": 16}')
    with pytest.raises(InputError) as e:
        build_model(f"{ATTN_ONLY}:attn_only", cfg)
    msg = one_line(e)
    assert msg.startswith(f"--model-config {cfg}: factory {ATTN_ONLY}:attn_only rejected the arguments: ")
    assert "d_modle" in msg


def test_build_model_not_a_module(tmp_path):
    f = write(tmp_path / "f.py", "def make():\n    return 42\n")
    with pytest.raises(InputError, match="returned a int, not a torch.nn.Module"):
        build_model(f"{f}:make")


def test_build_model_factory_raises(tmp_path):
    f = write(tmp_path / "f.py", "def make():\n    raise ValueError('no good')\n")
    with pytest.raises(InputError, match="the factory raised ValueError: no good"):
        build_model(f"{f}:make")


# ---------------------------------------------------------------- build_hf_model

TINY_GPT2 = dict(model_type="gpt2", n_layer=1, n_embd=16, n_head=2, vocab_size=64, n_positions=32,
                 bos_token_id=0, eos_token_id=0)


def test_build_hf_model_tiny_gpt2(tmp_path):
    write(tmp_path / "config.json", json.dumps(TINY_GPT2))
    model, desc = build_hf_model(tmp_path / "config.json")
    assert desc["model_type"] == "gpt2" and desc["num_params"] > 0
    assert model_vocab_size(model) == 64
    tokens = torch.randint(0, 64, (2, 9))
    assert torch.isfinite(lm_cross_entropy(model, tokens))
    check_tokens_fit(tokens, model, data_path="t.npy")
    with pytest.raises(InputError, match="exceed the model's context of 32; pass --context 32"):
        check_tokens_fit(torch.zeros(1, 40, dtype=torch.long), model, data_path="t.npy")


def test_build_hf_model_refuses_auto_map(tmp_path):
    # refused before transformers is imported, so this needs no transformers
    cfg = write(tmp_path / "config.json", json.dumps({**TINY_GPT2, "auto_map": {"AutoModelForCausalLM": "m.M"}}))
    with pytest.raises(InputError, match="custom code.*--model") as e:
        build_hf_model(tmp_path)  # the folder works as well as the file
    assert str(cfg) in one_line(e)


def test_build_hf_model_unknown_type(tmp_path):
    write(tmp_path / "config.json", json.dumps({"model_type": "no_such_model_xyz"}))
    with pytest.raises(InputError, match="transformers rejected the config") as e:
        build_hf_model(tmp_path / "config.json")
    one_line(e)


def test_build_hf_model_no_causal_lm(tmp_path):
    write(tmp_path / "config.json", json.dumps({"model_type": "t5", "d_model": 8}))
    with pytest.raises(InputError, match="no causal LM for model_type 't5'"):
        build_hf_model(tmp_path / "config.json")


# ---------------------------------------------------------------- load_data

STREAM = np.arange(50, dtype=np.int32) % 37  # 50 tokens: 5 windows of 9 with --context 8, 5 left over


def check_windows(data: torch.Tensor, context: int = 8):
    assert data.dtype == torch.long and data.shape == (len(STREAM) // (context + 1), context + 1)
    assert data[0].tolist() == STREAM[: context + 1].tolist()
    assert data[1].tolist() == STREAM[context + 1: 2 * (context + 1)].tolist()  # non-overlapping


def test_npy_2d(tmp_path):
    ids = np.arange(20, dtype=np.int16).reshape(4, 5)
    np.save(tmp_path / "t.npy", ids)
    data, desc = load_data(str(tmp_path / "t.npy"))
    assert data.dtype == torch.long and data.tolist() == ids.tolist()
    assert desc["format"] == "npy" and desc["shape"] == [4, 5] and desc["context"] == 4
    assert desc["sha256"] == hashlib.sha256((tmp_path / "t.npy").read_bytes()).hexdigest()
    data, desc = load_data(str(tmp_path / "t.npy"), context=2)  # --context keeps the start of each row
    assert data.tolist() == ids[:, :3].tolist() and desc["context"] == 2


def test_npy_stream_with_context(tmp_path):
    np.save(tmp_path / "s.npy", STREAM)
    data, desc = load_data(str(tmp_path / "s.npy"), context=8)
    check_windows(data)
    assert desc["shape"] == [5, 9] and desc["dtype"] == "int64"


def test_stream_without_context(tmp_path):
    np.save(tmp_path / "s.npy", STREAM)
    with pytest.raises(InputError, match="needs --context") as e:
        load_data(str(tmp_path / "s.npy"))
    assert "s.npy" in one_line(e)


def test_stream_too_short(tmp_path):
    np.save(tmp_path / "s.npy", STREAM)
    with pytest.raises(InputError, match="too few"):
        load_data(str(tmp_path / "s.npy"), context=64)


@pytest.mark.parametrize("arr, match", [
    (np.zeros((3, 4), dtype=np.float32), "must be integers"),
    (np.zeros((2, 3, 4), dtype=np.int64), "2-D"),
    (np.array([[1, -2, 3]]), "non-negative, found -2"),
    (np.zeros((0, 4), dtype=np.int64), "no sequences"),
])
def test_npy_bad_arrays(tmp_path, arr, match):
    np.save(tmp_path / "bad.npy", arr)
    with pytest.raises(InputError, match=match) as e:
        load_data(str(tmp_path / "bad.npy"))
    assert "bad.npy" in one_line(e)


def test_npy_object_array_refused(tmp_path):
    np.save(tmp_path / "o.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(InputError, match="refused"):
        load_data(str(tmp_path / "o.npy"))


def test_bin_uint16_stream(tmp_path):
    STREAM.astype(np.uint16).tofile(tmp_path / "train.bin")
    data, desc = load_data(str(tmp_path / "train.bin"), context=8)
    check_windows(data)
    assert desc["format"] == "bin"
    with pytest.raises(InputError, match="needs --context"):
        load_data(str(tmp_path / "train.bin"))


def test_pt_tensor_and_tuple(tmp_path):
    ids = torch.arange(12, dtype=torch.int32).view(3, 4)
    torch.save(ids, tmp_path / "t.pt")
    data, desc = load_data(str(tmp_path / "t.pt"))
    assert data.dtype == torch.long and torch.equal(data, ids.long()) and desc["format"] == "pt"

    x, y = torch.randn(6, 2), torch.randn(6, 1)
    torch.save((x, y), tmp_path / "xy.pt")
    data, desc = load_data(str(tmp_path / "xy.pt"))
    assert isinstance(data, tuple) and torch.equal(data[0], x) and torch.equal(data[1], y)
    assert desc["shape"] == [[6, 2], [6, 1]] and desc["context"] is None

    torch.save({"y": y, "x": x}, tmp_path / "d.pt")  # a dict: its insertion order
    data, desc = load_data(str(tmp_path / "d.pt"))
    assert torch.equal(data[0], y) and desc["names"] == ["y", "x"]


def test_pt_tuple_disagreeing_lengths(tmp_path):
    torch.save((torch.zeros(3), torch.zeros(4)), tmp_path / "xy.pt")
    with pytest.raises(InputError, match="disagree"):
        load_data(str(tmp_path / "xy.pt"))


class Malicious:
    """Unpickling it calls open(marker, "w"), which creates the marker file."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_malicious_pt_refused(tmp_path):
    witness = tmp_path / "witness"
    pickle.loads(pickle.dumps(Malicious(witness))).close()
    assert witness.exists()  # the payload works when unpickled naively
    marker = tmp_path / "pwned"
    torch.save(Malicious(marker), tmp_path / "evil.pt")
    with pytest.raises(InputError, match="refused to unpickle") as e:
        load_data(str(tmp_path / "evil.pt"))
    assert "evil.pt" in one_line(e)
    assert not marker.exists()


@pytest.mark.parametrize("name", ["junk.pt", "junk.npy", "junk.npz", "junk.h5"])
def test_corrupt_files(tmp_path, name):
    (tmp_path / name).write_bytes(b"not a data file")
    with pytest.raises(InputError, match=name) as e:
        load_data(str(tmp_path / name))
    assert "refused" not in one_line(e)  # corrupt, not a pickle


def test_npz_tuple(tmp_path):
    x, y = np.random.rand(5, 3).astype(np.float32), np.arange(5)
    np.savez(tmp_path / "xy.npz", x=x, y=y)
    data, desc = load_data(str(tmp_path / "xy.npz"))
    assert isinstance(data, tuple) and len(data) == 2
    assert np.array_equal(data[0].numpy(), x) and data[1].tolist() == y.tolist()
    assert desc["format"] == "npz" and desc["names"] == ["x", "y"]


def test_npz_object_array_refused(tmp_path):
    np.savez(tmp_path / "o.npz", a=np.array([None], dtype=object))
    with pytest.raises(InputError, match="refused"):
        load_data(str(tmp_path / "o.npz"))


def test_h5_dataset(tmp_path):
    with h5py.File(tmp_path / "d.h5", "w") as f:
        f["grid"] = np.arange(12).reshape(3, 4)
        f.create_group("g")["stream"] = STREAM
    data, desc = load_data(f"{tmp_path / 'd.h5'}:grid")
    assert data.tolist() == np.arange(12).reshape(3, 4).tolist() and desc["dataset"] == "grid"
    assert desc["path"] == str(tmp_path / "d.h5") and desc["format"] == "h5"
    data, _ = load_data(f"{tmp_path / 'd.h5'}:g/stream", context=8)
    check_windows(data)


def test_h5_missing_dataset_lists_available(tmp_path):
    with h5py.File(tmp_path / "d.hdf5", "w") as f:
        f["tokens"] = np.arange(12).reshape(3, 4)
        f["labels"] = np.arange(3)
    with pytest.raises(InputError) as e:
        load_data(f"{tmp_path / 'd.hdf5'}:tokenz")
    assert "no dataset 'tokenz'" in one_line(e) and "labels, tokens" in str(e.value)


def test_text_byte_tokenizer(tmp_path):
    text = "héllo wörld, " * 3
    write(tmp_path / "corpus.txt", text)
    data, desc = load_data(str(tmp_path / "corpus.txt"), context=7, tokenizer="byte")
    raw = list(text.encode("utf-8"))
    assert data.shape == (len(raw) // 8, 8) and data[0].tolist() == raw[:8]
    assert desc["format"] == "text" and desc["tokenizer"] == "byte"


def test_text_without_tokenizer(tmp_path):
    write(tmp_path / "corpus.txt", "hello")
    with pytest.raises(InputError, match="--tokenizer byte") as e:
        load_data(str(tmp_path / "corpus.txt"), context=2)
    assert "corpus.txt" in one_line(e)
    with pytest.raises(InputError, match="no such file or folder .*nothing is downloaded"):
        load_data(str(tmp_path / "corpus.txt"), context=2, tokenizer="gpt2")  # a hub name: never fetched


def tiny_tokenizer():
    """A word-level tokenizer over a few words, built here: nothing is downloaded."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    tok = Tokenizer(models.WordLevel({"[UNK]": 0, "the": 1, "cat": 2, "sat": 3, "on": 4, "mat": 5}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return tok


@pytest.mark.parametrize("form", ["tokenizer.json", "a tokenizer folder"])
def test_text_with_a_local_tokenizer(tmp_path, form):
    tok = tiny_tokenizer()
    if form == "tokenizer.json":
        where = tmp_path / "tokenizer.json"
        tok.save(str(where))
    else:
        import transformers
        where = tmp_path / "tok"
        transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]").save_pretrained(where)
    write(tmp_path / "corpus.txt", "the cat sat on the mat " * 4 + "the dog")
    data, desc = load_data(str(tmp_path / "corpus.txt"), context=3, tokenizer=str(where))
    ids = [1, 2, 3, 4, 1, 5] * 4 + [1, 0]  # "dog" is unknown
    assert data.tolist() == [ids[i:i + 4] for i in range(0, 24, 4)] and desc["tokenizer"] == str(where)
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(InputError, match="cannot be loaded") as e:
        load_data(str(tmp_path / "corpus.txt"), context=3, tokenizer=str(tmp_path / "broken.json"))
    assert "broken.json" in one_line(e)


def test_a_datasets_folder(tmp_path):
    import datasets
    rows = np.random.default_rng(0).integers(0, 50, (6, 9))
    datasets.Dataset.from_dict({"input_ids": rows.tolist()}).save_to_disk(tmp_path / "equal")
    data, desc = load_data(str(tmp_path / "equal"))
    assert data.tolist() == rows.tolist() and desc["format"] == "datasets" and len(desc["sha256"]) == 64
    assert load_data(str(tmp_path / "equal"), context=4)[0].tolist() == rows[:, :5].tolist()
    ragged = [list(range(5)), list(range(5, 12)), list(range(12, 15))]  # joined: 0..14, windows of 4
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"input_ids": ragged, "text": ["a", "b", "c"]}),
                          "test": datasets.Dataset.from_dict({"input_ids": [[1]], "text": ["d"]})}
                         ).save_to_disk(tmp_path / "dict")
    data, _ = load_data(str(tmp_path / "dict"), context=3)
    assert data.tolist() == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]
    with pytest.raises(InputError, match="needs --context") as e:
        load_data(str(tmp_path / "dict"))
    one_line(e)
    datasets.Dataset.from_dict({"text": ["a b"]}).save_to_disk(tmp_path / "raw")
    with pytest.raises(InputError, match="no input_ids column \\(has text\\); tokenize it first") as e:
        load_data(str(tmp_path / "raw"))
    assert "raw" in one_line(e)


def test_missing_data_file(tmp_path):
    with pytest.raises(InputError, match="no such file") as e:
        load_data(str(tmp_path / "none.npy"))
    assert "none.npy" in one_line(e)


# ---------------------------------------------------------------- check_tokens_fit


def attn_only_model(**over):
    factory = load_callable(f"{ATTN_ONLY}:attn_only", what="model")
    return factory(**{**SMALL, **over})


def test_model_vocab_size():
    assert model_vocab_size(attn_only_model()) == 16
    assert model_vocab_size(nn.Sequential(nn.Embedding(7, 2), nn.Linear(2, 7))) == 7
    assert model_vocab_size(nn.Linear(2, 2)) is None


def test_check_tokens_fit():
    model = attn_only_model()  # vocab 16, n_ctx 8
    check_tokens_fit(torch.randint(0, 16, (3, 9)), model, data_path="data/ok.npy")
    check_tokens_fit((torch.randn(3, 2), torch.randn(3)), model, data_path="data/xy.npz")  # --loss data: unchecked
    with pytest.raises(InputError) as e:
        check_tokens_fit(torch.tensor([[1, 2, 600]]), model, data_path="data/tokens.npy")
    assert one_line(e) == "data/tokens.npy: token id 600 >= the model's vocabulary size 16"
    with pytest.raises(InputError) as e:
        check_tokens_fit(torch.zeros(2, 12, dtype=torch.long), model, data_path="data/x.npy")
    assert one_line(e) == "data/x.npy: sequences of 11 tokens exceed the model's context of 8; pass --context 8"
