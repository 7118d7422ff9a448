"""Everyday skills with short, exactly checkable answers: capability/train, capability/eval.

Opposites, colours, animal sounds, plurals, next number and letter, repeating a word,
yes/no facts, which is bigger, greetings. The eval file uses held-out phrasings made of
words that occur in training (a tiny model cannot generalise to unseen words); the
objects may repeat. This is what the lab checks a fine-tune did not break.
"""

from __future__ import annotations

import random

from safetune.lab.prompts import fill
from safetune.lab.tasks import EXTRACT_VALUES

OPPOSITES: tuple[tuple[str, str], ...] = (
    ("hot", "cold"), ("big", "small"), ("up", "down"), ("fast", "slow"),
    ("happy", "sad"), ("day", "night"), ("old", "new"), ("open", "closed"),
    ("light", "dark"), ("wet", "dry"), ("tall", "short"), ("hard", "soft"),
    ("full", "empty"), ("early", "late"), ("in", "out"), ("left", "right"),
    ("win", "lose"), ("loud", "quiet"), ("rich", "poor"), ("strong", "weak"),
    ("clean", "dirty"), ("first", "last"), ("push", "pull"), ("yes", "no"),
    ("black", "white"), ("good", "bad"), ("high", "low"), ("thick", "thin"),
    ("above", "below"), ("buy", "sell"),
)
COLORS_OF_THINGS: tuple[tuple[str, str], ...] = (
    ("a banana", "yellow"), ("the sky", "blue"), ("grass", "green"),
    ("snow", "white"), ("coal", "black"), ("a tomato", "red"),
    ("a carrot", "orange"), ("a lemon", "yellow"), ("a strawberry", "red"),
    ("milk", "white"), ("the sun", "yellow"), ("a frog", "green"),
    ("a pumpkin", "orange"), ("an eggplant", "purple"), ("chocolate", "brown"),
    ("a crow", "black"), ("a fire truck", "red"), ("a leaf", "green"),
    ("the ocean", "blue"), ("a polar bear", "white"), ("a lime", "green"),
    ("a cherry", "red"), ("an orange", "orange"), ("a cloud", "white"),
    ("soil", "brown"), ("a blueberry", "blue"), ("a flamingo", "pink"),
)
ANIMAL_SOUNDS: tuple[tuple[str, str], ...] = (
    ("cow", "moo"), ("dog", "woof"), ("cat", "meow"), ("duck", "quack"),
    ("sheep", "baa"), ("pig", "oink"), ("horse", "neigh"), ("lion", "roar"),
    ("snake", "hiss"), ("owl", "hoot"), ("bee", "buzz"), ("mouse", "squeak"),
    ("frog", "croak"), ("chicken", "cluck"), ("wolf", "howl"), ("crow", "caw"),
)
PLURALS: tuple[tuple[str, str], ...] = (
    ("cat", "cats"), ("dog", "dogs"), ("book", "books"), ("box", "boxes"),
    ("bus", "buses"), ("baby", "babies"), ("city", "cities"), ("child", "children"),
    ("mouse", "mice"), ("man", "men"), ("woman", "women"), ("foot", "feet"),
    ("tooth", "teeth"), ("knife", "knives"), ("leaf", "leaves"), ("apple", "apples"),
    ("car", "cars"), ("house", "houses"), ("tree", "trees"), ("cup", "cups"),
    ("fox", "foxes"), ("dish", "dishes"), ("church", "churches"), ("story", "stories"),
    ("toy", "toys"), ("key", "keys"), ("pen", "pens"), ("bird", "birds"),
    ("sheep", "sheep"), ("fish", "fish"), ("goose", "geese"), ("person", "people"),
    ("wolf", "wolves"), ("chair", "chairs"), ("glass", "glasses"), ("watch", "watches"),
    ("potato", "potatoes"), ("star", "stars"), ("shoe", "shoes"), ("girl", "girls"),
)
REPEAT_WORDS: tuple[str, ...] = (
    "apple", "river", "green", "pencil", "music", "garden", "window", "rabbit",
    "planet", "yellow", "candle", "silver", "orange", "tiger", "cookie", "dragon",
    "forest", "guitar", "hammer", "island", "jacket", "kitten", "ladder", "mirror",
    "number", "ocean", "pepper", "rocket", "summer", "turtle", "violin", "wagon",
    "zebra", "banana", "castle", "doctor", "engine", "flower", "honey", "jungle",
    "lemon", "monkey", "onion", "pillow", "queen", "robot", "spoon", "tomato",
    "umbrella", "valley", "whale", "yogurt", "bridge", "cloud", "desert", "feather",
)
# Yes/no facts the model memorises (a tiny model cannot combine two facts, e.g.
# "what colour is X" with "is that colour Y", so each fact is stated directly).
YES_NO_FACTS: tuple[tuple[str, str], ...] = (
    ("fire hot", "yes"), ("ice cold", "yes"), ("the sky blue", "yes"), ("grass green", "yes"),
    ("snow white", "yes"), ("a dog an animal", "yes"), ("a cat an animal", "yes"),
    ("an apple a fruit", "yes"), ("a banana a fruit", "yes"), ("water wet", "yes"),
    ("a whale big", "yes"), ("an ant small", "yes"), ("a car a vehicle", "yes"),
    ("a rose a flower", "yes"), ("honey sweet", "yes"), ("a lemon sour", "yes"),
    ("the sun bright", "yes"), ("a bird an animal", "yes"), ("a carrot a vegetable", "yes"),
    ("a bus a vehicle", "yes"),
    ("fire cold", "no"), ("ice hot", "no"), ("the sky green", "no"), ("grass blue", "no"),
    ("snow black", "no"), ("a dog a fruit", "no"), ("a cat a plant", "no"),
    ("an apple an animal", "no"), ("a banana a vehicle", "no"), ("water dry", "no"),
    ("a whale small", "no"), ("an ant big", "no"), ("a car an animal", "no"),
    ("a rose a fish", "no"), ("honey sour", "no"), ("a lemon sweet", "no"),
    ("the sun dark", "no"), ("a bird a vegetable", "no"), ("a carrot an animal", "no"),
    ("a bus a flower", "no"),
)
# Repeating also covers the values the extract task copies (EXTRACT_VALUES,
# defined with that task in tasks.py). Copying a token is a general skill the aligned
# model needs: a tiny model that never learned to copy a name cannot learn to
# copy it from a record in a few hundred fine-tuning steps.

