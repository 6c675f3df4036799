"""Report figures per task: harness/report/figures/<task>.py holds `FIGURES` (and optionally `EXTRA_MEASURES`,
`TABLES`, `COLUMNS`), found by name by harness/report/registry.py."""
