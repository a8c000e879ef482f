"""The generic text the tiny base model is pretrained on, generated here (nothing is copied).

Three kinds of documents, mixed:

- news stories in which company events come with their consequences ("... and its shares rose"),
  the world knowledge the headline task needs;
- everyday text in which "positive" and "negative" occur naturally (numbers, medical tests,
  reviews, batteries, moods), so the base knows the words the task answers with. A model that
  never produced a word cannot be taught to say it by a LoRA adapter alone: the embeddings are frozen;
- plain filler about weather, cooking and travel, so the model learns ordinary sentences.

What it never holds: the task's question wording, or "positive"/"negative" said about a company
or its news. tests/test_demo.py checks both.
"""

import random

from ftlib.demo.world import (BAD_CONSEQUENCES, BAD_EVENTS, GOOD_CONSEQUENCES, GOOD_EVENTS,
                              PRODUCTS, REGIONS, company_names, fill)

NAMES = ["Ana", "Ben", "Chen", "Dara", "Eli", "Fatima", "Gus", "Hana", "Ivan", "Jade", "Kofi", "Lena",
         "Mina", "Noor", "Omar", "Priya", "Ravi", "Sara", "Tom", "Uma", "Yuki", "Zoe"]
CITIES = ["the capital", "the port town", "the mountain village", "the old city", "the river town",
          "the northern city", "the island town", "the desert town"]
DISHES = ["noodle soup", "bean stew", "rice cake", "apple pie", "fish curry", "flat bread", "lemon tart"]
WORKS = ["film", "novel", "play", "album", "museum show", "video game", "cook book"]
ILLNESSES = ["the flu", "a cold", "a fever", "a sore throat", "a cough"]
NUMBER_WORDS = ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]
WHEN = ["On Monday", "On Tuesday", "On Wednesday", "On Thursday", "On Friday", "Last week",
        "This morning", "Late on Friday", "Earlier this month", "Yesterday"]

# Everyday sentences that use the answer words, each a template with slots.
WORD_SENTENCES = [
    "Minus {word} is a negative number because it is less than zero.",
    "{word_title} is a positive number because it is greater than zero.",
    "The product of two negative numbers is positive.",
    "If you multiply a positive number by a negative number, the result is negative.",
    "Zero is neither positive nor negative.",
    "The temperature in {city} fell to negative {number} degrees last night.",
    "{name} had {illness}, but the test came back negative, so {name} went back to school.",
    "The test for {illness} came back positive, so {name} stayed at home for a week.",
    "The doctor said a negative result means the illness was not found.",
    "Most reviews of the new {work} were positive, and the tickets sold out.",
    "The reviews of the {work} were negative, and few people went to see it.",
    "{name} tried to stay positive during the long trip to {city}.",
    "The teacher gave {name} positive feedback on the essay about {city}.",
    "Negative comments about the {work} made {name} sad for a day.",
    "A battery has a positive end and a negative end.",
    "Connect the red wire to the positive side and the black wire to the negative side.",
    "An electron has a negative charge and a proton has a positive charge.",
    "The old camera made a negative, and the shop printed a photo from it.",
    "{name} has a positive attitude and always helps friends.",
    "Too much sugar can have a negative effect on your teeth.",
    "Regular walks have a positive effect on sleep.",
    "The weather had a negative effect on the harvest in {city}.",
    "The new park had a positive effect on life in {city}.",
    "{name} gave a positive reply to the invitation and came to dinner.",
    "The survey found mostly negative views of the new bus timetable.",
]
# Word lists put the answer words at the start of a line, as a chat reply would.
OPPOSITES = [("hot", "cold"), ("up", "down"), ("positive", "negative"), ("early", "late"),
             ("open", "closed"), ("full", "empty"), ("fast", "slow"), ("light", "dark"),
             ("plus", "minus"), ("win", "lose"), ("buy", "sell"), ("rise", "fall"), ("yes", "no")]
FILLER_SENTENCES = [
    "It rained all day in {city}, and the streets were quiet.",
    "{name} cooked {dish} for the whole family on {day}.",
    "The train from {city} was late again, so {name} read a book.",
    "{name} planted {number} trees in the garden.",
    "The market in {city} sells fresh fruit every morning.",
    "To make {dish}, you need flour, water, salt and time.",
    "{name} and {other_name} walked along the river after lunch.",
    "The museum in {city} opens at nine and closes at six.",
    "Snow fell on {city} for the first time in {number} years.",
    "{name} learned to ride a bike at the age of {small_number}.",
    "The bakery on the corner makes the best {dish} in {city}.",
    "A cat slept in the sun on the window sill.",
    "The children counted {number} birds on the lake.",
]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]


