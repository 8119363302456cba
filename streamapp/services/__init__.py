"""The services a worker serves: the seed's two, plus any named in settings."""

from __future__ import annotations

import importlib
from collections.abc import Mapping

from streamapp.config import Settings
from streamapp.durable.service import Registry, Service


def registry(settings: Settings, env: Mapping[str, str] | None = None) -> Registry:
    """The services, each configured from the environment (``env``: os.environ) by its own settings."""
    from streamapp.services import packagetracker, userfeed

    reg = Registry([userfeed.build(userfeed.Config.from_env(env)), packagetracker.tracker])
    for spec in settings.extra_services:
        module_name, _, attr = spec.partition(":")
        svc = getattr(importlib.import_module(module_name), attr)
        for item in svc if isinstance(svc, (list, tuple)) else [svc]:
            if not isinstance(item, Service):
                raise SystemExit(f"STREAMAPP_SERVICES entry {spec!r} is not a Service")
            reg.add(item)
    return reg
