"""Newer paradigms around the U-Net: self-supervised pretraining, few-shot segmentation, active
learning. The multi-task, spatio-temporal and multi-modal models live with the other models
(`multitask-unet`, `temporal-unet`, `multimodal-unet` in `unetkit.models`).

    from unetkit.paradigms import pretrain_encoder, transfer_encoder, fine_tune, PrototypeSegmenter
    from unetkit.paradigms import score_uncertainty, select_for_labelling
"""
from unetkit.paradigms.pretrain import GenesisCorruption, TransferReport, pretrain_encoder, transfer_encoder
from unetkit.paradigms.few_shot import PrototypeSegmenter, fine_tune
from unetkit.paradigms.active import (METHODS, UncertaintyScores, class_probabilities, entropy, image_features,
                                      score_uncertainty, select_for_labelling, suggest_labels, write_ranking_csv)

__all__ = [
    "GenesisCorruption", "TransferReport", "pretrain_encoder", "transfer_encoder",
    "PrototypeSegmenter", "fine_tune",
    "METHODS", "UncertaintyScores", "class_probabilities", "entropy", "image_features", "score_uncertainty",
    "select_for_labelling", "suggest_labels", "write_ranking_csv",
]
