"""RULER's synthetic tasks at exact token lengths, generated offline; each config is a module
in tasks/ (tasks/niah_single_1.py, ..., tasks/qa_2.py)"""
