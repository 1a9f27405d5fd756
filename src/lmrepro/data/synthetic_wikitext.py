"""A WikiText-2 stand-in: the ``wikitext-2-raw-v1`` schema (Parquet with one ``text`` column, splits train /
validation / test, one row per line) filled with articles about the seeded animal world of
``lmrepro.data.synthetic``.

WikiText's raw layout is kept: an article starts with an empty row and a ``" = Title = \\n"`` row, sections
with ``" = = Section = = \\n"``, every paragraph is one row that starts with a space, ends with ``"\\n"`` and
has spaced punctuation (``" , "``, ``" . "``), and an empty row sits before and after every heading.
Same seed, same files.
"""

from __future__ import annotations

import random
from pathlib import Path

from lmrepro.data.synthetic import _rng, _story_sentences, build_world

SPLITS = ("train", "validation", "test")
_SECTIONS = ("Habitat", "Diet", "Behaviour", "Appearance", "Relations")


def _raw_style(sentences: list[str]) -> str:
    """A paragraph row as WikiText writes it: capitalised sentences, punctuation set off by spaces."""
    text = " ".join(s[0].upper() + s[1:] for s in sentences)
    return " " + text.replace(",", " ,").replace(".", " .") + " \n"


def article_lines(rng: random.Random, seed: int) -> list[str]:
    """The rows of one article: title, two or three sections of one or two paragraphs each."""
    world = build_world(seed)
    subject = rng.choice(world.animals)
    lines = ["", f" = The {subject.singular.title()} of the {subject.habitat.title()} = \n", ""]
    lines.append(_raw_style(_story_sentences(rng, world, protagonist=subject)))
    for section in rng.sample(_SECTIONS, rng.randint(2, 3)):
        lines += ["", f" = = {section} = = \n", ""]
        lines += [
            _raw_style(_story_sentences(rng, world, protagonist=subject)) for _ in range(rng.randint(1, 2))
        ]
    return lines


def write(out_dir: str | Path, *, seed: int, num_train_articles: int, num_heldout_articles: int) -> dict:
    """``{split}.parquet`` for train, validation and test (``num_heldout_articles`` each), written by
    ``datasets`` as the Hub's WikiText files are; returns {split: path}."""
    import datasets

    for name, count in (
        ("num_train_documents", num_train_articles),
        ("num_heldout_documents", num_heldout_articles),
    ):
        if count < 1:
            raise ValueError(f"{name} must be positive, got {count}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    features = datasets.Features({"text": datasets.Value("string")})
    paths = {}
    for split in SPLITS:
        rng = _rng(seed, f"wikitext-{split}")
        count = num_train_articles if split == "train" else num_heldout_articles
        rows = [line for _ in range(count) for line in article_lines(rng, seed)]
        paths[split] = str(out / f"{split}.parquet")
        datasets.Dataset.from_dict({"text": rows}, features=features).to_parquet(paths[split])
    return paths
