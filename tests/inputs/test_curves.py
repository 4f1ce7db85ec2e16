"""A λ̂ curve read from a CSV/TSV table (slt_probe/inputs/curves.py): the delimiters, wandb's run and panel exports
(float steps, empty cells where a metric was not logged), the columns found by their usual names, and every
one-line error, which names the file and what is wrong. Writing a curve as a results file:
tests/store/test_store_curves.py; the command: tests/test_cli.py."""

import hashlib

import numpy as np
import pytest

from slt_probe.errors import InputError
from slt_probe.inputs.curves import is_table, read_curve


def write(path, text):
    path.write_text(text)
    return path


def error(path, **columns) -> str:
    """read_curve's error: one line that names the file."""
    with pytest.raises(InputError) as e:
        read_curve(path, **columns)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"{path}: "), msg
    return msg


LINES = ["10,5.0,0.1,4.0", "20,6.0,0.2,3.5", "40,9.0,0.1,3.0", "80,9.5,0.3,2.9", "160,9.4,0.2,2.8"]


@pytest.mark.parametrize("delimiter", [",", "\t", ";"])
def test_a_table_with_each_delimiter(tmp_path, delimiter):
    text = "\n".join(line.replace(",", delimiter) for line in ["step,llc,se,loss", *LINES]) + "\n"
    path = write(tmp_path / "curve.txt", text)
    c = read_curve(path, se="se", loss="loss")
    assert c.step.dtype == np.int64 and list(c.step) == [10, 20, 40, 80, 160]
    assert list(c.llc) == [5.0, 6.0, 9.0, 9.5, 9.4] and list(c.se) == [0.1, 0.2, 0.1, 0.3, 0.2]
    assert list(c.loss) == [4.0, 3.5, 3.0, 2.9, 2.8]
    assert c.columns == {"step": "step", "llc": "llc", "se": "se", "loss": "loss"} and c.rows_without_llc == 0
    assert c.path == path.resolve() and c.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_wandb_run_export_float_steps_and_empty_cells(tmp_path):
    # wandb writes _step as a float where a column holds floats, and leaves a metric's cell empty at the steps where
    # it was not logged (here λ̂ every 100 steps, the loss every 50); rows come in any order
    text = ('"_step","train/loss","llc/mean","llc/se","_runtime"\n'
            "50.0,3.9,,,12.5\n100.0,3.5,5.0,0.1,20\n150.0,3.2,,,30\n200.0,2.9,8.0,0.2,40\n300.0,2.7,9.5,0.2,50\n"
            "250.0,2.8,NaN,,45\n400.0,,9.0,0.1,60\n500.0,2.5,9.1,0.1,70\n\n")
    path = write(tmp_path / "wandb_export.csv", text)
    c = read_curve(path, llc="llc/mean", se="llc/se", loss="train/loss")
    assert list(c.step) == [100, 200, 300, 400, 500]  # the step column found by its name, the rows sorted
    assert list(c.llc) == [5.0, 8.0, 9.5, 9.0, 9.1] and list(c.se) == [0.1, 0.2, 0.2, 0.1, 0.1]
    assert np.isnan(c.loss[3]) and c.loss[0] == 3.5  # a loss not logged at a λ̂'s step: NaN, allowed
    assert c.rows_without_llc == 3  # steps 50, 150 (empty) and 250 (NaN): left out, counted
    assert c.columns == {"step": "_step", "llc": "llc/mean", "se": "llc/se", "loss": "train/loss"}


def test_a_wandb_panel_export(tmp_path):
    text = ('"Step","my-run - llc/mean","my-run - llc/mean__MIN","my-run - llc/mean__MAX"\n'
            + "".join(f'"{s}","{v}","{v - 1}","{v + 1}"\n' for s, v in [(0, 1.0), (10, 2.0), (20, 4.0), (30, 4.5),
                                                                     (40, 4.4), (50, 4.6)]))
    path = write(tmp_path / "panel.csv", text)
    c = read_curve(path, llc="my-run - llc/mean")
    assert list(c.step) == [0, 10, 20, 30, 40, 50] and c.llc[2] == 4.0 and c.se is None and c.loss is None
    assert c.columns == {"step": "Step", "llc": "my-run - llc/mean", "se": None, "loss": None}


@pytest.mark.parametrize("step, llc", [("step", "llc"), ("global_step", "llc_mean"), ("trainer/global_step",
                                                                                          "lambda_hat")])
def test_step_and_llc_columns_are_found_by_their_usual_names(tmp_path, step, llc):
    path = write(tmp_path / "c.csv", f"{step},{llc},other\n" + "".join(f"{10 * i},{i},0\n" for i in range(1, 6)))
    c = read_curve(path)
    assert c.columns["step"] == step and c.columns["llc"] == llc and list(c.llc) == [1, 2, 3, 4, 5]


def test_a_byte_order_mark_and_windows_line_ends(tmp_path):
    path = tmp_path / "excel.csv"
    path.write_bytes(b"\xef\xbb\xbfstep,llc\r\n" + b"".join(f"{i},{i}.5\r\n".encode() for i in range(1, 6)))
    assert list(read_curve(path).step) == [1, 2, 3, 4, 5]


