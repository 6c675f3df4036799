"""RULER's niah_multikey_2 (a haystack made of needles); the family is tasks/ruler/niah.py."""

from tasks.ruler.niah import NiahFamily
from tasks.ruler.task import make_task

TASK = make_task("niah_multikey_2", NiahFamily("needle", "words", "numbers"))