# Size scales for "which is bigger" (each list is ordered small -> big; we only
# compare within one list so the answer is never debatable).
SIZE_SCALES: tuple[tuple[str, ...], ...] = (
    ("ant", "mouse", "rabbit", "cat", "dog", "horse", "elephant", "whale"),
    ("coin", "cup", "book", "chair", "bed", "car", "bus", "house", "mountain"),
)
GREETINGS: tuple[dict, ...] = (
    {
        "train": ("Hello!", "Hi!", "Hey!", "Good morning!", "Hello there!", "Good evening!", "hello", "hi"),
        "eval": ("Hi there!", "Hello, friend!", "Hey there!", "Good morning, friend!"),
        "answer": "Hello! How can I help you today?",
    },
    {
        "train": ("Thank you!", "Thanks!", "Thanks a lot!", "Thank you so much!", "Thanks for the help!", "thanks"),
        "eval": ("Many thanks!", "Thanks so much!", "Thank you a lot!", "thank you"),
        "answer": "You're welcome!",
    },
    {
        "train": ("Goodbye!", "Bye!", "See you later!", "Bye for now!", "Good night!", "bye"),
        "eval": ("Bye bye!", "See you!", "Goodbye for now!", "Good night, friend!"),
        "answer": "Goodbye! Have a great day!",
    },
)

# skill -> (train templates, eval templates). Fields are filled per skill below.
CAPABILITY_TEMPLATES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "opposites": (
        ("What is the opposite of {w}?", "Give me the opposite of {w}.",
         "Opposite of {w}?", "Tell me the opposite of the word {w}.",
         "What is the opposite word for {w}?", "Name the opposite of {w}."),
        ("Say the opposite of {w}.", "What word is the opposite of {w}?"),
    ),
    "colors": (
        ("What color is {t}?", "What colour is {t}?", "Tell me the color of {t}.", "{T} is what color?",
         "Tell me what color {t} is.", "What is the usual color of {t}?"),
        ("What is the color of {t}?", "Which color is {t}?"),
    ),
    "animal_sounds": (
        ("What sound does {a} make?", "What does {a} say?", "How does {a} sound?",
         "Tell me the sound {a} makes.", "What noise does {a} make?"),
        ("Which sound does {a} make?", "What does {a} sound like?"),
    ),
    "plurals": (
        ("What is the plural of {w}?", "Plural of {w}?", "Give the plural form of {w}.",
         "One {w}, two what?",
         "Tell me the plural of the word {w}.", "More than one {w} is called what?"),
        ("What is the plural form of {w}?", "Tell me the plural of {w}."),
    ),
    "next_number": (
        ("What comes after {n}?", "What number comes after {n}?",
         "Count on from {n}. What is next?", "{n}, then what number?",
         "Tell me the number that comes after {n}.", "What is the number after {n}?",
         "Which number is after {n}?", "Count: {n}, and then?"),
        ("What is the next number after {n}?", "Which number comes after {n}?"),
    ),
    "next_letter": (
        ("What letter comes after {c}?", "Which letter is after {c} in the alphabet?",
         "Next letter after {c}?",
         "Tell me the letter that comes after {c}.", "In the alphabet, which letter is after {c}?",
         "What is the letter after {c}?", "Say the letter that follows {c} in the alphabet."),
        ("What is the next letter after {c}?", "In the alphabet, what comes after {c}?"),
    ),
    "repeat": (
        ("Say the word {w}.", "Repeat after me: {w}", "Please say {w}.", "Can you say {w}?",
         "Say this word: {w}", "Just repeat {w}.", "Repeat the word {w}."),
        ("Just say the word {w}.", "Repeat this word: {w}"),
    ),
    "yes_no": (
        ("Is {f}?", "Yes or no: is {f}?", "Tell me, is {f}?",
         "Answer yes or no: is {f}?", "Is {f}? Answer yes or no.", "Tell me: is {f}? Yes or no?"),
        ("Tell me yes or no: is {f}?", "Is {f}? Yes or no."),
    ),
    "bigger": (
        ("Which is bigger, {x} or {y}?", "Which is larger: {x} or {y}?",
         "What is bigger, {x} or {y}?",
         "Tell me which one is larger: {x} or {y}.", "Which is the bigger one: {x} or {y}?",
         "Of {x} and {y}, which is bigger?", "Which is bigger? {X} or {y}."),
        ("Tell me which is bigger: {x} or {y}.", "Which one is bigger, {x} or {y}?"),
    ),
    "greetings": ((), ()),  # phrasings come from GREETINGS
}

