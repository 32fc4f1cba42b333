"""What ``certus package`` adds for serving: the drift reference, built from the training data it names."""

from __future__ import annotations

import os
from typing import Any

from engine.errors import ServeError

__all__ = ["reference_file"]


def reference_file(directory: str, model: str, serving: str | None, data: str | None) -> dict[str, bytes]:
    """``{"reference.json": bytes}``, or {} when neither ``data`` nor the serving config names reference data.

    The features and labels come from the serving config (else the model file's ``features``); the
    thresholds from ``policy.monitor`` of the workspace's composed Hydra config.
    """
    from engine.serve.config import ServingConfig, parse_serving
    from engine.serve.reference import REFERENCE_FILE, build_reference, reference_bytes

    cfg: ServingConfig | None = None
    if serving:
        try:
            text = open(serving, encoding="utf-8").read()
        except OSError as e:
            raise ServeError(f"serving config {serving}: cannot read ({e.strerror})") from None
        cfg = parse_serving(text, serving)
    ref_cfg = dict(cfg.reference or {}) if cfg else {}
    data = data or ref_cfg.get("data")
    if not data:
        return {}
    path = data if os.path.isabs(data) or os.path.exists(data) else os.path.join(directory, data)
    obj = _load_model(model)
    features = tuple(cfg.features) if cfg and cfg.features else tuple(_features_of(obj))
    if not features:
        raise ServeError("reference: no features; name them in the serving config (serving.features)")
    ref = build_reference(path, features, model=_predictor(obj), labels=cfg.labels if cfg else (),
                          thresholds=_thresholds(directory), bins=int(ref_cfg.get("bins", 10)),
                          dataset=ref_cfg.get("dataset"))
    ref["source"]["path"] = data
    return {REFERENCE_FILE: reference_bytes(ref)}


def _load_model(path: str) -> Any:
    import pickle

    if not os.path.isfile(path):
        return None
    try:
        with open(path, "rb") as f:
            return pickle.load(f)  # noqa: S301 - the workspace's own trained model, about to be signed
    except Exception as e:  # noqa: BLE001 - any unpickling failure is one line
        raise ServeError(f"model {path}: cannot load it to compute the reference's predictions ({e})") from None


def _features_of(obj: Any) -> list[str]:
    return list(obj.get("features") or []) if isinstance(obj, dict) else []


def _predictor(obj: Any) -> Any:
    return obj.get("model") if isinstance(obj, dict) else obj


def _thresholds(directory: str) -> dict[str, Any]:
    from engine.run.load import compose
    from engine.store.workspace import Workspace

    config = compose(Workspace.discover(directory), [])  # no conf/config.yaml: {} (the defaults)
    policy = config.get("policy") or {}
    mon = policy.get("monitor") if isinstance(policy, dict) else None
    return dict(mon) if isinstance(mon, dict) else {}
