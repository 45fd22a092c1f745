"""What a token-id embedding `input` means. `LLM_EMBEDDING_TOKEN_IDS=cl100k` (the default): OpenAI's reading, ids
of tiktoken's cl100k_base, as every OpenAI-targeting client sends them (LangChain's `OpenAIEmbeddings` tokenises
with tiktoken by default); they are decoded here to text, which the worker then tokenises with the model's own
tokenizer. `model`: vLLM's reading, ids of the model's own vocabulary, sent to the worker as they are.

The cl100k_base file is never downloaded at run time: it is read where tiktoken caches it (`TIKTOKEN_CACHE_DIR`,
else `DATA_GYM_CACHE_DIR`, else the temp dir's `data-gym-cache`; the file named by the SHA-1 of its URL), as the
API image puts it at build time. Without it a token-id input is a 400 `token_ids_unavailable`, never vectors of
the wrong text.
"""

from __future__ import annotations

import functools
import hashlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import tiktoken

from common.errors import InvalidRequest

TokenIdReading = Literal["cl100k", "model"]
# (token lists, the request field they came in) -> one text per list
TokenReader = Callable[[list[list[int]], str], list[str]]

CL100K_URL = "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken"
CL100K_SHA256 = "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7"  # as tiktoken_ext checks it


def cl100k_path() -> Path | None:
    """Where tiktoken keeps its cached cl100k_base file (read now, not at import); None when caching is off."""
    if "TIKTOKEN_CACHE_DIR" in os.environ:
        cache_dir = os.environ["TIKTOKEN_CACHE_DIR"]
    elif "DATA_GYM_CACHE_DIR" in os.environ:
        cache_dir = os.environ["DATA_GYM_CACHE_DIR"]
    else:
        cache_dir = os.path.join(tempfile.gettempdir(), "data-gym-cache")
    if not cache_dir:
        return None
    return Path(cache_dir) / hashlib.sha1(CL100K_URL.encode()).hexdigest()


def _unavailable(why: str) -> InvalidRequest:
    return InvalidRequest(
        f"token-id inputs are read as OpenAI's cl100k_base ids, and {why}: send text, or put the file where "
        "TIKTOKEN_CACHE_DIR points (the API image does), or set LLM_EMBEDDING_TOKEN_IDS=model if the ids are "
        "of the model's own vocabulary", param="input", code="token_ids_unavailable")


@functools.cache
def _load(path: Path) -> tiktoken.Encoding:
    """The encoding from a checked file (tiktoken then reads the same file from its cache, and never the network)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise _unavailable(f"its file cannot be read here ({path}: {exc.strerror})") from exc
    if hashlib.sha256(data).hexdigest() != CL100K_SHA256:
        raise _unavailable(f"the file at {path} is not cl100k_base")
    return tiktoken.get_encoding("cl100k_base")


def cl100k() -> tiktoken.Encoding:
    """cl100k_base, or a 400 `token_ids_unavailable` naming where its file should be."""
    path = cl100k_path()
    if path is None:
        raise _unavailable("tiktoken's cache is off here (TIKTOKEN_CACHE_DIR is empty)")
    if not path.is_file():
        raise _unavailable(f"its file is not here ({path})")
    return _load(path)


def cl100k_texts(items: list[list[int]], param: str) -> list[str]:
    """Each token list as the text it encodes (a 400 `invalid_token_id` for an id cl100k_base does not have)."""
    encoding = cl100k()
    texts = []
    for i, ids in enumerate(items):
        try:
            texts.append(encoding.decode(ids))
        except (KeyError, OverflowError):
            bad = next(t for t in ids if not _is_token(encoding, t))
            label = param if len(items) == 1 else f"{param}[{i}]"
            raise InvalidRequest(f"{label} holds token id {bad}, which is not a cl100k_base token",
                                 param=param, code="invalid_token_id") from None
    return texts


def _is_token(encoding: tiktoken.Encoding, token: int) -> bool:
    try:
        encoding.decode_single_token_bytes(token)
    except (KeyError, OverflowError):
        return False
    return True


def reader(reading: TokenIdReading) -> TokenReader | None:
    """How token-id inputs become texts in the API; None: they go to the worker as ids of the model's vocabulary."""
    return cl100k_texts if reading == "cl100k" else None
