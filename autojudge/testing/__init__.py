"""Test support that must be importable by tritonserver's Python backend (not used at run time)."""
