"""`python -m slt_probe ...` is `slt-probe ...`: what torchrun and other launchers run (`torchrun -m slt_probe`)."""

from slt_probe.cli import app

if __name__ == "__main__":
    app(prog_name="slt-probe")
