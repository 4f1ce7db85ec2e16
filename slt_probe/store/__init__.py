"""The HDF5 files slt-probe writes: every row, attribute and group, and the resume rule, written and read here only.

results      the walk's file: one row per checkpoint, the run's attributes, ResultsFile (continue or refuse)
groups       its optional groups keyed by step: behavioural probes, refined λ̂ of components
transitions  the transitions records and the group that holds a curve's
curves       a λ̂ curve read from a CSV/TSV file, written as a results file (engine "external")
calibration  a calibration sweep's own file
parts        the results file's parts folder: each finished unit of work, written on its own, folded in by readers
h5, atomic   what every file shares: attributes, strings, versions; replacing a file or a group in one step
"""

from slt_probe.store import parts
from slt_probe.store.atomic import atomic_path, commit, remove_stale_temporaries
from slt_probe.store.calibration import CALIBRATION_SCHEMA, write_calibration
from slt_probe.store.curves import ENGINE as EXTERNAL_ENGINE
from slt_probe.store.curves import curve_attrs, curve_rows, is_curve_file, write_curve
from slt_probe.store.groups import REFINED_FIELDS, Probes, Refined
from slt_probe.store.h5 import STR, decode_attr, encode_attr, utc_now, versions, write_group
from slt_probe.store.lock import WriterLock
from slt_probe.store.results import (COLUMNS, KEPT_GROUPS, MIN_PARTS, PART_SCHEMA, RESUME_FREE, SCHEMA, SCHEMA_VERSION,
                                     Results, ResultsFile, check_output, check_same_run, describe_difference,
                                     empty_row, fail_row, fill_row, load_results, merge, read, read_arrays,
                                     resume_refined, run_attrs, write, write_part)
from slt_probe.store.transitions import (BOUNDARY_FIELDS, SPURT_FIELDS, STAGE_FIELDS, Boundary, Spurt, Stage,
                                         TransitionConfig, Transitions, read_transitions, transitions_group,
                                         write_transitions)

__all__ = [
    "atomic_path", "commit", "remove_stale_temporaries", "CALIBRATION_SCHEMA", "write_calibration",
    "REFINED_FIELDS", "Probes", "Refined", "STR", "decode_attr", "encode_attr", "utc_now", "versions",
    "write_group", "COLUMNS", "KEPT_GROUPS", "RESUME_FREE", "SCHEMA", "SCHEMA_VERSION", "Results", "ResultsFile",
    "check_same_run", "describe_difference", "empty_row", "fail_row", "fill_row", "load_results", "read",
    "read_arrays", "run_attrs", "write", "WriterLock", "parts", "MIN_PARTS", "PART_SCHEMA", "merge", "resume_refined",
    "write_part", "check_output", "BOUNDARY_FIELDS", "SPURT_FIELDS", "STAGE_FIELDS", "Boundary", "Spurt",
    "Stage", "TransitionConfig", "Transitions", "read_transitions", "transitions_group", "write_transitions",
    "EXTERNAL_ENGINE", "curve_attrs", "curve_rows", "is_curve_file", "write_curve",
]
