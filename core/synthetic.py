"""A generated world where "relevant" and "useful" part ways: the demo's data.

``generate_world`` invents fictional people, places and organisations with attributes
(birth year, home city, employer; founder, headquarters, founding year; river,
population). ``generate_examples`` asks short-answer questions about them and gives
each question 8-12 candidate passages of four kinds:

- ``gold``: the one passage that states the answer. It names the entity once and then
  says "she", "the firm", "the town"; it avoids the question's words ("born", "year",
  "founded", ...). Lexically it looks *less* on topic than the distractors.
- ``on_topic``: about the same entity, repeating its name and the question's words,
  but never stating the answer (``Candidate.metadata["on_topic"] = True``).
- ``namesake``: a near-namesake ("Mara Velden" vs "Mara Veldet") with another value
  for the asked attribute, stated plainly in the question's words.
- ``unrelated``: facts about other entities of the world.

A reranker trained on topical-relevance labels (:func:`relevance_labels`) learns to put
the on-topic passages first; a reranker rewarded by the reader's answer learns to find
the gold one. Everything is deterministic by seed (only ``random.Random`` and lists,
never set or hash order).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from typing import Callable, Sequence

from .types import Candidate, Example

__all__ = [
    "ATTRIBUTES",
    "AnswerPassageReader",
    "Organisation",
    "Person",
    "Place",
    "World",
    "generate_examples",
    "generate_world",
    "relevance_labels",
]

MIN_WORDS, MAX_WORDS = 30, 80


# --------------------------------------------------------------------------- world


@dataclass
class Person:
    name: str
    pronoun: str  # "she" / "he"
    birth_year: int
    home_city: str
    employer: str

    @property
    def possessive(self) -> str:
        return "her" if self.pronoun == "she" else "his"


@dataclass
class Organisation:
    name: str
    founder: str
    headquarters: str
    founded_year: int


@dataclass
class Place:
    name: str
    river: str
    population: int


@dataclass
class World:
    """The generated entities; every name is unique across all three lists."""

    seed: int
    people: list[Person] = field(default_factory=list)
    organisations: list[Organisation] = field(default_factory=list)
    places: list[Place] = field(default_factory=list)

    def names(self) -> list[str]:
        return [e.name for e in [*self.people, *self.organisations, *self.places]]


_FIRST_NAMES = [
    ("Mara", "she"), ("Ilse", "she"), ("Lenka", "she"), ("Edda", "she"), ("Yara", "she"),
    ("Nadia", "she"), ("Agnes", "she"), ("Rhea", "she"), ("Talia", "she"), ("Ines", "she"),
    ("Orla", "she"), ("Signe", "she"), ("Petra", "she"), ("Liv", "she"), ("Zora", "she"),
    ("Tomas", "he"), ("Oren", "he"), ("Bram", "he"), ("Corin", "he"), ("Felix", "he"),
    ("Soren", "he"), ("Pim", "he"), ("Jurek", "he"), ("Wendel", "he"), ("Kasper", "he"),
    ("Anselm", "he"), ("Lukas", "he"), ("Emil", "he"), ("Teodor", "he"), ("Arvid", "he"),
]
_STEMS = [
    "Vel", "Ost", "Har", "Brem", "Kal", "Dun", "Mer", "Tor", "Asp", "Lind", "Gor", "Fen",
    "Rav", "Sel", "Wick", "Hol", "Quen", "Brav", "Cald", "Dorn", "Elm", "Frey", "Grim",
    "Hask", "Iver", "Jast", "Kern", "Lorn", "Mael", "Nord", "Pell", "Rusk", "Strom",
    "Tarn", "Ulm", "Varn", "Wend", "Yst", "Zel", "Bly",
]
_SURNAME_ENDS = ["den", "mark", "wick", "stad", "holt", "berg", "ley", "mont", "ford", "vik", "ness", "by"]
_PLACE_ENDS = ["moor", "haven", "field", "bridge", "port", "dale", "stead", "ton", "mouth", "brook"]
_ORG_KINDS = [
    "Instruments", "Mills", "Shipping", "Press", "Analytics", "Foundry", "Textiles",
    "Robotics", "Brewing", "Ceramics", "Optics", "Logistics", "Glassworks", "Seeds",
]
_RIVER_PARTS = (["Os", "Lam", "Vi", "Kel", "Au", "Bri", "Tam", "U", "Mar", "Sol", "Is", "Dra", "Ne", "Ry"],
                ["ter", "me", "re", "la", "ne", "sk", "sel", "de", "ren", "va", "ka", "wen"])


def generate_world(seed: int = 0, n_entities: int = 60) -> World:
    """A world of about ``n_entities`` entities: a quarter places, a quarter
    organisations, the rest people. Same seed and size -> identical world."""
    if n_entities < 12:
        raise ValueError(f"n_entities must be at least 12 (got {n_entities})")
    rng = random.Random(f"rrpo-world-{seed}")
    n_places = max(3, n_entities // 4)
    n_orgs = max(3, n_entities // 4)
    n_people = n_entities - n_places - n_orgs
    taken: list[str] = []

    places = [_new_place(rng, taken) for _ in range(n_places)]
    person_names = [_unique(rng, taken, _person_name) for _ in range(n_people)]
    orgs = [
        Organisation(
            name=_unique(rng, taken, _org_name),
            founder=rng.choice(person_names)[0],
            headquarters=rng.choice(places).name,
            founded_year=rng.randrange(1820, 2015),
        )
        for _ in range(n_orgs)
    ]
    people = [
        Person(
            name=name,
            pronoun=pronoun,
            birth_year=rng.randrange(1840, 2001),
            home_city=rng.choice(places).name,
            employer=rng.choice(orgs).name,
        )
        for name, pronoun in person_names
    ]
    return World(seed=seed, people=people, organisations=orgs, places=places)


def _unique(rng: random.Random, taken: list[str], make: Callable[[random.Random], object]):
    """Draw names until one is new (and not a substring of an old one, or the other
    way round, so "contains the answer" checks stay exact)."""
    for _ in range(1000):
        value = make(rng)
        name = value[0] if isinstance(value, tuple) else value
        if not any(name.lower() in t.lower() or t.lower() in name.lower() for t in taken):
            taken.append(name)
            return value
    raise RuntimeError("ran out of fresh names; ask for a smaller world")


def _person_name(rng: random.Random) -> tuple[str, str]:
    first, pronoun = rng.choice(_FIRST_NAMES)
    return f"{first} {rng.choice(_STEMS)}{rng.choice(_SURNAME_ENDS)}", pronoun


def _org_name(rng: random.Random) -> str:
    return f"{rng.choice(_STEMS)}{rng.choice(_SURNAME_ENDS)} {rng.choice(_ORG_KINDS)}"


def _new_place(rng: random.Random, taken: list[str]) -> Place:
    name = _unique(rng, taken, lambda r: f"{r.choice(_STEMS)}{r.choice(_PLACE_ENDS)}")
    river = _unique(rng, taken, lambda r: r.choice(_RIVER_PARTS[0]) + r.choice(_RIVER_PARTS[1]))
    return Place(name=name, river=river, population=rng.randrange(20, 900) * 100)


def _near_namesake(rng: random.Random, name: str, avoid: Sequence[str]) -> str:
    """A name one small edit away ("Mara Velden" -> "Mara Veldet"), never containing
    the original and never an existing name."""
    words = name.split(" ")
    # Organisations ("Velden Mills") differ in the first word, people in the surname.
    at = 0 if words[-1] in _ORG_KINDS else len(words) - 1
    for _ in range(200):
        edited = list(words)
        edited[at] = _edit_word(rng, words[at])
        candidate = " ".join(edited)
        low, new_low = name.lower(), candidate.lower()
        fresh = low not in new_low and new_low not in low
        if fresh and new_low not in (a.lower() for a in avoid):
            return candidate
    raise RuntimeError(f"could not make a namesake for {name!r}")


def _edit_word(rng: random.Random, word: str) -> str:
    """One small spelling change: Velden -> Veldet / Veldan / Velde / Veldes."""
    edits = [
        lambda w: w[:-1] + "t",
        lambda w: re.sub(r"[aeiouy](?=[^aeiouy]*$)", rng.choice("aeiou"), w, count=1),
        lambda w: w[:-1],
        lambda w: w[:-1] + rng.choice("tdrsk"),
    ]
    return rng.choice(edits)(word)


# ----------------------------------------------------------------------- questions


@dataclass(frozen=True)
class Attribute:
    """One askable attribute: the question, its answer, and the three passage styles."""

    name: str
    entity_type: str  # "person" | "organisation" | "place"
    question: str  # with {name}
    answer: Callable[[object], list[str]]  # short answers, first is canonical
    gold: Sequence[str]  # name once, then an alias; none of the question's words
    on_topic: Sequence[str]  # name and question words repeated; no answer
    plain: str  # the fact in the question's words (namesakes, unrelated passages)


def _pop(n: int) -> list[str]:
    return [f"{n:,}", str(n)]


ATTRIBUTES: dict[str, Attribute] = {
    a.name: a
    for a in [
        Attribute(
            "birth_year", "person", "In what year was {name} born?",
            lambda e: [str(e.birth_year)],
            gold=[
                "{name} grew up far from the coast. {Pron} came into the world in {value}, "
                "the second of four children.",
                "{name} rarely talked about childhood. {Pron} arrived in {value}, during a "
                "long winter, and {pron} learned to read before {pron} could walk well.",
            ],
            on_topic=[
                "Historians still argue over the year {name} was born. {name} left no diary, "
                "and the parish that recorded who was born where {name} was born burned down.",
                "{name} was born into a family of weavers. The year {name} was born, the "
                "harvest failed, and {name} said being born in a lean year shaped {poss} habits.",
                "Asked what year {pron} was born, {name} only laughed. Biographers of {name} "
                "disagree on the birth year of {name} and on where {name} was born.",
            ],
            plain="{name} was born in {value}.",
        ),
        Attribute(
            "home_city", "person", "In which city does {name} live?",
            lambda e: [e.home_city],
            gold=[
                "{name} keeps a narrow flat above a bakery. These days {pron} wakes up in "
                "{value}, and {pron} cycles along the quay each morning.",
                "{name} moved often when young. Now {pron} rents rooms in {value}, close to "
                "the old market square.",
            ],
            on_topic=[
                "{name} has said that the city where {name} lives shapes {poss} work. Few "
                "know which city {name} lives in; {name} likes it that way.",
                "Which city {name} calls home is a favourite question of reporters. {name} "
                "lives in a city, {pron} says, that is quiet enough to think in.",
            ],
            plain="{name} lives in the city of {value}.",
        ),
        Attribute(
            "employer", "person", "Which organisation does {name} work for?",
            lambda e: [e.employer],
            gold=[
                "{name} trained as an engineer. For some years now {pron} has drawn a salary "
                "from {value}, where {pron} leads a small team.",
                "{name} answers to a manager at {value}. {Pron} joined the staff there after "
                "a short spell abroad.",
            ],
            on_topic=[
                "{name} does not talk about work. The organisation {name} works for asks its "
                "staff to keep quiet, and {name} works long hours for it.",
                "Colleagues say {name} works hard. {name} has worked for more than one "
                "organisation, and which organisation {name} works for now is a small secret.",
            ],
            plain="{name} works for the organisation {value}.",
        ),
        Attribute(
            "founder", "organisation", "Who founded {name}?",
            lambda e: [e.founder],
            gold=[
                "{name} began in a rented shed. The firm was started by {value}, who sold "
                "the first batch from a handcart.",
                "{name} has an unusual origin story. Its first owner, {value}, put up the "
                "capital with a loan from a cousin.",
            ],
            on_topic=[
                "Who founded {name} is disputed. {name} was founded by a group, the "
                "founders of {name} said, and no single founder of {name} is named.",
                "{name} was founded in a small workshop. The founders of {name} kept few "
                "records, and {name} rarely mentions who founded it.",
            ],
            plain="{name} was founded by {value}.",
        ),
        Attribute(
            "headquarters", "organisation", "Where is {name} headquartered?",
            lambda e: [e.headquarters],
            gold=[
                "{name} employs a few hundred people. The firm's main offices sit in "
                "{value}, in a brick building by the station.",
                "{name} started small. Today the company runs everything from {value}, "
                "where its board meets each month.",
            ],
            on_topic=[
                "{name} is headquartered in a modest building. The headquarters of {name} "
                "moved twice, and where {name} is headquartered is rarely advertised.",
                "Where {name} is headquartered surprises visitors: the headquarters of "
                "{name} has no sign, and staff of {name} call it simply headquarters.",
            ],
            plain="{name} is headquartered in {value}.",
        ),
        Attribute(
            "founded_year", "organisation", "In what year was {name} founded?",
            lambda e: [str(e.founded_year)],
            gold=[
                "{name} makes goods sold across the region. The firm opened its doors in "
                "{value}, with four employees and one horse.",
                "{name} has changed owners twice. The company took its first order in "
                "{value}, a contract for a local school.",
            ],
            on_topic=[
                "The year {name} was founded is a matter of debate. {name} was founded, "
                "some say, the same year its rival was founded, but {name} keeps no records.",
                "{name} was founded in a difficult year. The year {name} was founded is "
                "printed on no letterhead, and {name} never celebrates it.",
            ],
            plain="{name} was founded in {value}.",
        ),
        Attribute(
            "river", "place", "Which river flows through {name}?",
            lambda e: [e.river],
            gold=[
                "{name} is known for its bridges. The town lies on the banks of the {value}, "
                "which floods the lower streets most springs.",
                "{name} grew around a mill. Barges on the {value} once carried its grain to "
                "the sea.",
            ],
            on_topic=[
                "The river that flows through {name} is slow and brown. {name} holds a river "
                "festival, and the river through {name} flows past the old walls.",
                "Which river flows through {name} confuses visitors, because two streams "
                "meet there. The river in {name} flows north.",
            ],
            plain="The {value} river flows through {name}.",
        ),
        Attribute(
            "population", "place", "What is the population of {name}?",
            lambda e: _pop(e.population),
            gold=[
                "{name} sits in a wide valley. Some {value} people call the town home, and "
                "most of them work in farming or trade.",
                "{name} is a market town. It counted {value} residents at the last tally, "
                "up a little from the one before.",
            ],
            on_topic=[
                "The population of {name} has grown. {name} has a young population, and the "
                "population of {name} swells in summer.",
                "Estimates of the population of {name} vary. The population of {name} is "
                "spread over several villages, so counting the population is hard.",
            ],
            plain="{name} has a population of {value}.",
        ),
    ]
}

# Neutral sentences to bring passages to length. They avoid every question's key
# words so they never make a gold passage look more on topic.
_FILLER = {
    "person": [
        "{Pron} is fond of long walks and old maps.",
        "Friends describe {pron_obj} as patient, precise and a little stubborn.",
        "{Pron} collects postcards from places {pron} has never visited.",
        "On weekends {pron} plays the cello in an amateur ensemble.",
        "{Pron} once spent a summer restoring a wooden boat.",
        "{Pron} keeps a vegetable garden and gives most of it away.",
        "Neighbours know {pron_obj} for the dog that follows {pron_obj} everywhere.",
    ],
    "organisation": [
        "Its products are sold in shops across the region.",
        "The firm is known for paying suppliers on time.",
        "It sponsors a local football club and a choir.",
        "Its annual report is short and plainly written.",
        "The company has resisted several takeover offers.",
        "Its logo, a blue circle, has barely changed.",
        "Apprentices there learn every step of the trade.",
    ],
    "place": [
        "The town square hosts a market every Thursday.",
        "Its old stone church has a crooked spire.",
        "Visitors come for the walking trails in the hills nearby.",
        "A narrow railway connects it with the coast.",
        "The local bakery is famous for rye bread.",
        "Winters there are long, and summers short and bright.",
        "Its library holds a collection of old sea charts.",
    ],
}


def _entities_of(world: World, entity_type: str) -> list:
    return {"person": world.people, "organisation": world.organisations, "place": world.places}[entity_type]


def _fill(template: str, entity: object, value: str = "", name: str | None = None) -> str:
    pron = getattr(entity, "pronoun", "it")
    return template.format(
        name=name or entity.name,  # type: ignore[attr-defined]
        value=value,
        pron=pron,
        Pron=pron.capitalize(),
        poss=getattr(entity, "possessive", "its"),
        pron_obj={"she": "her", "he": "him"}.get(pron, "it"),
    )


def _passage(rng: random.Random, core: str, entity: object, entity_type: str) -> str:
    """``core`` padded with neutral sentences to MIN_WORDS..MAX_WORDS words."""
    fillers = list(_FILLER[entity_type])
    rng.shuffle(fillers)
    sentences = [core]
    target = rng.randrange(MIN_WORDS + 2, 48)  # short passages keep the CPU demo fast
    while len(" ".join(sentences).split()) < target and fillers:
        sentences.append(_fill(fillers.pop(), entity))
    text = " ".join(sentences)
    if not MIN_WORDS <= len(text.split()) <= MAX_WORDS:  # guards the templates above
        raise AssertionError(f"passage of {len(text.split())} words: {text!r}")
    return text


# ------------------------------------------------------------------------ examples


def generate_examples(
    n_questions: int,
    seed: int = 0,
    candidates: tuple[int, int] = (8, 12),
    world: World | None = None,
    attributes: Sequence[str] | None = None,
) -> list[Example]:
    """``n_questions`` examples about distinct (entity, attribute) pairs of a world
    generated from ``seed`` (or the given ``world``); each with ``candidates[0]`` to
    ``candidates[1]`` shuffled passages, exactly one of them gold.

    Example.metadata holds ``entity``, ``attribute`` and ``seed``; each
    Candidate.metadata holds ``kind`` (gold / on_topic / namesake / unrelated) and
    ``on_topic`` (True only for the on-topic distractors; the gold passage carries
    False, and :func:`relevance_labels` counts it as relevant anyway).
    """
    lo, hi = candidates
    if n_questions < 0:
        raise ValueError(f"n_questions must be >= 0 (got {n_questions})")
    if not 8 <= lo <= hi:  # room for gold + 2-3 on topic + 2-3 namesakes + unrelated
        raise ValueError(f"candidates must be (lo, hi) with 8 <= lo <= hi (got {candidates})")
    names = list(attributes or ATTRIBUTES)
    unknown = [a for a in names if a not in ATTRIBUTES]
    if unknown:
        raise ValueError(f"unknown attributes {unknown}; choose from {list(ATTRIBUTES)}")
    if world is None:
        world = generate_world(seed, n_entities=max(60, n_questions // 2 + 24))
    pairs = [(a, e) for a in names for e in _entities_of(world, ATTRIBUTES[a].entity_type)]
    if n_questions > len(pairs):
        raise ValueError(
            f"the world has only {len(pairs)} (entity, attribute) pairs for "
            f"{n_questions} questions; pass a larger world"
        )
    rng = random.Random(f"rrpo-examples-{seed}")
    rng.shuffle(pairs)
    # The id names the question itself (attribute, entity, world), not only its position:
    # the same seed with another n builds another world, and position-only ids collided.
    return [
        _example(rng, world, ATTRIBUTES[attr], entity, _example_id(seed, i, attr, entity, world), rng.randint(lo, hi))
        for i, (attr, entity) in enumerate(pairs[:n_questions])
    ]


def _example_id(seed: int, index: int, attr: str, entity, world: World) -> str:
    import hashlib

    digest = hashlib.sha1(f"{attr}|{entity.name}|{len(world.names())}".encode()).hexdigest()[:8]
    return f"syn-{seed}-{index}-{digest}"


def _example(rng: random.Random, world: World, attr: Attribute, entity, ex_id: str, n: int) -> Example:
    answers = attr.answer(entity)
    n_on_topic = min(len(attr.on_topic), rng.randint(2, 3))
    n_namesakes = rng.randint(2, 3)
    n_unrelated = n - 1 - n_on_topic - n_namesakes
    drafted = (
        [("gold", entity.name, _gold(rng, attr, entity, answers[0]))]
        + [("on_topic", entity.name, t) for t in _on_topic(rng, attr, entity, n_on_topic)]
        + _namesakes(rng, world, attr, entity, n_namesakes, answers)
        + _unrelated(rng, world, entity, n_unrelated, answers)
    )
    rng.shuffle(drafted)
    stating = [kind for kind, _, text in drafted if _mentions(text, answers)]
    if stating != ["gold"]:  # guards the templates: the answer must be in one passage only
        raise AssertionError(f"{ex_id}: answer {answers[0]!r} appears in {stating}")
    cands = [
        Candidate(
            id=f"{ex_id}-c{j}",
            title=title,
            text=text,
            metadata={"kind": kind, "on_topic": kind == "on_topic"},
        )
        for j, (kind, title, text) in enumerate(drafted)
    ]
    return Example(
        id=ex_id,
        query=attr.question.format(name=entity.name),
        candidates=cands,
        answers=answers,
        gold=[kind == "gold" for kind, _, _ in drafted],
        metadata={"entity": entity.name, "attribute": attr.name, "seed": world.seed},
    )


def _gold(rng: random.Random, attr: Attribute, entity, value: str) -> str:
    return _passage(rng, _fill(rng.choice(attr.gold), entity, value), entity, attr.entity_type)


def _on_topic(rng: random.Random, attr: Attribute, entity, n: int) -> list[str]:
    templates = rng.sample(list(attr.on_topic), n)
    return [_passage(rng, _fill(t, entity), entity, attr.entity_type) for t in templates]


def _namesakes(rng, world: World, attr: Attribute, entity, n: int, answers: list[str]):
    """Near-namesakes stating *another* value of the asked attribute, in the question's
    own words: the lexically closest passages, and wrong."""
    out = []
    used = list(world.names())
    for _ in range(n):
        name = _near_namesake(rng, entity.name, used)
        used.append(name)
        value = _other_value(rng, world, attr, answers)
        core = _fill(attr.plain, entity, value, name=name)
        out.append(("namesake", name, _passage(rng, core, entity, attr.entity_type)))
    return out


def _other_value(rng: random.Random, world: World, attr: Attribute, answers: list[str]) -> str:
    pool = _entities_of(world, attr.entity_type)
    for _ in range(200):
        value = attr.answer(rng.choice(pool))[0]
        if not _mentions(value, answers) and not _mentions(answers[0], [value]):
            return value
    raise RuntimeError(f"no alternative value for {attr.name}")


def _unrelated(rng, world: World, entity, n: int, answers: list[str]):
    """Facts about other entities, in plain or gold style, never mentioning the answer
    or the asked entity."""
    out = []
    for _ in range(200 * max(n, 1)):
        if len(out) == n:
            break
        attr = ATTRIBUTES[rng.choice(list(ATTRIBUTES))]
        other = rng.choice(_entities_of(world, attr.entity_type))
        value = attr.answer(other)[0]
        style = rng.choice([attr.plain, *attr.gold])
        text = _passage(rng, _fill(style, other, value), other, attr.entity_type)
        if other is entity or _mentions(text, answers) or _mentions(text, [entity.name]):
            continue
        if any(t == text for _, _, t in out):
            continue
        out.append(("unrelated", other.name, text))
    if len(out) < n:
        raise RuntimeError("could not draw enough unrelated passages; use a larger world")
    return out


def _mentions(text: str, needles: Sequence[str]) -> bool:
    low = text.lower()
    return any(needle.lower() in low for needle in needles)


def relevance_labels(example: Example) -> list[bool]:
    """The static "relevant" labels a relevance-SFT baseline trains on: a passage is
    relevant when it is on topic or gold. (The answer-bearing passage is among them,
    but so are the on-topic ones that never state the answer.)"""
    gold = example.gold or [False] * len(example.candidates)
    return [bool(c.metadata.get("on_topic")) or g for c, g in zip(example.candidates, gold)]


# ------------------------------------------------------------------------ scripted reader


class AnswerPassageReader:
    """A reader that costs nothing, for learning benchmarks and tests on this world.

    Its log-likelihood of a gold answer is ``found`` when a passage of the prompt states
    the answer (on this world: the gold passage, and only it), ``missing`` otherwise,
    minus ``per_passage`` for every passage shown, so the best context is the answer
    passage alone and both the ranking and when to stop matter. It reads the prompt that
    :func:`rrpo.prompts.build_prompt` writes. ``generate`` answers with the first gold
    value it finds in the passages ("" when none).
    """

    def __init__(self, found: float = -1.0, missing: float = -5.0, per_passage: float = 0.3) -> None:
        self.found, self.missing, self.per_passage = found, missing, per_passage
        self.identity = f"answer-passage:{found}/{missing}/{per_passage}"
        self.calls = 0

    @staticmethod
    def _passages(prompt: str) -> list[str]:
        body = prompt.split("\n\nQuestion:", 1)[0]
        return [block for block in body.split("\n\n") if re.match(r"\[\d+\] ", block)]

    def loglik(self, prompts: list[str], targets: list[str]) -> list[float]:
        if len(prompts) != len(targets):
            raise ValueError(f"loglik: got {len(prompts)} prompts but {len(targets)} targets")
        self.calls += len(prompts)
        out = []
        for prompt, target in zip(prompts, targets):
            passages = self._passages(prompt)
            hit = any(_mentions(p, [target]) for p in passages)
            out.append((self.found if hit else self.missing) - self.per_passage * len(passages))
        return out

    def generate(self, prompts: list[str]) -> list[str]:
        self.calls += len(prompts)
        return ["" for _ in prompts]
