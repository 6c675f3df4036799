"""RULER's vt (variable tracking: 1 chain, 4 hops, in noise); the family is tasks/ruler/vt.py."""

from tasks.ruler.task import make_task
from tasks.ruler.vt import VTFamily

TASK = make_task("vt", VTFamily())
