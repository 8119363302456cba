"""``streamapp`` command line: Faust's CLI (worker, ...) plus streamapp's verbs."""

from __future__ import annotations


def main() -> None:
    from streamapp.runtime.main import app

    app.main()
