"""The synthetic memory set: facts about people ("Mia Chen's locker number is 4821.") and, for
each, a question that asks for it in other words ("Which locker does Mia Chen use?") whose answer
is the fact's value, copied from the fact.

Deterministic from a seed; every (person, attribute) pair appears once, so a question has exactly
one right fact. 60 first names x 60 surnames x 10 attributes = 36,000 possible facts. The
paraphrases keep the person's name and usually one word of the attribute, as people do when they
ask about something they said before; some share only the name (the hard cases).
"""
from __future__ import annotations

import dataclasses
import random

FIRST = ("Mia Liam Ava Noah Emma Oliver Sofia Elijah Isla Lucas Zoe Mateo Aria Leo Chloe Ethan "
         "Nora Kai Lily Omar Hana Ivan Yara Felix Maya Jonas Ines Ravi Lena Tomas Aisha Hugo "
         "Freya Arjun Clara Diego Elena Finn Grace Hassan Iris Jamal Kira Luca Mina Nico Olga "
         "Pablo Rosa Sami Tara Umar Vera Wei Xena Yusuf Zara Anton Bea Caleb").split()
LAST = ("Chen Smith Garcia Kim Patel Novak Silva Khan Muller Rossi Tanaka Haddad Okafor Larsen "
        "Ivanova Dubois Costa Nguyen Cohen Walsh Moreau Sato Kowalski Ahmed Jensen Lopez Fischer "
        "Petrov Brown Ito Ali Moller Romano Park Evans Dias Weber Kato Lindqvist Mensah Zhang "
        "Ortiz Yilmaz Berg Quinn Abe Castro Hansen Reyes Murphy Singh Vogel Araujo Holm Ibrahim "
        "Jovanovic Keller Lund Meyer Nakamura").split()
COLORS = "red blue green yellow purple orange teal maroon silver indigo".split()
CITIES = ("Lisbon Oslo Nairobi Lima Hanoi Krakow Austin Porto Quito Dakar Tbilisi Turin Leeds "
          "Osaka Perth Cusco").split()
CARS = "Toyota Volvo Tesla Fiat Honda Skoda Subaru Kia Mazda Renault".split()
JOBS = "nurse pilot baker plumber teacher architect chemist librarian carpenter florist".split()
MONTHS = ("January February March April May June July August September October November "
          "December").split()


@dataclasses.dataclass(frozen=True)
class Attribute:
    name: str
    fact: str  # "{n}" the person, "{v}" the value
    questions: tuple[str, ...]
    value: object  # rng -> value


ATTRIBUTES = (
    Attribute("locker", "{n}'s locker number is {v}.",
              ("What is {n}'s locker number?", "Which locker does {n} use?",
               "Tell me the number on {n}'s locker."),
              lambda r: str(r.randint(1000, 9999))),
    Attribute("color", "{n}'s favorite color is {v}.",
              ("What is {n}'s favorite color?", "Which color does {n} like best?",
               "What colour does {n} love most?"),
              lambda r: r.choice(COLORS)),
    Attribute("birthday", "{n} was born on {v}.",
              ("When was {n} born?", "On what date was {n} born?", "What is {n}'s birthday?"),
              lambda r: f"{r.choice(MONTHS)} {r.randint(1, 28)}"),
    Attribute("city", "{n} lives in {v}.",
              ("Where does {n} live?", "Which city does {n} live in?", "What is {n}'s home town?"),
              lambda r: r.choice(CITIES)),
    Attribute("car", "{n} drives a {v} car.",
              ("What car does {n} drive?", "Which brand of car does {n} drive?",
               "What does {n} drive?"),
              lambda r: r.choice(CARS)),
    Attribute("extension", "{n}'s phone extension is {v}.",
              ("What is {n}'s phone extension?", "Which extension reaches {n} by phone?",
               "How do I phone {n}?"),
              lambda r: str(r.randint(100, 999))),
    Attribute("job", "{n}'s job is {v}.",
              ("What is {n}'s job?", "Which job does {n} have?", "How does {n} earn a living?"),
              lambda r: r.choice(JOBS)),
    Attribute("room", "{n}'s office is room {v}.",
              ("Which room is {n}'s office?", "What is the number of {n}'s office?",
               "Where is {n}'s office?"),
              lambda r: f"{r.choice('ABCD')}{r.randint(10, 99)}"),
    Attribute("flight", "{n}'s flight number is {v}.",
              ("What is {n}'s flight number?", "Which flight is {n} on?",
               "On what flight does {n} travel?"),
              lambda r: f"{r.choice(['LX', 'KL', 'TP', 'AY'])}{r.randint(100, 999)}"),
    Attribute("pin", "{n}'s bike lock code is {v}.",
              ("What is {n}'s bike lock code?", "Which code opens {n}'s bike lock?",
               "How do I unlock {n}'s bike?"),
              lambda r: str(r.randint(1000, 9999))),
)


