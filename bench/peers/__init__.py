"""The benchmark workers: one module per library (``<lib>_worker.py``) and what they share (``common.py``)."""
