"""The tasks: one module or package per task, each exporting `TASK` (the interface is tasks/base.py)."""
