"""RULER's niah_multikey_3 (a haystack of UUID -> UUID needles); the family is tasks/ruler/niah.py."""

from tasks.ruler.niah import NiahFamily
from tasks.ruler.task import make_task

TASK = make_task("niah_multikey_3", NiahFamily("needle", "uuids", "uuids"))
