"""The sampler over a decoder run directory, as the base model, RLTF and SFT use it."""

from __future__ import annotations

from pathlib import Path

from rltf_jax.sampling.generator import TransformerGenerator


def build(cfg, name: str, ckpt: Path) -> TransformerGenerator:
  e, s = cfg.eval, cfg.sampling
  return TransformerGenerator.from_checkpoint(
      ckpt, name=name, temperature=e.temperature, top_k=e.top_k, top_p=e.top_p,
      batch_size=s.batch_size, max_prompt_len=s.max_prompt_len, buckets=tuple(s.buckets))
