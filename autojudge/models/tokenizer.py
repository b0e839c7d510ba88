"""Token-level helpers: where two vocabularies differ, which ids end a sequence, how prompts become ids."""

from __future__ import annotations

from transformers import PreTrainedTokenizerBase


def eos_ids_of(*sources) -> frozenset[int]:
    """Every ``eos_token_id`` the sources name (generation config, model config, tokenizer)."""
    ids: set[int] = set()
    for source in sources:
        value = getattr(source, "eos_token_id", None)
        if isinstance(value, int):
            ids.add(value)
        elif value:
            ids.update(int(v) for v in value)
    return frozenset(ids)


def first_vocabulary_difference(draft_vocab: dict[str, int], target_vocab: dict[str, int]) -> str | None:
    """Where two token -> id vocabularies first differ, in words; None when identical."""
    d_vocab, t_vocab = _by_id(draft_vocab), _by_id(target_vocab)
    for token_id in range(max(len(d_vocab), len(t_vocab))):
        d_tok = d_vocab[token_id] if token_id < len(d_vocab) else None
        t_tok = t_vocab[token_id] if token_id < len(t_vocab) else None
        if d_tok != t_tok:
            return (f"token id {token_id} is {d_tok!r} in the draft and {t_tok!r} in the target "
                    f"({len(d_vocab)} vs {len(t_vocab)} tokens)")
    return None


def _by_id(vocab: dict[str, int]) -> list[str | None]:
    by_id: list[str | None] = [None] * (max(vocab.values()) + 1 if vocab else 0)
    for token, token_id in vocab.items():
        by_id[token_id] = token
    return by_id


def encode_prompt(
    tokenizer: PreTrainedTokenizerBase, prompt: str, chat: bool = True, system: str | None = None
) -> list[int]:
    """Token ids of ``prompt``, wrapped in the chat template when the tokenizer has one."""
    if chat and tokenizer.chat_template:
        messages = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": prompt}
        ]
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        if isinstance(ids, dict) or hasattr(ids, "input_ids"):
            ids = ids["input_ids"]
        return list(ids)
    return tokenizer(prompt, add_special_tokens=True)["input_ids"]
