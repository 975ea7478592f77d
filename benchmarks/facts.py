"""A deterministic generator of varied, realistic personal facts and questions about them.

Each fact comes from a template ("My {relation} {name} lives in {city}.") whose *key*
slots are the ones a question names ("Where does my {relation} {name} live?"), so every
question has exactly one target fact. About half of the facts get *look-alikes*: other
facts of the same template that share all but one key slot ("My cousin Anna Novak lives
in Lyon", "My sister Anna Kowalski lives in Porto"), and the same people recur across
templates (where they live, work, what they eat), so a retriever has to tell apart
near-identical sentences, as in a real memory of one person's life.

Same seed, same facts and queries, on every machine (``random.Random`` only).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

__all__ = ["Fact", "Query", "TEMPLATES", "generate", "generate_facts", "make_queries"]

# fmt: off
_FIRST = [
    "Anna", "Ben", "Carla", "David", "Elena", "Felix", "Greta", "Hugo", "Ines", "Jonas",
    "Kira", "Leo", "Maria", "Nils", "Olga", "Pablo", "Quinn", "Rosa", "Sami", "Tara", "Umar",
    "Vera", "Omar", "Yara", "Zoe", "Adam", "Bianca", "Chen", "Dana", "Emil", "Farah",
    "Gabriel", "Hana", "Ivan", "Julia", "Karim", "Lena", "Marco", "Nora", "Oscar", "Priya",
    "Rafael", "Sofia", "Tom", "Uma", "Victor", "Wendy", "Xavier", "Yusuf", "Zara", "Aiko",
    "Bruno", "Clara", "Diego", "Eva", "Finn", "Gina", "Henrik", "Isla", "Jakob",
]
_LAST = [
    "Novak", "Kowalski", "Silva", "Meyer", "Rossi", "Dubois", "Jensen", "Garcia", "Ivanova",
    "Berg", "Moreau", "Costa", "Schmidt", "Romano", "Lindqvist", "Horvat", "Nakamura",
    "Okafor", "Patel", "Fischer", "Larsen", "Martin", "Lopez", "Weber", "Bauer", "Kim",
    "Nguyen", "Haddad", "Murphy", "Walsh", "Brennan", "Keller", "Wagner", "Popescu", "Nowak",
    "Sato", "Tanaka", "Ali", "Hassan", "Yilmaz", "Kaya", "Demir", "Andersen", "Nielsen",
    "Svensson", "Virtanen", "Korhonen", "Santos", "Pereira", "Alves", "Ferreira", "Mendes",
    "Oliveira", "Gomez", "Torres", "Ramirez", "Cruz", "Morales", "Reyes",
]
_SLOTS: dict[str, list[str]] = {
    "relation": [
        "sister", "brother", "mother", "father", "cousin", "aunt", "uncle", "niece", "nephew",
        "grandmother", "grandfather", "daughter", "son", "wife", "husband", "colleague",
        "boss", "neighbour", "roommate", "godmother",
        "best friend", "old friend", "personal trainer", "team lead",
    ],
    "city": [
        "Lisbon", "Porto", "Madrid", "Seville", "Barcelona", "Lyon", "Paris", "Marseille",
        "Berlin", "Hamburg", "Munich", "Vienna", "Prague", "Warsaw", "Krakow", "Budapest",
        "Zagreb", "Rome", "Milan", "Naples", "Turin", "Athens", "Oslo", "Bergen", "Stockholm",
        "Gothenburg", "Helsinki", "Copenhagen", "Dublin", "Cork", "Edinburgh", "Glasgow",
        "London", "Manchester", "Leeds", "Bristol", "Amsterdam", "Rotterdam", "Brussels",
        "Antwerp", "Zurich", "Geneva", "Basel", "Toronto", "Montreal", "Vancouver", "Boston",
        "Chicago", "Denver", "Seattle", "Austin", "Tokyo", "Osaka", "Kyoto", "Seoul", "Busan",
        "Sydney", "Melbourne", "Auckland", "Nairobi", "Lagos", "Cairo", "Istanbul", "Ankara",
        "Tbilisi", "Riga", "Tallinn", "Vilnius",
    ],
    "job": [
        "nurse", "teacher", "software engineer", "carpenter", "pharmacist", "architect",
        "bus driver", "journalist", "dentist", "lawyer", "chef", "electrician", "pilot",
        "accountant", "vet", "physiotherapist", "librarian", "firefighter", "baker",
        "data analyst", "social worker", "translator", "plumber", "photographer",
        "marine biologist", "paramedic", "graphic designer", "tax adviser", "florist",
        "train conductor", "museum curator", "sound engineer", "midwife", "surveyor",
    ],
    "month": [
        "January", "February", "March", "April", "May", "June", "July", "August", "September",
        "October", "November", "December",
    ],
    "day": [str(d) for d in range(1, 29)],
    "year": [str(y) for y in range(1998, 2026)],
    "allergen": [
        "peanuts", "shellfish", "cats", "pollen", "penicillin", "gluten", "lactose",
        "bee stings", "dust mites", "kiwi", "sesame", "eggs", "latex", "soy",
    ],
    "dish": [
        "ramen", "paella", "lasagne", "sushi", "falafel", "tacos", "pho", "dumplings",
        "risotto", "goulash", "pierogi", "curry", "moussaka", "shakshuka", "burritos",
        "pad thai", "bibimbap", "fish and chips", "gnocchi", "empanadas", "couscous",
    ],
    "pet": [
        "dog", "cat", "parrot", "rabbit", "hamster", "tortoise", "horse", "ferret", "gecko",
        "guinea pig", "budgie", "goldfish",
    ],
    "petname": [
        "Rex", "Luna", "Max", "Bella", "Milo", "Coco", "Pepper", "Ziggy", "Nala", "Oreo",
        "Biscuit", "Mango", "Shadow", "Pixel", "Tofu", "Waffles", "Ginger", "Socks", "Bruno",
        "Maple", "Olive", "Pickles", "Rocket", "Juniper", "Peanut", "Clover", "Basil",
        "Nugget", "Hazel", "Pumpkin", "Sprout", "Dusty", "Comet", "Poppy", "Kiwi", "Noodle",
    ],
    "age": [str(a) for a in range(1, 19)],
    "adjective": [
        "Silent", "Golden", "Broken", "Hidden", "Distant", "Burning", "Quiet", "Crimson",
        "Forgotten", "Hollow", "Silver", "Endless", "Frozen", "Wandering", "Paper", "Velvet",
        "Midnight", "Emerald", "Restless", "Northern", "Amber", "Glass", "Iron", "Painted",
        "Sleeping", "Scarlet", "Winter", "Summer", "Lonely", "Electric",
    ],
    "noun": [
        "River", "Garden", "Harbour", "Mountain", "Window", "Lantern", "Orchard", "Bridge",
        "Compass", "Mirror", "Island", "Forest", "Tower", "Letter", "Shadow", "Meadow",
        "Harvest", "Feather", "Station", "Engine", "Kingdom", "Voyage", "Archive", "Signal",
        "Canyon", "Lighthouse", "Theory", "Season", "Promise", "Machine",
    ],
    "animal": [
        "Falcon", "Otter", "Badger", "Heron", "Lynx", "Panther", "Walrus", "Beaver", "Condor",
        "Cobra", "Marten", "Puffin", "Raven", "Bison", "Gecko", "Jackal", "Osprey", "Mantis",
        "Viper", "Orca", "Ibex", "Hornet", "Crane", "Dingo", "Koala",
    ],
    "company": [
        "Northwind", "Bluepeak", "Helix Labs", "Orbital Foods", "Greenline", "Quarry Systems",
        "Atlas Freight", "Brightwater", "Copperleaf", "Tandem Health", "Lumen Bank",
        "Fjord Analytics",
    ],
    "colour": [
        "red", "blue", "black", "white", "silver", "green", "yellow", "grey", "orange",
        "dark blue", "beige", "purple",
    ],
    "car": [
        "Toyota Corolla", "Volkswagen Golf", "Renault Clio", "Skoda Octavia", "Fiat Panda",
        "Tesla Model 3", "Ford Focus", "Honda Civic", "Volvo V60", "Peugeot 208", "Kia Niro",
        "Mazda 3", "BMW i3", "Seat Ibiza", "Nissan Leaf", "Hyundai Kona",
    ],
    "place": [
        "the office garage", "level 3 of the mall car park", "the train station",
        "my parents' driveway", "the airport long-stay lot", "the gym car park",
        "the supermarket on Elm Street", "the hospital visitor lot", "the harbour",
    ],
    "specialist": [
        "dentist", "dermatologist", "eye doctor", "cardiologist", "GP", "physiotherapist",
        "orthopaedic surgeon", "allergist", "therapist", "nutritionist",
    ],
    "weekday": ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"],
    "hour": [
        "8:15", "9:00", "9:30", "10:45", "11:20", "13:00", "14:30", "15:10", "16:00", "17:45",
        "18:30",
    ],
    "medication": [
        "ibuprofen", "vitamin D", "metformin", "levothyroxine", "omega-3", "iron supplements",
        "magnesium", "cetirizine", "melatonin", "folic acid", "B12", "lisinopril",
        "atorvastatin", "probiotics",
    ],
    "dose": ["5", "10", "20", "25", "50", "100", "200", "400", "500", "1000"],
    "timeofday": ["morning", "evening", "night before bed", "lunchtime", "other day"],
    "sport": [
        "tennis", "squash", "badminton", "padel", "table tennis", "football", "basketball",
        "volleyball", "golf", "chess", "climbing", "five-a-side",
    ],
    "venue": [
        "the community centre", "the university courts", "Riverside Park",
        "the sports hall on King Street", "the old school gym", "the beach",
        "the leisure centre", "a rooftop club",
    ],
    "event": [
        "wedding", "conference", "book club", "hackathon", "concert", "birthday party",
        "yoga retreat", "language exchange", "marathon", "film festival", "job fair",
    ],
    "gate": [f"{c}{n}" for c in "ABCDE" for n in range(1, 30)],
    "password": [
        f"{a.lower()}{n}{b.lower()}"
        for a, b, n in [
            ("Moon", "Tree", 42),
            ("Blue", "Fox", 7),
            ("Sun", "Rise", 88),
            ("Cat", "Nap", 19),
            ("Tea", "Pot", 31),
            ("Red", "Kite", 64),
            ("Owl", "Night", 23),
            ("Sea", "Salt", 55),
        ]
    ],
    "wifiplace": [
        "my parents' house", "the office", "the cabin", "my sister's flat",
        "the co-working space", "the holiday rental", "the studio", "the library",
        "grandma's house", "the boat club",
    ],
    "amount": [str(a) for a in (5, 12, 20, 25, 30, 40, 45, 60, 75, 80, 120, 150, 200)],
    "thing": [
        "concert tickets", "pizza", "taxi", "birthday present", "groceries", "fuel",
        "hotel room", "train tickets", "dinner", "parking fine",
    ],
    "restaurant": [
        "Casa Lupo", "The Blue Door", "Little Saigon", "Mamma Rosa", "Koi Garden", "El Faro",
        "The Copper Pot", "Sakura House", "Olive and Fig", "Brasserie Nord", "Spice Route",
        "Green Table",
    ],
    "language": [
        "Japanese", "Portuguese", "Arabic", "Korean", "Italian", "German", "Polish", "Turkish",
        "Swahili", "Dutch", "Greek", "Mandarin", "Finnish", "Spanish",
    ],
    "instrument": [
        "piano", "guitar", "cello", "violin", "drums", "saxophone", "flute", "trumpet",
        "ukulele", "bass guitar", "harp", "accordion", "clarinet",
    ],
    "team": [
        "FC Porto", "Ajax", "Celtic", "Bayern Munich", "Napoli", "Arsenal", "Benfica",
        "Galatasaray", "Boca Juniors", "Olympiacos", "Rapid Vienna", "Legia Warsaw",
    ],
    "item": [
        "passport", "spare keys", "winter gloves", "birth certificate", "camping stove",
        "old photo albums", "tax documents", "sewing kit", "first-aid kit", "headphones",
        "wedding rings", "backup hard drive", "chargers", "board games", "ski boots",
        "vinyl records", "tool box", "insurance papers", "printer paper", "yoga mat",
    ],
    "container": [
        "blue box", "top drawer", "shoebox", "metal tin", "wooden chest", "plastic crate",
        "filing cabinet", "backpack",
    ],
    "room": [
        "bedroom", "hallway", "attic", "basement", "study", "kitchen", "garage", "living room",
    ],
    "digits": [f"{n:04d}" for n in (1234, 4821, 7730, 9102, 3366, 5095, 6640, 2218, 8457)],
}
# fmt: on
_SLOTS["name"] = []  # composed from _FIRST x _LAST at sampling time
_SLOTS["book"] = []  # "The {adjective} {noun}"
_SLOTS["code"] = []  # "{adjective} {animal}"


@dataclass(frozen=True)
class Template:
    """A fact pattern, questions that name its key slots, and those key slots."""

    name: str
    fact: str
    questions: tuple[str, ...]
    key: tuple[str, ...]


TEMPLATES: tuple[Template, ...] = (
    Template(
        "lives", "My {relation} {name} lives in {city}.",
        ("Where does my {relation} {name} live?", "Which city is my {relation} {name} in?"),
        ("relation", "name"),
    ),
    Template(
        "job", "My {relation} {name} works as a {job}.",
        (
            "What does my {relation} {name} do for a living?",
            "What is the job of my {relation} {name}?",
        ),
        ("relation", "name"),
    ),
    Template(
        "birthday", "My {relation} {name}'s birthday is on {month} {day}.",
        ("When is my {relation} {name}'s birthday?",),
        ("relation", "name"),
    ),
    Template(
        "allergy", "My {relation} {name} is allergic to {allergen}.",
        ("What is my {relation} {name} allergic to?",),
        ("relation", "name"),
    ),
    Template(
        "food", "My {relation} {name}'s favourite food is {dish}.",
        (
            "What does my {relation} {name} like to eat?",
            "What is my {relation} {name}'s favourite dish?",
        ),
        ("relation", "name"),
    ),
    Template(
        "language", "My {relation} {name} has been learning {language} since {year}.",
        ("Which language is my {relation} {name} learning?",),
        ("relation", "name"),
    ),
    Template(
        "team", "My {relation} {name} is a big {team} supporter.",
        ("Which football team does my {relation} {name} support?",),
        ("relation", "name"),
    ),
    Template(
        "pet", "I have a {pet} called {petname} who is {age} years old.",
        ("How old is my {pet} {petname}?",),
        ("pet", "petname"),
    ),
    Template(
        "book", "I am reading The {adjective} {noun} by {name}.",
        ("Who wrote The {adjective} {noun}, the book I am reading?",),
        ("adjective", "noun"),
    ),
    Template(
        "project", "Project {adjective} {animal} at {company} is due on {month} {day}.",
        (
            "When is project {adjective} {animal} due?",
            "What is the deadline of the {adjective} {animal} project?",
        ),
        ("adjective", "animal"),
    ),
    Template(
        "car", "My {colour} {car} is parked at {place}.",
        ("Where did I park my {colour} {car}?",),
        ("colour", "car"),
    ),
    Template(
        "appointment",
        "My {specialist} appointment with Dr. {name} is on {weekday} at {hour}.",
        ("When do I see the {specialist} Dr. {name}?",),
        ("specialist", "name"),
    ),
    Template(
        "medication", "I take {dose} mg of {medication} every {timeofday}.",
        ("How much {medication} do I take?",),
        ("medication",),
    ),
    Template(
        "sport", "I played {sport} with {name} at {venue} last {weekday}.",
        ("Where did I play {sport} with {name}?",),
        ("sport", "name"),
    ),
    Template(
        "met", "I met {name} at a {event} in {city} in {year}.",
        ("Where did I first meet {name}?", "How do I know {name}?"),
        ("name",),
    ),
    Template(
        "flight", "My flight to {city} leaves on {month} {day} from gate {gate}.",
        ("When does my flight to {city} leave?",),
        ("city",),
    ),
    Template(
        "wifi", "The wifi password at {wifiplace} is {password}.",
        ("What is the wifi password at {wifiplace}?",),
        ("wifiplace",),
    ),
    Template(
        "debt", "I owe {name} {amount} euros for the {thing}.",
        ("How much money do I owe {name}?",),
        ("name",),
    ),
    Template(
        "recommend", "{name} recommended the restaurant {restaurant} in {city}.",
        ("Which restaurant in {city} did {name} recommend?",),
        ("name", "city"),
    ),
    Template(
        "instrument", "I have taken {instrument} lessons with {name} since {year}.",
        ("Who teaches me {instrument}?",),
        ("instrument",),
    ),
    Template(
        "storage", "I keep my {item} in the {container} in the {room}.",
        ("Where do I keep my {item}?",),
        ("item",),
    ),
    Template(
        "phone", "{name}'s phone number ends in {digits}.",
        ("What are the last digits of {name}'s phone number?",),
        ("name",),
    ),
)


@dataclass(frozen=True)
class Fact:
    """One generated fact: its text, template, key and a question it answers."""

    text: str
    template: str
    key: tuple[str, ...]
    question: str


@dataclass(frozen=True)
class Query:
    """A question whose one correct answer is ``facts[target]``."""

    text: str
    target: int


def _sample(rng: random.Random, slot: str) -> str:
    if slot == "name":
        return f"{rng.choice(_FIRST)} {rng.choice(_LAST)}"
    return rng.choice(_SLOTS[slot])


def _slots_of(template: Template) -> list[str]:
    import string

    return [field for _, field, _, _ in string.Formatter().parse(template.fact) if field]


def _render(template: Template, values: dict[str, str], rng: random.Random) -> Fact:
    key = tuple(values[s] for s in template.key)
    question = rng.choice(template.questions).format(**values)
    return Fact(template.fact.format(**values), template.name, key, question)


def generate_facts(n: int, *, seed: int = 0, lookalike_rate: float = 0.5) -> list[Fact]:
    """``n`` distinct facts (unique text and unique key per template), deterministic."""
    rng = random.Random(seed)
    facts: list[Fact] = []
    used_keys: set[tuple[str, tuple[str, ...]]] = set()
    used_texts: set[str] = set()

    def accept(fact: Fact) -> bool:
        ident = (fact.template, fact.key)
        if ident in used_keys or fact.text in used_texts or len(facts) >= n:
            return False
        used_keys.add(ident)
        used_texts.add(fact.text)
        facts.append(fact)
        return True

    attempts = 0
    while len(facts) < n:
        attempts += 1
        if attempts > 50 * n + 1000:
            raise ValueError(f"cannot generate {n} distinct facts (key space exhausted)")
        template = rng.choice(TEMPLATES)
        values = {slot: _sample(rng, slot) for slot in _slots_of(template)}
        if not accept(_render(template, values, rng)):
            continue
        if rng.random() < lookalike_rate:
            for _ in range(rng.randint(1, 3)):
                sibling = dict(values)
                changed = rng.choice(template.key)
                sibling[changed] = _sample(rng, changed)
                for slot in _slots_of(template):
                    if slot not in template.key and rng.random() < 0.5:
                        sibling[slot] = _sample(rng, slot)
                accept(_render(template, sibling, rng))
    return facts


def make_queries(facts: list[Fact], count: int, *, seed: int = 0) -> list[Query]:
    """``count`` questions about distinct facts, each naming its one target."""
    rng = random.Random(seed + 7919)
    targets = rng.sample(range(len(facts)), min(count, len(facts)))
    return [Query(facts[i].question, i) for i in targets]


def generate(n: int, queries: int, *, seed: int = 0) -> tuple[list[Fact], list[Query]]:
    """Facts and questions with known targets, in one call."""
    facts = generate_facts(n, seed=seed)
    return facts, make_queries(facts, queries, seed=seed)
