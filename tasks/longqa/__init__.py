"""Long-document QA at exact token lengths: LongBench-format datasets and an offline synthetic QA.

Two sources (longbench.py, synthetic.py) behind one interface (source.py), one prompt shape:
HEAD + BODY + TAIL, exactly L tokens (BOS included; the generation budget comes on top). HEAD/TAIL are the
fixed parts (BOS, chat-template wrap, instruction, question); the BODY is the long context, sized to the
remaining budget B = L - |HEAD| - |TAIL|. Metrics: metrics.py; scoring: task.py.
`answer_in_context`: a reference answer (normalised, whole words) is in the context that survived truncation
(summaries: nothing was truncated); `answer_in_full_context`: the same before truncation.
"""

from tasks.longqa.longbench import (
    DATASETS,
    DEFAULT_HF_DATASETS,
    GENERIC,
    DatasetSpec,
    LongBenchSource,
    QARow,
    dataset_spec,
    load_rows,
    middle_truncate,
)
from tasks.longqa.metrics import (
    best_scores,
    exact_match,
    normalize_answer,
    rouge_l,
    substring_match,
    token_f1,
)
from tasks.longqa.source import QAPrompt, Source
from tasks.longqa.synthetic import SNAP_WINDOW, SyntheticQuestion, SyntheticSource, synthetic_question
from tasks.longqa.task import LOGPROB, MEASURE, TASK, LongQATask

__all__ = ["DATASETS", "DEFAULT_HF_DATASETS", "GENERIC", "LOGPROB", "MEASURE", "SNAP_WINDOW", "TASK",
           "DatasetSpec", "LongBenchSource", "LongQATask", "QAPrompt", "QARow", "Source", "SyntheticQuestion",
           "SyntheticSource", "best_scores", "dataset_spec", "exact_match", "load_rows", "middle_truncate",
           "normalize_answer", "rouge_l", "substring_match", "synthetic_question", "token_f1"]
