"""RULER's fwe (frequent words extraction, Zipf alpha 2); the family is tasks/ruler/aggregation.py."""

from tasks.ruler.aggregation import FWEFamily
from tasks.ruler.task import make_task

TASK = make_task("fwe", FWEFamily())
