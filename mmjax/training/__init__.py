"""Fine-tuning from the same pure functions inference uses: examples, the loss, optax steps, LoRA, saving.

    result = mmjax.train(llm, [mmjax.TrainExample(prompt, " red"), ...], steps=200)
    mmjax.save_pretrained(result.llm, "my-checkpoint")   # mmjax.load and transformers read it
"""

from mmjax.training.checkpoint import save_pretrained
from mmjax.training.examples import TrainBatch, TrainExample, collate, target_ids
from mmjax.training.grpo import (
    GRPOTrainer, RolloutBatch, UpdateStats, answer_seeds, group_advantages, grpo_loss, grpo_objective, make_grpo_step,
    rollout_batch, trainable_split,
)
from mmjax.training.lora import LoraConfig
from mmjax.training.loss import batch_loss, batch_token_logprobs, target_loss, token_logprobs
from mmjax.training.params import TRAINABLE, ParamSplit
from mmjax.training.score import score
from mmjax.training.trainer import TrainResult, make_train_step, objective, train

__all__ = [
    "GRPOTrainer", "RolloutBatch", "UpdateStats", "answer_seeds", "group_advantages", "grpo_loss", "grpo_objective",
    "make_grpo_step", "rollout_batch", "trainable_split",
    "LoraConfig", "ParamSplit", "TRAINABLE", "TrainBatch", "TrainExample", "TrainResult", "batch_loss", "collate",
    "batch_token_logprobs", "make_train_step", "objective", "save_pretrained", "score", "target_ids", "target_loss",
    "token_logprobs", "train",
]
