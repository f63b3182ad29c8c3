"""Built-in offline topic-classification dataset, generated from a seed.

Each class owns a topic vocabulary (40 English words for the first eight classes,
pronounceable pseudo-words beyond); all classes share a vocabulary of function and
filler words. One example is a short word sequence (8-20 words) in which 25-35% of
the positions hold topic words and the rest shared words:

    p(topic word from the source class)  = 1 - BORROW      (else a uniform other class)
    p(source class != label)             = LABEL_NOISE     (text written for another class)

so a bag-of-words classifier is clearly above chance but cannot reach 100%: short
sentences with borrowed words are ambiguous and 5% of labels are wrong. Labels are
exactly balanced (``label = i mod C`` before shuffling) so partitioners can skew them.
"""

from __future__ import annotations

import numpy as np

BORROW = 0.3  # fraction of topic words taken from another class
LABEL_NOISE = 0.05  # fraction of examples whose text comes from another class
MIN_WORDS, MAX_WORDS = 8, 20
TOPIC_FRACTION = (0.25, 0.35)

TOPICS: dict[str, str] = {
    "sports": "match goal team coach league season player score stadium referee "
    "tournament champion striker keeper inning pitcher racket medal sprint marathon "
    "halftime playoff defender midfield rookie transfer trophy derby lap podium "
    "penalty dribble tackle umpire wicket serve rally squad fixture captain",
    "science": "physics molecule experiment telescope genome quantum laboratory "
    "particle neutron fossil species hypothesis microscope protein enzyme galaxy "
    "asteroid climate glacier chemist biologist isotope orbit photon electron "
    "cell bacteria vaccine evolution mineral spectrum theorem equation data "
    "specimen nebula catalyst reactor volcano tectonic",
    "business": "market shares profit revenue investor merger earnings stock "
    "dividend quarter bank loan inflation startup retail supplier contract "
    "acquisition shareholder bond currency exports tariff budget ceo pricing "
    "forecast audit venture capital debt layoffs factory wholesale brand "
    "franchise commodity payroll invoice broker",
    "world": "election minister parliament embassy treaty border refugee summit "
    "diplomat sanctions ceasefire president protest province army "
    "rebels coalition referendum governor senate ambassador negotiation "
    "insurgency monarchy republic constitution cabinet regime alliance "
    "humanitarian envoy militia annexation asylum frontier consulate dissident "
    "diplomacy statehood uprising",
    "health": "patient doctor hospital clinic nurse surgery diagnosis therapy "
    "symptom disease infection diabetes cancer diet nutrition fitness medicine "
    "pharmacy prescription dose cardiology pediatric outbreak epidemic wellness "
    "allergy fever injury recovery ambulance midwife dentist vitamin cholesterol "
    "insomnia immune obesity rehab hygiene physician",
    "entertainment": "movie film actor actress director premiere album singer concert "
    "band festival celebrity sitcom episode series soundtrack studio box-office "
    "sequel trailer comedian theater musical drama awards grammy oscar streaming "
    "documentary cast script producer playlist tour rapper choreography "
    "blockbuster novel bestseller gossip",
    "food": "recipe chef restaurant kitchen flavor dessert bakery pasta noodle "
    "spice sauce grill roast vegan cheese bread pastry menu cuisine dinner "
    "breakfast seafood barbecue salad soup dumpling espresso wine brewery "
    "vineyard ingredient oven tasting butcher chocolate sushi curry harvest "
    "orchard picnic",
    "travel": "airport flight passport hotel resort luggage itinerary cruise "
    "beach island tourist destination backpack hostel airline boarding visa "
    "sightseeing guidebook excursion lagoon safari trek campsite railway ferry "
    "voyage souvenir jetlag check-in landmark museum canyon glacier-tour "
    "hiking postcard villa caravan terminal tourism",
}

SHARED = (
    "the a an of to in on for with at by from and or but as is was are were be "
    "been has have had will would could should may this that these those it its "
    "they their there which who what when where new more most some many other "
    "about after before over under said says reported today yesterday week year "
    "people group local officials according also just still again first last "
    "several number part early late major latest"
).split()

WORDS_PER_TOPIC = 40
_SYLLABLES = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"]  # 70 syllables


def _pseudo_words(class_index: int, count: int) -> list[str]:
    """Unique 3-syllable pseudo-words for classes beyond the named ones."""
    words = []
    for j in range(count):
        s = len(_SYLLABLES)
        m = (class_index * count + j) * 7919 % s**3  # bijective (7919 is prime, coprime to s**3)
        words.append(_SYLLABLES[m % s] + _SYLLABLES[(m // s) % s] + _SYLLABLES[(m // s // s) % s])
    return words


def topic_vocabulary(num_classes: int) -> tuple[tuple[str, ...], list[list[str]]]:
    """Return (label_names, per-class topic words) for ``num_classes`` classes."""
    names = list(TOPICS)[:num_classes]
    vocab = [TOPICS[n].split()[:WORDS_PER_TOPIC] for n in names]
    for k in range(len(names), num_classes):
        names.append(f"topic_{k}")
        vocab.append(_pseudo_words(k, WORDS_PER_TOPIC))
    return tuple(names), vocab


def generate(num_examples: int, num_classes: int, seed: int) -> tuple[list[str], np.ndarray, tuple[str, ...]]:
    """Generate the built-in dataset.

    Parameters
    ----------
    num_examples : int
        Number of examples N.
    num_classes : int
        Number of classes C (>= 2).
    seed : int
        Seed of the ``numpy.random.default_rng`` that draws everything.

    Returns
    -------
    texts : list[str]
        N sentences.
    labels : np.ndarray
        (N,) int64 labels in 0..C-1, exactly balanced (counts differ by at most 1).
    label_names : tuple[str, ...]
        C readable class names.
    """
    rng = np.random.default_rng(seed)
    names, topic_words = topic_vocabulary(num_classes)
    vocab = np.array([w for words in topic_words for w in words] + SHARED, dtype=object)
    n, c, v, w = num_examples, num_classes, WORDS_PER_TOPIC, MAX_WORDS

    labels = rng.permutation(np.arange(n) % c)  # (N,)
    noisy = rng.random(n) < LABEL_NOISE
    source = np.where(noisy, (labels + rng.integers(1, c, n)) % c, labels)  # (N,)

    length = rng.integers(MIN_WORDS, MAX_WORDS + 1, n)  # (N,)
    num_topic = np.maximum(2, np.rint(length * rng.uniform(*TOPIC_FRACTION, n))).astype(int)
    # random rank of each position among the first `length` ones; topic slots = lowest ranks
    keys = rng.random((n, w))
    keys[np.arange(w)[None, :] >= length[:, None]] = np.inf
    rank = np.argsort(np.argsort(keys, axis=1), axis=1)  # (N, W)
    is_topic = rank < num_topic[:, None]

    borrowed = rng.random((n, w)) < BORROW
    word_class = np.where(borrowed, (source[:, None] + rng.integers(1, c, (n, w))) % c, source[:, None])
    topic_id = word_class * v + rng.integers(0, v, (n, w))  # (N, W) index into topic words
    shared_id = c * v + rng.integers(0, len(SHARED), (n, w))  # (N, W) index into SHARED
    words = vocab[np.where(is_topic, topic_id, shared_id)]  # (N, W) str

    texts = []
    for row, k in zip(words, length):
        sentence = " ".join(row[:k])
        texts.append(sentence[0].upper() + sentence[1:] + ".")
    return texts, labels.astype(np.int64), names
