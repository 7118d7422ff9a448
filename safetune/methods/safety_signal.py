"""What the methods measure safety with: safety batches, safety losses, diagonal Fisher.

Shared by SafeGrad (safety gradient), EWC (Fisher at the aligned weights) and layer
detection (Fisher mass per layer), so each of them means the same thing by "safety loss".
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from safetune.data import IGNORE_INDEX, Example
from safetune.errors import SafetuneError
from safetune.methods.base import MethodContext


def safety_batch(ctx: MethodContext, size: int, draw: int) -> list[Example]:
    """`size` safety examples, drawn reproducibly from draw number `draw` (e.g. the step)."""
    if not ctx.safety:
        raise SafetuneError("this method needs data.safety (prompt -> safe response examples)")
    generator = torch.Generator().manual_seed(ctx.seed * 1_000_003 + draw)
    picks = torch.randint(len(ctx.safety), (size,), generator=generator).tolist()
    return [ctx.safety[i] for i in picks]


def refusal_ce(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Cross-entropy on the safe responses (the prompt is masked by the data pipeline)."""
    return model(**batch).loss


def kl_to_reference(model, reference, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean over response tokens of KL(reference || model) between next-token distributions.

    Zero while the model equals the frozen aligned reference; its gradient pulls the
    model's distribution back toward the reference's.
    """
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    with torch.no_grad():
        ref_logits = reference(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    # position t predicts token t+1: score the positions whose next token is a response token
    mask = (batch["labels"][:, 1:] != IGNORE_INDEX).float()
    log_p = F.log_softmax(logits[:, :-1].float(), dim=-1)
    log_q = F.log_softmax(ref_logits[:, :-1].float(), dim=-1)
    kl = (log_q.exp() * (log_q - log_p)).sum(-1)
    return (kl * mask).sum() / mask.sum().clamp(min=1)


def safety_loss(ctx: MethodContext, batch: dict[str, torch.Tensor], kind: str) -> torch.Tensor:
    if kind == "kl_to_base":
        if ctx.reference_model is None:
            raise SafetuneError("safety_loss kl_to_base needs the frozen reference model")
        return kl_to_reference(ctx.model, ctx.reference_model, batch)
    return refusal_ce(ctx.model, batch)


def diagonal_fisher(ctx: MethodContext, samples: int, batch_size: int) -> dict[str, torch.Tensor]:
    """Mean squared gradient of the refusal loss, per trainable parameter.

    Computed over micro-batches of `batch_size` safety examples (an empirical Fisher at
    batch granularity: cheaper than per-example gradients, same ranking in practice).
    """
    params = ctx.trainable_parameters()
    fisher = {name: torch.zeros_like(p, dtype=torch.float32) for name, p in params}
    batches = max(1, samples // batch_size)
    was_training = ctx.model.training
    ctx.model.eval()  # no dropout noise in the estimate
    for index in range(batches):
        batch = ctx.batch_to_device(safety_batch(ctx, batch_size, draw=-(index + 1)))
        loss = refusal_ce(ctx.model, batch)
        grads = torch.autograd.grad(loss, [p for _, p in params], allow_unused=True)
        for (name, _), grad in zip(params, grads):
            if grad is not None:
                fisher[name] += grad.detach().float() ** 2 / batches
    ctx.model.train(was_training)
    return fisher
