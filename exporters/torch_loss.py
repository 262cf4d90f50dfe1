"""Next-token cross-entropy that never holds float32 logits for the whole batch.

`linear_cross_entropy(h, W, b, targets)` = mean over targets != ignore of CE(h W^T + b, target),
computed `chunk` rows at a time: each chunk's logits are made in the weight dtype (as the published
models compute their head), upcast to float32 for log-softmax, and turned into their gradient right
away (softmax - onehot), so backward needs only h and W. Peak extra memory is one chunk of logits
instead of [tokens, vocab] float32 (1 GiB at 4 x 2048 tokens x 32000 vocab), and no logits are
recomputed. The same idea as Liger-Kernel's fused linear cross-entropy, in plain torch ops.
"""

from __future__ import annotations

import torch

IGNORE = -100


class _ChunkedLinearCE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, weight, bias, targets, chunk: int):
        rows = h.shape[0]
        keep = targets != IGNORE
        count = keep.sum().clamp(min=1).float()
        total = torch.zeros((), dtype=torch.float32, device=h.device)
        grad_h = torch.empty_like(h)
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
        grad_b = torch.zeros(bias.shape, dtype=torch.float32, device=h.device) if bias is not None else None
        for a in range(0, rows, chunk):
            hc, tc, kc = h[a:a + chunk], targets[a:a + chunk], keep[a:a + chunk]
            logits = hc @ weight.t()
            if bias is not None:
                logits = logits + bias
            logits = logits.float()
            lse = torch.logsumexp(logits, dim=-1)
            safe = torch.where(kc, tc, torch.zeros_like(tc))
            picked = logits.gather(1, safe[:, None])[:, 0]
            total = total + ((lse - picked) * kc).sum()
            g = torch.softmax(logits, dim=-1)  # d loss_row / d logits = softmax - onehot, zero for ignored rows
            g.scatter_add_(1, safe[:, None], -torch.ones_like(picked)[:, None])
            g = (g * (kc.float() / count)[:, None]).to(h.dtype)
            grad_h[a:a + chunk] = g @ weight
            grad_w += (g.t() @ hc).float()
            if grad_b is not None:
                grad_b += g.float().sum(0)
        ctx.save_for_backward(grad_h, grad_w, grad_b if grad_b is not None else torch.empty(0))
        ctx.has_bias, ctx.w_dtype = bias is not None, weight.dtype
        ctx.b_dtype = bias.dtype if bias is not None else None
        return total / count

    @staticmethod
    def backward(ctx, grad_out):
        grad_h, grad_w, grad_b = ctx.saved_tensors
        gw = (grad_w * grad_out).to(ctx.w_dtype)
        gb = (grad_b * grad_out).to(ctx.b_dtype) if ctx.has_bias else None
        return grad_h * grad_out.to(grad_h.dtype), gw, gb, None, None


def linear_cross_entropy(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, targets: torch.Tensor,
                         chunk: int = 4096) -> torch.Tensor:
    """h [N, D], weight [V, D], bias [V] or None, targets [N] (IGNORE to skip) -> mean loss (float32)."""
    if torch.is_autocast_enabled(h.device.type):  # mixed precision: the head runs in the autocast dtype
        dt = torch.get_autocast_dtype(h.device.type)
        h, weight = h.to(dt), weight.to(dt)
        bias = bias.to(dt) if bias is not None else None
        with torch.autocast(h.device.type, enabled=False):
            return linear_cross_entropy(h, weight, bias, targets, chunk)
    h = h.to(weight.dtype)
    if not (h.requires_grad or weight.requires_grad):  # evaluation: no gradients to precompute
        total = torch.zeros((), dtype=torch.float32, device=h.device)
        keep = targets != IGNORE
        for a in range(0, h.shape[0], chunk):
            logits = h[a:a + chunk] @ weight.t()
            if bias is not None:
                logits = logits + bias
            total = total + torch.nn.functional.cross_entropy(logits.float(), targets[a:a + chunk], ignore_index=IGNORE, reduction="sum")
        return total / keep.sum().clamp(min=1).float()
    return _ChunkedLinearCE.apply(h, weight, bias, targets, chunk)
