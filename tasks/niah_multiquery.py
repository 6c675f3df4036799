"""RULER's niah_multiquery (4 keys asked at once); the family is tasks/ruler/niah.py."""

from tasks.ruler.niah import NiahFamily
from tasks.ruler.task import make_task

TASK = make_task("niah_multiquery", NiahFamily("essay", "words", "numbers", num_needle_q=4))
