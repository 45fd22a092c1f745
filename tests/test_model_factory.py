"""The tiny test models: they load where the service loads them and behave like their real counterparts."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # in-process engine; must be set before vllm import

import gc
import json
from pathlib import Path

import pytest
import torch

from tests.model_factory import ENDOFTEXT, IM_END, build_tokenizer

MAX_NEW_TOKENS = 16
PAIRS = [
    ("what is a cat", "a cat is an animal that lives at home"),
    ("where do you live", "in the city near the lake"),
    ("hello", "the river runs under the old bridge"),
]


@pytest.fixture(scope="module")
def models(models_dir: Path) -> dict[str, Path]:
    """The session's models (build_models_dir: building them again would train the trained ones again)."""
    return {p.name: p for p in models_dir.iterdir() if p.is_dir()}


def _prompts(model_dir: Path) -> list[list[int]]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    chat = [{"role": "user", "content": "What is the capital of France?"}]
    chat_ids = tok.apply_chat_template(chat, add_generation_prompt=True, tokenize=True, return_dict=False)
    return [tok("the cat reads a book in the kitchen").input_ids, list(chat_ids)]


def _hf_greedy(model_dir: Path, prompts: list[list[int]]) -> list[list[int]]:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(model_dir)).eval()
    outputs = []
    for ids in prompts:
        input_ids = torch.tensor([ids])
        with torch.no_grad():
            out = model.generate(
                input_ids,
                attention_mask=torch.ones_like(input_ids),
                do_sample=False,
                max_new_tokens=MAX_NEW_TOKENS,
                eos_token_id=None,  # never stop early: vLLM runs with ignore_eos
            )
        outputs.append(out[0, len(ids) :].tolist())
    return outputs


def test_tokenizer(tmp_path: Path) -> None:
    tok = build_tokenizer(tmp_path / "plain")
    assert 1000 <= len(tok) <= 2000
    assert tok.eos_token == IM_END and tok.pad_token == ENDOFTEXT
    for word in ("yes", "no"):
        assert len(tok.encode(word, add_special_tokens=False)) == 1
        assert tok.convert_tokens_to_ids(word) == tok.encode(word, add_special_tokens=False)[0]
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    assert tok.decode(tok.encode("the cat reads a book")) == "the cat reads a book"
    assert tok.encode("hello world")[-1] != tok.convert_tokens_to_ids(ENDOFTEXT)

    emb_tok = build_tokenizer(tmp_path / "emb", eos_append=True, padding_side="left")
    ids = emb_tok("hello world").input_ids
    assert ids[-1] == emb_tok.convert_tokens_to_ids(ENDOFTEXT) and ids[:-1] == tok.encode("hello world")
    assert emb_tok.padding_side == "left"


def test_saved_files(models: dict[str, Path]) -> None:
    for name in ("tiny-qwen3-chat", "tiny-qwen2-chat", "tiny-qwen3-embedding", "tiny-qwen3-reranker"):
        config = json.loads((models[name] / "config.json").read_text())
        assert config["dtype"] == "float32" and config["architectures"][0].endswith("ForCausalLM")
        assert (models[name] / "model.safetensors").is_file() and (models[name] / "chat_template.jinja").is_file()
    bert = json.loads((models["tiny-bert-reranker"] / "config.json").read_text())
    assert bert["architectures"] == ["BertForSequenceClassification"] and bert["dtype"] == "float32"
    assert not any(p.is_symlink() for p in models["all-minilm-l6-v2"].rglob("*"))


def test_hf_chat_generate(models: dict[str, Path]) -> None:
    for name in ("tiny-qwen3-chat", "tiny-qwen2-chat", "tiny-qwen3-reranker"):
        outputs = _hf_greedy(models[name], _prompts(models[name]))
        assert all(len(out) == MAX_NEW_TOKENS for out in outputs)


def test_qwen3_embedding(models: dict[str, Path]) -> None:
    from sentence_transformers import SentenceTransformer
    from transformers import AutoModel, AutoTokenizer

    st = SentenceTransformer(str(models["tiny-qwen3-embedding"]), device="cpu")
    assert st.max_seq_length == 256
    assert st.tokenizer.padding_side == "left"
    texts = ["hello world", "the cat reads a book in the kitchen today", "yes"]
    emb = st.encode(texts, convert_to_tensor=True)  # one batch: left padding must not change the result
    assert emb.shape == (3, 64)
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(3), atol=1e-5, rtol=0)
    # Same as plain transformers: the last hidden state of the appended <|endoftext|>, normalised (what vLLM's
    # pooling runner computes). This fails if ST wraps texts in the chat template (ST 6 "message" modality).
    tok = AutoTokenizer.from_pretrained(str(models["tiny-qwen3-embedding"]))
    model = AutoModel.from_pretrained(str(models["tiny-qwen3-embedding"])).eval()
    for text, row in zip(texts, emb, strict=True):
        enc = tok(text, return_tensors="pt")
        assert enc.input_ids[0, -1] == tok.convert_tokens_to_ids(ENDOFTEXT)
        with torch.no_grad():
            expected = torch.nn.functional.normalize(model(**enc).last_hidden_state[0, -1], dim=0)
        torch.testing.assert_close(row, expected, atol=1e-5, rtol=0)


def test_bert_cross_encoder(models: dict[str, Path]) -> None:
    from sentence_transformers import CrossEncoder
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = str(models["tiny-bert-reranker"])
    scores = torch.as_tensor(CrossEncoder(path, device="cpu").predict(PAIRS))
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path).eval()
    enc = tok([q for q, _ in PAIRS], [d for _, d in PAIRS], padding=True, return_tensors="pt")
    assert "token_type_ids" in enc and enc["token_type_ids"].max() == 1
    with torch.no_grad():
        expected = torch.sigmoid(model(**enc).logits.squeeze(-1))
    assert scores.shape == (3,)
    torch.testing.assert_close(scores.float(), expected, atol=1e-5, rtol=0)
    assert float(expected.max() - expected.min()) > 0.01  # scores are spread, not all ~0.5


def test_minilm_copy(models: dict[str, Path]) -> None:
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(models["all-minilm-l6-v2"]), device="cpu")
    emb = st.encode(["A man is eating food."], convert_to_tensor=True)
    assert emb.shape == (1, 384)
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(1), atol=1e-5, rtol=0)


def test_vllm_matches_transformers_greedy(models: dict[str, Path]) -> None:
    """Last in the module: an in-process vLLM engine sets torch threads to 1 and seeds the global RNG."""
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    params = SamplingParams(temperature=0, max_tokens=MAX_NEW_TOKENS, ignore_eos=True)
    for name in ("tiny-qwen3-chat", "tiny-qwen2-chat"):
        prompts = _prompts(models[name])
        expected = _hf_greedy(models[name], prompts)
        llm = LLM(
            model=str(models[name]),
            enforce_eager=True,
            dtype="float32",
            kv_cache_memory_bytes=64 * 2**20,
            max_model_len=512,
        )
        outputs = llm.generate([TokensPrompt(prompt_token_ids=ids) for ids in prompts], params, use_tqdm=False)
        assert [list(o.outputs[0].token_ids) for o in outputs] == expected, name
        assert any(len(set(ids)) > 1 for ids in expected)  # not one repeated token: a meaningful comparison
        del llm, outputs
        gc.collect()
