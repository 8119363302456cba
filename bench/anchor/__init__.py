"""The Restate anchor (issue 12, item 5): the bench's workloads run through Restate beside streamapp.

``python -m bench.anchor`` (see ``__main__``). Kept free of imports: the SDK
side (``restate_service``) runs from the anchor's own venv, which has none of
streamapp's dependencies.
"""
