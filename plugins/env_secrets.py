"""The built-in ``env`` secret provider: ``{{secrets.NAME}}`` reads ``$NAME``.

It registers through the same hook a vault or cloud secret manager plugin
would use, and is asked last (``trylast``), so such plugins win.
"""

from __future__ import annotations

import os

from kernelflow.plugins.hookspecs import hookimpl
from kernelflow.secrets import SecretProvider


class EnvSecrets:
    """Secrets from environment variables of the process running the workflow."""

    name = "env"

    def get(self, name: str) -> str | None:
        return os.environ.get(name)


@hookimpl(trylast=True)
def kernelflow_secret_providers() -> list[SecretProvider]:
    return [EnvSecrets()]