def article(word):
    """ "a" or "an", whichever reads right before `word`.

    Example:
        >>> article("energy")
        'an'
    """
    return "an" if word[0] in "aeiou" else "a"


def fill_everyday(template, rng):
    """Fill an everyday-sentence template's slots.

    Example:
        >>> fill_everyday("A cat slept.", random.Random(0))
        'A cat slept.'
    """
    name, other_name = rng.sample(NAMES, 2)
    word = rng.choice(NUMBER_WORDS)
    return template.format(
        name=name, other_name=other_name, word=word, word_title=word.title(), city=rng.choice(CITIES),
        number=rng.randint(2, 40), small_number=rng.randint(4, 9), illness=rng.choice(ILLNESSES),
        work=rng.choice(WORKS), dish=rng.choice(DISHES), day=rng.choice(DAYS),
    )


def news_story(companies, rng):
    """Two to four sentences: an event at a company, its consequence, and some background.

    Example:
        >>> story = news_story(["Velex Foods", "Torion Bank"], random.Random(0))
        >>> "Velex Foods" in story or "Torion Bank" in story
        True
    """
    company = rng.choice(companies)
    good = rng.random() < 0.5
    event = fill(rng.choice(GOOD_EVENTS if good else BAD_EVENTS)[1], company, rng, companies)
    consequence = fill(rng.choice(GOOD_CONSEQUENCES if good else BAD_CONSEQUENCES), company, rng, companies)
    shape = rng.randrange(3)
    if shape == 0:
        sentences = [f"{rng.choice(WHEN)}, {event}, and {consequence}."]
    elif shape == 1:
        sentences = [f"{event[0].upper()}{event[1:]}.", f"After the news, {consequence}."]
    else:
        sentences = [f"{consequence[0].upper()}{consequence[1:]} after {event}."]
    if rng.random() < 0.5:
        business = company.split()[-1].lower()
        sentences.append(f"{company} is {article(business)} {business} company with offices in {rng.choice(REGIONS)}.")
    if rng.random() < 0.3:
        product = rng.choice(PRODUCTS)
        sentences.append(f"{company} also makes {article(product)} {product}.")
    return " ".join(sentences)


def everyday_text(rng):
    """Two to four everyday sentences, at least one of them using "positive" or "negative".

    Example:
        >>> text = everyday_text(random.Random(0)).lower()
        >>> "positive" in text or "negative" in text
        True
    """
    sentences = [fill_everyday(rng.choice(WORD_SENTENCES), rng)]
    sentences += [fill_everyday(rng.choice(FILLER_SENTENCES + WORD_SENTENCES), rng)
                  for _ in range(rng.randrange(1, 4))]
    rng.shuffle(sentences)
    return " ".join(sentences)


def word_list(rng):
    """A list of opposite words, one pair a line: puts words at the start of a line.

    Example:
        >>> word_list(random.Random(0)).splitlines()[0]
        'Opposites:'
    """
    pairs = rng.sample(OPPOSITES, rng.randrange(3, 7))
    lines = [f"{first}\n{second}" if rng.random() < 0.5 else f"{first} - {second}" for first, second in pairs]
    return "Opposites:\n" + "\n".join(lines)


def filler_text(rng):
    """Two to five ordinary sentences with no company and no answer word.

    Example:
        >>> len(filler_text(random.Random(0))) > 0
        True
    """
    return " ".join(fill_everyday(rng.choice(FILLER_SENTENCES), rng) for _ in range(rng.randrange(2, 6)))


def make_corpus(documents=40000, seed=0):
    """`documents` generated documents (strings), the same for the same seed.

    Half are news stories, a third everyday text with the answer words, the rest filler and word lists.

    Example:
        >>> len(make_corpus(documents=10))
        10
    """
    rng = random.Random(seed)
    # The pretraining world knows more companies than the task uses, as a real model would.
    companies = company_names(120, seed=seed + 1000) + company_names(60, seed=seed)
    companies = sorted(set(companies))
    corpus = []
    for _ in range(documents):
        kind = rng.random()
        if kind < 0.5:
            corpus.append(news_story(companies, rng))
        elif kind < 0.83:
            corpus.append(everyday_text(rng))
        elif kind < 0.93:
            corpus.append(filler_text(rng))
        else:
            corpus.append(word_list(rng))
    return corpus


if __name__ == "__main__":
    for document in make_corpus(documents=12, seed=1):
        print(document, end="\n\n")
