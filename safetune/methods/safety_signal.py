"""What the methods measure safety with: safety batches, safety losses, diagonal Fisher.

Shared by SafeGrad (safety gradient), EWC (Fisher at the aligned weights) and layer
detection (Fisher mass per layer), so each of them means the same thing by "safety loss".
"""

from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn.functional as F

from safetune.data import IGNORE_INDEX, Example
from safetune.distributed import is_sharded, local_shard, sum_over_shards
from safetune.errors import SafetuneError
from safetune.loss import next_token_logprobs, next_token_loss, trained_logits
from safetune.methods.base import MethodContext


def safety_batch(ctx: MethodContext, size: int, draw: int) -> list[Example]:
    """`size` safety examples, drawn reproducibly from draw number `draw` (e.g. the step)."""
    if not ctx.safety:
        raise SafetuneError("this method needs data.safety (prompt -> safe response examples)")
    return draw_examples(ctx.safety, size, ctx.seed, draw)


def borderline_batch(ctx: MethodContext, size: int, draw: int, method: str) -> list[Example]:
    """`size` benign look-alikes with their normal answers (data.borderline), drawn like safety_batch."""
    if not ctx.borderline:
        raise SafetuneError(f"method '{method}' needs a data.borderline source (benign look-alike prompt -> normal answer)")
    return draw_examples(ctx.borderline, size, ctx.seed, draw)


def safety_objective(ctx: MethodContext, config, draw: int, method: str, split: bool = False):
    """A method's safety loss as its `safety_data` says: L(refusals) [+ w · L(borderline)].

    Each term is the mean over its own batch of `safety_batch_size` examples, so the answer
    lengths of one set do not change the weight of the other. `split=True` returns the two
    terms, (L(refusals), w · L(borderline)), instead of their sum. With `safety_tokens: k`
    each example is cut after its first k response tokens (`first_response_tokens`).
    """
    kind = getattr(config, "safety_loss", "refusal_ce")
    first = getattr(config, "safety_tokens", None)
    micro_batch = getattr(config, "safety_micro_batch", SAFETY_MICRO_BATCH)
    refusals = first_response_tokens(safety_batch(ctx, config.safety_batch_size, draw), first)
    loss = batch_safety_loss(ctx, refusals, kind, micro_batch)
    if config.safety_data == "refusals_and_borderline":
        benign = first_response_tokens(borderline_batch(ctx, config.safety_batch_size, draw, method), first)
        borderline = config.borderline_weight * batch_safety_loss(ctx, benign, kind, micro_batch)
        return (loss, borderline) if split else loss + borderline
    return loss


SAFETY_MICRO_BATCH = 16  # rows per forward pass when a safety batch is larger (a method's `safety_micro_batch`)


def batch_safety_loss(ctx: MethodContext, examples: list[Example], kind: str,
                      micro_batch: int = SAFETY_MICRO_BATCH) -> torch.Tensor:
    """`safety_loss` over `examples`: the mean over all their trained tokens.

    A batch of more than `micro_batch` rows is sorted by length and run as micro-batches
    of that many rows, each loss weighted by its share of the trained tokens: the same loss
    and gradient (up to rounding), but each row is padded only to the longest of its
    micro-batch, not of the whole batch. Safety prompts vary in length (the lab's: 28 tokens
    on average, the longest of 48 draws 55), so for 48 rows one forward and backward took
    547 ms padded to the longest and 372 ms in length-sorted micro-batches of 16 (one
    thread; micro-batches of 8 were slower, 414 ms: each pass has a fixed cost). A batch of
    at most `micro_batch` rows is one pass, in its drawn order, exactly as before. On a GPU,
    where a small model's pass costs its kernel launches more than its padding, one pass
    (`safety_micro_batch` ≥ the batch) may be the cheaper choice: bench/device_check.sh
    times both.
    """
    if len(examples) <= micro_batch:
        return safety_loss(ctx, ctx.batch_to_device(examples), kind)
    ordered = sorted(examples, key=lambda example: len(example.input_ids))
    chunks = [ordered[i : i + micro_batch] for i in range(0, len(ordered), micro_batch)]
    counts = [sum(example.trained_tokens for example in chunk) for chunk in chunks]
    total = max(sum(counts), 1)
    return sum(safety_loss(ctx, ctx.batch_to_device(chunk), kind) * (count / total)
               for chunk, count in zip(chunks, counts) if count)  # a chunk with nothing to train adds nothing


