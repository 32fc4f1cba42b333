"""A deployment to serve: the registry version an alias names, verified as ``certus deploy`` verifies it.

:func:`load_verified` resolves ``NAME@ALIAS`` through the ledger's registry events, re-checks the
installed copy's whole chain (:func:`engine.release.chain.verify_chain`: checkpoint, release record,
OMS signature and every file, run, attestations, gates, dataset approvals), then loads the model
from the verified files. Anything that does not verify is refused with the first broken link named.
:class:`AliasWatch` tells cheaply when the alias may have moved: the ledger's checkpoint file changed.
"""

from __future__ import annotations

import json
import os
import pickle
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from engine.errors import ServeError
from engine.serve.config import ServingConfig, parse_serving

__all__ = ["Deployment", "load_verified", "resolve", "AliasWatch", "Model"]


class Model:
    """The model object from the bundle with the serving config's feature order and labels."""

    def __init__(self, obj: Any, cfg: ServingConfig) -> None:
        inner = obj.get("model") if isinstance(obj, dict) else obj
        if not hasattr(inner, "predict"):
            raise ServeError(f"{cfg.model_file}: not a model (no predict method)")
        self.predictor = inner
        feats = tuple(obj.get("features") or ()) if isinstance(obj, dict) else ()
        if cfg.features and feats and tuple(cfg.features) != feats:
            raise ServeError(f"serving.yaml: serving.features {list(cfg.features)} are not the model's {list(feats)}")
        self.cfg = cfg if cfg.features else cfg.with_features(feats)
        if not self.cfg.features:
            raise ServeError("serving.yaml: serving.features is empty and the model file names none")
        self.proba = hasattr(inner, "predict_proba")

    def predict(self, X: Any) -> tuple[list[int], list[float]]:
        """Class index and confidence (top-class probability; 1.0 without predict_proba) per row."""
        if self.proba:
            p = self.predictor.predict_proba(X)
            idx = p.argmax(axis=1)
            classes = getattr(self.predictor, "classes_", None)
            labels = [int(classes[i]) for i in idx] if classes is not None else [int(i) for i in idx]
            return labels, p.max(axis=1).tolist()
        return [int(v) for v in self.predictor.predict(X)], [1.0] * len(X)

    def label(self, index: int) -> str:
        labels = self.cfg.labels
        return labels[index] if 0 <= index < len(labels) else str(index)


@dataclass(frozen=True)
class Deployment:
    name: str
    version: int
    alias: str | None
    bundle_root: str  # OMS root digest: names the served version in every response
    bundle_version: str
    path: str
    model: Model
    reference: dict[str, Any] | None

    @property
    def cfg(self) -> ServingConfig:
        return self.model.cfg


def resolve(prov: Any, name: str, at: str | None, registry: str | None) -> Any:
    """The registry Version ``name@at`` names now (from the ledger)."""
    from engine.release.ledger_view import LedgerView
    from engine.release.registry import Registry

    reg = Registry.load(prov.ws.root, LedgerView.load(prov), registry)
    version = reg.model(name).resolve(at)
    return version, reg.bundle_path(name, version.number)


def load_verified(prov: Any, name: str, at: str | None, registry: str | None = None) -> Deployment:
    from engine.release.chain import verify_chain

    version, path = resolve(prov, name, at, registry)
    rep = verify_chain(prov, path, now=datetime.now(UTC))
    if not rep.ok:
        more = f" (and {len(rep.failures) - 1} more)" if len(rep.failures) > 1 else ""
        raise ServeError(f"{name}@{at or version.number}: version {version.number} does not verify; not served: "
                         f"{rep.failures[0]}{more}")
    if rep.release is None or rep.release.bundle_root != version.bundle_root:
        raise ServeError(f"{name}@{at}: the installed copy at {path} is not the bundle version {version.number} "
                         "registered")
    try:
        cfg = parse_serving(open(os.path.join(path, "serving.yaml"), encoding="utf-8").read(),
                        f"{path}/serving.yaml")
        with open(os.path.join(path, cfg.model_file), "rb") as f:
            obj = pickle.load(f)  # noqa: S301 - verified just now against the releaser's signature
    except OSError as e:
        raise ServeError(f"{path}: cannot read {e.filename} ({e.strerror})") from None
    reference = None
    ref_path = os.path.join(path, "reference.json")
    if os.path.exists(ref_path):
        with open(ref_path, encoding="utf-8") as f:
            reference = json.load(f)
    return Deployment(name, version.number, at if at and not at.isdigit() else None, version.bundle_root,
                      version.bundle_version, path, Model(obj, cfg), reference)


class AliasWatch:
    """Has the ledger grown since the last look? (The checkpoint file changes on every append.)"""

    def __init__(self, ws_root: str) -> None:
        self.path = os.path.join(ws_root, ".certus", "ledger", "checkpoint")
        self.last = self._stamp()

    def _stamp(self) -> tuple[int, int, int]:
        try:
            st = os.stat(self.path)
            return st.st_mtime_ns, st.st_size, st.st_ino
        except OSError:
            return 0, 0, 0

    def changed(self) -> bool:
        now = self._stamp()
        if now == self.last:
            return False
        self.last = now
        return True
