"""Prefect flows sequencing capture, scoring and publishing (no maths here).

``flows.flows`` holds the flows, ``flows.tasks`` the tasks (each wraps one
``pipelines.workspace`` stage), ``flows.serve`` the embedded deployments behind
``nex flows serve``. The work is in ``pipelines.workspace`` (whose package data holds the
shipped calibration sets).
"""
