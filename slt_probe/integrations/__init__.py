"""LLCHook inside training frameworks: `hf` (transformers Trainer) and `lightning` (Lightning Trainer).

Each submodule imports its framework when it is imported, and only then: importing this package needs
neither, and importing a submodule without its framework raises an ImportError that says what to install.
"""