def test_is_table_by_suffix_then_by_content(tmp_path):
    import h5py

    with h5py.File(tmp_path / "results", "w"):
        pass
    write(tmp_path / "curve", "step,llc\n")
    assert is_table(tmp_path / "x.csv") and is_table(tmp_path / "x.TSV") and is_table(tmp_path / "x.txt")
    assert is_table(tmp_path / "curve") and not is_table(tmp_path / "results")  # no suffix: by content
    assert not is_table(tmp_path / "missing.h5") and not is_table(tmp_path / "missing")


# ----------------------------------------------------------------------------------------------------------
# errors: one line, naming the file and what is wrong

GOOD = "step,llc,se\n" + "".join(f"{10 * i},{i},0.1\n" for i in range(1, 7))


def test_the_file_itself(tmp_path):
    assert error(tmp_path / "missing.csv").endswith("no such file")
    assert error(tmp_path).endswith("is a folder, not a CSV/TSV file")
    assert error(write(tmp_path / "e.csv", "")).endswith("is empty")
    assert error(write(tmp_path / "b.csv", "\n \n")).endswith("is empty")
    (tmp_path / "bin.csv").write_bytes(b"\x89HDF\r\n\x1a\n\xff\xfe\x00")
    assert "is not a text file" in error(tmp_path / "bin.csv")
    assert "has no header (its first line holds numbers)" in error(write(tmp_path / "n.csv", "10,1\n20,2\n"))


def test_unknown_ambiguous_and_missing_columns(tmp_path):
    path = write(tmp_path / "c.csv", GOOD)
    assert error(path, llc="lambda") == f"{path}: no column 'lambda' (--llc); its columns are 'step', 'llc', 'se'"
    assert "no column 'x' (--step)" in error(path, step="x")
    assert "no column 'sd' (--se)" in error(path, se="sd")
    assert "no column 'loss' (--loss)" in error(path, loss="loss")
    msg = error(write(tmp_path / "n.csv", "iteration,value\n1,2\n"))
    assert "which column holds the step? none is named step, _step, Step, global_step or trainer/global_step" in msg
    assert "--step" in msg and "'iteration', 'value'" in msg
    msg = error(write(tmp_path / "m.csv", "step,value\n1,2\n"))
    assert "which column holds λ̂? none is named llc, llc_mean or lambda_hat; name it with --llc" in msg
    msg = error(write(tmp_path / "two.csv", "_step,Step,llc\n1,1,2\n"))
    assert "several columns could hold the step ('_step', 'Step'); choose one with --step" in msg
    assert "appears 2 times in the header" in error(write(tmp_path / "d.csv", "step,llc,llc\n1,2,3\n"), llc="llc")


@pytest.mark.parametrize("row, se, expected", [
    ("30,x,0.1", "se", "line 4, column 'llc': 'x' is not a number"),
    ("30,3,abc", "se", "line 4, column 'se': 'abc' is not a number"),
    ("30.5,3,0.1", "se", "line 4, column 'step': step '30.5' is not a whole number"),
    ("-30,3,0.1", "se", "line 4, column 'step': step '-30' is negative"),
    ("inf,3,0.1", "se", "line 4, column 'step': step 'inf' is not a whole number"),
    (",3,0.1", "se", "line 4, column 'step': no step on a row that has a λ̂"),
    ("30,3,-0.1", "se", "line 4, column 'se': the s.e. of a λ̂ must be a finite number >= 0, got '-0.1'"),
    ("30,3,nan", "se", "line 4, column 'se': the s.e. of a λ̂ must be a finite number >= 0, got 'nan'"),
    ("30,3,", "se", "line 4, column 'se': the s.e. of a λ̂ must be a finite number >= 0, got an empty cell"),
    ("30,inf,0.1", None, "line 4, column 'llc': λ̂ is inf"),
    ("30,3", None, "line 4 has 2 cells, the header 3 (is the delimiter the same on every line?)"),
    ("20,3,0.1", None, "step 20 appears twice (lines 3 and 4, column 'step')"),
    ("20.0,3,0.1", None, "step 20 appears twice (lines 3 and 4, column 'step')"),  # the same step, written as a float
])
def test_bad_cells_name_the_line_and_the_column(tmp_path, row, se, expected):
    lines = GOOD.splitlines()
    path = write(tmp_path / "c.csv", "\n".join([*lines[:3], row, *lines[3:]]) + "\n")
    assert error(path, se=se) == f"{path}: {expected}"


def test_an_empty_cell_is_not_an_error_where_it_is_not_needed(tmp_path):
    # no λ̂ on the row: its s.e. and step are not looked at; no --se: an s.e. cell is not read. A row of empty cells
    # is a blank line, not a row
    path = write(tmp_path / "c.csv", GOOD + ",,\n55.5,,-1\n80,8,\n")
    assert read_curve(path, se=None).rows_without_llc == 1
    assert "line 10, column 'se'" in error(path, se="se")  # the 80 row's; never the 55.5 one's


def test_too_few_rows_with_a_llc(tmp_path):
    path = write(tmp_path / "c.csv", "step,llc\n1,1\n2,\n3,3\n4,4\n5,5\n")
    assert error(path) == f"{path}: 4 rows have a λ̂ (column 'llc'); at least 5 are needed to find stages"