def first_response_tokens(examples: list[Example], k: int | None) -> list[Example]:
    """Each example cut after its first `k` response tokens (None: unchanged).

    Whether a model refuses is decided in the first tokens of its answer ("I can't…" or
    "Sure, …"; Qi et al. 2024, "Safety alignment should be made more than just a few tokens
    deep"). A safety loss over those tokens only measures that decision, not how well the
    rest of a refusal or of a benign answer is worded, and it costs a shorter sequence.
    """
    if k is None:
        return examples
    cut = []
    for example in examples:
        start = next((i for i, label in enumerate(example.labels) if label != IGNORE_INDEX), len(example.labels))
        end = start + k
        cut.append(replace(example, input_ids=example.input_ids[:end], labels=example.labels[:end],
                           position_ids=example.position_ids[:end], _trained=None))
    return cut


def loss_gradients(loss: torch.Tensor, params: list[torch.Tensor]) -> list[torch.Tensor]:
    """d loss / d params, leaving `.grad` (the task gradient accumulated so far) as it is.

    Under FSDP a parameter is a shard that autograd never sees (each layer computes with
    its gathered whole weights; FSDP's hooks reduce-scatter their gradients into `.grad`),
    so there the gradient goes through `.grad`: the task gradient is set aside, the loss
    backpropagated, its gradient taken and the task gradient put back.
    """
    if not any(is_sharded(p) for p in params):
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        return [torch.zeros_like(p) if g is None else g.detach() for p, g in zip(params, grads)]
    task = [p.grad for p in params]
    for p in params:
        p.grad = None
    loss.backward()
    grads = [torch.zeros_like(p) if p.grad is None else p.grad.detach() for p in params]
    for p, grad in zip(params, task):
        p.grad = grad
    return grads


def global_norm(tensors: list[torch.Tensor]) -> torch.Tensor:
    """‖all tensors as one vector‖ (over the whole parameters when they are FSDP shards)."""
    if not tensors:
        return torch.tensor(0.0)
    squares = torch.stack(torch._foreach_norm([local_shard(t) for t in tensors])).float().pow(2).sum()
    return sum_over_shards(squares, is_sharded(tensors[0])).sqrt()


def draw_examples(pool: list, size: int, seed: int, draw: int) -> list:
    """`size` items of `pool` (with replacement), a pure function of (seed, draw): resumes exactly."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + draw)
    picks = torch.randint(len(pool), (size,), generator=generator).tolist()
    return [pool[i] for i in picks]


def refusal_ce(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Cross-entropy on the safe responses (the prompt is masked by the data pipeline), with
    logits only where a response token is predicted (`next_token_loss`)."""
    return next_token_loss(model, batch)


