"""The optional extras (pyproject.toml): each missing package is one line naming the extra that installs it, and the
test extra installs them all, so that CI exercises every layout. A package is made missing by sys.modules[name] = None,
which makes `import name` raise ImportError. (transformer-lens: tests/inputs/test_transformer_lens.py; lightning:
tests/runs/test_hook.py, test_integrations_say_what_to_install_when_their_framework_is_missing.)"""

import sys
from pathlib import Path

import pytest

from slt_probe.errors import InputError
from slt_probe.inputs.specs import load_data

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def test_the_test_extra_installs_every_runtime_extra():
    extras = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["project"]["optional-dependencies"]
    runtime = {name: extras[name] for name in ("transformer-lens", "lightning", "datasets")}
    missing = {name: [r for r in reqs if r not in extras["test"]] for name, reqs in runtime.items()}
    assert not any(missing.values()), missing


def test_a_datasets_folder_without_datasets_names_the_extra(tmp_path, monkeypatch):
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "dataset_info.json").write_text("{}")  # what save_to_disk writes
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(InputError) as e:
        load_data(str(tmp_path / "ds"), context=8)
    assert "pip install 'slt-probe[datasets]'" in str(e.value) and "\n" not in str(e.value)


def test_a_tokenizer_file_without_tokenizers_names_the_extra(tmp_path, monkeypatch):
    (tmp_path / "text.txt").write_text("some text to tokenize")
    (tmp_path / "tokenizer.json").write_text("{}")
    monkeypatch.setitem(sys.modules, "tokenizers", None)
    with pytest.raises(InputError) as e:
        load_data(str(tmp_path / "text.txt"), context=4, tokenizer=str(tmp_path / "tokenizer.json"))
    assert "pip install 'slt-probe[datasets]'" in str(e.value) and "\n" not in str(e.value)
