"""How documents are joined into one token stream (`datasets.<name>.packing`).

- ``bos_eos`` (default): BOS + text + EOS per document (Llama, torchtitan, gpt-neuro; a tokenizer whose BOS
  equals its EOS, GPT-2 style, has no BOS: one EOS after each document);
- ``separator``: one separator token before each document and nothing after (build-nanogpt's FineWeb
  script, training-custom-llama: ``[<|end_of_text|>] + encode_ordinary(text)``);
- ``concat``: the texts' tokens back to back with no token between them (Hugging Face ``run_clm.py``'s
  ``group_texts``, llm-pytorch: the GPT-Neo tokenizer adds no special token, the texts are concatenated and
  cut into blocks).

The mode and the separator's id are part of a shard's identity: the tokenize step records them in
``index.json`` and in every shard's key, so another mode encodes the split again.
"""

from __future__ import annotations

from dataclasses import dataclass

PACKING_MODES = ("bos_eos", "separator", "concat")


@dataclass(frozen=True)
class Packing:
    mode: str = "bos_eos"
    separator_token: str | None = None

    def __post_init__(self) -> None:
        if self.mode not in PACKING_MODES:
            valid = ", ".join(PACKING_MODES)
            raise ValueError(f"packing = {self.mode!r} is not a packing mode; valid: {valid}")
        if (self.mode == "separator") != (self.separator_token is not None):
            raise ValueError(
                "separator_token: set it exactly when packing = separator (the token before each document)"
            )

    @classmethod
    def of_dataset(cls, spec: dict) -> Packing:
        """The packing of a dataset's config entry (datasets.<name>)."""
        return cls(spec.get("packing", "bos_eos"), spec.get("separator_token"))

    def to_dict(self) -> dict:
        return {"mode": self.mode, "separator_token": self.separator_token}

    def frame(self, tok) -> tuple[list[int], list[int]]:
        """The ids put before and after every document's tokens with tokenizer `tok` (a TextTokenizer)."""
        if self.mode == "bos_eos":
            return ([tok.bos_id] if tok.bos_id is not None else []), [tok.eos_id]
        if self.mode == "concat":
            return [], []
        return [separator_id(tok, self.separator_token)], []


DEFAULT_PACKING = Packing()


def separator_id(tok, token: str) -> int:
    """The id of the separator token in `tok`; a token the tokenizer lacks is refused, naming it."""
    token_id = tok.token_to_id(token)
    if token_id is None:
        raise ValueError(f"separator_token = {token!r} is not a token of the tokenizer {tok.path}")
    return token_id


def pack(documents: list[list[int]], prefix: list[int], suffix: list[int]) -> list[int]:
    """One token stream: prefix + ids + suffix for every document, in order."""
    flat: list[int] = []
    for ids in documents:
        flat += prefix
        flat += ids
        flat += suffix
    return flat
