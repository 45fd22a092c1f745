"""Read a sentence-transformers folder's module list and pool hidden states as it says.

Supported modules: Transformer, Pooling (cls, mean, max, mean_sqrt_len_tokens, lasttoken, several
concatenated), Normalize. A folder with other modules (Dense, ...) is refused at load time with a
clear error rather than served with different vectors than sentence-transformers would give.
Folders without sentence-transformers files: mean pooling for encoders, last token for decoders.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from common.discovery import read_json
from common.errors import InvalidRequest

POOLING_MODES = ("cls", "mean", "max", "mean_sqrt_len_tokens", "lasttoken")
_LEGACY_KEYS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}


@dataclass(frozen=True)
class PoolingSpec:
    transformer_dir: Path
    modes: tuple[str, ...]
    normalize: bool
    max_seq_length: int | None
    lowercase: bool
    chat_format: bool = False  # sentence-transformers 6 "message" modality: render text as a user turn


def _modes_from_config(cfg: dict[str, Any]) -> tuple[str, ...]:
    if "pooling_mode" in cfg:
        raw = cfg["pooling_mode"]
        modes = (raw,) if isinstance(raw, str) else tuple(raw)
    else:
        modes = tuple(mode for key, mode in _LEGACY_KEYS.items() if cfg.get(key))
    unsupported = [m for m in modes if m not in POOLING_MODES]
    if unsupported or not modes:
        raise InvalidRequest(f"unsupported pooling mode(s) {unsupported or modes}", code="unsupported_model")
    return modes


def read_spec(folder: Path, is_decoder: bool) -> PoolingSpec:
    """The pooling recipe for a model folder (sentence-transformers config or a default)."""
    st_cfg_path = folder / "sentence_bert_config.json"
    st_cfg: dict[str, Any] = read_json(st_cfg_path) if st_cfg_path.exists() else {}
    max_len = st_cfg.get("max_seq_length")
    lowercase = bool(st_cfg.get("do_lower_case", False))
    chat_format = "message" in (st_cfg.get("modality_config") or {})
    modules_path = folder / "modules.json"
    if not modules_path.exists():
        return PoolingSpec(folder, ("lasttoken",) if is_decoder else ("mean",), False, max_len, lowercase)
    transformer_dir, normalize = folder, False
    modes: tuple[str, ...] = ("mean",)
    for module in read_json(modules_path):
        kind = str(module.get("type", "")).rsplit(".", 1)[-1]
        sub = folder / str(module.get("path", ""))
        if kind == "Transformer":
            transformer_dir = sub
            inner = sub / "sentence_bert_config.json"
            if sub != folder and inner.exists():
                cfg = read_json(inner)
                max_len = cfg.get("max_seq_length", max_len)
                lowercase = bool(cfg.get("do_lower_case", lowercase))
        elif kind == "Pooling":
            modes = _modes_from_config(read_json(sub / "config.json"))
        elif kind == "Normalize":
            normalize = True
        else:
            raise InvalidRequest(f"sentence-transformers module {kind!r} is not supported",
                                 code="unsupported_model")
    return PoolingSpec(transformer_dir, modes, normalize, max_len, lowercase, chat_format)


def pool(hidden: torch.Tensor, mask: torch.Tensor, modes: tuple[str, ...]) -> torch.Tensor:
    """Pool [batch, seq, dim] hidden states of right-padded sequences; modes are concatenated."""
    maskf = mask.unsqueeze(-1).to(hidden.dtype)
    lengths = mask.sum(dim=1)
    parts = []
    for mode in modes:
        if mode == "cls":
            parts.append(hidden[:, 0])
        elif mode == "lasttoken":
            idx = (lengths - 1).clamp(min=0)
            parts.append(hidden[torch.arange(hidden.shape[0], device=hidden.device), idx])
        elif mode == "max":
            parts.append(hidden.masked_fill(maskf == 0, torch.finfo(hidden.dtype).min).max(dim=1).values)
        else:
            summed = (hidden * maskf).sum(dim=1)
            count = maskf.sum(dim=1).clamp(min=1e-9)
            parts.append(summed / (count if mode == "mean" else count.sqrt()))
    return torch.cat(parts, dim=-1)
