"""Test and benchmark scaffolding: a single-machine Flashpods host (localhost) and the
identity stack (identity_stack). Not part of the installed package; pytest finds it
through pyproject's `pythonpath`, the bench/ scripts put this directory on sys.path."""
