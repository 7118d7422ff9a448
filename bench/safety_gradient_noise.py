"""How much of a safety gradient is signal, and how long a cached one stays current (lab recipes).

    python bench/safety_gradient_noise.py --config standard --steps 48        # s while refusal erodes
    python bench/safety_gradient_noise.py --config safegrad-k24b48 --steps 96 # s while refusal is held
    python bench/safety_gradient_noise.py --config safegrad-k24 --steps 72 --staleness

Noise: train the lab recipe `recipes/lab/<task>-<config>.yaml` for `--steps` optimizer steps, then,
for n safety examples (cut to their first 4 answer tokens, as the SafeGrad lab recipes do), the
cosine between the gradients of two independent draws of n examples, three pairs per n. Near 1:
the n-example gradient points where the safety loss rises; near 0: it is mostly per-example noise.

Staleness (`--staleness`, a SafeGrad recipe with `safety_every` > 1): during training, one, half
a window and a whole window after each refresh, the cosine between SafeGrad's cached s and a
fresh s from 192 refusal examples. (docs/methods.md, "Session 18", has the figures.)
"""

from __future__ import annotations

import statistics
import tempfile
from pathlib import Path

from common import add_threads, new_parser, set_threads


def flat(tensors):
    import torch

    return torch.cat([t.reshape(-1) for t in tensors])


def cosine(a, b) -> float:
    return float(a @ b / (a.norm() * b.norm()).clamp(min=1e-30))


def gradient(ctx, params, examples):
    from safetune.methods.safety_signal import batch_safety_loss, first_response_tokens, loss_gradients

    return flat(loss_gradients(batch_safety_loss(ctx, first_response_tokens(examples, 4), "refusal_ce"), params))


def main() -> None:
    parser = new_parser(__doc__)
    parser.add_argument("--task", default="extract")
    parser.add_argument("--config", default="standard", help="lab recipe: recipes/lab/<task>-<config>.yaml")
    parser.add_argument("--steps", type=int, default=48, help="optimizer steps before measuring the noise")
    parser.add_argument("--sizes", type=int, nargs="+", default=[16, 48, 192])
    parser.add_argument("--staleness", action="store_true", help="cached s against a fresh s during training")
    add_threads(parser, default=2)
    args = parser.parse_args()

    from bench_methods import build_trainer
    from safetune.methods.safety_signal import borderline_batch, safety_batch

    set_threads(args.threads)
    with tempfile.TemporaryDirectory() as scratch:
        trainer = build_trainer("lab", args.task, args.config, max(args.steps, 1) + 1, Path(scratch))
        ctx, params = trainer.ctx, [p for _, p in trainer.ctx.trainable_parameters()]
        safegrad = next((m for m in trainer.methods if m.name == "safegrad"), None)
        if args.staleness and (safegrad is None or safegrad.config.safety_every < 2):
            raise SystemExit("--staleness needs a safegrad recipe with safety_every > 1")
        every = safegrad.config.safety_every if args.staleness else 0
        for step in range(args.steps):
            trainer.train_step()
            since = step % every if every else -1
            if every and step >= every and since in (1, every // 2, every - 1):
                cached = flat(safegrad.cached[0] if safegrad.separate else safegrad.cached)
                fresh = gradient(ctx, params, safety_batch(ctx, 192, 10_000 + step))
                print(f"step {step} ({since} after a refresh): cos(cached s, fresh 192-example s) "
                      f"{cosine(cached, fresh):.3f}", flush=True)
        if args.staleness:
            return
        print(f"{args.task}-{args.config} after {args.steps} steps: cosine between two independent draws", flush=True)
        kinds = {"refusals": lambda n, draw: safety_batch(ctx, n, draw)}
        if ctx.borderline:
            kinds["borderline"] = lambda n, draw: borderline_batch(ctx, n, draw, "noise")
        for kind, draw_examples in kinds.items():
            for n in args.sizes:
                pairs = [cosine(gradient(ctx, params, draw_examples(n, 20_000 + 10 * n + 2 * i)),
                                gradient(ctx, params, draw_examples(n, 20_001 + 10 * n + 2 * i))) for i in range(3)]
                print(f"  {kind:10s} n = {n:4d}: {statistics.mean(pairs):6.3f}  "
                      f"({', '.join(f'{c:.2f}' for c in pairs)})", flush=True)


if __name__ == "__main__":
    main()
