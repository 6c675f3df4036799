"""RULER's cwe (common words extraction); the family is tasks/ruler/aggregation.py."""

from tasks.ruler.aggregation import CWEFamily
from tasks.ruler.task import make_task

TASK = make_task("cwe", CWEFamily())
