"""The invented world of the demo: companies and the events that happen to them.

Both generators draw from here. `ftlib.demo.corpus` writes events as news stories that end with
their consequence ("... and its shares rose"), which is the world knowledge a base model has.
`ftlib.demo.headlines` writes the same kinds of events as headlines and asks whether they help or
hurt the company, which is the task the base model has never seen.

Every name is built from syllables here, so no text is copied from anywhere.
"""

import random

# Company names are syllable pairs plus a line of business: 20 × 8 × 12 possible names.
NAME_STARTS = ["Vel", "Tor", "Mar", "Quin", "Zan", "Bel", "Cor", "Dax", "Fen", "Gal",
               "Hal", "Jor", "Kel", "Lum", "Nor", "Orv", "Pax", "Rho", "Sol", "Tam"]
NAME_ENDS = ["ex", "ora", "ica", "tek", "ion", "ara", "ium", "on"]
BUSINESSES = ["Foods", "Motors", "Energy", "Bank", "Labs", "Airlines",
              "Pharma", "Retail", "Systems", "Mining", "Telecom", "Shipping"]

PRODUCTS = ["phone", "electric car", "coffee machine", "laptop", "vaccine", "battery",
            "cloud service", "snack bar", "jet engine", "solar panel", "video game", "sports shoe"]
REGIONS = ["Asia", "Europe", "South America", "Africa", "Canada", "India", "Japan", "Australia"]
PEOPLE = ["chief executive", "finance chief", "founder", "chairman", "head of sales"]

# Events, each in two forms that share their key words: a present-tense headline and a past-tense
# clause for a news story. Slots: {company}, {other}, {product}, {region}, {person}, {number}.
GOOD_EVENTS = [
    ("{company} reports record quarterly profit", "{company} reported a record quarterly profit"),
    ("{company} beats earnings expectations", "{company} beat earnings expectations"),
    ("{company} wins {number} million dollar contract", "{company} won a {number} million dollar contract"),
    ("{company} raises full-year sales forecast", "{company} raised its full-year sales forecast"),
    ("{company} launches best-selling {product}", "{company} launched its best-selling {product}"),
    ("{company} expands into {region}", "{company} expanded into {region}"),
    ("{company} signs supply deal with {other}", "{company} signed a supply deal with {other}"),
    ("{company} raises dividend by {number} percent", "{company} raised its dividend by {number} percent"),
    ("{company} hires {number} hundred new workers", "{company} hired {number} hundred new workers"),
    ("{company} pays off its debt early", "{company} paid off its debt early"),
    ("regulators approve {company} {product}", "regulators approved the {product} from {company}"),
    ("{company} sales jump {number} percent", "sales at {company} jumped {number} percent"),
    ("{company} wins award for its {product}", "{company} won an award for its {product}"),
    ("{company} opens new factory in {region}", "{company} opened a new factory in {region}"),
    ("{company} lands big order from {other}", "{company} landed a big order from {other}"),
    ("demand for {company} {product} soars", "demand for the {product} from {company} soared"),
]
BAD_EVENTS = [
    ("{company} misses earnings estimates", "{company} missed earnings estimates"),
    ("{company} reports surprise quarterly loss", "{company} reported a surprise quarterly loss"),
    ("{company} recalls faulty {product}", "{company} recalled its faulty {product}"),
    ("{company} cuts {number} hundred jobs", "{company} cut {number} hundred jobs"),
    ("{company} loses contract with {other}", "{company} lost its contract with {other}"),
    ("{company} warns of falling sales", "{company} warned of falling sales"),
    ("{company} {person} quits amid scandal", "the {person} of {company} quit amid a scandal"),
    ("fire halts production at {company} factory", "a fire halted production at a {company} factory"),
    ("{company} hit by data breach", "{company} was hit by a data breach"),
    ("regulators fine {company} {number} million dollars", "regulators fined {company} {number} million dollars"),
    ("{company} faces fraud investigation", "{company} came under a fraud investigation"),
    ("{company} sales drop {number} percent", "sales at {company} dropped {number} percent"),
    ("{company} cuts dividend", "{company} cut its dividend"),
    ("{company} delays {product} launch", "{company} delayed the launch of its {product}"),
    ("{company} pulls out of {region}", "{company} pulled out of {region}"),
    ("strike shuts {company} plants in {region}", "a strike shut the {company} plants in {region}"),
]

# What follows an event in a news story: the consequence a base model should learn to expect.
GOOD_CONSEQUENCES = [
    "its shares rose {number} percent", "investors cheered", "the stock climbed to a new high",
    "analysts raised their price targets", "the share price jumped", "shareholders were delighted",
    "its market value grew", "traders bought the stock",
]
BAD_CONSEQUENCES = [
    "its shares fell {number} percent", "investors worried", "the stock slid to a new low",
    "analysts cut their price targets", "the share price dropped", "shareholders were angry",
    "its market value shrank", "traders sold the stock",
]


def company_names(count=60, seed=0):
    """`count` distinct invented company names, the same ones for the same seed.

    Example:
        >>> company_names(2)  # doctest: +SKIP
        ['Torion Energy', 'Kelara Bank']
    """
    every_name = [f"{start}{end} {business}" for start in NAME_STARTS for end in NAME_ENDS
                  for business in BUSINESSES]
    return random.Random(seed).sample(every_name, count)


def fill(template, company, rng, companies):
    """Fill an event or consequence template's slots with random picks from `rng`.

    Example:
        >>> fill("{company} cuts {number} hundred jobs", "Velex Foods", random.Random(0), ["Velex Foods"])
        'Velex Foods cuts 34 hundred jobs'
    """
    others = [name for name in companies if name != company] or [company]
    return template.format(
        company=company,
        other=rng.choice(others),
        product=rng.choice(PRODUCTS),
        region=rng.choice(REGIONS),
        person=rng.choice(PEOPLE),
        number=rng.randint(2, 40),
    )


# What an analyst expects next, for the reasoned answers of the headline task (ftlib.demo.headlines): the same
# consequences as the stories above, said as a forecast. Three wordings of four forecasts per label: a right answer
# can be worded twelve ways, so a model's loss on them cannot reach 0, and the set is small enough that the guide's
# 60 default steps learn it, so a real model's loss settles in the guide's 0.5-1.0 band. More wordings raise where
# the loss settles (five wordings of eight forecasts keep SmolLM2-135M above 1.0 after 60 steps); fewer lower it.
GOOD_OUTLOOKS = [
    "its shares will likely rise", "investors will probably cheer", "the stock should climb",
    "analysts may raise their price targets",
]
BAD_OUTLOOKS = [
    "its shares will likely fall", "investors will probably worry", "the stock should slide",
    "analysts may cut their price targets",
]
REASON_WORDINGS = [
    "After news like this, {outlook}.",
    "News like this usually means {outlook}.",
    "For {company}, {outlook}.",
]
