"""Support for tests, chaos runs and the README walkthrough; never imported by a worker.

    downstream   the social-media backend over HTTP (``python -m streamapp.testing.downstream``)
"""
