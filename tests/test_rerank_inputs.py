"""The reranker worker side as a unit: pair layout, token types, truncation document side first, score choices."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from sentence_transformers import CrossEncoder
from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

from common.discovery import scan_models
from common.errors import InvalidRequest
from common.settings import Settings
from worker.engines.rerank import RerankEngine, RerankInputs

BERT = "tiny-bert-reranker"
QWEN = "tiny-qwen3-reranker"
DOCS = ["the cat reads a book", "", "yes", "Paris is the capital of France.", "the farmer sells bread " * 200]


@pytest.fixture(scope="module")
def bert(models_dir: Path) -> RerankInputs:
    return RerankInputs(models_dir / BERT, Settings())


@pytest.fixture(scope="module")
def qwen(models_dir: Path) -> RerankInputs:
    return RerankInputs(models_dir / QWEN, Settings())


def test_cross_encoder_pairs_are_the_tokenizers_pairs(bert: RerankInputs, models_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(str(models_dir / BERT))
    docs = ["the cat reads a book", "", "yes"]
    encoded = bert.encode("who reads?", docs)
    reference = tokenizer(["who reads?"] * len(docs), docs)  # batched, as CrossEncoder: "" is still a pair
    for i, (seq, split) in enumerate(zip(encoded.seqs, encoded.splits, strict=True)):
        assert seq == reference["input_ids"][i]
        assert [0] * split + [1] * (len(seq) - split) == reference["token_type_ids"][i]
    assert not bert.causal and bert.uses_type_ids


def test_long_document_is_cut_from_its_end(bert: RerankInputs, models_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(str(models_dir / BERT))
    doc = "the farmer sells bread " * 200
    [seq] = bert.encode("who sells bread?", [doc]).seqs
    reference = tokenizer("who sells bread?", doc, truncation="only_second", max_length=512)["input_ids"]
    assert len(seq) == 512 and seq == reference


def test_query_longer_than_the_window_loses_the_document_then_its_end(bert: RerankInputs) -> None:
    query = "who sells bread " * 200
    encoded = bert.encode(query, ["the farmer"])
    [seq], [split] = encoded.seqs, encoded.splits
    assert len(seq) == 512
    assert split == 511  # [CLS] query... [SEP] then the last [SEP] alone has token type 1
    sep = bert.tokenizer.sep_token_id
    assert seq[-2:] == [sep, sep]


def test_max_tokens_per_doc_cuts_each_document(bert: RerankInputs) -> None:
    full = bert.encode("q", ["one two three four five six seven"]).seqs[0]
    cut = bert.encode("q", ["one two three four five six seven"], max_tokens_per_doc=2).seqs[0]
    assert len(cut) == 3 + 1 + 2 and cut[:5] == full[:5] and cut[-1] == full[-1]


def test_no_truncation_when_asked_is_a_400(bert: RerankInputs) -> None:
    with pytest.raises(InvalidRequest) as info:
        bert.encode("q", ["short", "word " * 600], truncate=False)
    assert info.value.code == "context_length_exceeded" and "documents[1]" in info.value.message


def test_yes_no_prompt_layout_and_truncation(qwen: RerankInputs) -> None:
    assert qwen.causal and not qwen.uses_type_ids
    short, long = qwen.encode("q?", ["a short document", "a long story " * 300]).seqs
    decoded = qwen.tokenizer.decode(short)
    assert decoded.startswith("<|im_start|>system\nJudge whether the Document meets the requirements")
    assert "<Instruct>: Given a web search query, retrieve relevant passages that answer the query\n" in decoded
    assert decoded.endswith("<Query>: q?\n<Document>: a short document<|im_end|>\n<|im_start|>assistant\n"
                            "<think>\n\n</think>\n\n")
    assert len(long) == 512
    assert long[: len(qwen.prefix)] == qwen.prefix
    assert "<Document>: a long story a long story" in qwen.tokenizer.decode(long)
    assert long[-len(qwen.suffix):] == qwen.suffix  # the answer cue survives truncation


def test_instruction_from_the_request(qwen: RerankInputs) -> None:
    [seq] = qwen.encode("q?", ["d"], instruction="Find cities").seqs
    assert "<Instruct>: Find cities\n<Query>: q?\n<Document>: d" in qwen.tokenizer.decode(seq)


def test_instruction_from_the_model_folder(models_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "qwen-with-options"
    shutil.copytree(models_dir / QWEN, folder)
    (folder / "llm-interface.json").write_text('{"options": {"instruction": "Folder says", "max_length": 256}}')
    inputs = RerankInputs(folder, Settings())
    assert inputs.max_length == 256
    [seq] = inputs.encode("q?", ["d " * 400]).seqs
    assert len(seq) == 256 and "<Instruct>: Folder says\n" in inputs.tokenizer.decode(seq)


# --- the engine's scores for the choices a folder can make (no stack: the engine alone) ----------------------------


def engine_for(folder: Path) -> RerankEngine:
    info = scan_models(folder.parent).models[folder.name]
    engine = RerankEngine(info, Settings(device="cpu"))
    engine.load()
    return engine


def scores(engine: RerankEngine, query: str, docs: list[str]) -> np.ndarray:
    encoded = engine.inputs.encode(query, docs)
    return engine.score(list(zip(encoded.seqs, encoded.splits, strict=True)))


def test_saved_activation_is_followed_as_cross_encoder_does(models_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "identity-reranker"
    shutil.copytree(models_dir / BERT, folder)
    config = json.loads((folder / "config.json").read_text())
    config["sentence_transformers"] = {"activation_fn": "torch.nn.modules.linear.Identity"}
    (folder / "config.json").write_text(json.dumps(config))
    got = scores(engine_for(folder), "who reads?", DOCS)
    reference = CrossEncoder(str(folder), device="cpu").predict([("who reads?", d) for d in DOCS])
    assert np.abs(got[:, 0] - reference).max() <= 1e-5
    assert np.array_equal(got[:, 0], got[:, 1])  # identity: the score is the logit


def test_several_labels_score_the_last_label_or_the_named_one(models_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "three-label-reranker"
    shutil.copytree(models_dir / BERT, folder)
    config = BertConfig.from_pretrained(folder)
    config.num_labels = 3
    config.id2label = {0: "bad", 1: "relevant", 2: "neutral"}
    config.label2id = {v: k for k, v in config.id2label.items()}
    torch.manual_seed(0)
    model = BertForSequenceClassification(config).eval()
    model.save_pretrained(str(folder))
    pairs = [("who reads?", d) for d in DOCS]
    logits = CrossEncoder(str(folder), device="cpu").predict(pairs)  # several labels: CrossEncoder gives logits
    probs = torch.softmax(torch.tensor(logits), dim=1).numpy()
    got = scores(engine_for(folder), "who reads?", DOCS)
    assert np.abs(got[:, 0] - probs[:, 2]).max() <= 1e-5 and np.abs(got[:, 1] - logits[:, 2]).max() <= 1e-5
    (folder / "llm-interface.json").write_text('{"options": {"label": "relevant"}}')
    got = scores(engine_for(folder), "who reads?", DOCS)
    assert np.abs(got[:, 0] - probs[:, 1]).max() <= 1e-5
