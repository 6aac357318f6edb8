"""Generate the small open-ended chat set in recipes/data/chat/: prompts from templates, answers
sampled from SmolLM2-135M-Instruct itself.

This is the set the distillation comparison of docs/distill.md runs on (teacher: SmolLM2-135M-
Instruct, student: a 10-layer cut of it). Unlike the demo tasks, whose one right answer the
teacher reproduces almost exactly, these prompts have many good answers: the teacher's
next-token distribution carries more than the one sampled answer a cross-entropy student sees.

- Prompts: 15 templates ("Write {form} about {topic}.", "What is {a} plus {b}?", ...) filled
  from small word lists, at least 60 fillings each, most asking for one sentence. Each
  template's fillings are shuffled once and dealt round-robin, so every split holds every
  kind of prompt (templates whose answers run long lose more prompts to the token limit).
- Answers: the teacher's own, sampled at temperature 0.7 up to 64 new tokens, with the chat
  template's default system message (no system message in the file, as `workbench generate`
  does). An answer cut off by the token limit (no end-of-turn token) is dropped with its
  prompt, which is why twice as many prompts are drawn as kept.

The prompts depend on the seed only; the answers also on the torch build (sampling), so the
shipped files are the record and tests/test_data_demo_sets.py checks their prompts against
this generator.

Usage: python recipes/data/make_chat.py [--teacher models/smollm2-135m-instruct]
       [--out recipes/data/chat] [--seed 0]
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

TRAIN_SIZE = 320
VALID_SIZE = 64
TEMPERATURE = 0.7
MAX_NEW_TOKENS = 64
BATCH_SIZE = 16

ANIMALS = ["a cat", "a dog", "a horse", "an owl", "a dolphin", "a fox", "a penguin", "an elephant",
           "a rabbit", "a turtle", "an eagle", "a bee", "a whale", "a frog", "a lion", "a goat", "a parrot",
           "an octopus", "a squirrel", "a camel"]
ACTIVITIES = ["running", "cooking pasta", "learning a language", "gardening", "saving money",
              "studying for exams", "sleeping well", "painting", "hiking", "writing emails",
              "playing chess", "baking bread", "traveling cheaply", "taking photos", "swimming",
              "reading more books", "staying focused", "making friends", "public speaking", "cycling"]
OBJECTS = ["a hammer", "a compass", "an umbrella", "a kettle", "a ladder", "a thermometer", "a stapler",
           "a telescope", "a microscope", "a whisk", "a flashlight", "a magnet", "a calculator",
           "a backpack", "a candle", "a toothbrush", "a pair of scissors", "a blender", "a helmet", "a map"]
PLACES = ["a kitchen", "a library", "a forest", "a beach", "a classroom", "a garage", "a hospital",
          "a park", "a museum", "a bakery", "a farm", "an airport", "an office", "a zoo", "a garden"]
FOODS = ["rice", "eggs", "potatoes", "lentils", "spinach", "chicken", "tomatoes", "oats", "apples",
         "cheese", "carrots", "beans", "mushrooms", "bananas", "yogurt"]
TOPICS = ["the ocean", "the moon", "friendship", "winter", "music", "the city at night", "rain",
          "a long journey", "the first day of school", "autumn leaves", "the mountains", "coffee",
          "a quiet morning", "the stars", "a busy market"]
AUDIENCES = ["a child", "a student", "a grandparent", "a tourist"]
ADJECTIVES = ["happy", "fast", "big", "quiet", "bright", "cold", "brave", "strange", "tiny", "angry",
              "clever", "soft", "old", "busy", "calm", "funny", "dark", "rich", "simple", "tired"]
BUSINESSES = ["bakery", "bike shop", "bookstore", "coffee shop", "gym", "flower shop", "pet store",
              "pizza place", "hair salon", "toy store", "ice cream shop", "music school"]
RECIPIENTS = ["a friend", "my teacher", "my neighbor", "a coworker", "my grandmother"]
GIFTS = ["a book", "dinner", "the flowers", "their help with moving", "a ride home", "a birthday card",
         "a homemade cake", "watching my dog", "a scarf", "good advice", "a concert ticket", "a plant"]

TEMPLATES: list[tuple[str, dict[str, list]]] = [
    ("Describe {animal} to {audience} in one sentence.", {"animal": ANIMALS, "audience": AUDIENCES}),
    ("Give me one {kind} tip for {activity}, in one sentence.",
     {"kind": ["quick", "simple", "practical", "useful"], "activity": ACTIVITIES}),
    ("Explain to {audience} in one sentence what {object} is used for.",
     {"audience": AUDIENCES, "object": OBJECTS}),
    ("Name {count} things you might find in {place}. Just list them.",
     {"count": ["two", "three", "four", "five"], "place": PLACES}),
    ("Suggest a quick {meal} I can make with {food}, in one sentence.",
     {"meal": ["breakfast", "lunch", "dinner", "snack"], "food": FOODS}),
    ("Write {form} about {topic}.",
     {"form": ["a haiku", "a two-line poem", "one sentence", "a short riddle"], "topic": TOPICS}),
    ("Explain {topic} to {audience} in two sentences.", {"topic": TOPICS, "audience": AUDIENCES}),
    ("Give a synonym for '{adjective}' and use it in a sentence about {topic}.",
     {"adjective": ADJECTIVES, "topic": TOPICS}),
    ("Write a one-line slogan for a {quality} {business}.",
     {"quality": ["friendly", "modern", "cheap", "fun", "cozy"], "business": BUSINESSES}),
    ("What is {a} plus {b}?", {"a": list(range(2, 30)), "b": list(range(2, 30))}),
    ("Write a one-sentence thank-you note to {recipient} for {gift}.",
     {"recipient": RECIPIENTS, "gift": GIFTS}),
    ("Why do {people} enjoy {activity}? Answer in one sentence.",
     {"people": ["people", "kids", "older people"], "activity": ACTIVITIES}),
    ("Where does {animal} usually live? Answer {style}.",
     {"animal": ANIMALS, "style": ["briefly", "in one sentence", "in a few words"]}),
    ("Give me a fun fact about {animal} for {audience}, in one sentence.",
     {"animal": ANIMALS, "audience": AUDIENCES}),
    ("What is the opposite of '{adjective}'? Use it in a {kind} sentence.",
     {"adjective": ADJECTIVES, "kind": ["short", "simple", "funny"]}),
]


def template_pool(template: str, slots: dict[str, list], rng: random.Random) -> list[str]:
    """Every filling of one template, in a seeded random order."""
    names = list(slots)
    prompts = [template.format(**dict(zip(names, values)))
               for values in itertools.product(*(slots[name] for name in names))]
    rng.shuffle(prompts)
    return prompts


def all_prompts(rng: random.Random) -> list[list[str]]:
    return [template_pool(template, slots, rng) for template, slots in TEMPLATES]


def draw_prompts(pools: list[list[str]], count: int) -> list[str]:
    """``count`` prompts dealt round-robin from the pools (a template whose pool runs out is skipped)."""
    dealt = [prompt for row in itertools.zip_longest(*pools) for prompt in row if prompt is not None]
    if count > len(dealt):
        raise ValueError(f"asked for {count} prompts, the templates make only {len(dealt)}")
    return dealt[:count]


def sampled_answers(model, tokenizer, prompts: list[str]) -> list[str | None]:
    """The teacher's sampled answer to each prompt; None where it hit the token limit."""
    from workbench.evaluate.answers import left_padded
    from workbench.generation import build_prompt_ids

    eos_id = tokenizer.eos_token_id
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_id
    answers: list[str | None] = []
    for start in range(0, len(prompts), BATCH_SIZE):
        batch = prompts[start:start + BATCH_SIZE]
        encoded = [build_prompt_ids(tokenizer, prompt)[0].tolist() for prompt in batch]
        input_ids, attention_mask = left_padded(encoded, pad_id)
        output = model.generate(input_ids=input_ids, attention_mask=attention_mask, do_sample=True,
                                temperature=TEMPERATURE, top_k=0, top_p=1.0,
                                max_new_tokens=MAX_NEW_TOKENS, pad_token_id=pad_id)
        for row in output[:, input_ids.shape[1]:].tolist():
            finished = eos_id in row
            answers.append(tokenizer.decode(row, skip_special_tokens=True).strip() if finished else None)
        print(f"answered {len(answers)} / {len(prompts)}", file=sys.stderr, flush=True)
    return answers


