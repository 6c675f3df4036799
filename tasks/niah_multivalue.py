"""RULER's niah_multivalue (one key, 4 values); the family is tasks/ruler/niah.py."""

from tasks.ruler.niah import NiahFamily
from tasks.ruler.task import make_task

TASK = make_task("niah_multivalue", NiahFamily("essay", "words", "numbers", num_needle_v=4))
