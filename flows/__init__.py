"""Prefect flows sequencing capture, scoring and publishing (no maths here)."""
