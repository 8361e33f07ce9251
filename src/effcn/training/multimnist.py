"""MultiMNIST training and evaluation: two labels, two reconstructions, the two-digit accuracy.

    effcn train --config configs/multimnist.yaml   (data.dataset=multimnist picks MultiMNISTTrainer)

The loss (SPEC): margin loss with both digits as targets (multi-hot), plus 0.196 * MSE for each of
the two reconstructions, each decoded from the capsules masked by its own true label and compared
with its own shifted digit. The metric: the two longest capsules against the two true labels, each
label counting half.
"""

from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F

from ..capsules import margin_loss, reconstruction_loss
from ..data.multimnist import MultiMNISTPairs, PartnerSampler, compose_batch, pad_digits
from ..errors import ConfigError
from .checkpoint import load_checkpoint, load_model_weights
from .metrics import MetricsLog
from .trainer import Trainer, as_nchw, epoch_generator, load_split

RECON_WEIGHT_EACH = 0.196  # SPEC: 0.196 per digit (the MNIST model's 0.392 split in two)
VAL_SEED, TEST_SEED = 1, 0


def two_label_forward(model, x: torch.Tensor, labels2: torch.Tensor | None = None):
    """Capsule lengths (B, C) and two reconstructions (B, 2, C_img, H, W) or None.

    The decoder is masked by each true label of ``labels2`` (B, 2) in training; with None, by the
    two longest capsules (inference).
    """
    if not hasattr(model, "encode") or not hasattr(model, "reconstruct"):
        raise ConfigError(f"model {getattr(model, 'model_name', type(model).__name__)} cannot be "
                          f"trained on MultiMNIST (it needs encode() and reconstruct()); use "
                          f"efficient_capsnet_multimnist.")
    capsules = model.encode(x)
    lengths = torch.linalg.vector_norm(capsules, dim=-1)
    if labels2 is None:
        labels2 = lengths.topk(2, dim=1).indices
    recs = [model.reconstruct(capsules, labels2[:, k]) for k in range(2)]
    return lengths, (None if recs[0] is None else torch.stack(recs, dim=1))


def two_label_loss(lengths: torch.Tensor, recs: torch.Tensor | None, parts: torch.Tensor,
                   labels2: torch.Tensor, recon_weight: float = RECON_WEIGHT_EACH):
    """(total, margin, recon) with recon = MSE(rec_1, digit_1) + MSE(rec_2, digit_2).

    lengths (B, C); recs and parts (B, 2, C_img, H, W); labels2 (B, 2) with different labels.
    total = margin + recon_weight * recon (recon_weight applies to each of the two).
    """
    targets = F.one_hot(labels2, lengths.shape[1]).sum(dim=1).clamp(max=1)
    margin = margin_loss(lengths, targets)
    if recs is None or recon_weight == 0:
        recon = torch.zeros((), device=lengths.device)
    else:
        recon = reconstruction_loss(recs[:, 0], parts[:, 0]) + reconstruction_loss(recs[:, 1], parts[:, 1])
    return margin + recon_weight * recon, margin, recon


def two_digit_hits(lengths: torch.Tensor, labels2: torch.Tensor) -> torch.Tensor:
    """(B,) in {0, 0.5, 1}: the share of the two true labels among the two longest capsules."""
    top2 = lengths.topk(2, dim=1).indices
    return (top2[:, :, None] == labels2[:, None, :]).any(dim=1).float().mean(dim=1)


def two_digit_accuracy(lengths: torch.Tensor, labels2: torch.Tensor) -> float:
    """SPEC's MultiMNIST accuracy: each of the two true labels found in the top two counts half."""
    return float(two_digit_hits(lengths, labels2).mean())


@torch.no_grad()
def evaluate_pairs(model, pairs: MultiMNISTPairs, recon_weight: float = RECON_WEIGHT_EACH,
                   batch_size: int = 500, per_class: bool = False) -> dict:
    """Loss parts (decoder masked by the true labels) and two-digit accuracy over a pair set."""
    model.eval()
    device = pairs.digits.device
    totals = torch.zeros(4, device=device, dtype=torch.float64)
    class_hits = torch.zeros(10, device=device, dtype=torch.float64)
    class_counts = torch.zeros(10, device=device, dtype=torch.float64)
    for start in range(0, len(pairs), batch_size):
        x, y2, parts = pairs.batch(start, start + batch_size)
        lengths, recs = two_label_forward(model, x, y2)
        loss, margin, recon = two_label_loss(lengths, recs, parts, y2, recon_weight)
        n = len(y2)
        top2 = lengths.topk(2, dim=1).indices
        found = (top2[:, :, None] == y2[:, None, :]).any(dim=1).double()  # (B, 2) per true label
        totals += torch.stack([loss * n, margin * n, recon * n, found.mean(1).sum()]).double()
        if per_class:
            class_hits.index_add_(0, y2.flatten(), found.flatten())
            class_counts.index_add_(0, y2.flatten(), torch.ones_like(found.flatten()))
    t = (totals / max(len(pairs), 1)).tolist()
    result = {"loss": t[0], "margin": t[1], "recon": t[2], "acc": t[3]}
    if per_class:
        result["per_class_acc"] = {str(c): float(class_hits[c] / class_counts[c])
                                   for c in range(10) if class_counts[c] > 0}
    return result


