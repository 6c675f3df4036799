"""RULER's niah_single_2 (text haystack, a number); the family is tasks/ruler/niah.py."""

from tasks.ruler.niah import NiahFamily
from tasks.ruler.task import make_task

TASK = make_task("niah_single_2", NiahFamily("essay", "words", "numbers"))
