"""Entry point: settings from the environment, the services, the Faust app."""

from __future__ import annotations

from streamapp.config import Settings
from streamapp.runtime import cli, tracing
from streamapp.runtime.app import Runtime
from streamapp.services import registry

settings = Settings.from_env()
tracing.configure(settings)
runtime = Runtime(settings, registry(settings))
app = runtime.app
cli.install(app)
