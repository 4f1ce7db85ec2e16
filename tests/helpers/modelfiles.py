"""Import a file from models/ by its path, as the CLI does: the repository root is not a package.

REPO is the repository root and MODELS_DIR its models/ folder, for the tests that name files there.
"""

import importlib.util
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]  # tests/helpers/modelfiles.py → the repository root
MODELS_DIR = REPO / "models"


def load_model_file(name: str):
    mod_name = f"_slt_probe_test_models_{name}"
    if mod_name in sys.modules:
        return sys.modules[mod_name]
    spec = importlib.util.spec_from_file_location(mod_name, MODELS_DIR / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module
