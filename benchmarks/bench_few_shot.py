"""Few-shot segmentation with and without self-supervised pretraining.

Held-out region: columns 358..512 of dsb2018-nuclei. Support set: two labelled 64x64 tiles from the
training columns. For 3 seeds: Models Genesis pretraining (300 steps) on the unlabelled training
columns, then 100 fine-tuning steps from a random or a pretrained encoder, with the encoder frozen,
BN-only, or fully trained. Prints held-out foreground Dice per seed and the mean.

    python benchmarks/bench_few_shot.py      # about a minute on 2 quiet cores
"""
import time

import numpy as np
import torch

import unetkit
from unetkit.data.normalize import normalize_image
from unetkit.datasets import load_dataset
from unetkit.metrics import confusion_counts, dice
from unetkit.paradigms import fine_tune, pretrain_encoder, transfer_encoder

HELDOUT_X = 358
SUPPORT_BOXES = [(40, 40), (200, 250)]  # top-left corners of the 64x64 labelled tiles
FREEZE_MODES = (True, "bn-only", False)


def tiny_unet(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return unetkit.create_model("unet", in_channels=1, num_classes=1, features=(8, 16, 32))


def heldout_dice(model: torch.nn.Module, image: torch.Tensor, mask: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        return float(dice(confusion_counts((model(image) > 0).long(), mask, 2))[0, 1])


def main() -> None:
    torch.set_num_threads(2)
    sample = load_dataset("dsb2018-nuclei")
    image = normalize_image(sample.image.astype(np.float32))
    mask = sample.mask.astype(np.int64)
    support_images = [image[:, y:y + 64, x:x + 64] for y, x in SUPPORT_BOXES]
    support_masks = [mask[:, y:y + 64, x:x + 64] for y, x in SUPPORT_BOXES]
    test_image = torch.from_numpy(image[None, :, :, HELDOUT_X:])
    test_mask = torch.from_numpy(mask[None, :, :, HELDOUT_X:])
    results: dict[tuple[str, str], list[float]] = {}
    for seed in range(3):
        pretrained = tiny_unet(100 + seed)
        start = time.time()
        losses = pretrain_encoder(pretrained, image[:, :, :HELDOUT_X], steps=300, tile_size=48, batch_size=8,
                                  lr=3e-3, seed=seed)
        print(f"seed {seed}: pretraining {time.time() - start:.0f} s, restoration error "
              f"{np.mean(losses[:10]):.4f} -> {np.mean(losses[-10:]):.4f}", flush=True)
        for start_from in ("scratch", "genesis"):
            for freeze in FREEZE_MODES:
                model = tiny_unet(seed)
                if start_from == "genesis":
                    transfer_encoder(pretrained, model)
                fine_tune(model, support_images, support_masks, steps=100, freeze_encoder=freeze, lr=3e-3,
                          tile_size=48, batch_size=8, seed=seed)
                results.setdefault((start_from, str(freeze)), []).append(heldout_dice(model, test_image, test_mask))
    for (start_from, freeze), values in results.items():
        print(f"{start_from:<8} freeze={freeze:<8} " + " ".join(f"{v:.3f}" for v in values)
              + f"  mean {np.mean(values):.3f}")


if __name__ == "__main__":
    main()