@dataclasses.dataclass(frozen=True)
class Fact:
    id: int
    person: str
    attribute: str
    value: str
    text: str
    question: str  # a paraphrase asking for `value`


def make_facts(n: int, seed: int = 0) -> list[Fact]:
    """`n` distinct facts (each person/attribute pair at most once) with one question each."""
    combos = [(f, s, a) for f in FIRST for s in LAST for a in range(len(ATTRIBUTES))]
    if n > len(combos):
        raise ValueError(f"at most {len(combos)} distinct facts, asked for {n}")
    rng = random.Random(seed)
    out = []
    for i, (first, last, a) in enumerate(rng.sample(combos, n)):
        attr, person = ATTRIBUTES[a], f"{first} {last}"
        value = attr.value(rng)
        out.append(Fact(i, person, attr.name, value, attr.fact.format(n=person, v=value),
                        rng.choice(attr.questions).format(n=person)))
    return out


def context_conversation(fact: Fact, distractors: list[Fact], rng: random.Random) -> list[dict]:
    """"Answer from the given context": the question with the fact among distractors as retrieved
    context (`chat_template`'s user "context"), and the reply that copies the fact."""
    hits = [fact.text, *(d.text for d in distractors)]
    rng.shuffle(hits)
    return [{"role": "user", "content": fact.question, "context": hits},
            {"role": "assistant", "content": fact.text}]


def context_task(n_train: int, n_heldout: int, k: int = 3, seed: int = 0) -> dict:
    """{"train": conversations, "heldout": (facts, conversations)}: an SFT task teaching the model
    to answer from retrieved context. Held-out facts are other (person, attribute) pairs than the
    training ones, so the model must copy from the context, not recall; each question comes with
    k - 1 distractors from its own split, half of them about the same person where it has other
    facts (what retrieval returns)."""
    facts = make_facts(n_train + n_heldout, seed)
    rng = random.Random(seed + 1)
    train, held = facts[:n_train], facts[n_train:]
    return {"train": _conversations(train, k, rng),
            "heldout": (held, _conversations(held, k, rng))}


def _conversations(pool: list[Fact], k: int, rng: random.Random) -> list[list[dict]]:
    """Each fact's context conversation, its k - 1 distractors drawn from `pool` (its own split:
    a held-out fact's text never appears in a training context)."""
    by_person: dict[str, list[Fact]] = {}
    for f in pool:
        by_person.setdefault(f.person, []).append(f)
    return [_conversation(f, pool, by_person[f.person], k, rng) for f in pool]


def _conversation(fact: Fact, pool: list[Fact], person: list[Fact], k: int,
                  rng: random.Random) -> list[dict]:
    same = [g for g in person if g.id != fact.id]
    picked = rng.sample(same, min(len(same), (k - 1) // 2))
    while len(picked) < min(k - 1, len(pool) - 1):
        g = pool[rng.randrange(len(pool))]
        if g.id != fact.id and g not in picked:
            picked.append(g)
    return context_conversation(fact, picked, rng)