class MultiMNISTTrainer(Trainer):
    """Trainer for data.dataset=multimnist: fresh pairs each batch, two-label loss and metric.

    Reuses the base loop's setup, checkpoints, schedule and logging; replaces the batch step, the
    evaluation (fixed pairs: one partner per validation digit, data.multimnist_partners per test
    digit) and the final test. train.recon_weight is the weight of EACH reconstruction.
    """

    def _load_data(self):
        if self.config.data.augment.strip().lower() != "none":
            raise ConfigError(f"data.augment={self.config.data.augment} does not apply to "
                              f"multimnist (its pairs are shifted by the generator); set "
                              f"data.augment=none.")
        super()._load_data()
        # Padded to 36x36 once, uint8 on the device; pairs are composed per batch.
        self.train_x, self.val_x = pad_digits(self.train_x), pad_digits(self.val_x)
        self.sampler = PartnerSampler(self.train_y)
        self.val_pairs = MultiMNISTPairs(self.val_x, self.val_y, partners=1, seed=VAL_SEED)

    def evaluate(self, images: torch.Tensor, labels: torch.Tensor) -> dict:
        pairs = (self.val_pairs if images is self.val_x else
                 MultiMNISTPairs(images, labels, partners=1, seed=VAL_SEED))
        return evaluate_pairs(self.model, pairs, self.config.train.recon_weight,
                              self.config.train.eval_batch_size)

    def _train_epoch(self, epoch: int, log: MetricsLog) -> dict:
        cfg = self.config
        self.model.train()
        g = epoch_generator(cfg.train.seed, epoch, self.device)
        n, bs = len(self.train_y), cfg.train.batch_size
        perm = torch.randperm(n, generator=g, device=self.device)
        steps = math.ceil(n / bs)
        pending, sums = [], torch.zeros(4, device=self.device, dtype=torch.float64)
        bar = self._progress(steps, epoch)
        t0 = self._flushed_at = time.perf_counter()
        for step in range(steps):
            idx = perm[step * bs:(step + 1) * bs]
            x, y2, parts = compose_batch(self.train_x, self.train_y, idx, self.sampler, g)
            lengths, recs = two_label_forward(self.model, x, y2)
            loss, margin, recon = two_label_loss(lengths, recs, parts, y2, cfg.train.recon_weight)
            if not torch.isfinite(loss):
                self._diverged(epoch, f"the loss became {loss.item()} at batch {step}")
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            lr = self.optimizer.param_groups[0]["lr"]
            if self.per_batch_schedule:
                self.scheduler.step()
            acc = two_digit_hits(lengths.detach(), y2).mean()
            row = torch.stack([loss.detach(), margin.detach(), recon.detach(), acc]).double()
            sums += row * len(idx)
            pending.append((step, lr, row))
            if len(pending) == cfg.train.log_every or step == steps - 1:
                self._flush(log, epoch, pending, bar)
                pending = []
        seconds = time.perf_counter() - t0
        if bar is not None:
            bar.close()
        t = (sums / n).tolist()
        return {"train_loss": t[0], "train_margin": t[1], "train_recon": t[2], "train_acc": t[3],
                "epoch_seconds": seconds, "train_images_per_s": n / seconds}

    def finish(self, train_seconds: float) -> dict:
        """Two-digit accuracy of the best-validation weights on the fixed-seed test pairs."""
        state = load_checkpoint(self.ckpt_dir / "best.pt", map_location=self.device)
        load_model_weights(self.model, state)
        pairs = multimnist_test_pairs(self.config, self.device)
        metrics = evaluate_pairs(self.model, pairs, self.config.train.recon_weight,
                                 self.config.train.eval_batch_size)
        summary = self.write_summary(train_seconds, {
            "test_acc": metrics["acc"], "test_metric": "two-digit accuracy",
            "test_loss": metrics["loss"], "test_margin": metrics["margin"],
            "test_recon": metrics["recon"], "test_images": len(pairs),
            "test_digits": pairs.n_digits, "test_partners": pairs.partners,
            "val_images": len(self.val_pairs)})
        self._say(f"two-digit test accuracy (best val epoch {summary['best_epoch']}): "
                  f"{summary['test_acc']:.4f} on {len(pairs)} test pairs ({pairs.n_digits} digits "
                  f"x {pairs.partners} partners)")
        return summary


def multimnist_test_pairs(config, device) -> MultiMNISTPairs:
    """The fixed-seed MultiMNIST test set of a config (data.multimnist_partners per digit of the
    first data.multimnist_test_digits test digits), on ``device``."""
    test = load_split(config, "test")
    return MultiMNISTPairs(as_nchw(test.images).to(device), test.labels.long().to(device),
                           partners=config.data.multimnist_partners, seed=TEST_SEED,
                           n_digits=config.data.multimnist_test_digits)


def trainer_class(config) -> type:
    """The Trainer class a config needs: MultiMNISTTrainer for data.dataset=multimnist."""
    return MultiMNISTTrainer if config.data.dataset == "multimnist" else Trainer
