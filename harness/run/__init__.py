"""The run wing: suites, the run plan, the dry run, the runner and the run folder (records)."""
