"""Paper tables as data: one TOML spec per published table (``benchmark/tables/specs/``), expanded into cells
for ``python -m benchmark run --table NAME`` and rendered in the paper's layout by
``python -m benchmark report OUT --table NAME``.

* :mod:`.spec`: the spec format and its loader (:func:`load_spec`, :func:`spec_names`);
* :mod:`.expand`: rows x columns x seeds (and ``--set`` sweeps) -> cells, and the matching of records to rows.
"""
from .spec import SPEC_DIR, RowSpec, SpecError, TableSpec, is_table, load_spec, parse_spec, spec_names

__all__ = ["SPEC_DIR", "RowSpec", "SpecError", "TableSpec", "is_table", "load_spec", "parse_spec", "spec_names"]
