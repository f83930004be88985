"""What one stage of a run produced, on any backend."""

import dataclasses
from typing import Dict, Optional

# Each stage's evaluation results, in its model_dir.
RESULT_FILE = "result.json"


@dataclasses.dataclass
class StageResult:
  """What one stage (a train and/or eval of one model) produced.

  Attributes:
    stage: "pretrain", "finetune" or "linear_eval".
    model_dir: where its checkpoints, summaries and results are.
    global_step: optimizer steps taken in total.
    eval_results: evaluation metrics, or None if not evaluated.
    random_init: the encoder was never trained or loaded (baseline).
    probe: {features: linear-probe result} of SimCLR and the baselines
      (`probe_baselines`), or None.
    health: the label-free health signals of a pretrained encoder
      (`evaluation.health` keys; also in result.json), or None.
  """
  stage: str
  model_dir: str
  global_step: int
  eval_results: Optional[Dict[str, float]] = None
  random_init: bool = False
  probe: Optional[Dict[str, dict]] = None
  health: Optional[Dict[str, float]] = None
