"""Seeded synthetic corpus: a tiny "animal world" language plus a HellaSwag-style multiple-choice set.

The seed fixes a small world: which animals exist and, for each, one habitat, one food and one colour.
Documents are short stories that only ever state facts consistent with that world, in a handful of
English-like templates with singular/plural agreement. A few-million-parameter model trained for a
couple of minutes memorises these facts, so the MC items ("the owl lives in the" -> " forest.") are
answerable from what the model learned, while their endings are balanced so that surface statistics
(ending frequency, answer position, ending length) stay near chance.
"""

from __future__ import annotations

import functools
import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path

GENERATOR_NAME = "lmrepro.data.synthetic"
GENERATOR_VERSION = 1
NUM_CHOICES = 4

# (singular, plural). Regular-looking nouns only, none that is also a food word, so parsing is unambiguous.
ANIMAL_POOL: tuple[tuple[str, str], ...] = (
    ("owl", "owls"), ("fox", "foxes"), ("bear", "bears"), ("wolf", "wolves"), ("frog", "frogs"),
    ("duck", "ducks"), ("goat", "goats"), ("hare", "hares"), ("mole", "moles"), ("crow", "crows"),
    ("swan", "swans"), ("seal", "seals"), ("lynx", "lynxes"), ("otter", "otters"), ("badger", "badgers"),
    ("beaver", "beavers"), ("rabbit", "rabbits"), ("lizard", "lizards"), ("turtle", "turtles"),
    ("snake", "snakes"), ("eagle", "eagles"), ("hawk", "hawks"), ("camel", "camels"), ("horse", "horses"),
    ("bat", "bats"), ("toad", "toads"), ("newt", "newts"), ("crab", "crabs"), ("robin", "robins"),
    ("heron", "herons"), ("raven", "ravens"), ("tiger", "tigers"), ("lion", "lions"), ("zebra", "zebras"),
    ("panda", "pandas"), ("koala", "koalas"), ("goose", "geese"), ("wren", "wrens"), ("llama", "llamas"),
)  # fmt: skip
# Values of one category have similar lengths (4-6 letters) so that ending length says little.
HABITAT_POOL = ("forest", "river", "desert", "cave", "lake", "field", "marsh", "hills", "meadow", "swamp",
                "valley", "canyon", "island", "jungle", "pond")  # fmt: skip
FOOD_POOL = ("fish", "mice", "nuts", "corn", "moss", "seeds", "grass", "worms", "roots", "honey", "plums",
             "acorns", "snails", "apples", "clover")  # fmt: skip
COLOUR_POOL = ("red", "brown", "grey", "black", "white", "green", "golden", "orange", "yellow", "silver")

NUM_ANIMALS, NUM_HABITATS, NUM_FOODS, NUM_COLOURS = 24, 8, 8, 6
CATEGORIES = ("habitat", "food", "colour")

# Canonical fact templates: the MC items query exactly these, so the model has seen the query form.
# Each verb is (singular, plural); the context ends right before the attribute value.
QUERY_VERBS = {"habitat": ("lives in the", "live in the"), "food": ("eats", "eat"), "colour": ("is", "are")}
ACTIONS = (("sleeps", "sleep"), ("runs", "run"), ("hides", "hide"), ("rests", "rest"), ("plays", "play"))
INTERACTIONS = (("sees", "see"), ("follows", "follow"), ("greets", "greet"), ("watches", "watch"))
NUMBER_WORDS = ("two", "three", "four", "five")
# Half of all sentences state a fact in the canonical form: enough repetitions for a tiny model to learn all
# facts within a few hundred steps, while the other kinds keep the text from being one template.
SENTENCE_KINDS = {"fact": 50, "paraphrase": 15, "action": 15, "interaction": 15, "count": 5}


@dataclass(frozen=True)
class Animal:
    singular: str
    plural: str
    habitat: str
    food: str
    colour: str


@dataclass(frozen=True)
class World:
    animals: tuple[Animal, ...]
    values: dict[str, tuple[str, ...]]  # category -> the values in use in this world

    def summary(self) -> dict:
        return {
            "num_animals": len(self.animals),
            **{f"num_{category}s": len(values) for category, values in self.values.items()},
            "num_facts": len(self.animals) * len(CATEGORIES),
            "num_choices": NUM_CHOICES,
        }


