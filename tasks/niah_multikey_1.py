"""RULER's niah_multikey_1 (text haystack, 4 keys: 3 distractor needles); family: tasks/ruler/niah.py."""

from tasks.ruler.niah import NiahFamily
from tasks.ruler.task import make_task

TASK = make_task("niah_multikey_1", NiahFamily("essay", "words", "numbers", num_needle_k=4))
