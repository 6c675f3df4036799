"""RULER's qa_2 (hotpotqa-format question over distractor documents; offline synthetic QA without
--qa-file); the family is tasks/ruler/qa.py."""

from tasks.ruler.qa import QAFamily
from tasks.ruler.task import make_task

TASK = make_task("qa_2", QAFamily("hotpotqa", 2))
