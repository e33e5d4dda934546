"""Table specs: one TOML file per published table under ``benchmark/tables/specs/``, read into a :class:`TableSpec`.

A spec names the table's cells (datasets x teacher:student pairs x rows x seeds, at one budget), its layout
(rows top to bottom, columns left to right, ``accuracy`` or ``cost``), the metric, and which published figure
goes beside each row. Keys (every other key is an error)::

    description = "one line, shown by `python -m benchmark list tables`"
    source = "the paper / table this reproduces"
    datasets = ["cifar10"]             # one column group per dataset ...
    pairs = "standard"                 # ... x pairs: "default" (the dataset's own), "standard" (the five
                                       #     CMI / Fast-Datafree pairs) or ["teacher:student", ...]
    budget = "paper"                   # a budget name of every row's method (smoke | default | paper)
    seeds = [0, 1, 2]
    metric = "final"                   # final | best
    layout = "accuracy"                # accuracy | cost (accuracy and time side by side)
    methods = ["teacher", "dafl"]      # shorthand: one plain row per method, before the [[rows]] below
    notes = ["printed under the table"]

    [[rows]]
    method = "cpsc-dfkd"
    label = "w/o SCL"                  # default: the method name (and the swept values)
    set = { gamma = 0 }                # config overrides of this row (run or method keys)
    sweep = { temperature = [0.03, 0.07, 0.2] }   # one row per value (several keys: their product)
    published = "cpsc-dfkd"            # the published method beside the row; default: the method for a row
                                       # without overrides, none otherwise; false: none

Spec files hold data only: whether a method, model, dataset, key or budget exists is checked when the spec
is expanded (:mod:`benchmark.tables.expand`), against the registry of the running code.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SPEC_DIR = Path(__file__).resolve().parent / "specs"
LAYOUTS = ("accuracy", "cost")
METRICS = ("final", "best")
PAIR_PRESETS_NAMES = ("default", "standard")

_TOP_KEYS = {"description", "source", "datasets", "pairs", "budget", "seeds", "metric", "layout", "methods",
             "rows", "notes"}
_ROW_KEYS = {"method", "label", "set", "sweep", "published"}


class SpecError(ValueError):
    """A malformed or unknown table spec; the message is one line."""


@dataclass(frozen=True)
class RowSpec:
    """One row of a table (after the spec's own sweeps are expanded)."""

    label: str
    method: str
    overrides: tuple[tuple[str, Any], ...] = ()   # (key, value as written in the spec), in the spec's order
    published: str | None = None                  # the published method whose figure goes beside the row

    def settings(self) -> dict[str, Any]:
        return dict(self.overrides)


@dataclass(frozen=True)
class TableSpec:
    name: str
    description: str
    source: str
    datasets: tuple[str, ...]
    pairs: str | tuple[tuple[str, str], ...]
    budget: str
    seeds: tuple[int, ...]
    metric: str
    layout: str
    rows: tuple[RowSpec, ...]
    notes: tuple[str, ...] = ()
    path: Path | None = field(default=None, compare=False)


def _load_toml(path: Path) -> dict:
    try:
        import tomllib  # Python >= 3.11
    except ModuleNotFoundError:  # pragma: no cover - Python 3.10
        try:
            import tomli as tomllib  # type: ignore
        except ModuleNotFoundError:
            raise SpecError("reading a table spec on Python 3.10 needs the 'tomli' package") from None
    try:
        return tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise SpecError(f"cannot read table spec {path}: {exc}") from None


def _str(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise SpecError(f"{where} must be a non-empty string, got {value!r}")
    return value.strip()


def _str_list(value: Any, where: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value:
        raise SpecError(f"{where} must be a non-empty list of strings, got {value!r}")
    return tuple(dict.fromkeys(_str(v, where) for v in value))


def _scalar(value: Any, where: str) -> Any:
    if isinstance(value, (dict,)) or value is None:
        raise SpecError(f"{where}: {value!r} is not a config value")
    return value


def format_value(value: Any) -> str:
    """A spec value as it is written on the command line (``--set key=VALUE``) and in row labels."""
    import json

    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return json.dumps(list(value), separators=(",", ":"))
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _label(method: str, overrides: list[tuple[str, Any]]) -> str:
    if not overrides:
        return method
    return f"{method} [{', '.join(f'{k}={format_value(v)}' for k, v in overrides)}]"


def _rows(data: dict, name: str) -> tuple[RowSpec, ...]:
    rows: list[RowSpec] = []
    for method in _str_list(data["methods"], f"{name}: methods") if "methods" in data else ():
        rows.append(RowSpec(method, method, (), method))
    raw = data.get("rows", [])
    if not isinstance(raw, list) or not all(isinstance(r, dict) for r in raw):
        raise SpecError(f"{name}: rows must be an array of tables ([[rows]])")
    for i, row in enumerate(raw):
        where = f"{name}: rows[{i}]"
        unknown = sorted(set(row) - _ROW_KEYS)
        if unknown:
            raise SpecError(f"{where}: unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(_ROW_KEYS))})")
        if "method" not in row:
            raise SpecError(f"{where}: no method")
        method = _str(row["method"], f"{where}.method")
        fixed = row.get("set", {})
        sweep = row.get("sweep", {})
        if not isinstance(fixed, dict) or not isinstance(sweep, dict):
            raise SpecError(f"{where}: set and sweep must be tables, e.g. set = {{ gamma = 0 }}")
        both = sorted(set(fixed) & set(sweep))
        if both:
            raise SpecError(f"{where}: {', '.join(both)} both set and swept")
        fixed_items = [(str(k), _scalar(v, f"{where}.set.{k}")) for k, v in fixed.items()]
        sweep_items = []
        for key, values in sweep.items():
            if not isinstance(values, list) or not values:
                raise SpecError(f"{where}.sweep.{key} must be a non-empty list of values")
            sweep_items.append((str(key), [_scalar(v, f"{where}.sweep.{key}") for v in values]))
        published = row.get("published", None)
        if published is not None and published is not False:
            published = _str(published, f"{where}.published")
        combos = itertools.product(*[[(k, v) for v in vs] for k, vs in sweep_items]) if sweep_items else [()]
        for combo in combos:
            overrides = fixed_items + list(combo)
            if "label" in row:
                label = _str(row["label"], f"{where}.label")
                if combo:
                    label += f" [{', '.join(f'{k}={format_value(v)}' for k, v in combo)}]"
            else:
                label = _label(method, overrides)
            if published is False:
                pub = None
            elif published is not None:
                pub = published
            else:
                pub = None if overrides else method
            rows.append(RowSpec(label, method, tuple(overrides), pub))
    if not rows:
        raise SpecError(f"{name}: no rows (give methods = [...] or [[rows]])")
    labels = [r.label for r in rows]
    dupes = sorted({x for x in labels if labels.count(x) > 1})
    if dupes:
        raise SpecError(f"{name}: duplicate row label(s) {', '.join(dupes)}")
    return tuple(rows)


def parse_pairs(text: str, where: str) -> str | tuple[tuple[str, str], ...]:
    """``--pairs`` text (``default``, ``standard`` or ``t:s,t:s``) as a spec's ``pairs``."""
    text = text.strip()
    if text in PAIR_PRESETS_NAMES:
        return text
    return _pairs([p for p in text.split(",") if p.strip()], where)


def _pairs(value: Any, name: str) -> str | tuple[tuple[str, str], ...]:
    if isinstance(value, str):
        if value in PAIR_PRESETS_NAMES:
            return value
        value = [value]
    if not isinstance(value, list) or not value:
        raise SpecError(f"{name}: pairs must be 'default', 'standard' or a list of 'teacher:student'")
    pairs = []
    for item in value:
        teacher, sep, student = _str(item, f"{name}: pairs").partition(":")
        if not sep or not teacher or not student:
            raise SpecError(f"{name}: pairs expects 'teacher:student' items, got {item!r}")
        pairs.append((teacher.strip(), student.strip()))
    return tuple(dict.fromkeys(pairs))


def parse_spec(data: dict, name: str, path: Path | None = None) -> TableSpec:
    """A spec from its parsed TOML; raises :class:`SpecError` on a missing, unknown or malformed key."""
    unknown = sorted(set(data) - _TOP_KEYS)
    if unknown:
        raise SpecError(f"{name}: unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(_TOP_KEYS))})")
    for key in ("description", "datasets", "budget"):
        if key not in data:
            raise SpecError(f"{name}: no {key}")
    from ..checks import SEED_MAX

    seeds = data.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool)
                                                            and 0 <= s <= SEED_MAX for s in seeds):
        raise SpecError(f"{name}: seeds must be a non-empty list of integers in [0, {SEED_MAX}], got {seeds!r}")
    metric = data.get("metric", "final")
    if metric not in METRICS:
        raise SpecError(f"{name}: metric must be one of {', '.join(METRICS)}, got {metric!r}")
    layout = data.get("layout", "accuracy")
    if layout not in LAYOUTS:
        raise SpecError(f"{name}: layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    notes = data.get("notes", [])
    if not isinstance(notes, list) or not all(isinstance(n, str) for n in notes):
        raise SpecError(f"{name}: notes must be a list of strings")
    return TableSpec(
        name=name, description=_str(data["description"], f"{name}: description"),
        source=_str(data.get("source", "this project"), f"{name}: source"),
        datasets=_str_list(data["datasets"], f"{name}: datasets"), pairs=_pairs(data.get("pairs", "default"), name),
        budget=_str(data["budget"], f"{name}: budget"), seeds=tuple(dict.fromkeys(seeds)), metric=metric,
        layout=layout, rows=_rows(data, name), notes=tuple(notes), path=path)


def spec_names(directory: Path = SPEC_DIR) -> list[str]:
    return sorted(p.stem for p in Path(directory).glob("*.toml"))


def load_spec(name: str, directory: Path = SPEC_DIR) -> TableSpec:
    """The shipped spec ``name`` (or a ``.toml`` path)."""
    path = Path(name)
    if path.suffix == ".toml":
        if not path.is_file():
            raise SpecError(f"table spec {path} does not exist")
        return parse_spec(_load_toml(path), path.stem, path)
    path = Path(directory) / f"{name}.toml"
    if not path.is_file():
        import difflib

        known = spec_names(directory)
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise SpecError(f"unknown table {name!r}{hint} (known: {', '.join(known) or 'none'}; or a .toml path)")
    return parse_spec(_load_toml(path), name, path)


def is_table(name: str, directory: Path = SPEC_DIR) -> bool:
    return name in spec_names(directory) or (name.endswith(".toml") and Path(name).is_file())
