"""Hydra composition through its Compose API, and multirun sweep expansion.

Hydra owns the override grammar (``key=value``, ``group=option``, ``+add``, ``~delete``,
sweeps ``a=1,2,3``, ``range()``, ``choice()``); we only call it. Composition happens for
every run, so editing a file under ``conf/`` changes the param values stages see.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Sequence
from typing import Any

from engine.errors import ConfigError

__all__ = ["compose", "expand_sweep", "has_sweep"]


def _parser() -> Any:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return OverridesParser.create()


def _parse(overrides: Sequence[str]) -> list[Any]:
    from hydra.errors import HydraException

    try:
        return _parser().parse_overrides(list(overrides))
    except HydraException as e:
        raise ConfigError(f"override: {_first_line(e)}; see Hydra's override grammar") from e
    except RecursionError:
        raise ConfigError("override: nested too deeply to parse; flatten the value") from None


def _first_line(e: BaseException, limit: int = 300) -> str:
    """An exception's first line, bounded: Hydra echoes whole overrides back, however long."""
    text = str(e).strip()
    line = text.splitlines()[0] if text else type(e).__name__
    return line if len(line) <= limit else line[:limit] + "…"


def has_sweep(overrides: Sequence[str]) -> bool:
    return any(o.is_sweep_override() for o in _parse(overrides))


def expand_sweep(overrides: Sequence[str]) -> list[list[str]]:
    """Cartesian product of sweep overrides, as Hydra's BasicSweeper orders it."""
    parsed = _parse(overrides)
    axes: list[list[str]] = []
    for o in parsed:
        key = o.get_key_element()
        if o.is_sweep_override():
            axes.append([f"{key}={v}" for v in o.sweep_string_iterator()])
        else:
            axes.append([f"{key}={o.get_value_element_as_str()}"])
    return [list(p) for p in itertools.product(*axes)] if axes else [[]]


def compose(conf_dir: str, overrides: Sequence[str], config_name: str = "config") -> dict[str, Any]:
    """Compose ``conf_dir/config_name.yaml`` with overrides; return a resolved plain dict."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=os.path.abspath(conf_dir), version_base=None):
            cfg = hydra_compose(config_name=config_name, overrides=list(overrides))
            container = OmegaConf.to_container(cfg, resolve=True)
    except (HydraException, OmegaConfBaseException) as e:
        raise ConfigError(f"{conf_dir}/{config_name}.yaml: {_first_line(e)}") from e
    except ValueError as e:  # hydra raises plain ValueError for some bad overrides
        raise ConfigError(f"{conf_dir}/{config_name}.yaml: {_first_line(e)}") from e
    except RecursionError:
        raise ConfigError(f"{conf_dir}/{config_name}.yaml: a value or override is nested too deeply to compose; "
                          "flatten it") from None
    except Exception as e:  # noqa: BLE001 - Hydra's plugins and grammar raise many kinds; one line each
        raise ConfigError(f"{conf_dir}/{config_name}.yaml: {type(e).__name__}: {_first_line(e)}") from e
    finally:
        GlobalHydra.instance().clear()
    assert isinstance(container, dict)
    return container
