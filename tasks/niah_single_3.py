"""RULER's niah_single_3 (text haystack, a UUID); the family is tasks/ruler/niah.py."""

from tasks.ruler.niah import NiahFamily
from tasks.ruler.task import make_task

TASK = make_task("niah_single_3", NiahFamily("essay", "words", "uuids"))