def _rng(seed: int, stream: str) -> random.Random:
    """Independent stream per purpose, so e.g. changing the train size never changes the MC set."""
    digest = hashlib.sha256(f"{GENERATOR_NAME}:{seed}:{stream}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def _balanced_assignment(rng: random.Random, values: list[str], count: int) -> list[str]:
    # Every value is held by (almost) the same number of animals: then no value is a priori more likely
    # to be correct, and its frequency in the corpus cannot answer an MC item.
    assigned = [values[i % len(values)] for i in range(count)]
    rng.shuffle(assigned)
    return assigned


@functools.lru_cache(maxsize=16)
def build_world(seed: int) -> World:
    """The lexicon and facts fixed by ``seed``; identical for train, heldout and MC."""
    rng = _rng(seed, "world")
    nouns = rng.sample(ANIMAL_POOL, NUM_ANIMALS)
    values = {
        "habitat": tuple(rng.sample(HABITAT_POOL, NUM_HABITATS)),
        "food": tuple(rng.sample(FOOD_POOL, NUM_FOODS)),
        "colour": tuple(rng.sample(COLOUR_POOL, NUM_COLOURS)),
    }
    columns = {c: _balanced_assignment(rng, list(values[c]), NUM_ANIMALS) for c in CATEGORIES}
    animals = tuple(
        Animal(singular, plural, columns["habitat"][i], columns["food"][i], columns["colour"][i])
        for i, (singular, plural) in enumerate(nouns)
    )
    return World(animals=animals, values=values)


def _subject(rng: random.Random, animal: Animal, plural: bool) -> str:
    if plural:
        return rng.choice(("the ", "", f"{rng.choice(NUMBER_WORDS)} ")) + animal.plural
    return "the " + animal.singular


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _fact_sentence(animal: Animal, category: str, plural: bool, subject: str) -> str:
    """The canonical statement of one fact, e.g. ``the owls live in the forest.``"""
    verb = QUERY_VERBS[category][1 if plural else 0]
    return f"{subject} {verb} {getattr(animal, category)}."


def _sentence(rng: random.Random, world: World, cast: list[Animal]) -> str:
    # The first animal of the cast is the protagonist and gets most sentences.
    animal = cast[0] if rng.random() < 0.6 else rng.choice(cast)
    plural = rng.random() < 0.35
    subject = _subject(rng, animal, plural)
    form = 1 if plural else 0
    kind = rng.choices(list(SENTENCE_KINDS), weights=list(SENTENCE_KINDS.values()))[0]
    if kind == "fact":
        return _fact_sentence(animal, rng.choice(CATEGORIES), plural, subject)
    if kind == "paraphrase":  # same facts in other surface forms, so the model learns facts, not one string
        choice = rng.randrange(3)
        if choice == 0:
            return f"{subject} {('goes', 'go')[form]} back to the {animal.habitat}."
        if choice == 1:
            return f"{subject} {('likes', 'like')[form]} to eat {animal.food}."
        return f"{_article(animal.colour)} {animal.colour} {animal.singular} {rng.choice(ACTIONS)[0]}."
    if kind == "action":
        return f"{subject} {rng.choice(ACTIONS)[form]}."
    if kind == "interaction":
        other = rng.choice([a for a in world.animals if a is not animal])
        return f"{subject} {rng.choice(INTERACTIONS)[form]} the {other.singular}."
    return f"one {animal.singular}, two {animal.plural}, three {animal.plural}."


def _story_sentences(
    rng: random.Random, world: World, protagonist: Animal | None = None, num_sentences: int = 0
) -> list[str]:
    cast = rng.sample(world.animals, rng.randint(1, 3))
    if protagonist is not None:
        cast = [protagonist] + [a for a in cast if a is not protagonist][:1]
    sentences = [_sentence(rng, world, cast) for _ in range(num_sentences or rng.randint(3, 5))]
    if rng.random() < 0.3:
        lead = cast[0]
        sentences.insert(0, f"once there was {_article(lead.colour)} {lead.colour} {lead.singular}.")
    return sentences


def _mc_example(
    rng: random.Random, world: World, animal: Animal, category: str, label: int
) -> tuple[str, list[str]]:
    """A fresh story prefix that stops right before ``animal``'s ``category`` value."""
    values = set(world.values[category])
    # Earlier sentences must not mention any value of the queried category: otherwise a model could copy a
    # value from the context (right or wrong) instead of recalling the fact.
    prefix = _story_sentences(rng, world, animal, rng.randint(1, 3))
    kept = [s for s in prefix if not values & set(s.rstrip(".").replace(",", "").split())]
    plural = rng.random() < 0.35
    query = _fact_sentence(animal, category, plural, _subject(rng, animal, plural))
    ctx = " ".join([*kept, query.rsplit(" ", 1)[0]])
    correct = getattr(animal, category)
    distractors = rng.sample([v for v in world.values[category] if v != correct], NUM_CHOICES - 1)
    choices = distractors[:label] + [correct] + distractors[label:]
    return ctx, [f" {value}." for value in choices]


def _check_positive(**counts: int) -> None:
    for name, value in counts.items():
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _write_jsonl(path: Path, records: list[dict]) -> dict:
    data = "".join(json.dumps(record, ensure_ascii=True) + "\n" for record in records).encode("ascii")
    path.write_bytes(data)
    return {"num_documents": len(records), "num_bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def generate_corpus(
    out_dir: str | Path,
    *,
    seed: int,
    num_train_documents: int,
    num_heldout_documents: int,
    num_mc_examples: int,
) -> dict:
    """Write ``train.jsonl``, ``heldout.jsonl`` and ``mc.jsonl`` into ``out_dir`` and return a manifest.

    Same seed gives byte-identical files; a different seed gives a different world. Train, heldout and
    MC documents come from independent random streams and never share a document. ``mc.jsonl`` follows
    HellaSwag's schema with endings that start with a space (the lm-eval task uses an empty delimiter).
    """
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    _check_positive(
        num_train_documents=num_train_documents,
        num_heldout_documents=num_heldout_documents,
        num_mc_examples=num_mc_examples,
    )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    world = build_world(seed)

    train_rng = _rng(seed, "train")
    train = [" ".join(_story_sentences(train_rng, world)) for _ in range(num_train_documents)]
    seen = set(train)
    heldout_rng = _rng(seed, "heldout")
    heldout: list[str] = []
    while len(heldout) < num_heldout_documents:
        text = " ".join(_story_sentences(heldout_rng, world))
        if text not in seen:  # heldout loss must measure generalisation, not recall of train documents
            heldout.append(text)
            seen.add(text)

    mc_rng = _rng(seed, "mc")
    facts = [(animal, category) for animal in world.animals for category in CATEGORIES]
    # Cycling through all facts and all answer positions keeps both uniform, whatever the count.
    labels = [i % NUM_CHOICES for i in range(num_mc_examples)]
    mc_rng.shuffle(labels)
    mc: list[dict] = []
    schedule: list[tuple[Animal, str]] = []
    while len(mc) < num_mc_examples:
        if not schedule:
            schedule = mc_rng.sample(facts, len(facts))
        animal, category = schedule.pop()
        label = labels[len(mc)]
        ctx, endings = _mc_example(mc_rng, world, animal, category, label)
        if ctx + endings[label] in seen:
            schedule.append((animal, category))
            continue
        seen.add(ctx + endings[label])
        mc.append(
            {"ind": len(mc), "activity_label": "synthetic", "ctx": ctx, "endings": endings, "label": label,
             "split": "test"}
        )  # fmt: skip

    files = {
        "train.jsonl": _write_jsonl(
            out / "train.jsonl", [{"id": f"train-{i:06d}", "text": t} for i, t in enumerate(train)]
        ),
        "heldout.jsonl": _write_jsonl(
            out / "heldout.jsonl", [{"id": f"heldout-{i:06d}", "text": t} for i, t in enumerate(heldout)]
        ),
        "mc.jsonl": _write_jsonl(out / "mc.jsonl", mc),
    }
    return {
        "generator": GENERATOR_NAME,
        "version": GENERATOR_VERSION,
        "seed": seed,
        "files": files,
        "world": world.summary(),
    }


def oracle_answer(example: dict, *, seed: int) -> int:
    """Answer an MC item from the world facts of ``seed`` (rules only, no model); exact on ``mc.jsonl``.

    The last, unfinished sentence of ``ctx`` names the animal and, through its verb, the category.
    Raises ValueError for an item that this world cannot answer (unknown animal, verb or ending).
    """
    world = build_world(seed)
    words = example["ctx"].rsplit(". ", 1)[-1].split()
    by_name = {name: a for a in world.animals for name in (a.singular, a.plural)}
    found = [(i, by_name[word]) for i, word in enumerate(words) if word in by_name]
    if not found:
        raise ValueError(f"no animal of this world in {example['ctx']!r}")
    position, animal = found[0]
    verb_phrase = " ".join(words[position + 1 :])
    categories = [c for c, forms in QUERY_VERBS.items() if verb_phrase in forms]
    if not categories:
        raise ValueError(f"{verb_phrase!r} does not query a fact")
    return example["endings"].index(f" {getattr(animal, categories[0])}.")  # ValueError if absent
