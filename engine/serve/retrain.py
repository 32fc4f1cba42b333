"""``certus monitor --propose-retrain``: a deployment's recent inputs as a new dataset version awaiting approval.

The inputs a model served (its features as telemetry kept them, and what it predicted) are written to
``data/telemetry/<model>-inputs.csv`` and registered through the ordinary path
(:func:`engine.datasets.register.register_source`: DVC, a data steward's signed manifest, a ledger event),
never approved here: a stage that consumes the dataset runs only after another person approves it.

Only when the bundle's reference dataset (``reference.dataset`` in the serving config) is ``public`` or
``internal``: inputs to a model trained on confidential or personal data are data of that class too, and
are not re-collected from serving traffic. Columns the serving config marks ``pii`` are never written
(telemetry never stores them either; this is the second fence).
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from engine.errors import ServeError

__all__ = ["ALLOWED", "Proposal", "proposal", "check_sensitivity", "dataset_name"]

ALLOWED = ("public", "internal")  # sensitivities whose serving inputs may be registered as data
PREDICTED = "predicted"  # the column holding the served prediction


@dataclass(frozen=True)
class Proposal:
    csv: bytes
    rows: int
    columns: tuple[str, ...]


def dataset_name(model: str) -> str:
    return f"{model}-inputs"


def check_sensitivity(reg: Any, reference: Mapping[str, Any], flag: str = "--propose-retrain") -> Any:
    """The reference dataset's latest manifest, when its sensitivity allows registering served inputs."""
    from engine.errors import DatasetError

    name = (reference.get("source") or {}).get("dataset")
    if not name:
        raise ServeError(f"{flag}: the bundle's reference names no registered dataset (reference.dataset in the "
                         "serving config), so the inputs' sensitivity is unknown; nothing registered")
    try:
        entry = reg.resolve(str(name))
    except DatasetError as e:
        raise ServeError(f"{flag}: reference dataset: {e}") from None
    man = entry.manifest
    if man.sensitivity not in ALLOWED:
        raise ServeError(f"{flag}: dataset {man.ref} is '{man.sensitivity}'; inputs served by a model trained on "
                         f"it are registered only for {' or '.join(ALLOWED)} data (a data steward registers such "
                         "data with 'certus dataset add'); nothing registered")
    return man


def proposal(inputs: Mapping[str, Any], features: Sequence[str], pii: Sequence[str]) -> Proposal:
    """CSV of the window's input rows: the (non-pii) features, then the prediction; rows missing a feature
    value are left out."""
    cols = tuple(f for f in features if f not in set(pii))
    missing = [f for f in cols if f not in inputs]
    if missing:
        raise ServeError(f"--propose-retrain: telemetry holds no values of feature(s) {', '.join(missing)} "
                         "(guardrails.log_inputs off?); nothing registered")
    values = [inputs[f].tolist() for f in cols]
    preds = inputs["pred"].tolist()
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow((*cols, PREDICTED))
    n = 0
    for i, pred in enumerate(preds):
        row = [v[i] for v in values]
        if any(x is None or (isinstance(x, float) and not math.isfinite(x)) for x in row) or pred is None:
            continue
        w.writerow((*(repr(float(x)) if isinstance(x, float) else x for x in row), pred))
        n += 1
    if n == 0:
        raise ServeError("--propose-retrain: no input rows in the telemetry window (see --since); nothing registered")
    return Proposal(out.getvalue().encode(), n, (*cols, PREDICTED))
