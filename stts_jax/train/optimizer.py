"""AdamW with per-group learning rates chosen by regex, warm-up + cosine decay, clipping, freezing.

Defaults are the paper's recipe (STTS.md section 8): LLM 1e-5, ViT 5e-6, connector 5e-6, scorer 1e-4;
betas 0.9 / 0.95, eps 1e-6, no weight decay, global-norm clip 1.0, 200 warm-up steps, cosine decay to
10 % over 6,250 steps. A parameter's group is the first rule whose regex matches its path
("vit/blocks/attn/q/kernel", "scorer/fc1/kernel", "text/...", "lm_head/kernel", ...).
"""

from __future__ import annotations

import dataclasses
import re

import jax
import numpy as np
import optax


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    learning_rates: tuple[tuple[str, float], ...] = (
        ("scorer/.*", 1e-4),
        ("vit/.*", 5e-6),
        ("connector/.*", 5e-6),
        ("(text|lm_head)/.*", 1e-5),
    )
    freeze: tuple[str, ...] = ()  # regexes of parameters that are not trained
    warmup_steps: int = 200
    total_steps: int = 6250
    final_lr_fraction: float = 0.1
    b1: float = 0.9
    b2: float = 0.95
    eps: float = 1e-6
    weight_decay: float = 0.0
    clip_norm: float = 1.0


def param_path(path) -> str:
    return "/".join(str(getattr(k, "key", k)) for k in path)


def param_groups(params, cfg: OptimizerConfig):
    """The group label of every parameter: "frozen", or the index of the first matching rule."""

    def label(path, _):
        name = param_path(path)
        if any(re.fullmatch(f, name) for f in cfg.freeze):
            return "frozen"
        for i, (pattern, _lr) in enumerate(cfg.learning_rates):
            if re.fullmatch(pattern, name):
                return str(i)
        raise ValueError(f"parameter {name!r} matches no learning-rate rule {[p for p, _ in cfg.learning_rates]}")

    return jax.tree_util.tree_map_with_path(label, params)


def group_sizes(params, cfg: OptimizerConfig) -> dict[str, int]:
    """Parameters per group: {rule regex or "frozen": count} (params may be shapes only)."""
    names = {str(i): pattern for i, (pattern, _lr) in enumerate(cfg.learning_rates)} | {"frozen": "frozen"}
    sizes = dict.fromkeys(names.values(), 0)
    for label, leaf in zip(jax.tree.leaves(param_groups(params, cfg)), jax.tree.leaves(params), strict=True):
        sizes[names[label]] += int(np.prod(leaf.shape))
    return sizes


def schedule(cfg: OptimizerConfig, peak: float) -> optax.Schedule:
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=peak,
        warmup_steps=cfg.warmup_steps,
        decay_steps=max(cfg.total_steps, cfg.warmup_steps + 1),
        end_value=peak * cfg.final_lr_fraction,
    )


def group_name(pattern: str) -> str:
    """A learning-rate rule's short name for logs: "scorer/.*" -> "scorer", "(text|lm_head)/.*" -> "text|lm_head"."""
    return pattern.removesuffix("/.*").removeprefix("(").removesuffix(")") or pattern


def learning_rates(cfg: OptimizerConfig, updates: int) -> dict[str, float]:
    """Every group's learning rate for the update after `updates` accepted ones: {group_name: rate}."""
    return {group_name(pattern): float(schedule(cfg, lr)(updates)) for pattern, lr in cfg.learning_rates}


def make_optimizer(cfg: OptimizerConfig, params) -> optax.GradientTransformation:
    """Frozen gradients zeroed first (they take no part in the clip norm), then clip, then AdamW per group."""
    labels = param_groups(params, cfg)
    transforms = {
        str(i): optax.adamw(schedule(cfg, lr), b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay)
        for i, (_, lr) in enumerate(cfg.learning_rates)
    }
    transforms["frozen"] = optax.set_to_zero()
    frozen = jax.tree.map(lambda label: label == "frozen", labels)
    return optax.chain(
        optax.masked(optax.set_to_zero(), frozen),
        optax.clip_by_global_norm(cfg.clip_norm),
        optax.multi_transform(transforms, labels),
    )
