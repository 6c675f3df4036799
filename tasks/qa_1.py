"""RULER's qa_1 (squad-format question over distractor documents; offline synthetic QA without
--qa-file); the family is tasks/ruler/qa.py."""

from tasks.ruler.qa import QAFamily
from tasks.ruler.task import make_task

TASK = make_task("qa_1", QAFamily("squad", 1))