def chat_rows(prompts: list[str], answers: list[str | None]) -> list[dict]:
    return [{"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]}
            for prompt, answer in zip(prompts, answers) if answer]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", type=Path, default=REPO / "models" / "smollm2-135m-instruct")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "chat")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from workbench.modeling import load_model, load_tokenizer

    prompts = draw_prompts(all_prompts(random.Random(args.seed)), 2 * (VALID_SIZE + TRAIN_SIZE))
    torch.manual_seed(args.seed)
    answers = sampled_answers(load_model(args.teacher), load_tokenizer(args.teacher), prompts)
    rows = chat_rows(prompts, answers)
    if len(rows) < VALID_SIZE + TRAIN_SIZE:
        sys.exit(f"only {len(rows)} answers finished within {MAX_NEW_TOKENS} tokens; "
                 f"{VALID_SIZE + TRAIN_SIZE} are needed")
    args.out.mkdir(parents=True, exist_ok=True)
    splits = {"valid": rows[:VALID_SIZE], "train": rows[VALID_SIZE:VALID_SIZE + TRAIN_SIZE]}
    for split, split_rows in splits.items():
        (args.out / f"{split}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in split_rows))
    print(f"chat: {TRAIN_SIZE} train, {VALID_SIZE} valid -> {args.out} "
          f"({len(rows)} of {len(prompts)} answers finished)")


if __name__ == "__main__":
    main()
