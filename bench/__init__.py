"""streamapp's benchmark suite (issue 5): ``python -m bench [--smoke]``; see bench/__main__.py."""
