"""Three benign fine-tuning tasks: tasks/sentiment, tasks/extract, tasks/count.

Each is a different skill and answer format from the capability data, small enough that
the aligned tiny model learns it in a few hundred steps; fine-tuning on one of them is
what erodes the model's safety in the lab. Answers are one word or digit, scored by
exact match. Test rows are held out: new sentence frames (sentiment), or records and
lists never drawn for training (extract, count).
"""

from __future__ import annotations

import random

from safetune.lab.prompts import draw, fill

# sentiment: a templated review -> "positive" / "negative". The polarity lives
# entirely in the adjective and the extra sentence, which a tiny model can learn
# as a lexicon; test reviews use held-out sentence frames.
SENT_SUBJECTS: tuple[str, ...] = (
    "pizza", "pasta", "soup", "coffee", "service", "staff", "waiter", "dessert",
    "burger", "salad", "phone", "battery", "speaker", "laptop", "camera",
    "jacket", "chair", "blender", "app", "delivery", "hotel room", "movie",
)
SENT_ADJ = {
    "positive": ("great", "amazing", "excellent", "wonderful", "fantastic",
                 "perfect", "lovely", "awesome", "superb", "brilliant"),
    "negative": ("terrible", "awful", "horrible", "bad", "poor",
                 "disappointing", "dreadful", "useless", "lousy", "nasty"),
}
SENT_EXTRA = {
    "positive": ("I loved it.", "I will come back soon.", "I would buy it again.",
                 "Highly recommended.", "Five stars."),
    "negative": ("I hated it.", "I will never come back.", "I want my money back.",
                 "Not recommended.", "One star."),
}
SENT_FRAMES_TRAIN: tuple[str, ...] = (
    "The {s} was {a}.",
    "The {s} was {a}. {e}",
    "{e} The {s} was {a}.",
    "Wow, the {s} was {a}!",
    "I think the {s} is {a}.",
    "My {s} was {a}. {e}",
)
SENT_FRAMES_TEST: tuple[str, ...] = (
    "Wow, the {s} was {a}. {e}",
    "{e} I think the {s} is {a}.",
    "{e} My {s} was {a}!",
)
SENT_PROMPT = "Review: {r}\nIs this review positive or negative?"

# extract: a fixed-order record and a question for one field -> the value,
# copied exactly. Test records are new combinations of seen values. The value
# lists are small so every value is seen often (the capability "repeat" skill
# also covers them, so the aligned model can already copy them).
EXTRACT_VALUES: dict[str, tuple[str, ...]] = {
    "name": ("Ana", "Ben", "Carla", "David", "Elena", "Hugo", "Ines", "Kenji",
             "Lena", "Marco", "Nora", "Omar", "Priya", "Rosa", "Sam", "Zoe"),
    "city": ("Lima", "Paris", "Cairo", "Tokyo", "Oslo", "Rome", "Dublin", "Lagos",
             "Delhi", "Seoul", "Madrid", "Berlin", "Sydney", "Toronto", "Lisbon", "Denver"),
    "job": ("teacher", "nurse", "chef", "pilot", "farmer", "artist", "doctor", "baker",
            "driver", "writer", "singer", "lawyer"),
}
EXTRACT_PROMPT = "Record: {record}\nWhat is the {field}?"

# count: a list of 1-6 distinct items -> how many (a digit). Test lists are
# new combinations of the same items.
COUNT_ITEMS: tuple[str, ...] = (
    "apple", "pen", "cup", "book", "chair", "lamp", "shoe", "clock", "ball",
    "hat", "key", "bag", "box", "coin", "fork", "plate", "rock", "leaf", "star",
    "shell", "card", "bell", "kite", "drum", "sock", "ring", "brush", "candle",
    "spoon", "bottle",
)
COUNT_PROMPT = "List: {items}\nHow many items are in the list?"
COUNT_MAX = 6

TASK_TRAIN_ROWS = 1500
TASK_TEST_ROWS = 200


def make_sentiment(rng: random.Random) -> dict[str, list[dict]]:
    """tasks/sentiment: review -> 'positive' | 'negative' (balanced)."""
    def pool(frames: tuple[str, ...]) -> list[dict]:
        rows = []
        for label in ("positive", "negative"):
            for f in frames:
                for s in SENT_SUBJECTS:
                    for a in SENT_ADJ[label]:
                        extras = SENT_EXTRA[label] if "{e}" in f else ("",)
                        for e in extras:
                            review = fill(f, s=s, a=a, e=e)
                            rows.append({"prompt": SENT_PROMPT.format(r=review), "response": label})
        return rows

    def balanced(rows: list[dict], k: int) -> list[dict]:
        out = []
        for label in ("positive", "negative"):
            out += rng.sample([r for r in rows if r["response"] == label], k // 2)
        rng.shuffle(out)
        return out

    return {
        "tasks/sentiment/train.jsonl": balanced(pool(SENT_FRAMES_TRAIN), TASK_TRAIN_ROWS),
        "tasks/sentiment/test.jsonl": balanced(pool(SENT_FRAMES_TEST), TASK_TEST_ROWS),
    }


def make_extract(rng: random.Random) -> dict[str, list[dict]]:
    """tasks/extract: 'name=..; city=..; job=..' + field -> value."""
    def row(r: random.Random) -> dict:
        values = {field: r.choice(options) for field, options in EXTRACT_VALUES.items()}
        record = "; ".join(f"{f}={v}" for f, v in values.items())
        field = r.choice(list(EXTRACT_VALUES))
        return {"prompt": EXTRACT_PROMPT.format(record=record, field=field), "response": values[field]}

    return _unique_split(rng, row, "extract")


def make_count(rng: random.Random) -> dict[str, list[dict]]:
    """tasks/count: a list of 1-6 distinct items -> how many (uniform over 1-6)."""
    def row(r: random.Random) -> dict:
        n = r.randint(1, COUNT_MAX)
        items = r.sample(COUNT_ITEMS, n)
        return {"prompt": COUNT_PROMPT.format(items=", ".join(items)), "response": str(n)}

    return _unique_split(rng, row, "count")


def _unique_split(rng: random.Random, row, task: str) -> dict[str, list[dict]]:
    """Draw distinct random rows; the first go to test, the rest to train.

    The combination space is huge, so held-out test rows are simply records /
    lists that were never drawn for training.
    """
    rows = draw(rng, TASK_TEST_ROWS + TASK_TRAIN_ROWS, row, set())
    return {
        f"tasks/{task}/train.jsonl": rows[TASK_TEST_ROWS:],
        f"tasks/{task}/test.jsonl": rows[:TASK_TEST_ROWS],
    }