def kl_to_reference(model, reference, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean over response tokens of KL(reference || model) between next-token distributions.

    Zero while the model equals the frozen aligned reference; its gradient pulls the
    model's distribution back toward the reference's.
    """
    # the positions whose next token is a response token, [N, vocab] (`trained_logits`)
    logits, _, _ = trained_logits(model, batch)
    log_p = F.log_softmax(logits.float(), dim=-1)
    with torch.no_grad():
        log_q = F.log_softmax(trained_logits(reference, batch)[0].float(), dim=-1)
    return (log_q.exp() * (log_q - log_p)).sum(-1).sum() / max(log_p.shape[0], 1)


def safety_loss(ctx: MethodContext, batch: dict[str, torch.Tensor], kind: str) -> torch.Tensor:
    if kind == "kl_to_base":
        if ctx.reference_model is None:
            raise SafetuneError("safety_loss kl_to_base needs the frozen reference model")
        return kl_to_reference(ctx.model, ctx.reference_model, batch)
    return refusal_ce(ctx.model, batch)


def diagonal_fisher(ctx: MethodContext, samples: int, batch_size: int, borderline: bool = False) -> dict[str, torch.Tensor]:
    """Mean squared gradient of the refusal loss, per trainable parameter.

    Computed over micro-batches of `batch_size` safety examples (an empirical Fisher at
    batch granularity: cheaper than per-example gradients, same ranking in practice).
    `borderline=True`: the same for the loss of data.borderline's normal answers.
    A batch larger than a task pass (`task_pass_tokens`) is run in passes whose gradients
    add up to the batch's: the same Fisher, in no more memory than a training step takes.
    """
    params = ctx.trainable_parameters()
    fisher = {name: torch.zeros_like(p, dtype=torch.float32) for name, p in params}
    batches = max(1, samples // batch_size)
    budget = task_pass_tokens(ctx)
    was_training = ctx.model.training
    ctx.model.eval()  # no dropout noise in the estimate
    for index in range(batches):
        draw = -(index + 1)
        examples = (borderline_batch(ctx, batch_size, draw, "ewc") if borderline
                    else safety_batch(ctx, batch_size, draw))
        total = max(1, sum(example.trained_tokens for example in examples))
        batch_grads = None
        for chunk in token_passes(examples, budget):
            # the batch's mean loss = the passes' mean losses weighted by their share of its tokens
            share = sum(example.trained_tokens for example in chunk) / total
            loss = refusal_ce(ctx.model, ctx.batch_to_device(chunk)) * share
            grads = loss_gradients(loss, [p for _, p in params])
            batch_grads = grads if batch_grads is None else [a + b for a, b in zip(batch_grads, grads)]
        for (name, _), grad in zip(params, batch_grads):
            fisher[name] += grad.float() ** 2 / batches
    ctx.model.train(was_training)
    return fisher


def task_pass_tokens(ctx: MethodContext) -> int | None:
    """The most (padded) tokens one pass of the task can hold: train.batch_size rows of its
    longest example. A setup pass over safety data that stays within it takes no more memory
    than training itself (10 short identity-shift chats beside 8 long safety demonstrations
    made EWC's and freeze's setup the run's peak). None when there is no task data to go by."""
    if ctx.recipe is None or not ctx.train_examples:
        return None
    return ctx.recipe.train.batch_size * max(len(example.input_ids) for example in ctx.train_examples)


def token_passes(examples: list[Example], budget: int | None) -> list[list[Example]]:
    """`examples` as passes of at most `budget` padded tokens (rows x the longest row; one
    row at least): length-sorted, so rows of a pass have similar lengths. A batch within
    the budget (or no budget) is one pass, in its drawn order."""
    if budget is None or len(examples) * max(len(e.input_ids) for e in examples) <= budget:
        return [examples]
    passes, current = [], []
    for example in sorted(examples, key=lambda e: len(e.input_ids)):
        if current and (len(current) + 1) * len(example.input_ids) > budget:
            passes.append(current)
            current = []
        current.append(example)
    return passes + [current]


# --------------------------------------------------------------------------- per-token scores, preference pairs
def sequence_logprob(model, batch: dict[str, torch.Tensor], normalise: bool = False) -> torch.Tensor:
    """Per example: the summed (or, normalise=True, mean) log-probability of its response tokens."""
    log_p, mask = next_token_logprobs(model, batch)
    total = log_p.sum(-1)
    return total / mask.sum(-1).clamp(min=1) if normalise else total


def harmful_examples(ctx: MethodContext, method: str) -> list[Example]:
    """The recipe's data.harmful (prompt -> harmful compliance), tokenised like the task data."""
    from safetune.data import load_examples, tokenize_all

    source = ctx.recipe.data.harmful if ctx.recipe is not None else None
    if source is None:
        raise SafetuneError(f"method '{method}' needs a data.harmful source (prompt -> harmful compliance)")
    return tokenize_all(load_examples(source, "data.harmful", kind="harmful"), ctx.tokenizer, ctx.recipe.data.max_seq_len)


def preference_pairs(safety: list[Example], harmful: list[Example], tokenizer, max_seq_len: int) -> list[tuple[Example, Example]]:
    """(chosen, rejected) pairs: each harmful compliance is `rejected`; `chosen` answers the
    same prompt with a refusal taken from the safety data.

    The lab's refusal and compliance files hold different prompts, so the refusal is
    borrowed from a safety example of the same category (refusal reasons are category-
    specific), else from any; picked by position, so the pairs are deterministic.
    """
    from safetune.data import tokenize_example

    if not safety or not harmful:
        raise SafetuneError("preference pairs need both data.safety (refusals) and data.harmful (compliance)")
    by_category: dict[str | None, list[Example]] = {}
    for example in safety:
        by_category.setdefault(example.category, []).append(example)
    pairs = []
    for index, rejected in enumerate(harmful):
        refusals = by_category.get(rejected.category) or safety
        refusal = refusals[index % len(refusals)].messages[-1]["content"]
        chosen = Example(messages=rejected.messages[:-1] + [{"role": "assistant", "content": refusal}],
                         category=rejected.category, source="safety")
        pairs.append((tokenize_example(chosen, tokenizer, max_seq_len), rejected))
    return pairs
