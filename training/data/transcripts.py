"""Transcripts for the synthetic corpus: varied English text drawn from a seed.

`transcript_from_seed(seed)` writes one utterance of roughly 1 to 15 seconds of speech: a short
reply, one sentence, or a paragraph of several, mixing statements, questions and exclamations,
names, numbers (counts, years, prices, times, percentages, ordinals, decimals), quotations,
contractions and possessives, commas, dashes and lists. Word lists and sentence templates live
here, and every draw goes through `random.Random.random()`, the one sequence Python promises to
keep for a seed, so the same seed gives the same text on every machine and Python version.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import TypeVar

T = TypeVar("T")

# ---------------------------------------------------------------------------------------------
# Word lists. Kept as whitespace-separated strings for compactness; "|" separates irregular forms.

_FIRST_NAMES = """
Aaron Abigail Adam Adrian Aisha Alan Alice Amara Amelia Andre Angela Anna Arjun Ava Beatrice Ben
Bianca Boris Caleb Camille Carlos Carmen Charlotte Chloe Clara Daniel Daria David Diego Dmitri
Eleanor Elena Eli Emily Emma Ethan Eva Felix Fiona Frank Freya Gabriel Grace Hannah Harper Harvey
Hassan Helen Henry Hugo Ibrahim Ines Iris Isaac Ivy Jack Jade James Jasmine Javier Jonah Julia
Kai Karen Kenji Laura Leo Liam Lily Lucas Lucy Luis Maya Mei Mila Miles Nadia Naomi Nathan Nina
Noah Olivia Omar Oscar Owen Priya Quinn Rachel Rafael Rosa Ruby Sam Sara Simon Sofia Tariq Theo
Tom Uma Victor Violet Wen William Yara Yusuf Zara Zoe
"""
# A few with non-ASCII letters, so that character offsets are exercised beyond ASCII.
_ACCENTED_NAMES = "Zoë José Renée Chloë Björn Anaïs Søren Noël Inès Mårten"
_LAST_NAMES = """
Abbott Adams Baker Barnes Bennett Brooks Campbell Carter Chen Clarke Collins Cooper Davies Diaz
Edwards Evans Fischer Fletcher Foster Garcia Gordon Graham Green Hall Harris Hayes Hughes Hunt
Jackson Jensen Johnson Kaur Kelly Khan Kim Lambert Lee Lopez Marsh Martin Mendes Miller Moore
Morgan Murphy Nakamura Nguyen Novak Okafor Olsen Palmer Parker Patel Perez Price Quinn Reed
Reyes Richards Rivera Robinson Rossi Russell Santos Schmidt Scott Shaw Silva Singh Stewart Sullivan
Taylor Thompson Turner Walker Wallace Ward Watson Weber Wells Wilson Wright Young
"""
_TITLES = "Doctor Professor Captain Aunt Uncle Coach Detective Judge"
_CITIES = """
Amsterdam Athens Atlanta Austin Bangkok Barcelona Berlin Boston Brighton Brisbane Bristol Cairo
Chicago Copenhagen Dallas Denver Dublin Edinburgh Glasgow Helsinki Houston Istanbul Jakarta Kyoto
Lagos Leeds Lisbon Liverpool London Madrid Manchester Melbourne Miami Milan Montreal Mumbai Munich
Nairobi Naples Oslo Oxford Paris Perth Phoenix Portland Prague Quebec Rome Seattle Seoul Sydney
Tokyo Toronto Vancouver Venice Vienna Warsaw Wellington Zurich
"""
# (singular noun; plural given after "|" where it is irregular)
_THINGS = """
apple backpack bag ball balloon banana basket battery bicycle blanket book bottle bowl box bracelet
bread brush bucket button cake camera candle card carpet chair clock coat computer cookie cup
curtain desk dictionary dish door drawer drum envelope fan fence flag flower fork frame glass|glasses
glove guitar hammer hat helmet jacket jar kettle key keyboard kite knife|knives ladder lamp laptop
leaf|leaves letter lock map marker mirror mug napkin necklace needle notebook orange oven package
painting pan pen pencil phone piano picture pillow plate plant pot potato|potatoes printer puzzle
radio receipt ribbon ring rope ruler sandwich scarf|scarves shelf|shelves shirt
shoe sock sofa spoon stamp sweater table tablet teapot telescope ticket towel toy tray truck
umbrella vase wallet watch whistle window
"""
_ANIMALS = """
cat dog horse rabbit parrot hamster goat sheep|sheep cow duck goose|geese owl fox|foxes wolf|wolves
bear squirrel turtle frog dolphin whale penguin tiger lion zebra giraffe monkey mouse|mice
"""
_FOODS = """
soup pasta rice salad pizza curry bread cheese chocolate coffee tea juice lemonade pancakes noodles
porridge stew toast omelette tacos dumplings cereal yoghurt strawberries biscuits muffins pie
"""
_PLACES = """
kitchen garden library station office market museum harbour bakery hospital school airport
garage cafe cinema park beach bridge theatre stadium hotel pharmacy bookshop laboratory farm
village square castle lighthouse studio gallery warehouse church restaurant pier playground
"""
_JOBS = """
teacher nurse baker pilot farmer doctor engineer plumber painter musician chef driver lawyer
gardener scientist librarian mechanic journalist architect photographer dentist carpenter
"""
_ADJECTIVES = """
old new big small tiny huge heavy light bright dark quiet loud soft hard warm cold hot cool wet
dry clean dirty cheap expensive strange ordinary lovely awful brilliant boring busy calm careful
clever curious famous fancy fragile friendly funny gentle golden green blue red yellow purple grey
broken shiny rusty dusty empty full fresh rotten sweet bitter sour salty spicy smooth rough sharp
narrow wide deep shallow ancient modern simple complicated silly serious lucky strong weak polite
rude brave nervous proud sleepy hungry thirsty tired happy sad angry excited worried surprised
wooden plastic silver velvet striped spotted enormous mysterious peculiar wonderful terrible
"""
_ADVERBS = """
quickly slowly quietly loudly carefully suddenly gently happily sadly politely proudly calmly
nervously eagerly patiently secretly cheerfully badly neatly
"""
_DEGREES = "really quite rather very extremely surprisingly incredibly slightly terribly fairly"
# "base", or "base|past" where the past tense is irregular; _verbs derives the other forms.
_VERBS = """
bring|brought buy|bought catch|caught choose|chose draw|drew drive|drove eat|ate find|found
fix forget|forgot get|got give|gave hide|hid hold|held keep|kept leave|left lend|lent lose|lost
make|made mend move notice open order paint pack pick post push repair return sell|sold
send|sent share show steal|stole take|took throw|threw touch wash watch wrap clean carry|carried
borrow check collect count cover deliver drop|dropped measure
"""
_INTRANSITIVE = """
laugh|laughed smile|smiled sing|sang dance|danced cry|cried shout|shouted wait|waited run|ran
sleep|slept swim|swam work|worked travel|travelled whisper|whispered complain|complained
"""
_DAYS = "Monday Tuesday Wednesday Thursday Friday Saturday Sunday"
_MONTHS = "January February March April May June July August September October November December"
_PERIODS = "week month year summer winter spring autumn weekend"
_TIMES_OF_DAY = "morning afternoon evening night"
_FEELINGS = "happy sad tired nervous excited worried surprised proud hungry bored confused relieved"
_EXCLAIMS = "Wow Oh Oops Hey Well Hmm Ah Goodness Gosh Great"
_HAPPENINGS = ["fell over", "went missing", "arrived", "broke", "turned up"]
_DURATIONS = ["all day", "for an hour", "until midnight", "after lunch", "in the rain"]
_SAYING = ["said", "shouted", "whispered", "replied", "explained"]
_CONNECTIVES = ["but", "so", "and", "because", "although", "while", "until", "after", "before"]

_SHORT_REPLIES = [
    "Yes.", "No.", "Okay.", "Really?", "Of course!", "Not yet.", "Thank you.", "Good morning!",
    "Hold on a second.", "I know.", "Me too!", "Why not?", "Absolutely.", "Never mind.", "See you soon!",
    "Are you sure?", "That's fine.", "Let's go!", "Not at all.", "Maybe later.", "Excuse me?",
    "Good night.", "Well done!", "Sounds good.", "I'm sorry.", "What happened?", "How lovely!",
    "Nice to meet you.", "Come in!", "Hang on.", "Right, then.", "It's done.", "Just a minute, please.",
]


def _words(block: str) -> list[str]:
    return block.split()


def _capitalised(text: str) -> str:
    return text[:1].upper() + text[1:]


def _plural(word: str) -> str:
    if word.endswith(("s", "sh", "ch", "x", "z")):
        return word + "es"
    if word.endswith("y") and word[-2:-1] not in "aeiou":
        return word[:-1] + "ies"
    return word + "s"


def _nouns(block: str) -> list[tuple[str, str]]:
    """(singular, plural) pairs from "word" or "word|plural" entries."""
    pairs = []
    for entry in block.split():
        singular, _, plural = entry.partition("|")
        pairs.append((singular, plural or _plural(singular)))
    return pairs


def _verbs(block: str) -> list[tuple[str, str, str, str]]:
    """(base, past, -ing, third person) from "base" or "base|past" entries."""
    forms = []
    for entry in block.split():
        base, _, past = entry.partition("|")
        if not past:
            past = base + "d" if base.endswith("e") else base + "ed"
        if base.endswith("e") and not base.endswith("ee"):
            ing = base[:-1] + "ing"
        elif base in ("run", "swim", "drop", "wrap"):  # doubled final consonant
            ing = base + base[-1] + "ing"
        else:
            ing = base + "ing"
        if base.endswith(("s", "sh", "ch", "x", "z", "o")):
            third = base + "es"
        elif base.endswith("y") and base[-2] not in "aeiou":
            third = base[:-1] + "ies"
        else:
            third = base + "s"
        forms.append((base, past, ing, third))
    return forms


FIRST_NAMES = _words(_FIRST_NAMES)
ACCENTED_NAMES = _words(_ACCENTED_NAMES)
LAST_NAMES = _words(_LAST_NAMES)
TITLES = _words(_TITLES)
CITIES = _words(_CITIES)
THINGS = _nouns(_THINGS)
ANIMALS = _nouns(_ANIMALS)
FOODS = _words(_FOODS)
PLACES = _words(_PLACES)
JOBS = _words(_JOBS)
ADJECTIVES = _words(_ADJECTIVES)
ADVERBS = _words(_ADVERBS)
DEGREES = _words(_DEGREES)
VERBS = _verbs(_VERBS)
INTRANSITIVE = _verbs(_INTRANSITIVE)
DAYS = _words(_DAYS)
MONTHS = _words(_MONTHS)
PERIODS = _words(_PERIODS)
TIMES_OF_DAY = _words(_TIMES_OF_DAY)
FEELINGS = _words(_FEELINGS)
EXCLAIMS = _words(_EXCLAIMS)


# ---------------------------------------------------------------------------------------------


class _Rng:
    """choice/randint built on random() alone (Python keeps only random()'s sequence stable)."""

    def __init__(self, seed: int) -> None:
        self._random = random.Random(seed)

    def random(self) -> float:
        return self._random.random()

    def randint(self, lo: int, hi: int) -> int:
        return lo + int(self._random.random() * (hi - lo + 1))

    def choice(self, items: Sequence[T]) -> T:
        return items[int(self._random.random() * len(items))]


class _Writer:
    """Sentence builders over one random stream."""

    def __init__(self, rng: _Rng) -> None:
        self.r = rng

    # -- slots --------------------------------------------------------------------------------
    def name(self) -> str:
        r = self.r
        roll = r.random()
        if roll < 0.08:
            return r.choice(ACCENTED_NAMES)
        if roll < 0.18:
            return f"{r.choice(FIRST_NAMES)} {r.choice(LAST_NAMES)}"
        if roll < 0.24:
            return f"{r.choice(TITLES)} {r.choice(LAST_NAMES)}"
        return r.choice(FIRST_NAMES)

    def possessive(self, name: str) -> str:
        return name + ("'" if name.endswith("s") else self.r.choice(["'s", "'s", "'s", "’s"]))

    def adj(self) -> str:
        return self.r.choice(ADJECTIVES)

    def thing(self, plural: bool = False) -> str:
        pool = THINGS if self.r.random() < 0.8 else ANIMALS
        singular, plural_form = self.r.choice(pool)
        return plural_form if plural else singular

    def np(self, plural: bool = False) -> str:
        """A noun phrase: "the old lamp", "a striped umbrella", "Maya's kettle", "two goats"."""
        r = self.r
        noun = self.thing(plural)
        if r.random() < 0.55:
            noun = f"{self.adj()} {noun}"
        roll = r.random()
        if plural:
            if roll < 0.3:
                return f"{self.count()} {noun}"
            return ("the " if roll < 0.7 else "some ") + noun
        if roll < 0.45:
            return "the " + noun
        if roll < 0.75:
            return ("an " if noun[0] in "aeiou" else "a ") + noun
        if roll < 0.88:
            return f"{self.possessive(self.name())} {noun}"
        return r.choice(["my", "your", "our", "their", "his", "her"]) + " " + noun

    def place(self) -> str:
        r = self.r
        if r.random() < 0.35:
            return r.choice(CITIES)
        return "the " + r.choice(PLACES)

    def when(self) -> str:
        r = self.r
        return r.choice([
            lambda: f"on {r.choice(DAYS)}",
            lambda: f"last {r.choice(PERIODS)}",
            lambda: f"next {r.choice(DAYS)}",
            lambda: f"in {r.choice(MONTHS)}",
            lambda: f"this {r.choice(TIMES_OF_DAY)}",
            lambda: f"at {self.clock()}",
            lambda: f"on {r.choice(MONTHS)} {self.ordinal(r.randint(1, 31))}",
            lambda: f"in {self.year()}",
            lambda: "yesterday",
            lambda: "tomorrow",
        ])()

    # -- numbers ------------------------------------------------------------------------------
    def count(self) -> str:
        r = self.r
        roll = r.random()
        if roll < 0.35:
            return r.choice(["two", "three", "four", "five", "six", "seven", "ten", "twelve", "a dozen"])
        if roll < 0.8:
            return str(r.randint(2, 99))
        if roll < 0.93:
            return str(r.randint(100, 999))
        return f"{r.randint(1, 99)},{r.randint(0, 999):03d}"

    def year(self) -> str:
        return str(self.r.choice([self.r.randint(1850, 1999), self.r.randint(2000, 2030)]))

    def price(self) -> str:
        r = self.r
        symbol = r.choice(["$", "$", "£", "€"])
        roll = r.random()
        if roll < 0.4:
            return f"{symbol}{r.randint(1, 99)}.{r.choice([0, 50, 99, 25, 95, r.randint(1, 99)]):02d}"
        if roll < 0.8:
            return f"{symbol}{r.randint(1, 500)}"
        return f"{symbol}{r.randint(1, 20)},{r.randint(0, 999):03d}"

    def clock(self) -> str:
        r = self.r
        return f"{r.randint(1, 12)}:{r.choice([0, 15, 30, 45, r.randint(1, 59)]):02d}"

    def ordinal(self, n: int) -> str:
        suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
        return f"{n}{suffix}"

    def percent(self) -> str:
        r = self.r
        return f"{r.randint(1, 99)}%" if r.random() < 0.8 else f"{r.randint(1, 99)}.{r.randint(1, 9)}%"

    def decimal(self) -> str:
        return f"{self.r.randint(0, 99)}.{self.r.randint(1, 9)}"

    # -- sentences ----------------------------------------------------------------------------
    def statement(self) -> str:
        r = self.r
        _, past, ing, third = r.choice(VERBS)
        subject = self.name()
        return r.choice([
            lambda: f"{subject} {past} {self.np()} {self.when()}.",
            lambda: f"{_capitalised(self.when())}, {subject} {past} {self.np(r.random() < 0.4)} at {self.place()}.",
            lambda: f"{subject} is {ing} {self.np()} in {self.place()}.",
            lambda: f"Every {r.choice(DAYS)}, {subject} {third} {self.np()} {r.choice(ADVERBS)}.",
            lambda: f"The {self.adj()} {r.choice(JOBS)} from {r.choice(CITIES)} {past} {self.np(True)}.",
            lambda: f"{subject} felt {r.choice(FEELINGS)} when {self.np()} {r.choice(_HAPPENINGS)}.",
            lambda: f"There are {self.count()} {self.adj()} {self.thing(True)} in {self.place()}.",
            lambda: f"{subject} has lived in {r.choice(CITIES)} since {self.year()}.",
            lambda: f"I think {self.np()} is a bit too {self.adj()} for {self.name()}.",
            lambda: f"We {r.choice(INTRANSITIVE)[1]} {r.choice(ADVERBS)} {r.choice(_DURATIONS)}.",
        ])()

    def question(self) -> str:
        r = self.r
        base, past, _, _ = r.choice(VERBS)
        return r.choice([
            lambda: f"Did you {base} {self.np()} {self.when()}?",
            lambda: f"Where did {self.name()} {base} {self.np()}?",
            lambda: f"Why is {self.np()} so {self.adj()}?",
            lambda: f"How many {self.thing(True)} do we need for {self.place()}?",
            lambda: f"Could you {base} {self.np()} for me, please?",
            lambda: f"Is it true that {self.name()} {past} {self.np()}?",
            lambda: f"What time does {self.place()} open {self.when()}?",
            lambda: f"Who {past} {self.np()}?",
            lambda: f"Would {self.price()} be enough for {self.np(True)}?",
            lambda: f"{self.name()}, are you {r.choice(FEELINGS)}?",
            lambda: f"You {past} {self.np()}, didn't you?",
            lambda: f"Have you ever been to {r.choice(CITIES)}?",
        ])()

    def exclamation(self) -> str:
        r = self.r
        return r.choice([
            lambda: f"What {'an' if (a := self.adj())[0] in 'aeiou' else 'a'} {a} {self.thing()}!",
            lambda: f"{r.choice(EXCLAIMS)}, that's {r.choice(DEGREES)} {self.adj()}!",
            lambda: f"{self.name()}, watch out for {self.np()}!",
            lambda: f"{r.choice(EXCLAIMS)}! I can't believe {self.name()} {r.choice(VERBS)[1]} {self.np()}!",
            lambda: f"Don't touch {self.np()}!",
            lambda: f"We won {self.count()} {self.thing(True)}!",
            lambda: f"Happy birthday, {self.name()}!",
        ])()

    def numeric(self) -> str:
        r = self.r
        return r.choice([
            lambda: f"{_capitalised(self.np())} costs {self.price()}.",
            lambda: f"We sold {self.count()} {self.thing(True)} last {r.choice(PERIODS)}.",
            lambda: f"{self.name()} was born in {self.year()}.",
            lambda: f"The {r.choice(PLACES)} opens at {self.clock()} on {r.choice(DAYS)}s.",
            lambda: f"Prices went up by {self.percent()} in {self.year()}.",
            lambda: f"{self.name()} finished {self.ordinal(r.randint(1, 40))} out of {r.randint(41, 300)}.",
            lambda: f"The {self.thing()} weighs {self.decimal()} kilograms.",
            lambda: f"Room {r.randint(1, 30)}{r.randint(0, 99):02d} is on the {self.ordinal(r.randint(1, 12))} floor.",
            lambda: f"It took {r.randint(2, 59)} minutes to walk {self.decimal()} miles.",
            lambda: f"The train to {r.choice(CITIES)} leaves at {self.clock()} from platform {r.randint(1, 14)}.",
            lambda: f"Between {self.year()} and {self.year()}, the town grew by {self.percent()}.",
        ])()

    def quotation(self) -> str:
        r = self.r
        inner = r.choice([self.short_clause, self.exclamation, self.question])().rstrip(".")
        speaker = self.name()
        verb = r.choice(["asked", "wondered"] if inner.endswith("?") else _SAYING)
        if r.random() < 0.2:
            return f"{speaker} {verb}, “{inner}{'' if inner.endswith(('!', '?')) else '.'}”"
        if inner.endswith(("!", "?")):
            return f'"{inner}" {verb} {speaker}.'
        return f'"{inner}," {verb} {speaker}.'

    def short_clause(self) -> str:
        r = self.r
        return r.choice([
            lambda: f"I'll {r.choice(VERBS)[0]} {self.np()} later.",
            lambda: f"It's {r.choice(DEGREES)} {self.adj()} in here.",
            lambda: f"We're going to {self.place()}.",
            lambda: f"You can't {r.choice(VERBS)[0]} that.",
            lambda: f"She's {r.choice(FEELINGS)} about {self.np()}.",
            lambda: f"They've {r.choice(['lost', 'found', 'sold', 'fixed', 'painted'])} {self.np()}.",
            lambda: f"That isn't {self.possessive(self.name())} {self.thing()}.",
        ])()

    def dashed(self) -> str:
        r = self.r
        dash = r.choice([" — ", " — ", " - ", " – "])
        return r.choice([
            lambda: f"The {self.thing()}{dash}{self.adj()} and {self.adj()}{dash}was {r.choice(DEGREES)} {self.adj()}.",
            lambda: f"{self.name()} had one plan{dash}{r.choice(VERBS)[0]} {self.np()} before {r.choice(DAYS)}.",
            lambda: f"It wasn't {self.adj()}{dash}it was {r.choice(DEGREES)} {self.adj()}!",
        ])()

    def compound(self) -> str:
        r = self.r
        first = self.statement().rstrip(".")
        second = self.short_clause().rstrip(".")
        if not second.startswith(("I'", "I ")):  # the pronoun I stays capital
            second = second[0].lower() + second[1:]
        return f"{first}, {r.choice(_CONNECTIVES)} {second}."

    def listing(self) -> str:
        r = self.r
        items = [r.choice(FOODS) if r.random() < 0.5 else self.thing(True) for _ in range(r.randint(3, 5))]
        lead = r.choice(["We need", "Please buy", "Don't forget the", "I packed", f"{self.name()} ordered"])
        return f"{lead} {', '.join(items[:-1])}, and {items[-1]}."

    def dialogue_turn(self) -> str:
        r = self.r
        return f"{r.choice(EXCLAIMS)}, {self.name()}. {r.choice(_SHORT_REPLIES)}"

    def sentence(self) -> str:
        kinds: list[tuple[float, Callable[[], str]]] = [
            (0.22, self.statement), (0.16, self.question), (0.09, self.exclamation), (0.15, self.numeric),
            (0.09, self.quotation), (0.06, self.short_clause), (0.06, self.dashed), (0.10, self.compound),
            (0.05, self.listing), (0.02, self.dialogue_turn),
        ]
        roll = self.r.random() * sum(w for w, _ in kinds)
        for weight, make in kinds:
            roll -= weight
            if roll <= 0:
                return make()
        return kinds[-1][1]()


def _spoken_words(text: str) -> int:
    """Rough count of spoken words: numbers expand ("1999" is four, "$4.99" five)."""
    n = 0
    for token in text.split():
        digits = sum(c.isdigit() for c in token)
        n += 1 + (digits + 1) // 2 if digits else 1
    return n


def transcript_from_seed(seed: int) -> str:
    """One utterance, the same for the same seed: ~12% short replies (0.4-1.5 s of speech), ~43%
    one or two sentences (~2-7 s), ~45% paragraphs (~6-15 s), at 130-210 words per minute."""
    r = _Rng(seed)
    w = _Writer(r)
    roll = r.random()
    if roll < 0.12:
        reply = r.choice(_SHORT_REPLIES)
        return reply if r.random() < 0.4 else f"{reply[:-1]}, {w.name()}{reply[-1]}"
    # Budget in spoken words: ~2.2-3.5 words per second of speech.
    budget = r.randint(5, 15) if roll < 0.55 else r.randint(16, 30)
    sentences: list[str] = []
    words = 0
    for _ in range(100):  # bounded: a sentence that overshoots the budget is redrawn
        if words >= budget:
            break
        s = w.sentence()
        n = _spoken_words(s)
        if sentences and words + n > budget + 5:
            if words >= budget * 0.6:
                break
            continue
        sentences.append(s)
        words += n
    return " ".join(sentences)