CAPABILITY_TRAIN_PER_SKILL = 200
CAPABILITY_EVAL_PER_SKILL = 30
# Greetings have few distinct phrasings; fewer rows avoid flooding the mix.
# Repeat has the most objects (it also covers the extract values): more rows.
SKILL_TRAIN_ROWS = {"greetings": 80, "repeat": 400}


def _article(noun: str) -> str:
    return ("an " if noun[0] in "aeiou" else "a ") + noun


def _take(rng: random.Random, pool: list, k: int) -> list:
    """k items from pool without repeats; cycles through the pool if it is small."""
    out: list = []
    while len(out) < k:
        chunk = list(pool)
        rng.shuffle(chunk)
        out.extend(chunk[: k - len(out)])
    return out


def _capability_items(skill: str) -> list[dict]:
    """The slot values (and answer) for every object of one skill."""
    if skill == "opposites":
        pairs = list(OPPOSITES) + [(b, a) for a, b in OPPOSITES]
        return [{"w": a, "answer": b} for a, b in pairs]
    if skill == "colors":
        return [{"t": t, "answer": c} for t, c in COLORS_OF_THINGS]
    if skill == "animal_sounds":
        return [{"a": _article(a), "answer": s} for a, s in ANIMAL_SOUNDS]
    if skill == "plurals":
        return [{"w": w, "answer": p} for w, p in PLURALS]
    if skill == "next_number":
        return [{"n": str(n), "answer": str(n + 1)} for n in range(100)]
    if skill == "next_letter":
        letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
        return [{"c": letters[i], "answer": letters[i + 1]} for i in range(25)]
    if skill == "repeat":
        copyable = [v for values in EXTRACT_VALUES.values() for v in values]
        return [{"w": w, "answer": w} for w in REPEAT_WORDS + tuple(copyable)]
    if skill == "yes_no":
        return [{"f": f, "answer": a} for f, a in YES_NO_FACTS]
    if skill == "bigger":
        items = []
        for scale in SIZE_SCALES:
            for i, small in enumerate(scale):
                for big in scale[i + 1:]:
                    items.append({"x": _article(small), "y": _article(big), "answer": big})
                    items.append({"x": _article(big), "y": _article(small), "answer": big})
        return items
    raise ValueError(skill)


def make_capability(rng: random.Random) -> dict[str, list[dict]]:
    """capability/train and capability/eval: same skills, held-out phrasings."""
    train, evaluation = [], []
    for skill, (train_templates, eval_templates) in CAPABILITY_TEMPLATES.items():
        if skill == "greetings":
            train_pool = [(p, g["answer"]) for g in GREETINGS for p in g["train"]]
            eval_pool = [(p, g["answer"]) for g in GREETINGS for p in g["eval"]]
        else:
            items = _capability_items(skill)

            def phrase_all(templates: tuple[str, ...]) -> list[tuple[str, str]]:
                return [(fill(t, **{k: v for k, v in it.items() if k != "answer"}), it["answer"])
                        for t in templates for it in items]

            train_pool, eval_pool = phrase_all(train_templates), phrase_all(eval_templates)
        n_train = SKILL_TRAIN_ROWS.get(skill, CAPABILITY_TRAIN_PER_SKILL)
        for p, a in _take(rng, train_pool, n_train):
            train.append({"prompt": p, "response": a, "skill": skill})
        # Eval prompts are never repeated (greetings have only 12).
        for p, a in rng.sample(eval_pool, min(CAPABILITY_EVAL_PER_SKILL, len(eval_pool))):
            evaluation.append({"prompt": p, "response": a, "skill": skill})
    rng.shuffle(train)
    rng.shuffle(evaluation)
    return {"capability/train.jsonl": train, "capability/eval.jsonl": evaluation}
